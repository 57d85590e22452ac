"""Operator, cluster and install defects an outside check found (findings/newuser2.md, "Operator, cluster and
install"): each test drives the real part (real relays, real PostgreSQL and nats-server from tests/cluster.py,
the installed entry point) and fails on the code before its fix."""

from __future__ import annotations

import multiprocessing
import re
import signal
import threading
from pathlib import Path

import pytest

from securecomm.paths import Paths
from securecomm.store.postgres import PostgresStore
from tests.serverproc import ServerProc, add_user, login, sc


# -- item 5: two relays started together on one --home make one server identity --------------------------------
def _first_run(home: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:
    from securecomm.server.setup import server_identity

    barrier.wait()  # every process looks for the identity at the same moment, as relays started with `&` do
    out.put(server_identity(Paths.resolve(home)).public.fingerprint_text)


def test_relays_racing_on_a_fresh_home_agree_on_one_identity(tmp_path):
    """The race itself, made certain: four processes released together each look for the identity and
    find none; exactly one creates it, the others load the winner's key, nothing is moved aside to .bak."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_first_run, args=(str(tmp_path), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seen = {out.get(timeout=10) for _ in procs}
    from securecomm.crypto import identity as ident

    on_disk = ident.load(tmp_path / "server" / "identity.key").public
    assert seen == {on_disk.fingerprint_text}
    assert ident.load_public(tmp_path / "server" / "identity.pub").line == on_disk.line
    assert sorted(p.name for p in (tmp_path / "server").iterdir() if not p.name.startswith(".")) == \
        ["identity.key", "identity.pub"]


def _start_together(relays: list[ServerProc]) -> None:
    errors: list[BaseException] = []

    def start(relay: ServerProc) -> None:
        try:
            relay.start()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _identity_of(relay: ServerProc) -> str:
    return re.search(r"server identity (\S+)", relay.wait_log(r"server identity \S+ \(")).group(1)


def test_two_relays_started_at_once_share_one_identity_and_mail_to_the_server_opens_on_either(tmp_path, pg_url):
    """README's commands: certgen, then two `serve --db URL` lines back to back on one --home."""
    PostgresStore(pg_url, migrate=True).close()
    home = tmp_path / "srv"
    assert sc(home, "certgen").returncode == 0
    one, two = ServerProc(home, "--db", pg_url), ServerProc(home, "--db", pg_url)
    _start_together([one, two])
    try:
        assert _identity_of(one) == _identity_of(two)
        created = [r for r in (one, two) if "first run: created the server identity" in r.log]
        assert len(created) == 1, one.log + two.log
        add_user(home, "alice", "--db", pg_url)
        alice = tmp_path / "alice"
        assert login(alice, one, "alice").returncode == 0
        sent = sc(alice, "send", "sealed to the server through relay one")
        assert sent.returncode == 0, sent.stderr
    finally:
        one.stop(signal.SIGKILL)
        two.stop()
    two.start()  # relay two again, after a restart: the same key, and what relay one stored opens with it
    try:
        assert "first run: created the server identity" not in two.log
        from securecomm.crypto import envelope
        from securecomm.crypto import identity as ident

        key = ident.load(home / "server" / "identity.key")
        assert _identity_of(two) == key.public.fingerprint_text
        import psycopg

        with psycopg.connect(pg_url) as con:
            (raw,) = con.execute("SELECT envelope FROM messages").fetchone()
        sender = ident.load(alice / "identities" / "default.key").public
        assert envelope.open_envelope(bytes(raw), key, sender).body == b"sealed to the server through relay one"
        # and alice, who pinned the identity through relay one, sends through relay two without a warning
        again = sc(alice, "send", "--server", two.address, "and through relay two")
        assert again.returncode == 0 and b"CHANGED" not in again.stderr, again.stderr
    finally:
        two.stop()


@pytest.fixture(autouse=True)
def _no_leftover_env(monkeypatch):
    monkeypatch.delenv("SECURECOMM_HOME", raising=False)


# -- item 14: PostgreSQL refusing the password is an authentication failure, not "cannot reach" ------------------
PG_USER, PG_PASSWORD = "pwuser", "right-password-4"


@pytest.fixture(scope="module")
def password_role(pg_server):
    """A role that must give a password over TCP (scram), on the shared private instance: a pg_hba.conf line
    for that role alone, before the `trust` ones, so that no other test changes."""
    import psycopg

    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        con.execute(f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'")  # test constants, no outside input
        con.execute(f"CREATE DATABASE {PG_USER} OWNER {PG_USER}")
        con.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # PostgreSQL 15's default, on older ones too
    hba = pg_server.data / "pg_hba.conf"
    pg_server._run("sh", "-c", f"{{ echo 'host all {PG_USER} 127.0.0.1/32 scram-sha-256'; cat {hba}; }} > {hba}.new "
                               f"&& mv {hba}.new {hba}")
    pg_server._run(pg_server.bin_dir / "pg_ctl", "-D", str(pg_server.data), "reload")
    return pg_server


def _pg_env(tmp_path: Path) -> dict[str, str]:
    return {"PGPASSFILE": str(tmp_path / "no-pgpass"), "PGPASSWORD": ""}


@pytest.mark.parametrize("password", ["wrong-password", None])
def test_postgresql_refusing_the_password_exits_5_with_a_password_hint(tmp_path, password_role, password):
    from tests.conftest import run_entry

    cred = f"{PG_USER}:{password}" if password else PG_USER
    url = f"postgresql://{cred}@127.0.0.1:{password_role.port}/postgres"
    for argv in (("db", "migrate", "--db", url), ("serve", "--port", "0", "--db", url)):
        r = run_entry("--home", str(tmp_path / "srv"), *argv, env=_pg_env(tmp_path))
        err = r.stderr.decode()
        assert r.returncode == 5, err
        lines = err.splitlines()
        assert lines[-2].startswith(f"securecomm: error: PostgreSQL refused the login of user '{PG_USER}' at "
                                    f"postgresql://{PG_USER}@127.0.0.1:{password_role.port}/postgres"), err
        assert lines[-1].startswith("securecomm: hint: ") and "PGPASSWORD" in lines[-1] and "~/.pgpass" in lines[-1]
        assert "cannot reach" not in err and "wrong-password" not in err
    # and the right password (from PGPASSWORD, as the hint says) gets in
    ok = run_entry("db", "migrate", "--db", f"postgresql://{PG_USER}@127.0.0.1:{password_role.port}/{PG_USER}",
                   env={**_pg_env(tmp_path), "PGPASSWORD": PG_PASSWORD})
    assert ok.returncode == 0, ok.stderr


# -- item 13: every --db URL and --bus entry point without the cluster extra: exit 2 naming it --------------------
#: The installed CLI as it runs where `pip install .` left out the cluster extra: its drivers are not importable.
WITHOUT_EXTRA = ("import sys; sys.modules.update(psycopg=None, psycopg_pool=None, nats=None); "
                 "from securecomm.cli.main import main; main(sys.argv[1:])")
URL = "postgresql://securecomm@127.0.0.1:9/securecomm"


@pytest.mark.parametrize("argv", [
    ("db", "migrate", "--db", URL),
    ("db", "copy", "--from", "{home}/securecomm.db", "--to", URL),
    ("serve", "--port", "0", "--db", URL),
    ("serve", "--port", "0", "--bus", "nats://127.0.0.1:9"),
    ("user", "add", "alice", "--password-stdin", "--db", URL),
    ("user", "list", "--db", URL),
    ("user", "passwd", "alice", "--password-stdin", "--db", URL),
    ("user", "remove", "alice", "--yes", "--db", URL),
], ids=lambda a: " ".join(a[:2]) + (" --bus" if "--bus" in a else ""))
def test_without_the_cluster_extra_every_url_entry_point_names_it(tmp_path, argv):
    import subprocess
    import sys

    home = tmp_path / "h"
    home.mkdir()
    (home / "securecomm.db").write_bytes(b"")
    r = subprocess.run([sys.executable, "-c", WITHOUT_EXTRA, "--home", str(home),
                        *(a.format(home=home) for a in argv)],
                       input=b"a long enough password\n", capture_output=True, timeout=60, check=False)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.splitlines()[0].startswith("securecomm: error: "), err
    assert "needs the cluster extra" in err and "pip install 'securecomm[cluster]'" in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert not (home / "tls").exists() and not (home / "server").exists()  # refused before a first run made keys


# -- item 18: backup / restore with a PostgreSQL --db say that pg_dump backs it up -------------------------------
@pytest.mark.parametrize("command", ["backup", "restore"])
def test_backup_of_a_postgresql_url_points_at_pg_dump(tmp_path, command):
    r = sc(tmp_path / "h", command, str(tmp_path / "b.db"), "--db", "postgresql://securecomm:s3cret@db.example/sc")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.splitlines() == [
        f"securecomm: error: {command} is for a SQLite database; postgresql://securecomm@db.example/sc is "
        "PostgreSQL, whose backups are pg_dump's job",
        "securecomm: hint: pg_dump --format=custom --file FILE URL, and pg_restore to put one back "
        "(README, \"Operating a server\": Backups)"]
    assert not (tmp_path / "b.db").exists()


# -- item 15: one fingerprint kind for the server certificate: status, certgen and the SIGHUP log agree -----------
def test_status_certgen_and_the_reload_log_show_one_fingerprint_of_the_server_certificate(tmp_path):
    import json

    from securecomm.crypto.certs import fingerprint, load_cert

    srv = ServerProc(tmp_path / "srv")
    made = sc(srv.home, "certgen", "--json")
    assert made.returncode == 0, made.stderr
    printed = json.loads(made.stdout)["server_fingerprint"]
    srv.start()
    try:
        add_user(srv.home, "alice")
        alice = tmp_path / "alice"
        assert login(alice, srv, "alice").returncode == 0
        status = sc(alice, "status", "--json")
        assert status.returncode == 0, status.stderr
        tls_part = json.loads(status.stdout)["tls"]
        leaf = fingerprint(load_cert((srv.home / "tls" / "server.pem").read_bytes()))
        assert tls_part["server_certificate"] == leaf == printed
        assert "public key (SPKI)" in tls_part["fingerprints"]
        text = sc(alice, "status").stdout.decode()
        assert re.search(rf"^tls\.server_certificate\s+{re.escape(leaf)}$", text, re.M), text
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_log(r"certificate reloaded from")
        assert f"new connections get leaf {leaf}," in srv.log, srv.log
    finally:
        srv.stop()


# -- item 17: --print-config says what an unset --metrics and --bus mean --------------------------------------
def test_print_config_labels_unset_metrics_as_off_and_bus_as_in_process(tmp_path):
    r = sc(tmp_path / "h", "serve", "--print-config")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert "# metrics = (unset: off, no metrics endpoint)" in lines
    assert "# bus = (unset: in-process, this relay alone)" in lines
    assert "# db = (unset: securecomm.db in the data folder)" in lines
    assert not any("default location" in line for line in lines)


# -- item 19: `paths` shows every file README's "Where files live" table lists --------------------------------
def test_paths_lists_every_file_in_the_readme_table(tmp_path):
    import json

    from securecomm.client.files import notices_dir

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Where files live", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    files = [n for row in rows for n in re.findall(r"`([\w./-]+)`", row) if re.search(r"[./_]", n)]
    names = {n.split("/NAME")[0].rstrip("/") for n in files}
    r = sc(tmp_path, "paths", "--json")
    assert r.returncode == 0, r.stderr
    shown = {str(Path(p).relative_to(tmp_path)) for p in json.loads(r.stdout).values() if p != str(tmp_path)}
    assert names - shown == set(), f"README lists these, `paths` does not: {names - shown}"
    assert notices_dir(Paths.resolve(tmp_path)) == Paths.resolve(tmp_path).received_dir  # the same folder


# -- item 21: NATS unreachable at start: WARNING lines naming the URL, then exit 7 ------------------------------
def test_nats_unreachable_at_start_warns_naming_the_url_then_exits_7(tmp_path):
    from tests.cluster import free_port

    port = free_port()
    r = sc(tmp_path / "h", "serve", "--port", "0", "--bus", f"nats://relay:s3cret@127.0.0.1:{port}")
    err = r.stderr.decode()
    assert r.returncode == 7, err
    warnings = [line for line in err.splitlines() if " WARNING bus.connect_failed " in line]
    assert warnings and all(f"cannot connect to nats://127.0.0.1:{port}: " in line for line in warnings), err
    assert " INFO bus.log " not in err
    assert err.splitlines()[-2].startswith(f"securecomm: error: cannot reach the bus at nats://127.0.0.1:{port} "
                                           "within 4 s: "), err
    assert "s3cret" not in err and "relay:" not in err


def test_migrate_by_a_user_who_may_not_create_tables_exits_4_saying_who_may(tmp_path, password_role):
    """Found with item 14: the right password into a database the user does not own was an internal error."""
    from tests.conftest import run_entry

    r = run_entry("db", "migrate", "--db", f"postgresql://{PG_USER}@127.0.0.1:{password_role.port}/postgres",
                  env={**_pg_env(tmp_path), "PGPASSWORD": PG_PASSWORD})
    err = r.stderr.decode()
    assert r.returncode == 4, err
    assert err.startswith(f"securecomm: error: PostgreSQL user '{PG_USER}' may not change the schema at "), err
    assert "createdb -O USER" in err.splitlines()[-1] and "internal error" not in err
