"""`securecomm certgen`: a CA and server certificate that real TLS accepts."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import ssl
import stat
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID


@pytest.fixture
def certs(sc, home):
    result = sc("certgen", "--json", "--host", "chat.example.test", "--host", "10.1.2.3")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def load(path):
    return x509.load_pem_x509_certificate(open(path, "rb").read())


def test_files_and_modes(certs, home):
    tls = home / "tls"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    for name, want in [("ca.pem", 0o644), ("ca.key", 0o600), ("server.pem", 0o644), ("server.key", 0o600)]:
        assert stat.S_IMODE((tls / name).stat().st_mode) == want, name


def test_ca_and_server_extensions(certs):
    ca, server = load(certs["ca_cert"]), load(certs["server_cert"])
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    assert {"localhost", "chat.example.test", socket.gethostname().lower()} <= dns
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address("10.1.2.3")} <= ips
    assert 89 <= (server.not_valid_after_utc - server.not_valid_before_utc).days <= 91
    assert certs["ca_fingerprint"].startswith("SHA256:") and len(certs["ca_fingerprint"]) == 7 + 43


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_verify_accepts_chain(certs):
    out = subprocess.run(["openssl", "verify", "-CAfile", certs["ca_cert"], certs["server_cert"]],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(": OK")


def _contexts(certs):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(certs["server_cert"], certs["server_key"])
    client_ctx = ssl.create_default_context(cafile=certs["ca_cert"])
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
    return server_ctx, client_ctx


def _handshake(server_ctx, client_ctx, hostname):
    """A real TLS handshake over a loopback TCP connection; returns the version."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=hostname) as tls,
        ):
            assert tls.recv(2) == b"ok"
            return tls.version()
    finally:
        t.join(5)
        listener.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_python_ssl_tls13_handshake_with_hostname_check(certs, host):
    assert _handshake(*_contexts(certs), host) == "TLSv1.3"


def test_wrong_hostname_is_rejected(certs):
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(*_contexts(certs), "wrong.example.org")


def test_second_run_reuses_ca(sc, certs):
    result = sc("certgen", "--json", "--force")
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["ca_reused"] is True
    assert again["ca_fingerprint"] == certs["ca_fingerprint"]
    assert again["server_fingerprint"] != certs["server_fingerprint"]


def test_new_ca_needs_force_and_keeps_backup(sc, certs, home):
    assert sc("certgen", "--new-ca").exit_code == 10
    result = sc("certgen", "--new-ca", "--force", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["ca_fingerprint"] != certs["ca_fingerprint"]
    assert (home / "tls" / "ca.key.bak").exists()


def test_out_dir(sc, tmp_path):
    out = tmp_path / "certs"
    result = sc("certgen", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ca.key", "ca.pem", "server.key", "server.pem"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


@pytest.mark.parametrize("args", [["--host", "not a host!"], ["--host", "-bad-.example"], ["--days", "0"],
                                  ["--days", "398"]])
def test_bad_input_writes_nothing(sc, home, args):
    result = sc("certgen", *args)
    assert result.exit_code == 2
    assert "securecomm: error:" in result.output
    assert not (home / "tls" / "ca.pem").exists()
    assert not (home / "tls" / "server.key").exists()


def test_unwritable_out_is_clear_error(sc, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = sc("certgen", "--out", str(blocker / "certs"))
    assert result.exit_code == 4
    assert "securecomm: error: cannot create folder" in result.output
    assert blocker.read_text() == ""
