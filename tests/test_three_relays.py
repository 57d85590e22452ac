"""Three relays on loopback over one PostgreSQL and one nats-server (issue 13): any relay serves any user,
direct messages cross relays exactly once, rooms fan out to members on every relay, and faults (a relay
killed, NATS restarted) lose nothing that was receipted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from securecomm.crypto import room as roomcrypto
from securecomm.crypto.integrity import sha256
from securecomm.errors import SecurecommError
from securecomm.store.postgres import PostgresStore
from securecomm.wire import protocol as P
from tests.relays import WAIT, Peer, make_users, peers, start_relays, stop_all

#: 50 clients spread over 3 relays, 100 direct messages each to users on other relays (the issue's load).
CLIENTS, MESSAGES, RELAYS = 50, 100, 3
#: DIRECT frames a client has waiting for their receipt at once.
WINDOW = 25
#: The whole load must finish within this many seconds (a bound, not a speed test).
LOAD_SECONDS = 400


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, nats_server):
    relays = start_relays(tmp_path / "srv", pg_url, nats_server.url, RELAYS, serve_version_1=True)
    yield relays
    stop_all(relays)


def _plan(group: list[Peer], n: int) -> dict[str, list[str]]:
    """Each peer's n recipients, all connected to other relays, spread evenly."""
    plan = {}
    for i, p in enumerate(group):
        others = [q.name for q in group if q.port != p.port]
        plan[p.name] = [others[(i + k) % len(others)] for k in range(n)]
    return plan


async def _send_all(p: Peer, to: list[str], sealed: list[tuple[bytes, bytes]], retry_on: Peer | None = None,
                    relays: list[int] | None = None) -> None:
    """Send each sealed message and await its receipt, WINDOW at a time; after a lost connection,
    reconnect to another relay and resend the same bytes (a duplicate is answered with the original receipt)."""
    window = asyncio.Semaphore(WINDOW)

    async def one(name: str, env: bytes, msg_id: bytes) -> None:
        async with window:
            for _ in range(5):
                try:
                    await p.send_direct(name, env, msg_id)
                    return
                except Exception:
                    if relays is None:
                        raise
                    await _failover(p, relays)
            raise AssertionError(f"{p.name}: no receipt after 5 relays")

    await asyncio.gather(*(one(name, env, msg_id) for name, (env, msg_id) in zip(to, sealed, strict=True)))


_reconnecting: dict[str, asyncio.Lock] = {}


async def _failover(p: Peer, relays: list[int]) -> None:
    """Reconnect to the next relay that answers (once per lost connection, however many sends saw it)."""
    lock = _reconnecting.setdefault(p.name, asyncio.Lock())
    async with lock:
        if p.client is not None and not p.client.closed:
            return
        await p.close()
        for port in relays[relays.index(p.port) + 1:] + relays[: relays.index(p.port) + 1]:
            with contextlib.suppress(SecurecommError):  # refused: the next
                await p.connect(port)
                return
        raise AssertionError(f"{p.name}: no relay answered")


async def _connect_group(tmp_path: Path, url: str, relays: list, n: int, prefix: str = "u") -> list[Peer]:
    names = [f"{prefix}{i:02d}" for i in range(n)]
    identities = await asyncio.to_thread(make_users, url, names)
    group = list(peers(tmp_path, identities))
    await asyncio.gather(*(p.connect(relays[i % len(relays)].port) for i, p in enumerate(group)))
    return group


def _assert_exactly_once(group: list[Peer], sent: dict[bytes, str], cut_off: frozenset[str] = frozenset()) -> None:
    """Every message receipted and delivered to its recipient, and to nobody else; more than one DELIVER
    of one message only to a client whose relay died between DELIVER and the commit of its ACK (the
    client shows it once: the same id)."""
    by_name = {p.name: p for p in group}
    assert set().union(*(p.receipts for p in group)) == set(sent)
    for p in group:
        assert set(p.delivered) == {m for m, to in sent.items() if to == p.name}
        if p.name not in cut_off:
            assert set(p.delivered.values()) <= {1}, f"{p.name} was delivered a message twice"
    assert all(by_name[to].delivered[m] >= 1 for m, to in sent.items())


@pytest.mark.timeout(LOAD_SECONDS + 120)
def test_fifty_clients_over_three_relays_each_message_receipted_and_delivered_once(tmp_path, cluster, pg_url):
    async def main() -> None:
        group = await _connect_group(tmp_path, pg_url, cluster, CLIENTS)
        plan = _plan(group, MESSAGES)
        keys = {p.name: p.me.public for p in group}
        sealed = {p.name: [p.seal(keys[to], f"{p.name}->{to} #{k}".encode()) for k, to in enumerate(plan[p.name])]
                  for p in group}
        sent = {msg_id: to for p in group for to, (_, msg_id) in zip(plan[p.name], sealed[p.name], strict=True)}
        try:
            await asyncio.wait_for(asyncio.gather(*(_send_all(p, plan[p.name], sealed[p.name]) for p in group)),
                                   LOAD_SECONDS)
            expected = {p.name: sum(1 for to in sent.values() if to == p.name) for p in group}
            for p in group:
                await p.until(lambda p=p: sum(p.delivered.values()) >= expected[p.name])
            _assert_exactly_once(group, sent)
            assert sum(sum(p.delivered.values()) for p in group) == CLIENTS * MESSAGES
            # every delivery acknowledged, through whichever relay (the last ACKs may still be committing)
            await asyncio.wait_for(asyncio.to_thread(_mailboxes_empty, pg_url), WAIT)
        finally:
            await asyncio.gather(*(p.close() for p in group))

    asyncio.run(main())


def _mailboxes_empty(url: str) -> None:
    store = PostgresStore(url)
    try:
        deadline = time.monotonic() + WAIT  # only catches a hang: the ACKs are already sent
        while store.count_mail() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.count_mail() == 0
    finally:
        store.close()


@pytest.mark.timeout(300)
def test_a_room_with_members_on_three_relays_gets_each_line_once(tmp_path, cluster, pg_url):
    """Nine members, three per relay; each sends lines: every other member receives each line exactly once."""
    async def main() -> None:
        group = await _connect_group(tmp_path, pg_url, cluster, 9, prefix="r")
        try:
            for p in group:  # a join is answered once the room's lines from every relay reach its relay
                assert p.client is not None
                await p.client.request("join", room="all.hands")
            lines = []
            for p in group:
                assert p.client is not None
                key = roomcrypto.SenderKey.generate()
                for k in range(5):
                    payload = roomcrypto.encrypt("all.hands", f"{p.name} line {k}".encode(), p.me, key)
                    msg_id = roomcrypto.parse_header(payload).msg_id
                    await p.client.send_for_receipt(P.RoomSend("all.hands", payload), msg_id,
                                                    sha256(payload))
                    lines.append((p.name, payload))
            for p in group:
                mine = sum(1 for who, _ in lines if who != p.name)
                await p.until(lambda p=p, mine=mine: sum(p.room_lines.values()) >= mine)
                assert p.room_lines == {payload: 1 for who, payload in lines if who != p.name}
            # fan-out once per relay: each relay subscribed to the room once (its log says nothing per member)
        finally:
            await asyncio.gather(*(p.close() for p in group))

    asyncio.run(main())


@pytest.mark.timeout(300)
def test_a_late_joiner_on_another_relay_learns_every_member_and_is_listed_everywhere(tmp_path, cluster, pg_url):
    """The member list of a join or `who` spans relays: a member joining on the third relay is told
    of the members on the other two (as joins), and every relay's `who` lists all three."""
    async def main() -> None:
        group = await _connect_group(tmp_path, pg_url, cluster, 3, prefix="m")
        first, second, late = group  # on relays 0, 1 and 2
        try:
            for p in (first, second):
                assert p.client is not None
                await p.client.request("join", room="late")
            assert late.client is not None
            await late.client.request("join", room="late")
            await late.until(lambda: {u for _, e, u in late.room_events if e == "joined"} >= {"m00", "m01"})
            for p in group:
                assert p.client is not None
                who = await p.client.request("who", room="late")
                assert sorted(m["user"] for m in who["members"]) == ["m00", "m01", "m02"], p.name
            await second.client.request("leave", room="late")  # type: ignore[union-attr]
            await late.until(lambda: ("late", "left", "m01") in late.room_events)
            who = await late.client.request("who", room="late")
            assert sorted(m["user"] for m in who["members"]) == ["m00", "m02"]
        finally:
            await asyncio.gather(*(p.close() for p in group))

    asyncio.run(main())


@pytest.mark.timeout(LOAD_SECONDS + 120)
def test_relay_killed_mid_load_clients_move_within_5s_and_nothing_receipted_is_lost(tmp_path, cluster, pg_url):
    """kill -9 one relay while 30 clients send: its clients reconnect to another relay within 5 s, and every
    receipted message is delivered exactly once (resends of unreceipted ones are deduplicated by the store)."""
    n, per = 30, 40

    async def main() -> None:
        group = await _connect_group(tmp_path, pg_url, cluster, n, prefix="k")
        ports = [r.port for r in cluster]
        victim = cluster[0]
        plan = _plan(group, per)
        keys = {p.name: p.me.public for p in group}
        sealed = {p.name: [p.seal(keys[to], f"{p.name}->{to} #{k}".encode()) for k, to in enumerate(plan[p.name])]
                  for p in group}
        sent = {msg_id: to for p in group for to, (_, msg_id) in zip(plan[p.name], sealed[p.name], strict=True)}
        on_victim = [p for p in group if p.port == victim.port]
        load = asyncio.gather(*(_send_all(p, plan[p.name], sealed[p.name], relays=ports) for p in group))
        # mid-load: once a tenth of the receipts are in
        while sum(len(p.receipts) for p in group) < len(sent) // 10:
            await asyncio.sleep(0.01)
        assert victim.proc is not None
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        for p in on_victim:  # a receiver that is not sending learns of the loss from its read loop
            await asyncio.wait_for(_watch_and_move(p, victim.port, ports), WAIT)
        moved = time.monotonic() - killed
        await asyncio.wait_for(load, LOAD_SECONDS)
        assert moved < 5, f"clients of the killed relay took {moved:.1f} s to reconnect"
        assert all(p.port != victim.port for p in on_victim)
        for p in group:
            expected = sum(1 for to in sent.values() if to == p.name)
            await p.until(lambda p=p, expected=expected: len(p.delivered) >= expected)
        _assert_exactly_once(group, sent, frozenset(p.name for p in on_victim))

    try:
        asyncio.run(main())
    finally:
        cluster[0].proc = None


async def _watch_and_move(p: Peer, victim: int, ports: list[int]) -> None:
    """Until p is on another relay: a sender moves on its own (its sends fail over); a client that only
    receives learns of the loss from its read loop and moves here."""
    while p.port == victim:
        if p.client is not None and p.client.closed:
            await _failover(p, ports)
        else:
            await asyncio.sleep(0.01)  # polls the connection state; the bound is the caller's wait_for


@pytest.mark.timeout(LOAD_SECONDS + 120)
def test_nats_restarted_mid_load_direct_messages_still_arrive_none_twice(tmp_path, cluster, pg_url, nats_server):
    n, per = 12, 40

    async def main() -> None:
        group = await _connect_group(tmp_path, pg_url, cluster, n, prefix="n")
        plan = _plan(group, per)
        keys = {p.name: p.me.public for p in group}
        sealed = {p.name: [p.seal(keys[to], f"{p.name}->{to} #{k}".encode()) for k, to in enumerate(plan[p.name])]
                  for p in group}
        sent = {msg_id: to for p in group for to, (_, msg_id) in zip(plan[p.name], sealed[p.name], strict=True)}
        load = asyncio.gather(*(_send_all(p, plan[p.name], sealed[p.name]) for p in group))
        while sum(len(p.receipts) for p in group) < len(sent) // 10:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(nats_server.start)
        await asyncio.wait_for(load, LOAD_SECONDS)
        for p in group:
            expected = sum(1 for to in sent.values() if to == p.name)
            await p.until(lambda p=p, expected=expected: len(p.delivered) >= expected)
        _assert_exactly_once(group, sent)
        await asyncio.gather(*(p.close() for p in group))

    asyncio.run(main())
    for relay in cluster:
        relay.wait_log(r"bus reconnected", timeout=WAIT)


@pytest.mark.timeout(300)
def test_workers_share_one_port_and_act_as_one_relay(tmp_path, pg_url, nats_server):
    """`serve --workers 2`: two processes listen on one port (SO_REUSEPORT); clients spread over them
    reach each other, and SIGTERM to the parent stops both."""
    from securecomm.store.postgres import PostgresStore as Store
    from tests.serverproc import ServerProc

    Store(pg_url, migrate=True).close()
    srv = ServerProc(tmp_path / "srv", "--db", pg_url, "--bus", nats_server.url, "--workers", "2",
                     serve_version_1=True).start()  # Peer clients speak version 1 (tests/relays.py)
    try:
        srv.wait_log(r"(?s)listening on 127\.0\.0\.1:(\d+).*listening on 127\.0\.0\.1:\1", timeout=WAIT)

        async def main() -> None:
            group = await _connect_group(tmp_path, pg_url, [srv], 12, prefix="w")
            plan = {p.name: [q.name for q in group if q is not p][:5] for p in group}
            keys = {p.name: p.me.public for p in group}
            sealed = {p.name: [p.seal(keys[to], b"hi") for to in plan[p.name]] for p in group}
            sent = {m: to for p in group for to, (_, m) in zip(plan[p.name], sealed[p.name], strict=True)}
            try:
                await asyncio.wait_for(asyncio.gather(*(_send_all(p, plan[p.name], sealed[p.name])
                                                        for p in group)), WAIT)
                for p in group:
                    expected = sum(1 for to in sent.values() if to == p.name)
                    await p.until(lambda p=p, expected=expected: len(p.delivered) >= expected)
                _assert_exactly_once(group, sent)
            finally:
                await asyncio.gather(*(p.close() for p in group))

        asyncio.run(main())
        assert srv.log.count("; bus: NATS at") == 2  # each worker has its own bus connection
    finally:
        assert srv.stop() == 0  # SIGTERM reaches both workers; the parent exits 0 once they have


def test_more_than_one_worker_needs_postgresql_and_a_bus(sc):
    r = sc("serve", "--workers", "2", "--port", "0")
    assert r.exit_code == 2
    assert "securecomm: error: --workers above 1 needs --db postgresql://... and --bus nats://..." in r.output


def test_status_and_log_say_the_relay_uses_nats(tmp_path, cluster, pg_url):
    from tests.serverproc import add_user, login, sc

    relay = cluster[1]
    assert "; bus: NATS at nats://127.0.0.1:" in relay.wait_log(r"store: .*; bus: NATS at \S+")
    add_user(relay.home, "sam", "--db", pg_url)
    assert login(tmp_path / "sam", relay, "sam").returncode == 0
    r = sc(tmp_path / "sam", "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert any(line.split() == ["relay.bus", "nats"] for line in lines), r.stdout
    assert any(line.split() == ["relay.store", "postgresql"] for line in lines), r.stdout


def test_a_woken_relay_pushes_the_carried_message_without_reading_the_mailbox(tmp_path, pg_url, pg_server,
                                                                              nats_server):
    """Cross-relay latency (issue 13): the wake-up carries the stored message and the seq before it, so
    the recipient's relay sends DELIVER at once instead of first reading PostgreSQL. Observed in
    PostgreSQL's own statement log for this database: the mailbox reads stop, the inserts go on."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(
            sql.Identifier(pg_url.rsplit("/", 1)[1])))
    relays = start_relays(tmp_path / "srv", pg_url, nats_server.url, 2, serve_version_1=True)

    async def main() -> str:
        alice, bob = await _connect_group(tmp_path, pg_url, relays, 2)  # alice on relay 0, bob on relay 1
        try:
            async def one(body: bytes) -> None:
                sealed, msg_id = alice.seal(bob.me.public, body)
                await alice.send_direct(bob.name, sealed, msg_id)
                await bob.until(lambda: msg_id in bob.delivered)

            await one(b"warm-up")  # after the login's own read and the subscription's
            mark = pg_server.logfile.stat().st_size
            for i in range(5):
                await one(b"line %d" % i)
            with pg_server.logfile.open("rb") as log:
                log.seek(mark)
                return log.read().decode(errors="replace")
        finally:
            await asyncio.gather(alice.close(), bob.close())

    try:
        logged = asyncio.run(main())
    finally:
        stop_all(relays)
    assert logged.count("INSERT INTO mailbox") >= 5  # the log does show this database's statements
    assert logged.count("JOIN users ON users.id = mailbox.sender_id") == 0  # pending_mail: never read
