"""Trusting the server: one fingerprint (the CA's SPKI hash) from certgen to known_servers.

Real server process, real TLS, real homes. The fingerprint certgen prints must
be the one --pin accepts, the prompt shows and known_servers stores, and a
renewed server certificate (certgen --force, same CA) must keep every kind of
client working.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securecomm.crypto import certs
from securecomm.errors import TLSError
from securecomm.net import tls
from tests.conftest import ENTRY, run_entry
from tests.serverproc import PASSWORD, ServerProc, add_user, login

PW = (PASSWORD + "\n").encode()


def certgen(home, *args: str) -> dict:
    r = run_entry("--home", str(home), "certgen", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def srv(tmp_path):
    home = tmp_path / "srv"
    made = certgen(home)
    server = ServerProc(home).start()
    add_user(home, "alice")
    server.fp = made["ca_fingerprint"]
    yield server
    server.stop(signal.SIGKILL)


def pin_login(home, server, pin: str, user: str = "alice"):
    return run_entry("--home", str(home), "user", "login", user, "--server", server.address, "--pin", pin,
                     "--password-stdin", input=PW)


def send(home, text: str):
    return run_entry("--home", str(home), "send", text)


def status(home) -> dict:
    r = run_entry("--home", str(home), "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["tls"]


def leaf_der(server) -> bytes:
    return x509.load_pem_x509_certificate((server.home / "tls" / "server.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER)


def renew(server) -> dict:
    """certgen --force: a new server certificate and key from the same CA, then restart on the same port."""
    server.stop()
    made = certgen(server.home, "--force")
    server.start()
    return made


# -- one fingerprint -------------------------------------------------------------------
def test_certgen_fingerprint_is_the_ca_spki_hash_and_server_pem_is_the_chain(tmp_path):
    made = certgen(tmp_path / "h")
    ca = x509.load_pem_x509_certificate(Path(made["ca_cert"]).read_bytes())
    spki = ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    want = "SHA256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode().rstrip("=")
    assert made["ca_fingerprint"] == want
    chain = x509.load_pem_x509_certificates(Path(made["server_cert"]).read_bytes())
    assert len(chain) == 2 and chain[1] == ca  # leaf first, then the CA that issued it
    assert certs.issued_by(chain[0], ca)


def test_serve_logs_the_fingerprint_certgen_printed(srv):
    assert f"CA fingerprint {srv.fp}" in srv.log


def test_pin_only_login_without_ca(srv, tmp_path):
    home = tmp_path / "pinned"
    r = pin_login(home, srv, srv.fp)
    assert r.returncode == 0, r.stderr
    assert not (home / "tls").exists()  # no CA file anywhere in this home
    line = (home / "known_servers").read_text().split()
    assert line[:2] == [srv.address, srv.fp]
    assert send(home, "pinned").returncode == 0
    report = status(home)
    assert report["trust_anchor"] == srv.fp
    assert report["key_exchange"].startswith("X25519")


def test_wrong_pin_on_first_contact_names_the_ca_fingerprint(srv, tmp_path):
    home = tmp_path / "wrong"
    r = pin_login(home, srv, "SHA256:" + "C" * 43)
    assert r.returncode == 8
    assert srv.fp.encode() in r.stderr
    assert not (home / "known_servers").exists()


def test_old_whole_certificate_hash_of_the_ca_is_still_a_valid_pin(srv, tmp_path):
    """certgen used to print SHA-256 over the CA certificate; such pins keep working."""
    ca_der = ssl.PEM_cert_to_DER_cert((srv.home / "tls" / "ca.pem").read_text())
    r = pin_login(tmp_path / "old", srv, tls.der_fingerprint(ca_der))
    assert r.returncode == 0, r.stderr
    assert srv.fp in (tmp_path / "old" / "known_servers").read_text()
    assert send(tmp_path / "old", "old pin").returncode == 0


# -- renewal keeps every kind of client ------------------------------------------------
def tofu_login_in_tmux(home, server, tmux, user: str) -> str:
    """The interactive first contact, as a person sees it; returns the screen."""
    tmux.start("tofu", f"{ENTRY} --home {home} user login {user} --server {server.address}; echo EXIT-$?; sleep 30")
    screen = tmux.wait_for("tofu", "Trust it and remember it in known_servers?")
    tmux.type("tofu", "y")
    tmux.wait_for("tofu", "password")
    tmux.type("tofu", PASSWORD)
    tmux.wait_for("tofu", "EXIT-0")
    return screen


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_no_at_the_first_use_prompt_is_130_and_saves_nothing(srv, tmp_path):
    """The new-user check: answering no exited 8, where README's table says 'no' at a prompt is 130."""
    from tests.test_chat_tty import Tmux

    add_user(srv.home, "dave")
    home = tmp_path / "dave"
    tmux = Tmux()
    try:
        tmux.start("tofu", f"{ENTRY} --home {home} user login dave --server {srv.address}; echo EXIT-$?; sleep 30")
        tmux.wait_for("tofu", "Trust it and remember it in known_servers?")
        tmux.type("tofu", "n")
        screen = tmux.wait_for("tofu", "EXIT-")
        assert "EXIT-130" in screen and "the server was not trusted; nothing was saved" in screen, screen
        assert not (home / "known_servers").exists() and not (home / "profile.json").exists()
    finally:
        tmux.kill()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_renewal_keeps_pin_tofu_and_ca_clients_working(srv, tmp_path):
    from tests.test_chat_tty import Tmux

    pinned, tofu, with_ca = tmp_path / "pinned", tmp_path / "tofu", tmp_path / "with_ca"
    add_user(srv.home, "bob")
    add_user(srv.home, "carol")
    assert pin_login(pinned, srv, srv.fp).returncode == 0
    assert login(with_ca, srv, "bob").returncode == 0
    tmux = Tmux()
    try:
        screen = tofu_login_in_tmux(tofu, srv, tmux, "carol")
    finally:
        tmux.kill()
    assert f"Its CA fingerprint is {srv.fp}" in screen.replace("\n", "")  # what the operator saw
    assert srv.fp in (tofu / "known_servers").read_text()
    old_leaf = leaf_der(srv)
    made = renew(srv)
    assert made["ca_reused"] and made["ca_fingerprint"] == srv.fp
    assert leaf_der(srv) != old_leaf
    for home in (pinned, tofu, with_ca):
        r = send(home, "after renewal")
        assert r.returncode == 0, (home.name, r.stderr)
    assert status(tofu)["trusted_by"] == "known_servers"


def test_new_ca_is_still_a_hard_failure_for_tofu_clients(srv, tmp_path):
    home = tmp_path / "p"
    assert pin_login(home, srv, srv.fp).returncode == 0
    srv.stop()
    certgen(srv.home, "--new-ca", "--force")
    srv.start()
    r = send(home, "should not go")
    assert r.returncode == 8
    assert b"HAS CHANGED" in r.stderr


# -- known_servers only after a verified connection ------------------------------------
def test_known_servers_written_only_after_the_verified_connection(tmp_path):
    """The user says yes, but the real connection fails (the certificate does not
    name the host): nothing is remembered. Then a good connection is remembered."""
    from securecomm.client.login import connect
    from securecomm.crypto.certfiles import TLSFiles
    from securecomm.files import PRIVATE_MODE, PUBLIC_MODE, write_files
    from securecomm.paths import Paths

    home = tmp_path / "srv"
    fp = certgen(home)["ca_fingerprint"]
    files = TLSFiles.from_paths(Paths.resolve(home))
    ca = certs.load_ca(files.ca_cert.read_bytes(), files.ca_key.read_bytes())
    elsewhere = certs.make_server(ca, ["elsewhere.example"])
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    write_files([(other / "server.pem", elsewhere.cert_pem + ca.cert_pem, PUBLIC_MODE),
                 (other / "server.key", elsewhere.key_pem, PRIVATE_MODE)])
    server = ServerProc(home, "--cert", str(other / "server.pem"), "--key", str(other / "server.key")).start()
    paths = Paths.resolve(tmp_path / "client")
    asked: list[str] = []

    def yes(address: str, shown: str) -> bool:
        asked.append(shown)
        return True

    try:
        with pytest.raises(TLSError, match="not trusted"):
            asyncio.run(connect(paths, f"127.0.0.1:{server.port}", ask=yes))
        assert not paths.known_servers.exists()
        assert asked == [fp]
        server.stop()
        server = ServerProc(home).start()  # the certgen certificate names 127.0.0.1

        async def good() -> None:
            client = await connect(paths, f"127.0.0.1:{server.port}", ask=yes)
            await client.close()

        asyncio.run(good())
        assert paths.known_servers.read_text().split()[:2] == [f"127.0.0.1:{server.port}", fp]
    finally:
        server.stop(signal.SIGKILL)


# -- migrating leaf pins from older versions -------------------------------------------
def write_legacy(home, server, der: bytes, profile_pin: bool) -> str:
    """What an older version left: the server's own certificate in known_servers (and maybe in the profile)."""
    leaf_fp = tls.der_fingerprint(der)
    (home / "known_servers").write_text(f"{server.address} {leaf_fp} {base64.b64encode(der).decode()}\n")
    profile = json.loads((home / "profile.json").read_text())
    profile["pin"] = leaf_fp if profile_pin else None
    (home / "profile.json").write_text(json.dumps(profile))
    return leaf_fp


@pytest.mark.parametrize("kind", ["pin", "tofu"])
def test_legacy_leaf_pin_migrates_to_the_ca_even_after_renewal(srv, tmp_path, kind):
    home = tmp_path / kind
    assert pin_login(home, srv, srv.fp).returncode == 0
    leaf_fp = write_legacy(home, srv, leaf_der(srv), profile_pin=kind == "pin")
    renew(srv)  # the server renewed before this client upgraded: its saved leaf is gone
    r = send(home, "first after upgrade")
    assert r.returncode == 0, r.stderr
    assert b"CHANGED" not in r.stderr
    line = (home / "known_servers").read_text().split()
    assert line[:2] == [srv.address, srv.fp]
    assert leaf_fp not in (home / "known_servers").read_text()
    want_pin = srv.fp if kind == "pin" else None
    assert json.loads((home / "profile.json").read_text())["pin"] == want_pin
    renew(srv)
    r = send(home, "second renewal")
    assert r.returncode == 0, r.stderr


def test_legacy_entry_accepts_the_ca_pin_certgen_prints(srv, tmp_path):
    home = tmp_path / "relogin"
    assert pin_login(home, srv, srv.fp).returncode == 0
    write_legacy(home, srv, leaf_der(srv), profile_pin=True)
    r = pin_login(home, srv, srv.fp)  # the user logs in again, as the docs now say
    assert r.returncode == 0, r.stderr
    assert (home / "known_servers").read_text().split()[:2] == [srv.address, srv.fp]
    assert json.loads((home / "profile.json").read_text())["pin"] == srv.fp
    bad = pin_login(home, srv, "SHA256:" + "D" * 43)
    assert bad.returncode == 8 and b"does not match the CA remembered" in bad.stderr
    assert f"hint: if the operator confirms that CA, log in again with --pin {srv.fp}".encode() in bad.stderr


def test_legacy_leaf_pin_still_works_with_an_older_server_that_sends_no_ca(srv, tmp_path):
    """Clients may upgrade before the server: a leaf-only server keeps the old pin working."""
    home = tmp_path / "early"
    assert pin_login(home, srv, srv.fp).returncode == 0
    pem = (srv.home / "tls" / "server.pem").read_bytes()
    srv.stop()
    (srv.home / "tls" / "server.pem").write_bytes(pem[: pem.index(b"-----END CERTIFICATE-----") + 26])
    (srv.home / "tls" / "ca.pem").rename(srv.home / "ca.pem.elsewhere")  # nothing to complete the chain with
    srv.start()
    assert len(tls.fetch_server_chain("127.0.0.1", srv.port)) == 1
    leaf_fp = write_legacy(home, srv, leaf_der(srv), profile_pin=False)
    r = send(home, "old server, new client")
    assert r.returncode == 0, r.stderr
    assert leaf_fp in (home / "known_servers").read_text()  # kept until the server sends its CA


def test_legacy_leaf_pin_from_another_ca_is_refused(srv, tmp_path):
    home = tmp_path / "victim"
    assert pin_login(home, srv, srv.fp).returncode == 0
    foreign = certgen(tmp_path / "foreign")  # a different CA, e.g. an interceptor's
    foreign_leaf = x509.load_pem_x509_certificate(Path(foreign["server_cert"]).read_bytes())
    write_legacy(home, srv, foreign_leaf.public_bytes(serialization.Encoding.DER), profile_pin=False)
    before = (home / "known_servers").read_text()
    r = send(home, "should not go")
    assert r.returncode == 8
    assert b"HAS CHANGED" in r.stderr
    assert (home / "known_servers").read_text() == before


def test_leaf_only_server_pem_from_older_certgen_is_served_with_its_ca(srv, tmp_path):
    pem = (srv.home / "tls" / "server.pem").read_bytes()
    srv.stop()
    (srv.home / "tls" / "server.pem").write_bytes(pem[: pem.index(b"-----END CERTIFICATE-----") + 26])
    srv.start()
    chain = tls.fetch_server_chain("127.0.0.1", srv.port)
    assert len(chain) == 2 and tls.spki_fingerprint(chain[1]) == srv.fp
    assert pin_login(tmp_path / "c", srv, srv.fp).returncode == 0


# -- the presented chain: one negative test per failure --------------------------------
@pytest.fixture(scope="module")
def pki():
    ca = certs.make_ca("test CA")
    other = certs.make_ca("other CA")
    return ca, other, certs.make_server(ca, ["localhost"])


def test_chain_anchor_finds_the_ca(pki):
    ca, _, leaf = pki
    assert certs.chain_anchor([leaf.cert, ca.cert]) == ca.cert


def test_chain_without_ca_is_refused(pki):
    with pytest.raises(TLSError, match="without the CA"):
        certs.chain_anchor([pki[2].cert])


def test_broken_chain_is_refused(pki):
    _, other, leaf = pki
    with pytest.raises(TLSError, match="broken"):
        certs.chain_anchor([leaf.cert, other.cert])


def test_chain_topped_by_a_non_ca_is_refused(pki):
    _, _, leaf = pki
    fake_top = certs.make_server(certs.Issued(leaf.cert, leaf.key), ["x.example"])  # "signed" by a leaf
    with pytest.raises(TLSError, match="not a CA"):
        certs.chain_anchor([fake_top.cert, leaf.cert])


def test_pin_matches_the_ca_key_not_the_leaf_key(pki):
    ca, _, leaf = pki
    ca_der = ca.cert.public_bytes(serialization.Encoding.DER)
    leaf_der_ = leaf.cert.public_bytes(serialization.Encoding.DER)
    assert tls.pin_matches(certs.fingerprint(ca.cert), ca_der)
    assert tls.pin_matches(tls.der_fingerprint(ca_der), ca_der)  # the older form
    assert not tls.pin_matches(certs.fingerprint(leaf.cert), ca_der)
    assert not tls.pin_matches(tls.der_fingerprint(leaf_der_), ca_der)


# -- key-exchange groups ---------------------------------------------------------------
def s_client(server, *args: str) -> tuple[int, str]:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost",
           "-CAfile", str(server.home / "tls" / "ca.pem"), "-verify_return_error", "-brief", *args]
    r = subprocess.run(cmd, input=b"", capture_output=True, timeout=20, check=False)
    return r.returncode, r.stdout.decode() + r.stderr.decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("group", ["ffdhe2048", "ffdhe8192", "X448", "P-521"])
def test_expensive_or_exotic_groups_are_refused(srv, group):
    code, out = s_client(srv, "-groups", group)
    assert code != 0 and "Protocol version" not in out, out
    srv.wait_log("TLS handshake failed: .*NO_SUITABLE_KEY_SHARE")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_default_openssl_and_python_clients_connect(srv):
    code, out = s_client(srv)
    assert code == 0, out
    assert "Protocol version: TLSv1.3" in out and "Verification: OK" in out, out
    assert "X25519" in out  # the negotiated group ("Server Temp Key: X25519")
    ctx = ssl.create_default_context(cafile=str(srv.home / "tls" / "ca.pem"))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        assert conn.version() == "TLSv1.3"


def _one_tls_server(made: dict, curve: str | None) -> tuple[int, threading.Thread]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(made["server_cert"], made["server_key"])
    if curve:
        ctx.set_ecdh_curve(curve)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as t:
                t.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize(("curve", "ok"), [(None, True), ("prime256v1", False), ("secp384r1", False)])
def test_client_offers_x25519_only(tmp_path, curve, ok):
    made = certgen(tmp_path / "h")
    port, thread = _one_tls_server(made, curve)
    ctx = tls.client_context(Path(made["ca_cert"]).read_bytes())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            if ok:
                with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                    assert conn.recv(2) == b"ok"
            else:
                with pytest.raises(ssl.SSLError):
                    ctx.wrap_socket(raw, server_hostname="localhost")
    finally:
        thread.join(10)
