"""Post-quantum TLS on the real server and client (issue 14): `serve`, `status`, `--require-pq`, `--tls stdlib`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_entry
from tests.serverproc import PASSWORD, ServerProc, add_user, login


class VerboseServer(ServerProc):
    options = ("-v",)  # the debug line that names each connection's TLS group


def _started(home: Path, *extra: str) -> ServerProc:
    srv = VerboseServer(home, "--handshake-timeout", "5", *extra).start()
    add_user(srv.home, "alice")
    return srv


@pytest.fixture
def pq_server(tmp_path: Path) -> Iterator[ServerProc]:
    srv = _started(tmp_path / "server")
    yield srv
    srv.stop(signal.SIGKILL)


def _status(home: Path) -> dict:
    r = run_entry("--home", str(home), "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_both_ends_negotiate_x25519mlkem768_by_default(tmp_path: Path, pq_server: ServerProc) -> None:
    assert login(tmp_path / "alice", pq_server, "alice").returncode == 0
    report = _status(tmp_path / "alice")
    assert report["tls"]["key_exchange"] == "X25519MLKEM768"  # the client's end
    assert report["tls"]["post_quantum"] is True
    assert report["tls"]["note"] == "TLS: post-quantum (X25519MLKEM768)"
    assert report["summary"] == "both layers post-quantum"
    pq_server.wait_log(r"connected, TLS group X25519MLKEM768")  # the server's end
    assert "key exchange X25519MLKEM768:X25519:P-256:P-384" in pq_server.log


def test_status_prints_the_post_quantum_line(tmp_path: Path, pq_server: ServerProc) -> None:
    assert login(tmp_path / "alice", pq_server, "alice").returncode == 0
    r = run_entry("--home", str(tmp_path / "alice"), "status")
    assert r.returncode == 0, r.stderr
    assert "TLS: post-quantum (X25519MLKEM768)" in r.stdout.decode()


def _s_client(srv: ServerProc, *args: str) -> tuple[int, str]:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}", "-servername", "localhost",
           "-CAfile", str(srv.home / "tls" / "ca.pem"), "-verify_return_error", "-brief", *args]
    r = subprocess.run(cmd, input=b"", capture_output=True, timeout=20, check=False)
    return r.returncode, r.stdout.decode() + r.stderr.decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_require_pq_refuses_classical_clients_and_serves_pq_ones(tmp_path: Path) -> None:
    srv = _started(tmp_path / "server", "--require-pq")
    try:
        code, out = _s_client(srv)  # system OpenSSL 3.0: classical groups only
        assert code != 0, out
        srv.wait_log(r"TLS handshake failed")
        assert "(post-quantum required)" in srv.log
        # first contact with --pin: the chain probe must get through a PQ-only server too
        fp = srv.wait_log(r"CA fingerprint SHA256:[A-Za-z0-9+/]+").split()[-1]
        r = run_entry("--home", str(tmp_path / "alice"), "user", "login", "alice", "--server", srv.address,
                      "--pin", fp, "--password-stdin", input=(PASSWORD + "\n").encode())
        assert r.returncode == 0, r.stderr
        assert _status(tmp_path / "alice")["tls"]["key_exchange"] == "X25519MLKEM768"
    finally:
        srv.stop(signal.SIGKILL)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_without_require_pq_a_classical_client_still_connects(pq_server: ServerProc) -> None:
    code, out = _s_client(pq_server)
    assert code == 0, out
    assert "Verification: OK" in out and "X25519" in out, out


def test_tls_stdlib_keeps_the_old_transport_and_status_says_it_is_classical(tmp_path: Path) -> None:
    srv = _started(tmp_path / "server", "--tls", "stdlib")
    try:
        assert "NOT post-quantum" in srv.log
        assert login(tmp_path / "alice", srv, "alice").returncode == 0
        report = _status(tmp_path / "alice")
        assert report["tls"]["post_quantum"] is False
        assert report["tls"]["key_exchange"].lower() == "x25519"
        assert report["tls"]["note"].startswith("TLS: not post-quantum")
    finally:
        srv.stop(signal.SIGKILL)


def test_require_pq_with_tls_stdlib_is_a_usage_error(tmp_path: Path) -> None:
    r = run_entry("--home", str(tmp_path), "serve", "--port", "0", "--tls", "stdlib", "--require-pq")
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.startswith("securecomm: error: --require-pq needs --tls pq") and "Traceback" not in err
