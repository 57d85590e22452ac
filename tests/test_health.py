"""`status --server HOST:PORT --health`: no login; exit 0 when the server answers a ping, else an exit code."""

from __future__ import annotations

import json
import signal

import pytest

from tests.serverproc import ServerProc, sc


@pytest.fixture
def srv(tmp_path):
    server = ServerProc(tmp_path / "srv").start()
    yield server
    server.stop(signal.SIGKILL)


def test_a_running_server_is_healthy_without_any_account(srv, tmp_path):
    monitor = tmp_path / "monitor"  # no profile, no identity, no user on the server
    ca = str(srv.home / "tls" / "ca.pem")
    r = sc(monitor, "status", "--server", srv.address, "--ca", ca, "--health")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith(f"ok: {srv.address} answered a ping over TLSv1.3 in ")
    r = sc(monitor, "status", "--server", srv.address, "--ca", ca, "--health", "--json")
    assert json.loads(r.stdout)["status"] == "ok"
    assert "logged in" not in srv.log


def test_on_the_server_host_its_own_ca_is_trusted(srv):
    r = sc(srv.home, "status", "--server", srv.address, "--health")
    assert r.returncode == 0, r.stderr


def test_a_stopped_server_is_exit_7(srv, tmp_path):
    address = srv.address
    srv.stop()
    r = sc(srv.home, "status", "--server", address, "--health")
    assert r.returncode == 7
    assert r.stderr.decode().startswith("securecomm: error: cannot connect to")
    assert b"Traceback" not in r.stderr


def test_an_untrusted_certificate_is_exit_8(srv, tmp_path):
    other = tmp_path / "other"
    assert sc(other, "certgen").returncode == 0  # some other CA
    r = sc(tmp_path / "monitor", "status", "--server", srv.address, "--ca", str(other / "tls" / "ca.pem"),
           "--health")
    assert r.returncode == 8, r.stderr
    assert b"securecomm: error: " in r.stderr and b"Traceback" not in r.stderr


def test_health_without_a_server_or_profile_is_a_usage_error(tmp_path):
    r = sc(tmp_path / "nobody", "status", "--health")
    assert r.returncode == 2 and b"--health needs --server" in r.stderr
