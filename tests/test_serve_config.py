"""`serve --config FILE` (TOML), `serve --print-config`, and the contrib/ example config and systemd unit."""

from __future__ import annotations

import configparser
import shutil
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from securecomm.cli.main import cli
from securecomm.cli.serve import serve
from securecomm.cli.serveconfig import config_params, hidden, key_line
from securecomm.wire import protocol as P
from securecomm.wire.frames import FrameDecoder
from tests.conftest import ENTRY
from tests.serverproc import ServerProc, frame, tls_socket

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "contrib" / "securecomm.toml"
UNIT = ROOT / "contrib" / "securecomm.service"


def run(home: Path, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), "serve", *args])


def printed(home: Path, *args: str) -> dict:
    result = run(home, *args, "--print-config")
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.stdout)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "securecomm.toml"
    path.write_text(text)
    return path


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("securecomm: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_every_serve_option_has_a_key_derived_from_its_flag():
    keys = config_params(serve)
    flags = {o[2:] for p in serve.params for o in p.opts if o.startswith("--")}
    assert set(keys) == flags - {"config", "print-config", "help"}
    assert keys["max-clients"].name == "max_clients"


def test_the_example_names_every_key_and_loads_as_the_defaults(home):
    text = EXAMPLE.read_text()
    for key in config_params(serve):
        assert key_line(text, key) is not None or f"# {key} =" in text, f"contrib/securecomm.toml lacks {key}"
    assert printed(home, "--config", str(EXAMPLE)) == printed(home)


def test_file_values_apply_and_flags_win(home, tmp_path):
    path = write(tmp_path, 'port = 9000\nmax-clients = 7\nrate = 12.5\nhost = "::1"\n')
    got = printed(home, "--config", str(path))
    assert (got["port"], got["max-clients"], got["rate"], got["host"]) == (9000, 7, 12.5, "::1")
    got = printed(home, "--config", str(path), "--port", "9001", "--max-clients", "1000")
    assert (got["port"], got["max-clients"]) == (9001, 1000)  # even a flag equal to the default wins


def test_durations_take_units_or_seconds(home, tmp_path):
    assert printed(home, "--config", str(write(tmp_path, 'mailbox-ttl = "12h"\n')))["mailbox-ttl"] == 43200.0
    assert printed(home, "--config", str(write(tmp_path, "mailbox-ttl = 90\n")))["mailbox-ttl"] == 90.0
    assert printed(home, "--mailbox-ttl", "0")["mailbox-ttl"] == 0.0
    assert printed(home)["mailbox-ttl"] == 30 * 86400


def test_relative_paths_are_taken_from_the_files_folder(home, tmp_path):
    path = write(tmp_path, 'db = "data/x.db"\n')
    assert printed(home, "--config", str(path))["db"] == str(tmp_path / "data" / "x.db")


def test_printed_config_reads_back_the_same_from_a_relative_config_path(home, tmp_path, monkeypatch):
    """A new user's check: `--print-config > eff.toml` from a relative --config, then --config eff.toml,
    printed db = "cfg/other.db" and then "cfg/cfg/other.db". Printed paths are absolute now."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "ok.toml").write_text('db = "other.db"\n')
    first = run(home, "--config", "cfg/ok.toml", "--print-config")
    assert first.exit_code == 0, first.output
    (tmp_path / "cfg" / "eff.toml").write_text(first.stdout)
    again = run(home, "--config", "cfg/eff.toml", "--print-config")
    assert tomllib.loads(again.stdout)["db"] == tomllib.loads(first.stdout)["db"] == str(tmp_path / "cfg" / "other.db")


@pytest.mark.parametrize(("text", "expected"), [
    ("port = 1\n\nmax-clientz = 5\n", "unknown key 'max-clientz' in {path}, line 3"),
    ("# a comment\nport = 70000\n", "bad value for 'port' in {path}, line 2: 70000 is not in the range"),
    ('port = "7443"\n', "bad value for 'port' in {path}, line 1: expected a number"),
    ("rate = true\n", "bad value for 'rate' in {path}, line 1: expected a number"),
    ("host = 5\n", "bad value for 'host' in {path}, line 1: expected a string"),
    ("lock-after = 0\n", "bad value for 'lock-after' in {path}, line 1"),
    ("[serve]\nport = 1\n", "unknown key 'serve' in {path}, line 1"),
    ('mailbox-ttl = "soon"\n', "bad value for 'mailbox-ttl' in {path}, line 1: 'soon' is not a duration"),
    ("port = \n", "config file {path}: "),
])
def test_bad_files_are_one_error_naming_key_and_line(home, tmp_path, text, expected):
    path = write(tmp_path, text)
    result = run(home, "--config", str(path), "--print-config")
    assert result.exit_code == 2
    assert error_line(result).startswith("securecomm: error: " + expected.format(path=path))


def test_a_toml_syntax_error_names_its_line(home, tmp_path):
    path = write(tmp_path, "port = 1\nhost = = 2\nrate = 1\n")
    result = run(home, "--config", str(path))
    assert result.exit_code == 2 and "line 2" in error_line(result)


def test_a_missing_config_file_is_not_found(home, tmp_path):
    result = run(home, "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 3
    assert "does not exist" in error_line(result)


def test_secrets_are_never_printed():
    assert hidden("db-password", "hunter2") == "(hidden)"
    assert hidden("database-url", "postgresql://relay:hunter2@db.example/securecomm") == \
        "postgresql://relay:(hidden)@db.example/securecomm"
    assert hidden("host", "127.0.0.1") == "127.0.0.1"
    # the attacker's check: a libpq ?password= parameter and a NATS token were printed as they were
    assert hidden("db", "postgresql://u@host/db?sslmode=require&password=SECRETQ") == \
        "postgresql://u@host/db?sslmode=require&password=(hidden)"
    assert hidden("bus", "nats://tok3n@host:4222") == "nats://(hidden)@host:4222"
    assert hidden("bus", "nats://user:pw@host:4222") == "nats://user:(hidden)@host:4222"


def test_messages_and_logs_name_a_url_without_its_secrets():
    from securecomm.store.urls import redact

    assert redact("postgresql://relay:hunter2@db.example/securecomm") == "postgresql://relay@db.example/securecomm"
    assert redact("postgresql://u@h/db?password=SECRETQ&sslpassword=K2") == \
        "postgresql://u@h/db?password=(hidden)&sslpassword=(hidden)"
    assert redact("nats://tok3n@host:4222") == "nats://(hidden)@host:4222"
    assert redact("postgresql://h/db?sslmode=require") == "postgresql://h/db?sslmode=require"
    # the re-check: a name libpq decodes, and a Unix-socket URL that must come back as it was
    assert redact("postgresql://u@h/db?pass%77ord=p4") == "postgresql://u@h/db?pass%77ord=(hidden)"
    assert redact("postgresql:///securecomm?host=/var/run/postgresql") == \
        "postgresql:///securecomm?host=/var/run/postgresql"
    assert hidden("db", "postgresql:///securecomm?host=/run/pg&password=x") == \
        "postgresql:///securecomm?host=/run/pg&password=(hidden)"


def test_print_config_does_not_start_or_create_anything(home):
    printed(home)
    assert not (home / "tls").exists() and not (home / "securecomm.db").exists()


def test_a_real_server_runs_with_the_files_values(tmp_path):
    path = write(tmp_path, 'port = 1\nmax-frame = 65536\n')  # the flag --port 0 of ServerProc wins over 1
    srv = ServerProc(tmp_path / "srv", "--config", str(path)).start()
    try:
        with tls_socket(srv) as sock:
            sock.sendall(frame(P.Hello()))
            dec = FrameDecoder()
            while (f := dec.next_frame()) is None:
                dec.receive_data(sock.recv(65536))
            hello = P.decode_payload(f)
        assert isinstance(hello, P.ServerHello)
        assert hello.max_frame == 65536
    finally:
        srv.stop(signal.SIGKILL)


# -- the systemd unit ---------------------------------------------------------------------
def unit_sections() -> dict[str, dict[str, list[str]]]:
    """The unit as section -> key -> values (keys may repeat in systemd units)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.setdefault(key, []).append(value)
    return sections


def test_the_unit_is_hardened_and_writes_only_the_data_folder():
    service = unit_sections()["Service"]
    assert service["User"] == ["securecomm"]
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes")):
        assert service[key] == [value], key
    assert service["ReadWritePaths"] == ["/var/lib/securecomm"]
    assert "--home /var/lib/securecomm serve --config /etc/securecomm/securecomm.toml" in service["ExecStart"][0]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    configparser.ConfigParser(strict=False, interpolation=None).read_string(UNIT.read_text())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    unit = tmp_path / "securecomm.service"  # systemd wants ExecStart to exist: point it at this install
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/securecomm", str(ENTRY)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "securecomm.service" not in result.stderr, result.stderr  # no warning about our unit


@pytest.mark.parametrize("args", [
    ("--file-days", "1e308"), ("--handshake-timeout", "-1"), ("--rate", "nan"), ("--idle-timeout", "inf"),
    ("--frame-timeout", "0"),
    ("--file-wait", "45"),  # the attacker's check: past the client's 30 s a stalled upload read as a dead server
    # stop 26: inf and nan turned the password lockout off without a word; 1e308 was an internal error
    ("--lock-minutes", "inf"), ("--lock-minutes", "nan"), ("--lock-minutes", "1e308"), ("--lock-minutes", "1e-320"),
])
def test_values_that_would_break_the_server_are_refused_at_start(home, args):
    """An attacker's check: each of these started a server that then crashed on every file_offer, let no
    client log in, or answered an internal error."""
    from tests.conftest import run_entry

    result = run_entry("--home", str(home), "serve", "--port", "0", *args, timeout=30)  # before: it served
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode().startswith(f"securecomm: error: {args[0]} must be"), result.stderr


def test_a_config_path_that_is_not_a_regular_file_is_refused(home, tmp_path):
    """/dev/zero grew the server's memory until it was killed; a FIFO hung the start."""
    result = run(home, "--config", "/dev/zero", "--print-config")
    assert result.exit_code == 2 and "not a regular file" in error_line(result)


@pytest.mark.parametrize("args", [("--idle-timeout", "nan"), ("--max-frame", "0"), ("--file-wait", "45"),
                                  ("--lock-minutes", "inf")])
def test_print_config_refuses_what_serve_would_refuse(home, args):
    """The attacker's check: --print-config printed values that serve then refused, without a word."""
    result = run(home, *args, "--print-config")
    assert result.exit_code == 2, result.output
    assert error_line(result).startswith(f"securecomm: error: {args[0]} must be"), result.stderr
    assert result.stdout == ""
