"""`securecomm user add|passwd|remove|list|login`."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from securecomm.cli.context import (
    State,
    ask_trust,
    connection_options,
    emit_json,
    info,
    json_option,
    pass_state,
    run_client,
    shown,
    stdin_is_tty,
    table,
)
from securecomm.errors import IntegrityError, KeyReplaceError, NotFoundError, SecurecommError, UsageError

db_option = click.option("--db", metavar="FILE|URL",
                         help="The server's SQLite database [data dir], or the PostgreSQL URL its relays share "
                              "(postgresql://USER@HOST/DB).")
password_stdin_option = click.option("--password-stdin", is_flag=True,
                                     help="Read the password from the first line of stdin (for scripts).")


def read_password(from_stdin: bool, *, confirm: bool, prompt: str = "password", user: str | None = None) -> str:
    """Read a password; a new one (confirm=True) is checked against the policy after its FIRST entry
    and, at a terminal, asked again when refused."""
    from securecomm.store.passwords import check_policy

    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if confirm:
            check_policy(password, user)
    elif not stdin_is_tty():
        raise UsageError("no terminal to ask for a password", hint="pass --password-stdin")
    elif confirm:
        return _ask_new_password(prompt, user)
    else:
        password = click.prompt(prompt, hide_input=True, err=True)
    if not password:
        raise UsageError("empty password")
    return password


#: A person choosing a new password at a terminal gets this many tries (the new-user check: a common
#: password ended `user add`, and the whole command had to be typed again).
NEW_PASSWORD_TRIES = 3


def _ask_new_password(prompt: str, user: str | None) -> str:
    from securecomm.cli.context import warn
    from securecomm.store.passwords import check_policy

    for attempt in range(1, NEW_PASSWORD_TRIES + 1):
        password = click.prompt(prompt, hide_input=True, err=True)
        try:
            check_policy(password, user)  # before asking again: a refused password is not typed twice
            if click.prompt(f"repeat {prompt}", hide_input=True, err=True) != password:
                raise UsageError("the two passwords differ")
        except UsageError as e:
            if attempt == NEW_PASSWORD_TRIES:
                raise
            warn(e.message)  # and the prompt again
            continue
        return password
    raise AssertionError("unreachable")


def open_db(state: State, db: str | None, *, create: bool = False) -> Any:
    """The server's database. Only `user add` may create it, and says so: a wrong
    --home must not quietly produce an empty database that no server reads.
    A PostgreSQL URL is never created here: `securecomm db migrate` does that."""
    from securecomm.store.backends import open_store
    from securecomm.store.db import Store

    path = _database_file(state, db)
    if path is None:
        assert db is not None  # a URL
        return open_store(db)
    if path.exists():
        return Store(path)
    if not create:
        raise NotFoundError(f"no database at {path}",
                            hint="pass the server's --home (or --db FILE); `securecomm paths` shows where it looks")
    store = Store(path)
    info(f"created a new database at {path} (if a server already runs elsewhere, check --home)")
    return store


def _database_file(state: State, db: str | None) -> Path | None:
    """The SQLite file `--db`/`--home` name, or None for a PostgreSQL URL."""
    from securecomm.store.backends import is_url

    return None if db is not None and is_url(db) else Path(db) if db else state.paths.database


@click.group(epilog="Example: securecomm user add alice --admin")
def user() -> None:
    """Manage user accounts (on the server host) and log in (from a client).

    add, passwd, remove and list operate on the server's database file:
    whoever can write that file (mode 0600) is the operator. login talks to a
    running server over TLS.
    """


@user.command(epilog="Example: echo 'correct horse battery' | securecomm user add alice --password-stdin")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Give the account the admin role.")
@password_stdin_option
@db_option
@pass_state
def add(state: State, name: str, admin: bool, password_stdin: bool, db: str | None) -> None:
    """Create account NAME, prompting twice for its password.

    NAME is 1-32 characters of a-z 0-9 _ . - (upper case is folded to lower).
    The password follows NIST SP 800-63B: at least 8 characters (up to 1024),
    no composition rules, not a common, repeated or sequential one.
    """
    from securecomm.errors import ExistsError
    from securecomm.store import passwords
    from securecomm.store.db import normalise_name

    name = normalise_name(name)
    password = None
    file = _database_file(state, db)
    if file is not None and not file.exists():
        # no database yet, so no such user: the password first, and a refused one creates nothing (the
        # new-user check, stop 26: an empty database was left behind)
        password = read_password(password_stdin, confirm=True, user=name)
    store = open_db(state, db, create=True)
    try:
        if store.get_user(name) is not None:  # before the password: nobody types one for nothing
            raise ExistsError(f"user {name!r} already exists",
                              hint=f"to set a new password: securecomm user passwd {name}")
        if password is None:
            password = read_password(password_stdin, confirm=True, user=name)
        created = store.add_user(name, passwords.hash_password(password), "admin" if admin else "user")
    finally:
        store.close()
    info(f"created {created.role} {created.name} in {_where(store)}")


def _where(store: Any) -> str:
    """The database a command wrote: a file path, or a URL without its password."""
    from securecomm.store.backends import describe

    return str(store.path) if hasattr(store, "path") else describe(store.url)


@user.command(epilog="Examples:\n\n  securecomm user passwd alice --keep-key\n\n"
                      "  securecomm user passwd mallory --yes   # and drop the devices someone else may hold")
@click.argument("name")
@click.option("--keep-key", is_flag=True,
              help="Keep the account's devices, user key and waiting mail (a forgotten password, a lockout).")
@click.option("--yes", is_flag=True,
              help="Remove them without asking (whoever held the old password may have registered a key).")
@password_stdin_option
@db_option
@pass_state
def passwd(state: State, name: str, keep_key: bool, yes: bool, password_stdin: bool, db: str | None) -> None:
    """Set a new password for NAME; also clears a lockout.

    An account with a device key: --keep-key keeps its devices, user key
    and waiting mail; --yes removes them all (the running server logs its
    devices out within a second, contacts see a changed key, the owner runs
    `securecomm user login` again). Without either, it asks (no terminal:
    refused, nothing changed).
    """
    from securecomm.store import passwords

    if keep_key and yes:
        raise UsageError("--keep-key and --yes contradict each other", hint="--keep-key keeps the devices; "
                         "--yes removes them")
    store = open_db(state, db)
    try:
        user = store.require_user(name)
        if user.identity is not None and not keep_key and not yes:  # new-user check: it took them unasked
            question = (f"also remove {user.name}'s device key, user key, every device and the mail waiting "
                        "for them (contacts will see a changed key)? no keeps them")
            if not stdin_is_tty():
                raise UsageError(f"{user.name} has devices: say whether they go with the old password",
                                 hint=f"securecomm user passwd {user.name} --keep-key (keep them) or --yes "
                                 "(remove them); nothing was changed")
            keep_key = not click.confirm(question, default=False, err=True)
        password = read_password(password_stdin, confirm=True, user=user.name)
        store.set_password(user.name, passwords.hash_password(password), keep_key=keep_key)
    finally:
        store.close()
    if keep_key or user.identity is None:
        info(f"password changed for {user.name}" + ("; registered device key kept" if user.identity else ""))
    else:
        info(f"password changed for {user.name}; device key removed, and with it every device of the account and "
             f"its user key (their sessions are closed): {user.name} must log in again and make a new user key "
             f"with: securecomm user login {user.name} --reset-user-key")


@user.command(epilog="Example: securecomm user remove mallory --yes")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@pass_state
def remove(state: State, name: str, yes: bool, db: str | None) -> None:
    """Delete account NAME and its registered identity key (its stored messages stay)."""
    store = open_db(state, db)
    try:
        store.require_user(name)
        if not yes:
            if not stdin_is_tty():
                raise UsageError("refusing to remove without confirmation", hint="pass --yes")
            click.confirm(f"remove user {name.lower()}?", abort=True, err=True)
        store.remove_user(name)
    finally:
        store.close()
    info(f"removed {name.lower()}; a running server closes its open sessions within a second")


def _fmt_time(ts: int | None) -> str:
    import datetime as dt

    if not isinstance(ts, int) or isinstance(ts, bool):  # --remote: whatever a server sent, shown, never obeyed
        return shown(ts) if ts else "-"
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M") if ts else "-"
    except (OverflowError, OSError, ValueError):  # a time no calendar has: shown as the number it is
        return str(ts)


@user.command(name="list", epilog="Examples:\n\n  securecomm user list\n\n  securecomm user list --remote --json")
@json_option
@click.option("--remote", is_flag=True, help="Ask the server through your logged-in profile (admins only).")
@db_option
@connection_options
@pass_state
def list_(state: State, as_json: bool, remote: bool, db: str | None, server: str | None, ca: str | None,
          pin: str | None, passphrase_file: str | None) -> None:
    """List accounts: name, role, created, last login, locked, key fingerprint.

    Without --remote, from the server's database on this machine; --server, --ca, --pin and
    --passphrase-file apply to --remote, as to every command that connects."""
    if remote:
        rows = _remote_rows(state, server, ca, pin, passphrase_file)
    elif server or ca or pin or passphrase_file:
        raise UsageError("--server, --ca, --pin and --passphrase-file need --remote",
                         hint="securecomm user list --remote --server HOST:PORT")
    else:
        from securecomm.store.users import user_row

        store = open_db(state, db)
        try:
            rows = [user_row(u) for u in store.list_users()]
        finally:
            store.close()
    if as_json:
        emit_json(rows)
        return
    click.echo(table([[shown(r["name"]), shown(r["role"]), _fmt_time(r["created"]), _fmt_time(r["last_login"]),
                       "LOCKED" if r["locked"] else "no", shown(r["fingerprint"] or "-")] for r in rows],
                     headers=["name", "role", "created", "last login", "locked", "key fingerprint"]))


#: The columns `user list` shows; a remote row must have each, as a plain value.
USER_COLUMNS = ("name", "role", "created", "last_login", "locked", "fingerprint")


def _remote_rows(state: State, server: str | None, ca: str | None, pin: str | None,
                 passphrase_file: str | None) -> list[dict[str, Any]]:
    from securecomm.cli.context import profile_identity
    from securecomm.client import answers
    from securecomm.client.login import connect_profile

    identity = profile_identity(state, passphrase_file)

    async def go() -> list[dict[str, Any]]:
        client, _ = await connect_profile(state.paths, identity, server=server, ca=ca, pin=pin, ask=ask_trust)
        async with client:
            return answers.user_rows(await client.request("user_list"), USER_COLUMNS)

    return run_client(go())


def ask_replace(e: KeyReplaceError) -> bool:
    """Replacing the account's key logs its other device out: only with a yes on a terminal."""
    if not stdin_is_tty():
        e.hint = "to replace it (and log the other device out), pass --replace-key"
        return False
    click.echo(e.message, err=True)
    if not click.confirm("Replace it with this device's key?", default=False, err=True):
        raise click.Abort  # "no": exit 130, nothing was changed
    return True


@user.command(epilog="Examples:\n\n  securecomm user login alice --server chat.example.net:7443 --ca ca.pem\n\n"
                      "  securecomm --home ~/phone user login alice --device-name phone")
@click.argument("name")
@connection_options
@click.option("--identity", "identity_name", default=None,
              help="Local identity to register (created if missing) [the saved profile's when it is NAME's, "
                   "else default].")
@click.option("--device-name", metavar="TEXT",
              help="What this device is called in `securecomm devices` and when it asks to be paired "
                   "[--identity's name, or for `default` this computer's host name].")
@click.option("--replace-key", is_flag=True,
              help="Only for an account from before devices (one registered key): replace another device's "
                   "key without asking.")
@click.option("--reset-user-key", is_flag=True,
              help="Start over when you have lost every other device: a new user key, this device the only "
                   "one; the others are dropped with their waiting mail and contacts see a changed key. "
                   "Needs only the password; asks first.")
@click.option("--yes", is_flag=True, help="With --reset-user-key: do not ask (for scripts).")
@password_stdin_option
@json_option
@pass_state
def login(state: State, name: str, server: str | None, ca: str | None, pin: str | None, identity_name: str | None,
          device_name: str | None, replace_key: bool, reset_user_key: bool, yes: bool, password_stdin: bool,
          passphrase_file: str | None, as_json: bool) -> None:
    """Log in with a password, register this device's identity, save the profile.

    Later send, status and chat authenticate with the identity key (a signed
    challenge) instead of the password. Creates the identity if missing.
    The first device of an account makes its user key. Another device prints
    a pairing code: approve it on a device you have (securecomm devices
    approve CODE), then run the same login here again; your other devices
    stay logged in. A device already on the list just logs in.
    """

    from securecomm.cli.context import load_identity
    from securecomm.client.devicelogin import ListGoneError
    from securecomm.client.login import address_of, candidates, first_answer, saved_pin
    from securecomm.config import Profile, format_servers, parse_servers
    from securecomm.crypto import identity as ident
    from securecomm.store.devicekeys import DeviceKeys

    paths = state.paths
    identity_name = identity_name or _saved_identity(paths, name)
    device_name = _device_name(device_name, identity_name, paths.device_keys(identity_name))
    if reset_user_key and not yes:
        _confirm_reset(name)
    given_ca = ca is not None  # a CA file given now replaces the one remembered for the server (client/trust.py)
    server, ca = _server_and_ca(paths, server, ca, pin)
    # A new identity is kept only once the login succeeded: a failed login leaves nothing behind.
    created = None if paths.identity_key(identity_name).exists() else ident.PrivateIdentity.generate()
    me = created or load_identity(state, identity_name, passphrase_file)
    # Several relays (a:7443,b:7443): the first that answers; trust is decided for the first now.
    clients = candidates(paths, server, ca=ca, pin=pin, ask=ask_trust, replace_known=given_ca)
    with _network_hint():
        first = next(clients)
    # Asked once the server is trusted (as ssh asks after the host key), and
    # before connecting, so that slow typing cannot hit the server's login timeout.
    password = read_password(password_stdin, confirm=False)

    connected: list[Any] = []  # the client that logged in (its trust decides the pin saved)
    again = _login_command(state, name, identity_name)

    async def go(replace: bool, reset_user_key: bool = reset_user_key) -> tuple[Any, str, str | None, dict[str, Any]]:
        client, ok = await first_answer(itertools.chain([first], clients),
                                        lambda c: c.login_password(name, password, me, replace_key=replace))
        connected.append(client)
        device: dict[str, Any] = {}
        async with client:
            if ok.prekeys is not None:  # a server that serves devices (docs/PROTOCOL.md 6.4, 6.5, 6.7)
                device = await _set_up_device(client, DeviceKeys(paths.device_keys(identity_name), me.kem), me,
                                              server_user_name(ok.user), device_name, ok.pending,
                                              reset=reset_user_key, again=again)
            elif reset_user_key:
                raise UsageError("this server does not serve devices, so there is no user key to reset")
            assert client.server_identity is not None
            return ok, address_of(client), client.server_identity.line, device

    try:
        with _network_hint():
            ok, address, server_identity, device = run_client(go(replace_key))
    except KeyReplaceError as e:
        if not ask_replace(e):
            raise
        clients = candidates(paths, server, ca=ca, pin=pin, ask=ask_trust, replace_known=given_ca)
        first = next(clients)
        ok, address, server_identity, device = run_client(go(True))
    except ListGoneError as e:
        _confirm_new_user_key(name, e)
        clients = candidates(paths, server, ca=ca, pin=pin, ask=ask_trust, replace_known=given_ca)
        first = next(clients)
        ok, address, server_identity, device = run_client(go(replace_key, True))
    replaced = connected[-1].trust.replaced if connected else None
    if replaced is not None:  # the new-user check: the remembered CA was swapped without a word
        info(f"the CA remembered for {address} was {replaced}; it is now {connected[-1].trust.anchor_fingerprint} "
             "(the --ca file given)")
    if len(parse_servers(server)) > 1:
        address = format_servers(server)  # the profile keeps the whole list
    user_name = server_user_name(ok.user)
    if created is not None:
        ident.save(created, paths.identity_key(identity_name), paths.identity_pub(identity_name))
        info(f"created identity {identity_name!r} {created.public.fingerprint_text}")
    Profile(server=address, user=user_name, identity=identity_name, ca=str(Path(ca).absolute()) if ca else None,
            pin=saved_pin(pin, connected[-1]), server_identity=server_identity).save(paths.profile)
    code = device.get("pairing_code")
    if as_json:
        emit_json({"user": user_name, "role": ok.role, "server": address, "fingerprint": ok.fingerprint,
                   "user_key": device.get("user_key"), "pending": code is not None or bool(device.get("pending")),
                   "pairing_code": code})
        return
    if code is not None:
        click.echo(f"logged in as {user_name} ({shown(ok.role)}) on {address}; this device "
                   f"{shown(ok.fingerprint)} waits to be paired: pairing code {shown(code)}")
        return
    click.echo(f"logged in as {user_name} ({shown(ok.role)}) on {address}; identity {shown(ok.fingerprint)} "
               "registered" + (f"; user key {device['user_key']}" if device.get("user_key") else ""))


def _saved_identity(paths: Any, name: str) -> str:
    """The identity `user login NAME` uses without --identity: the saved profile's when it is NAME's
    (logging in again, e.g. to finish a pairing, goes on with the same device), else "default"."""
    from securecomm.config import Profile

    try:
        profile = Profile.load_optional(paths.profile)
    except SecurecommError:
        return "default"
    if profile is not None and profile.user == name.lower() and profile.identity:
        return str(profile.identity)
    return "default"


def _device_name(given: str | None, identity_name: str, device_folder: Path) -> str:
    """--device-name, checked; else the name this device asked to be paired under (logging in again
    before the approval starts a new code: it keeps the name given the first time); else the
    identity's name unless it is "default"; else this computer's host name (else "device"): what
    `devices` and `devices approve` show, so that two devices are told apart."""
    import socket

    from securecomm.crypto.devices import check_device_name
    from securecomm.errors import FormatError
    from securecomm.store.devicekeys import pairing_of

    if given is not None:
        try:
            check_device_name(given)
        except FormatError as e:
            raise UsageError(f"--device-name: {e.message}") from e
        return given
    waiting = pairing_of(device_folder) or {}
    asked = waiting.get("name")
    if isinstance(asked, str):
        try:
            check_device_name(asked)
            return asked
        except FormatError:
            pass  # an edited state file: the defaults below
    if identity_name != "default":
        return identity_name
    host = socket.gethostname().split(".")[0].strip()
    try:
        check_device_name(host)
    except FormatError:
        return "device"
    return host


def _confirm_new_user_key(name: str, e: SecurecommError) -> None:
    """The server lost the account's device list while this device holds its user key: a new user key
    only when the user says so (at a terminal), never on the server's word alone."""
    hint = f"if the server's operator says so, make a new user key: securecomm user login {name.lower()} " \
           "--reset-user-key (your contacts will see it change)"
    if not stdin_is_tty():
        e.hint = hint
        raise e
    click.echo(f"securecomm: {e.message}", err=True)
    if not click.confirm(f"Make a new user key for {shown(name.lower())} (your contacts will see it change)?",
                         default=False, err=True):
        raise click.Abort  # "no": exit 130, nothing was changed


def _confirm_reset(name: str) -> None:
    """--reset-user-key drops every other device and its mail, on the password alone: asked first."""
    question = (f"--reset-user-key makes a new user key for {shown(name.lower())}: every other device of the "
                "account is dropped with its waiting mail, and your contacts see a changed key. "
                "Only do this if you lost your other devices. Reset?")
    if not stdin_is_tty():
        raise UsageError("refusing to reset the user key without confirmation", hint="pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise click.Abort  # "no": exit 130, nothing was changed


def _login_command(state: State, name: str, identity_name: str) -> str:
    """The `user login` to run again on this device, with the --home and --identity it used."""
    import shlex

    parts = [state.command, "user", "login", shlex.quote(name.lower())]
    if identity_name != "default":
        parts += ["--identity", shlex.quote(identity_name)]
    return " ".join(parts)


class OldUserKeyError(IntegrityError):
    """this device's copy of the user key is not the one its account's list is signed with"""


async def _set_up_device(client: Any, keys: Any, me: Any, user: str, name: str, pending: bool = False, *,
                         reset: bool = False, again: str = "") -> dict[str, Any]:
    """The device's user key, list and prekeys; a failure here is a warning: the login itself succeeded
    (except for --reset-user-key, which was asked for by name). A pending session (a device the list
    does not name yet) may only pair (docs/PROTOCOL.md 6.4), unless it resets the user key.
    Returns {"user_key": its fingerprint, or None} and, for a device waiting to be paired,
    "pairing_code" (or "pending" when the pairing could not be started)."""
    from securecomm.cli.context import info, warn
    from securecomm.client.devicelogin import ListGoneError, set_up_device
    from securecomm.errors import SecurecommError

    result: dict[str, Any] = {"user_key": None}
    try:
        done = "pending" if pending and not reset else await set_up_device(client, keys, me, user, name,
                                                                            reset=reset)
        if done == "reset":
            info(f"new user key {keys.user_key().public.fingerprint_text}: this device is {user}'s only one; "
                 "your contacts will see a changed key and must trust it again")
        elif done in ("pending", "old-key") or keys.user_key() is None:
            result.update(await _pairing(client, keys, me, user, name, again, listed=done == "old-key"))
    except SecurecommError as e:
        if reset or isinstance(e, OldUserKeyError | ListGoneError):
            raise
        if pending:
            result["pending"] = True
        warn(f"this device is not set up for forward secrecy yet ({e.message}); run user login again")
    held = keys.user_key()
    if held is not None and not result.get("pairing_code") and not result.get("pending"):
        result["user_key"] = held.public.fingerprint_text
    return result


async def _pairing(client: Any, keys: Any, me: Any, user: str, name: str, again: str, *,
                   listed: bool = False) -> dict[str, Any]:
    """A new device of an account that has others: show a pairing code, or finish an approved pairing.
    `listed`: a device on the list whose user key copy is older than the list's (paired again after
    a --reset-user-key on another device): only finishing is possible."""
    from securecomm.cli.context import info, warn
    from securecomm.client.devicelogin import continue_pairing
    from securecomm.errors import PairingError

    try:
        outcome, detail = await continue_pairing(client, keys, me, user, name, listed=listed)
    except PairingError as e:
        if not listed:
            raise
        raise OldUserKeyError(f"this device holds another user key of {user} than the one the account's list is "
                           "signed by: a --reset-user-key on another device, or a server restored from a backup "
                           "made before this device's key",
                           hint="if another device reset it: on that device, securecomm devices remove "
                                f"{me.public.fingerprint[:6].hex()}; then here: {again}. If the server was restored: "
                                f"here, {again} --reset-user-key") from e
    if outcome == "paired":
        key, old = detail
        if old is not None:
            warn(f"{user}'s user key was reset on another device: this device replaced its old user key "
                 f"{old.public.fingerprint_text} (kept as user.key.bak) with {key.public.fingerprint_text}")
        info(f"paired: this device now holds {user}'s user key {key.public.fingerprint_text} "
             "(the approving device showed the same)")
        return {}
    code, _ = detail
    info(f"this device ({me.public.fingerprint_text}, named {shown(name)}) waits to be paired; pairing code: "
         f"{shown(code)} (good for 10 minutes, once)")
    info(f"on a device you already have, run: securecomm devices approve {shown(code)} "
         f"--fingerprint {me.public.fingerprint_text}; then here: {again}")
    return {"pairing_code": code}


def _server_and_ca(paths: Any, server: str | None, ca: str | None, pin: str | None) -> tuple[str, str | None]:
    """Logging in again defaults to the saved profile's server, and to its CA file when no other trust is given."""
    from securecomm.config import Profile, format_servers

    profile = Profile.load_optional(paths.profile)
    if server is None:
        server = profile.server if profile is not None else "localhost:7443"
    same_server = profile is not None and format_servers(server) == format_servers(profile.server)
    if ca is None and pin is None and same_server and profile is not None and profile.ca \
            and Path(profile.ca).exists():
        ca = profile.ca
    return server, ca


@contextlib.contextmanager
def _network_hint() -> Iterator[None]:
    """A refused connection gets the same hint as send gives."""
    from securecomm.errors import NetworkError

    try:
        yield
    except NetworkError as e:
        if e.hint is None and type(e) is NetworkError:
            e.hint = "is `securecomm serve` running there?"
        raise


def server_user_name(name: Any) -> str:
    """The user name a server answered with, refused unless it follows the server's own rule.

    It is saved in profile.json and printed: a hostile server must not smuggle
    terminal escapes (or anything else) in through it.
    """
    from securecomm.client.answers import check_user_name

    try:
        check_user_name(name)
    except SecurecommError as e:
        e.hint = "this is not a securecomm server, or a broken one; nothing was saved"
        raise
    return str(name)
