"""The lockout's rules as pure logic, with a clock we move by hand (no sockets, no sleeps)."""

from __future__ import annotations

import asyncio

from securecomm.server.auth import Lockout, NameLocks


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_locks_after_n_failures_in_the_window():
    clock = Clock()
    lk = Lockout(3, 60, clock)
    assert lk.failed("bob") is None and lk.failed("bob") is None
    assert lk.locked_until("bob") is None
    assert lk.failed("bob") == clock.now + 60
    assert lk.locked_until("bob") == clock.now + 60


def test_lock_end_does_not_move_and_the_counter_restarts_after_it():
    clock = Clock()
    lk = Lockout(2, 60, clock)
    lk.failed("bob")
    end = lk.failed("bob")
    clock.now += 59
    assert lk.failed("bob") is None  # while locked: not counted
    assert lk.locked_until("bob") == end  # and not moved
    clock.now += 1
    assert lk.locked_until("bob") is None
    assert lk.failed("bob") is None  # a fresh count: one failure is not a lock
    assert lk.locked_until("bob") is None


def test_failures_outside_the_window_do_not_add_up():
    clock = Clock()
    lk = Lockout(2, 60, clock)
    lk.failed("bob")
    clock.now += 61
    assert lk.failed("bob") is None
    assert lk.locked_until("bob") is None


def test_success_and_clear_forget_the_failures():
    clock = Clock()
    lk = Lockout(2, 60, clock)
    lk.failed("bob")
    lk.succeeded("bob")
    assert lk.failed("bob") is None
    lk.failed("bob")
    assert lk.locked_names() == ["bob"]
    lk.clear("bob")
    assert lk.locked_until("bob") is None


def test_restored_lock_keeps_its_end():
    clock = Clock()
    lk = Lockout(5, 900, clock)
    lk.lock("bob", clock.now + 10)
    assert lk.locked_until("bob") == clock.now + 10
    lk.lock("old", clock.now - 1)  # already over: nothing restored
    assert lk.locked_names() == ["bob"]


def test_memory_is_bounded():
    clock = Clock()
    lk = Lockout(5, 60, clock, max_names=10)
    for i in range(50):
        clock.now += 1
        lk.failed(f"n{i}")
    assert len(lk._entries) <= 10
    assert "n49" in lk._entries and "n0" not in lk._entries


def test_a_flood_of_names_spares_a_live_lock():
    clock = Clock()
    lk = Lockout(2, 600, clock, max_names=10)
    lk.failed("bob")
    lk.failed("bob")  # locked, and the oldest entry
    for i in range(30):
        clock.now += 1
        lk.failed(f"n{i}")
    assert lk.locked_until("bob") is not None
    assert len(lk._entries) <= 10


def test_name_locks_serialise_per_name_and_are_freed():
    locks = NameLocks()
    order: list[str] = []

    async def guess(name: str, tag: str, gate: asyncio.Event | None) -> None:
        async with locks.hold(name):
            order.append(f"{tag}+")
            if gate is not None:
                await gate.wait()
            order.append(f"{tag}-")

    async def main() -> None:
        gate = asyncio.Event()
        first = asyncio.create_task(guess("bob", "a", gate))
        second = asyncio.create_task(guess("bob", "b", None))
        other = asyncio.create_task(guess("carol", "c", None))
        await other  # another name is not held up
        await asyncio.sleep(0)
        assert order == ["a+", "c+", "c-"]
        gate.set()
        await asyncio.gather(first, second)
        assert len(locks) == 0

    asyncio.run(main())
    assert order == ["a+", "c+", "c-", "a-", "b+", "b-"]
