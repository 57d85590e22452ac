"""Claiming a conversation's next prekeys ahead (chat, docs/PROTOCOL.md 6.13), through a real server
(TLS, SQLite in a temporary --home) with Messengers as `chat` runs them.

Once a message is sent, the next message's claim is made at once, so the next line waits for no
claim round trip. That claim is also the check of the message just sent: a device the recipient
added after the claim the message used gets a copy. Regression (fails on the first try of claiming
ahead, 2ca7bbd, reverted in c051657): the message sealed to a claim made before bob's phone was
paired never reached the phone. A device removed after the claim ahead is refused its copy by the
server (WRONG_RECIPIENT) and the message still goes to the others, even when its copy is the first
(before: the send failed). One-shot `send` never claims ahead.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from securecomm.client import directv2
from tests.serverproc import ServerProc, sc, users_logged_in
from tests.test_multidevice_cli import pair_second_device


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
    yield srv, homes, tmp_path
    srv.stop(signal.SIGKILL)


async def _messenger(home: Path, *, ahead: bool = True) -> Any:
    from securecomm.cli.context import State
    from securecomm.client.login import connect_profile
    from securecomm.client.messenger import Messenger
    from securecomm.crypto import identity as ident

    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    client, profile = await connect_profile(state.paths, me)
    m = Messenger(client, me, profile.user, state.paths, lambda ev: None, ahead=ahead)
    m.pump = asyncio.create_task(m.run())
    return m


async def _close(m: Any) -> None:
    if m.devices is not None:
        m.devices.stop_ahead()
    m.pump.cancel()
    await m.client.close()


async def _ahead_done(m: Any, user: str) -> None:
    """The claim ahead for `user`, and the check of the message before it, have run."""
    _, work, now = m.devices._ahead[user]
    now.set()
    await work


def _inbox(home: Path) -> list[str]:
    r = sc(home, "inbox", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["body"] for line in r.stdout.splitlines()]


def _device_ids(home: Path) -> dict[str, str]:
    """This account's devices: {"this": id, "other": id} (the 12-digit ids `devices` shows)."""
    rows = json.loads(sc(home, "devices", "--json").stdout)
    return {("this" if r["this"] else "other"): r["id"] for r in rows}


def test_a_device_added_after_the_claim_ahead_still_gets_the_message(world):
    srv, homes, tmp = world
    phone = tmp / "bob-phone"

    async def run() -> tuple[bool, bool]:
        alice = await _messenger(homes["alice"])
        try:
            await alice.send_direct("bob", b"one")
            await _ahead_done(alice, "bob")  # claimed ahead: bob has one device
            pair_second_device(srv, homes["bob"], phone, "bob")
            sealed = await alice.seal_direct("bob", b"two")
            missed_phone = len(sealed.copies) == 1
            await alice.send_sealed_direct("bob", sealed)
            await _ahead_done(alice, "bob")  # the next claim lists the phone: it gets a copy of "two"
            return sealed.ahead, missed_phone
        finally:
            await _close(alice)

    ahead, missed_phone = asyncio.run(run())
    assert ahead and missed_phone  # sealed to the claim made before the phone was paired
    assert _inbox(homes["bob"]) == ["one", "two"]
    assert _inbox(phone) == ["two"]  # paired after "one" was sent, before "two"


def test_a_device_removed_after_the_claim_ahead_is_skipped_even_when_first(world):
    srv, homes, tmp = world
    phone = tmp / "bob-phone"
    pair_second_device(srv, homes["bob"], phone, "bob")
    ids = _device_ids(homes["bob"])
    # copies go out in device id order: remove the device whose copy is sent first
    stays = phone if ids["this"] < ids["other"] else homes["bob"]
    gone_id = _device_ids(stays)["other"]

    async def run() -> Any:
        alice = await _messenger(homes["alice"])
        try:
            await alice.send_direct("bob", b"one")
            await _ahead_done(alice, "bob")  # claimed ahead: both of bob's devices
            r = sc(stays, "devices", "remove", gone_id, "--yes")
            assert r.returncode == 0, r.stderr
            sealed = await alice.seal_direct("bob", b"two")
            assert sealed.ahead and len(sealed.copies) == 2
            receipt, _ = await alice.send_sealed_direct("bob", sealed)  # before: the first copy's refusal raised
            return receipt
        finally:
            await _close(alice)

    assert not asyncio.run(run()).duplicate
    assert _inbox(stays) == ["one", "two"]


def test_one_shot_and_stale_claims_are_not_ahead(world, monkeypatch):
    _, homes, _ = world

    async def run() -> tuple[bool, bool, bool]:
        once = await _messenger(homes["alice"], ahead=False)
        try:
            await once.send_direct("bob", b"one")
            no_claim_kept = "bob" not in once.devices._ahead
        finally:
            await _close(once)
        alice = await _messenger(homes["alice"])
        try:
            await alice.send_direct("bob", b"two")
            await _ahead_done(alice, "bob")
            monkeypatch.setattr(directv2, "AHEAD_MAX_AGE", 0.0)  # the claim ahead is too old now
            stale = (await alice.seal_direct("bob", b"three")).ahead
            monkeypatch.setattr(directv2, "AHEAD_MAX_AGE", 60.0)
            await alice.send_direct("bob", b"four")
            await _ahead_done(alice, "bob")
            fresh = (await alice.seal_direct("bob", b"five")).ahead
            return no_claim_kept, stale, fresh
        finally:
            await _close(alice)

    no_claim_kept, stale, fresh = asyncio.run(run())
    assert no_claim_kept and not stale and fresh


def test_a_line_sealed_ahead_to_a_reset_account_is_sealed_again_and_the_change_told(world):
    """The new-user check: after bob reset his user key, alice's next `/msg bob` in a running chat (sealed
    to the claim made ahead) was refused as 'sealed to a device that is not on the recipient's list' and
    lost, with no word of the changed key; the STOP came only with the line after."""
    from securecomm.errors import ChangedKeyError, NotListedError
    from tests.serverproc import PASSWORD, login

    srv, homes, tmp = world

    async def run() -> BaseException | None:
        alice = await _messenger(homes["alice"])
        try:
            await alice.send_direct("bob", b"one")
            await _ahead_done(alice, "bob")  # claimed ahead: bob's one device
            r = login(tmp / "bob-new", srv, "bob", PASSWORD, "--reset-user-key", "--yes")
            assert r.returncode == 0, r.stderr
            sealed = await alice.seal_direct("bob", b"two")
            assert sealed.ahead
            try:
                await alice.send_sealed_direct("bob", sealed)
            except (ChangedKeyError, NotListedError) as e:
                return e
            return None
        finally:
            await _close(alice)

    told = asyncio.run(run())
    assert isinstance(told, ChangedKeyError), told  # before: NotListedError, the line gone
    assert "the user key of bob has CHANGED" in told.message
