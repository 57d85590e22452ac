"""Login names the server has no account for (second attack round, items 4 and 6).

Item 4 (/tmp/atk2w/prelock.sh): wrong passwords for a name with no account locked it, and the
lock survived `user add` and `user passwd`, so a stranger could lock out a new hire in advance.
Item 6 (/tmp/atk2w/pw_in_user.py): a password typed into the name field was written to the log.
"""

from __future__ import annotations

import re

from securecomm.wire import protocol as P
from tests.serverproc import ServerProc, add_user, frame, login, read_events, tls_socket
from tests.test_accounts import WRONG, last_error, lock_bob_then_restart, server  # noqa: F401 - `server` is a fixture


# -- item 4 ------------------------------------------------------------------------------------
def test_a_name_locked_before_its_account_existed_is_unlocked_by_user_add(server, tmp_path):  # noqa: F811 - the imported fixture
    for _ in range(3):
        assert login(tmp_path / "x", server, "newhire", WRONG).returncode == 5
    assert "locked until" in last_error(login(tmp_path / "x", server, "newhire", WRONG))
    add_user(server.home, "newhire")
    r = login(tmp_path / "newhire", server, "newhire")
    assert r.returncode == 0, r.stderr  # before: "password logins for this user name are locked until ..."
    for _ in range(3):  # the account is guarded like any other from now on
        login(tmp_path / "x", server, "newhire", WRONG)
    assert "locked until" in last_error(login(tmp_path / "x", server, "newhire"))


def test_a_lock_restored_at_start_still_holds_when_accounts_change(server, tmp_path):  # noqa: F811 - the imported fixture
    before = lock_bob_then_restart(server, tmp_path)
    add_user(server.home, "carol")  # an account change: the watcher looks at every locked name
    assert login(tmp_path / "carol", server, "carol").returncode == 0
    assert last_error(login(tmp_path / "x", server, "bob")) == before  # same lock, same end


# -- item 6 ------------------------------------------------------------------------------------
def _raw_login(server: ServerProc, event: P.Event) -> P.Event:  # noqa: F811 - the imported fixture
    sock = tls_socket(server)
    sock.sendall(frame(P.Hello()) + frame(event))
    events = read_events(sock)
    sock.close()
    return events[-1]


def test_unknown_login_names_are_logged_only_as_a_keyed_tag(server, tmp_path):  # noqa: F811 - the imported fixture
    typed = "Tr0ub4dor&3-my-real-pw"  # a password typed into the name field (not even a valid name)
    valid = "hunter2hunter2"  # a password that happens to be a valid name
    for name in (typed, typed, valid):
        answer = _raw_login(server, P.LoginPassword(name, "alice"))
        assert isinstance(answer, P.Error) and answer.code == P.ErrorCode.AUTH_FAILED
    answer = _raw_login(server, P.LoginKey(valid, b"\x00" * 64))
    assert isinstance(answer, P.Error) and answer.code == P.ErrorCode.AUTH_FAILED
    assert login(tmp_path / "x", server, "bob", WRONG).returncode == 5
    log = server.wait_log(r"(?s).*login failed for 'bob': wrong password")
    for secret in (typed, valid, typed.lower(), "Tr0ub4dor"):
        assert secret not in log, log
    tags = re.findall(r"login failed for unknown name #([0-9a-f]{8}): unknown user", log)
    assert len(tags) == 3 and tags[0] == tags[1] != tags[2], log  # correlated, not revealed
    assert f"key login failed for unknown name #{tags[2]}" in log
