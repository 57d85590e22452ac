"""First-run correctness and error messages: one grammar, documented exit codes, clear hints."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from securecomm.cli.main import cli
from tests.conftest import ENTRY
from tests.test_cli import _all_commands


def _lines(result) -> list[str]:
    return result.stderr.strip().splitlines()


@pytest.mark.parametrize(("args", "error", "hint"), [
    (["sned", "hi"], "no such command 'sned'", "did you mean 'send'?"),
    (["user", "ad", "bob"], "no such command 'ad'", "did you mean 'add'?"),
    (["contacts", "trus", "bob"], "no such command 'trus'", "did you mean 'trust'?"),
    (["keygen", "--nmae", "x"], "no such option '--nmae'", "did you mean '--name'?"),
    (["--bogus-flag", "paths"], "no such option '--bogus-flag'", None),
    (["send"], "missing argument 'MESSAGE'", "see: securecomm send --help"),
    (["user", "add"], "missing argument 'NAME'", "see: securecomm user add --help"),
    (["keygen", "--kem", "rsa"], "invalid value for '--kem': 'rsa' is not one of", "see: securecomm keygen --help"),
    (["decrypt", "--from"], "option '--from' requires an argument", None),
])
def test_click_usage_errors_use_the_project_grammar(runner, home, args, error, hint):
    result = runner.invoke(cli, ["--home", str(home), *args], prog_name="securecomm")
    assert result.exit_code == 2, result.output
    lines = _lines(result)
    assert lines[0].startswith(f"securecomm: error: {error}"), lines
    assert not lines[0].endswith(".")
    assert "Usage:" not in result.stderr and "Error:" not in result.stderr
    if hint is not None:
        assert lines[1] == f"securecomm: hint: {hint}", lines
    assert len(lines) <= 2


def test_group_without_subcommand_still_shows_help(runner):
    result = runner.invoke(cli, ["user"])
    assert "Commands:" in result.output
    assert "securecomm: error" not in result.output


def test_completion_into_a_closed_pipe_is_not_an_internal_error():
    # `securecomm completion bash | true`: the reader is gone before we write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([ENTRY, "completion", "bash"], stdout=write_end, stderr=subprocess.PIPE,
                              timeout=60, check=False)
    finally:
        os.close(write_end)
    assert b"internal error" not in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert proc.returncode == 1  # Click's quiet exit for a broken pipe, not a crash


# -- issue 10 item 8: serve on a port in use ------------------------------------------------
def test_serve_on_a_port_in_use_says_so(home):
    import socket

    from tests.conftest import run_entry

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_entry("--home", str(home), "serve", "--port", str(port))
    err = result.stderr.decode()
    assert result.returncode == 7, err
    assert f"securecomm: error: cannot listen on 127.0.0.1:{port}: the address is already in use" in err
    assert "securecomm: hint:" in err and "--port" in err
    assert "internal error" not in err and "Traceback" not in err


# -- issue 10 item 9: a wrong --home must not quietly make an empty database ----------------
PASSWORD = "correct horse battery\n"


def test_user_list_on_a_missing_database_names_the_path(sc, home):
    result = sc("user", "list")
    db = home / "securecomm.db"
    assert result.exit_code == 3
    assert f"securecomm: error: no database at {db}" in result.stderr
    assert "--home" in result.stderr  # the hint names the likely mistake
    assert not db.exists()


@pytest.mark.parametrize("command", [["passwd", "bob", "--password-stdin"], ["remove", "bob", "--yes"]])
def test_other_user_commands_do_not_create_a_database(sc, home, command):
    result = sc("user", *command, input=PASSWORD)
    assert result.exit_code == 3
    assert "no database at" in result.stderr
    assert not (home / "securecomm.db").exists()


def test_user_add_says_it_created_a_database_and_where_it_wrote(sc, home):
    db = home / "securecomm.db"
    first = sc("user", "add", "bob", "--password-stdin", input=PASSWORD)
    assert first.exit_code == 0, first.stderr
    assert f"securecomm: created a new database at {db}" in first.stderr
    assert f"created user bob in {db}" in first.stderr
    second = sc("user", "add", "carol", "--password-stdin", input=PASSWORD)
    assert second.exit_code == 0
    assert "created a new database" not in second.stderr
    assert f"created user carol in {db}" in second.stderr


def test_serve_says_it_created_a_new_database(home):
    from tests.serverproc import ServerProc

    server = ServerProc(home).start()
    try:
        assert f"created a new database at {home / 'securecomm.db'}" in server.log
    finally:
        server.stop()
    again = ServerProc(home).start()
    try:
        assert "created a new database" not in again.log
    finally:
        again.stop()


# -- issue 10 item 13: the smaller ones ------------------------------------------------------
def test_short_help_is_the_whole_first_sentence():
    # `user --help` once listed "add  Create account NAME (1-32 of a-z 0-9 _ ." (cut at ". ").
    import inspect

    for name, cmd in _all_commands():
        first = " ".join(inspect.cleandoc(cmd.help).split("\n\n")[0].split())
        assert cmd.get_short_help_str(limit=1000) == first, name


@pytest.fixture
def keys(tmp_path):
    from tests.conftest import run_entry

    alice, bob, carol = (tmp_path / n for n in ("alice", "bob", "carol"))
    for h in (alice, bob, carol):
        assert run_entry("--home", str(h), "keygen", "--kem", "x25519").returncode == 0
    return alice, bob, carol


def test_decrypt_of_a_text_file_says_it_is_not_an_envelope(keys, tmp_path):
    from tests.conftest import run_entry

    _, bob, _ = keys
    text = tmp_path / "notes.txt"
    text.write_text("just some notes\n")
    result = run_entry("--home", str(bob), "decrypt", str(text))
    err = result.stderr.decode()
    assert result.returncode == 6
    assert err.startswith("securecomm: error: input is not a securecomm envelope\n")
    assert "truncated" not in err
    assert "securecomm: hint: decrypt reads what `securecomm encrypt` wrote" in err


@pytest.mark.parametrize("data", [b"hello", b"x" * 500, b"-----BEGIN PGP MESSAGE-----\n"])
def test_envelope_parse_names_non_envelopes(data):
    from securecomm.crypto import envelope
    from securecomm.errors import NotAnEnvelopeError, TruncatedError

    with pytest.raises(NotAnEnvelopeError):
        envelope.parse(data)
    with pytest.raises(TruncatedError):  # a cut-short real envelope is still "truncated"
        envelope.parse(envelope.MAGIC + b"\x01")


def test_decrypt_from_the_wrong_sender_does_not_suggest_from(keys):
    from tests.conftest import run_entry

    alice, bob, carol = keys
    sealed = run_entry("--home", str(alice), "encrypt", "-r", str(bob / "identities" / "default.pub"), "-",
                       input=b"hi")
    assert sealed.returncode == 0, sealed.stderr
    result = run_entry("--home", str(bob), "decrypt", "--from", str(carol / "identities" / "default.pub"), "-",
                       input=sealed.stdout)
    err = result.stderr.decode()
    assert result.returncode == 6  # a verification failure (README exit-code table), as a bad signature; was 5
    assert "securecomm: error: the envelope was not sent by the identity given with --from" in err
    assert "pass the sender's identity with --from" not in err
    without = run_entry("--home", str(bob), "decrypt", "-", input=sealed.stdout)  # no --from: then suggest it
    assert "securecomm: hint: pass the sender's identity with --from" in without.stderr.decode()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # bound but never listening, then closed: connections are refused


def test_login_to_a_stopped_server_hints_and_keeps_no_identity(home):
    from tests.conftest import run_entry

    result = run_entry("--home", str(home), "user", "login", "alice", "--server", f"127.0.0.1:{_closed_port()}",
                       "--password-stdin", input=b"correct horse battery\n")
    err = result.stderr.decode()
    assert result.returncode == 7, err
    assert "securecomm: hint: is `securecomm serve` running there?" in err
    assert "created identity" not in err
    assert not (home / "identities" / "default.key").exists()


def test_failed_login_keeps_no_new_identity_but_a_good_one_does(tmp_path):
    from tests.serverproc import ServerProc, add_user, login

    server_home, client = tmp_path / "server", tmp_path / "client"
    server = ServerProc(server_home).start()
    try:
        add_user(server_home, "alice")
        bad = login(client, server, "alice", "wrong password entirely")
        assert bad.returncode == 5, bad.stderr
        assert not (client / "identities" / "default.key").exists()
        good = login(client, server, "alice")
        assert good.returncode == 0, good.stderr
        assert b"created identity 'default'" in good.stderr
        assert (client / "identities" / "default.key").exists()
        status = run_status(client)
        assert "False" not in status and "True" not in status and "None" not in status
        assert any(line.split()[:2] in (["tls.post_quantum", "yes"], ["tls.post_quantum", "no"])
                   for line in status.splitlines()), status
    finally:
        server.stop()


def run_status(client: Path) -> str:
    from tests.conftest import run_entry

    result = run_entry("--home", str(client), "status")
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_readme_completion_install_lines_work(tmp_path):
    import re
    import shutil

    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    lines = [m.group(1) for m in re.finditer(r"^    (.*bash-completion/completions.*)$", readme, re.M)]
    assert lines and lines[0].startswith("mkdir -p "), lines
    assert "`bash-completion` package" in readme
    env = {**os.environ, "HOME": str(tmp_path), "PATH": str(Path(ENTRY).parent) + os.pathsep + os.environ["PATH"]}
    subprocess.run(["bash", "--norc", "-euc", "\n".join(lines)], env=env, check=True, timeout=60)
    installed = tmp_path / ".local/share/bash-completion/completions/securecomm"
    assert "_securecomm_completion" in installed.read_text()


# -- issue 9 item 14: identity names are plain names inside the home -------------------------
@pytest.mark.parametrize("bad", ["../outside", "../../etc/x", "/abs/path", ".hidden", "a/b", "Upper"])
@pytest.mark.parametrize("command", [
    ["keygen", "--name"],
    ["encrypt", "-r", "securecomm:1:x", "--name"],
    ["decrypt", "--name"],
    ["user", "login", "alice", "--server", "127.0.0.1:1", "--password-stdin", "--identity"],
])
def test_identity_names_cannot_leave_the_home(sc, home, tmp_path, command, bad):
    if command[0] == "encrypt":  # a real recipient, so that only the name can fail
        assert sc("keygen", "--name", "bob", "--kem", "x25519").exit_code == 0
        command = ["encrypt", "-r", str(home / "identities" / "bob.pub"), "--name"]
    before = sorted(p for p in tmp_path.rglob("*"))
    result = sc(*command, bad, input=b"password\n")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"securecomm: error: identity name {bad!r} must be"), result.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_a_tampered_profile_cannot_point_outside_the_home(sc, home, tmp_path):
    import json

    (tmp_path / "elsewhere.key").write_text("not yours")
    (home / "profile.json").write_text(json.dumps({"server": "localhost:1", "user": "alice",
                                                   "identity": "../elsewhere"}))
    result = sc("send", "hi")
    assert result.exit_code == 2
    assert "securecomm: error: identity name '../elsewhere' must be" in result.stderr


@pytest.mark.parametrize("words", [name.split() for name, _ in _all_commands()], ids=" ".join)
def test_every_command_reports_a_bad_option_in_the_grammar(runner, home, words):
    result = runner.invoke(cli, ["--home", str(home), *words, "--no-such-option"], prog_name="securecomm")
    assert result.exit_code == 2
    assert result.stderr.startswith("securecomm: error: no such option '--no-such-option'\n"), result.stderr


# -- found by a new user following README (second outside check) -----------------------------
def test_bare_securecomm_prints_help_not_an_error(runner):
    result = runner.invoke(cli, [], prog_name="securecomm")
    assert "Commands:" in result.output
    assert "securecomm: error" not in result.output


def test_global_option_after_the_command_says_where_it_goes(runner, home):
    result = runner.invoke(cli, ["send", "--home", str(home), "hi"], prog_name="securecomm")
    assert result.exit_code == 2
    assert _lines(result) == ["securecomm: error: no such option '--home'",
                              "securecomm: hint: --home is a global option: put it before the command, "
                              "as in: securecomm --home ... send ..."]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize(("command", "prompt", "keys"), [
    ("user remove carol", "remove user carol?", "n"),
    ("user add dave", "password", "C-c"),
    ("user add erin", "password", "C-d"),
])
def test_no_or_ctrl_c_at_a_prompt_is_interrupted_not_aborted(sc, home, command, prompt, keys):
    """Click's bare 'Aborted!' with exit 1 broke the grammar and the exit-code table."""
    from tests.test_chat_tty import Tmux

    assert sc("user", "add", "carol", "--password-stdin", input=PASSWORD).exit_code == 0
    tmux = Tmux()
    try:
        tmux.start("p", f"{ENTRY} --home {home} {command}; echo EXITED-$?; sleep 30")
        tmux.wait_for("p", prompt)
        if keys == "n":
            tmux.type("p", "n")
        else:
            tmux.run("send-keys", "-t", "p", keys)
        screen = tmux.wait_for("p", "EXITED-")
    finally:
        tmux.kill()
    assert "EXITED-130" in screen, screen
    assert "securecomm: error: interrupted at a prompt; nothing was changed" in screen
    assert "Aborted!" not in screen
    assert "carol" in sc("user", "list").output  # nothing was removed


@pytest.mark.parametrize(("pin", "hint"), [
    ("aITTQ5lh8iLUB8xV4p2oAzcqZCnmKlv3D3tEcJpDd0o", "use --pin SHA256:aITTQ5lh8iLUB8xV4p2oAzcqZCnmKlv3D3tEcJpDd0o"),
    ("SHA256:nope", "it looks like SHA256:<43 base64 characters>, as certgen and serve print it"),
])
def test_a_malformed_pin_is_a_usage_error_not_a_mismatch(sc, pin, hint):
    result = sc("user", "login", "alice", "--server", "127.0.0.1:9", "--pin", pin, "--password-stdin",
                input=PASSWORD)
    assert result.exit_code == 2, result.output
    assert _lines(result)[-1] == f"securecomm: hint: {hint}"


def test_certgen_force_says_a_running_server_reloads_on_sighup(sc):
    """findings/newuser2.md item 16: it said a restart was needed; SIGHUP reloads (test_sighup.py)."""
    assert sc("certgen").exit_code == 0
    result = sc("certgen", "--force")
    assert result.exit_code == 0
    assert "send it SIGHUP (systemctl reload securecomm), no restart needed" in result.stderr
    assert "restarted" not in result.stderr


def test_keygen_twice_points_to_show_not_only_force(sc):
    assert sc("keygen").exit_code == 0
    result = sc("keygen")
    assert result.exit_code == 10
    assert "securecomm keygen --show" in _lines(result)[-1]
    assert "kept as NAME.key.bak" in _lines(result)[-1]  # the new-user check: it said --force loses the old key


def test_misplaced_home_hint_keeps_the_command_group(runner, home):
    result = runner.invoke(cli, ["user", "list", "--home", str(home)], prog_name="securecomm")
    assert _lines(result)[-1].endswith("as in: securecomm --home ... user list ...")


def test_login_again_reuses_the_profiles_server_and_ca(tmp_path):
    """Found by a new user: `user login NAME` went to localhost:7443 whatever the profile said."""
    from tests.serverproc import ServerProc, add_user, login

    srv = ServerProc(tmp_path / "srv").start()
    try:
        add_user(srv.home, "alice")
        assert login(tmp_path / "a", srv, "alice").returncode == 0  # --server and --ca given once
        again = subprocess.run([ENTRY, "--home", str(tmp_path / "a"), "user", "login", "alice", "--password-stdin"],
                               input=PASSWORD.encode(), capture_output=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert srv.address.split(":")[-1].encode() in again.stdout  # logged in on the profile's server
    finally:
        srv.stop()


def test_not_logged_in_hint_mentions_home(sc):
    result = sc("send", "hi")
    assert result.exit_code == 3
    assert "--home" in _lines(result)[-1]


def test_decrypt_names_the_identity_an_envelope_is_sealed_to(keys):
    """Found by a new user: with only `--name friend`, decrypt said to create 'default'."""
    from tests.conftest import run_entry

    alice, bob, _ = keys
    assert run_entry("--home", str(bob), "keygen", "--name", "work", "--kem", "x25519").returncode == 0
    sealed = run_entry("--home", str(alice), "encrypt", "-r", str(bob / "identities" / "work.pub"), "-", input=b"x")
    assert sealed.returncode == 0, sealed.stderr
    result = run_entry("--home", str(bob), "decrypt", "--from", str(alice / "identities" / "default.pub"), "-",
                       input=sealed.stdout)
    assert result.returncode == 6
    assert result.stderr.decode().strip().splitlines()[-1] == (
        "securecomm: hint: it is sealed to your identity 'work': pass --name work")


def test_small_offline_outputs_get_the_same_output_checks(keys, tmp_path):
    """The re-check: a small encrypt/decrypt output went through write_private, so `-o DIR --force` moved
    the folder aside whole, `-o missing/x` made the folder, and `-o . --force` was 'internal error'."""
    from tests.conftest import run_entry

    alice, bob, _ = keys
    to_bob = ["--home", str(alice), "encrypt", "-r", str(bob / "identities" / "default.pub")]
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "inside").write_bytes(b"kept")
    for out, code, said in ((folder, 10, "is a folder"), (tmp_path, 10, "is a folder"),
                            (tmp_path / "missing" / "x.sce", 3, "does not exist")):
        r = run_entry(*to_bob, "-o", str(out), "--force", "-", input=b"hi")
        assert r.returncode == code and said.encode() in r.stderr, r.stderr
        assert b"Traceback" not in r.stderr and b"internal error" not in r.stderr
    assert (folder / "inside").read_bytes() == b"kept" and not (tmp_path / "missing").exists()
    assert not (tmp_path / "victim.bak").exists()
    sealed = tmp_path / "note.sce"
    assert run_entry(*to_bob, "-o", str(sealed), "-", input=b"hi").returncode == 0
    (tmp_path / "note.txt").write_bytes(b"mine")
    (tmp_path / "note.txt.bak").write_bytes(b"my own backup")
    r = run_entry("--home", str(bob), "decrypt", "--from", str(alice / "identities" / "default.pub"), "-o",
                  str(tmp_path / "note.txt"), "--force", str(sealed))
    assert r.returncode == 0, r.stderr
    assert [(tmp_path / n).read_bytes() for n in ("note.txt", "note.txt.bak", "note.txt.bak.2")] == \
        [b"hi", b"my own backup", b"mine"]
