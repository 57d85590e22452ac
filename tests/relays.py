"""Several real relays over one PostgreSQL and one nats-server, and many in-process clients (issue 13).

Accounts and device keys are written straight into the shared store (as `user add` + a first login
would), so fifty users cost no Argon2id; every client then logs in with its key over real TLS.
A `Peer` acknowledges what it is delivered (opening and signing as the messenger does) and counts
every delivery by message id, so a test can say "delivered exactly once"."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from securecomm.client.connection import Client
from securecomm.client.trust import resolve_trust
from securecomm.crypto import envelope
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import sha256
from securecomm.errors import SecurecommError
from securecomm.paths import Paths
from securecomm.store import passwords
from securecomm.store.postgres import PostgresStore
from securecomm.wire import protocol as P
from tests.serverproc import PASSWORD, ServerProc

#: Seconds any awaited cluster event may take on a loaded 2-core machine (only catches hangs).
WAIT = 60
#: Relay options for load: the per-connection and per-user rates are not what is tested here.
LOAD = ("--rate", "0", "--relay-rate", "0", "--max-unauthenticated-per-address", "256")


def start_relays(home: Path, url: str, bus: str, n: int, *, serve_version_1: bool = False) -> list[ServerProc]:
    """n relays sharing one --home (one CA, one message identity), one database and one bus; the first
    starts alone so that it creates the certificates the others then read. `serve_version_1`: for the
    Peer clients below (version-1 accounts made straight in the store, test_three_relays)."""
    PostgresStore(url, migrate=True).close()
    return [ServerProc(home, "--db", url, "--bus", bus, *LOAD, serve_version_1=serve_version_1).start()
            for _ in range(n)]


def stop_all(relays: list[ServerProc]) -> None:
    for relay in relays:
        relay.stop(signal.SIGKILL)


def make_users(url: str, names: list[str]) -> dict[str, PrivateIdentity]:
    """Accounts with registered device keys, straight into the store; the identity of each."""
    store = PostgresStore(url)
    phc = passwords.hash_password(PASSWORD)
    identities = {}
    try:
        for name in names:
            user = store.add_user(name, phc)
            me = identities[name] = PrivateIdentity.generate()
            store.set_identity(user.id, me.public.encode(), me.public.fingerprint)
    finally:
        store.close()
    return identities


@dataclass
class Peer:
    """One user's client, connected to one relay at a time; counts deliveries and acknowledges them."""

    name: str
    me: PrivateIdentity
    home: Path
    client: Client | None = None
    port: int = 0
    delivered: Counter[bytes] = field(default_factory=Counter)
    room_lines: Counter[bytes] = field(default_factory=Counter)
    #: (room, event, user) of every ROOM_EVENT, in order
    room_events: list[tuple[str, str, str]] = field(default_factory=list)
    receipts: set[bytes] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _pump: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        ca = self.home.parent.parent / "srv" / "tls" / "ca.pem"
        trust = resolve_trust(Paths(self.home, self.home), "localhost", port, ca=str(ca))
        client = Client("localhost", port, trust)
        # Version 1 (relays started with serve_version_1): fifty accounts with one registered key each,
        # made straight in the store, load the relays, the bus and failover without prekeys; the same
        # paths on version 2 across relays: test_cluster_files, test_multidevice (two relays)
        client.versions = (1,)
        await client.connect()
        await client.login_key(self.name, self.me)
        self.client, self.port = client, port
        self._pump = asyncio.create_task(self._take())

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self.client is not None:
            await self.client.close()

    async def _take(self) -> None:
        assert self.client is not None
        while True:
            ev = await self.client.events.get()
            if isinstance(ev, SecurecommError):
                return  # connection gone: the test reconnects
            if isinstance(ev, P.Deliver):
                self._ack(ev)
            elif isinstance(ev, P.RoomMessage):
                self.room_lines[ev.payload] += 1
            elif isinstance(ev, P.RoomEvent):
                self.room_events.append((ev.room, ev.event, ev.user))
            self.changed.set()

    def _ack(self, ev: P.Deliver) -> None:
        assert self.client is not None
        sender = SENDERS[ev.sender]
        opened = envelope.open_envelope(ev.envelope, self.me, sender)
        self.delivered[opened.header.msg_id] += 1
        proof = self.me.sign(P.delivered_transcript(opened.header.msg_id, opened.digest))
        self.client.send_event(P.Ack(ev.seq, P.ACK_OK, opened.digest, proof))

    def seal(self, to: PublicIdentity, body: bytes) -> tuple[bytes, bytes]:
        sealed = envelope.seal(body, self.me, to)
        return sealed, envelope.parse(sealed).header.msg_id

    async def send_direct(self, to: str, sealed: bytes, msg_id: bytes) -> None:
        assert self.client is not None
        await self.client.send_for_receipt(P.Direct(to, sealed), msg_id, sha256(sealed))
        self.receipts.add(msg_id)

    async def until(self, done: object) -> None:
        async def wait() -> None:
            while not done():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), WAIT)


#: Every test user's public identity by name (a Peer opens what it is delivered with the sender's key).
SENDERS: dict[str, PublicIdentity] = {}


def peers(root: Path, identities: dict[str, PrivateIdentity]) -> Iterator[Peer]:
    for name, me in identities.items():
        SENDERS[name] = me.public
        home = root / "clients" / name
        home.mkdir(parents=True, exist_ok=True)
        yield Peer(name, me, home)
