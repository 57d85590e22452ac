"""SIGHUP reloads the certificate and key: new connections get the new one, open ones carry on."""

from __future__ import annotations

import asyncio
import re
import signal

import pytest

from securecomm.cli.context import State
from securecomm.client.login import connect_profile
from securecomm.crypto import envelope
from securecomm.crypto import identity as ident
from tests.serverproc import ServerProc, sc, users_logged_in


@pytest.fixture
def served(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice",))
    yield srv, homes["alice"]
    srv.stop(signal.SIGKILL)


def hup_and_wait(srv: ServerProc, pattern: str) -> None:
    seen = len(srv.log_lines)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_log(pattern)
    assert seen < len(srv.log_lines)


async def connected_certificate(home) -> bytes:
    state = State(home=str(home))
    client, _ = await connect_profile(state.paths, ident.load(state.paths.identity_key("default")))
    async with client:
        return client.peer_certificate()


def test_sighup_after_certgen_force_serves_the_new_certificate_and_keeps_old_connections(served):
    srv, alice = served
    state = State(home=str(alice))
    me = ident.load(state.paths.identity_key("default"))
    server_id = ident.PublicIdentity.from_line((srv.home / "server" / "identity.pub").read_text().strip())

    async def main() -> tuple[bytes, bytes, bytes]:
        old_client, _ = await connect_profile(state.paths, me)
        async with old_client:
            old_cert = old_client.peer_certificate()
            renewed = await asyncio.to_thread(sc, srv.home, "certgen", "--force")
            assert renewed.returncode == 0, renewed.stderr
            await asyncio.to_thread(hup_and_wait, srv, r"certificate reloaded from \S+: new connections get leaf "
                                    r"SHA256:\S+, CA SHA256:")
            # the operator compares the log with what certgen printed (and `status` / --pin use): the CA's
            # SPKI fingerprint, named as such (before: only the leaf's, under the same word)
            printed = re.search(r"^fingerprint\s+(SHA256:\S+)", renewed.stdout.decode(), re.M)
            assert printed, renewed.stdout
            assert f"CA {printed.group(1)} (the fingerprint clients pin)" in srv.log, srv.log
            new_cert = await connected_certificate(alice)
            # the connection made before the reload still works, on its old certificate
            receipt = await old_client.submit(envelope.seal(b"after the reload", me, server_id))
            assert receipt.msg_id
            return old_cert, new_cert, old_client.peer_certificate()

    old_cert, new_cert, still = asyncio.run(main())
    assert new_cert != old_cert
    assert still == old_cert
    assert "server.certificate_reloaded" in srv.log
    assert srv.proc is not None and srv.proc.poll() is None


def test_a_broken_pair_is_refused_whole_and_the_old_certificate_stays(served):
    srv, alice = served
    before = asyncio.run(connected_certificate(alice))
    key = srv.home / "tls" / "server.key"
    other = sc(srv.home, "certgen", "--force", "--out", str(srv.home / "other"))
    assert other.returncode == 0, other.stderr
    key.write_bytes((srv.home / "other" / "server.key").read_bytes())  # a key that does not match server.pem
    hup_and_wait(srv, r"certificate reload failed, still serving the old one: ")
    assert asyncio.run(connected_certificate(alice)) == before
    assert srv.proc is not None and srv.proc.poll() is None
