"""State shared by all commands, and the output helpers they print with."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from securecomm.paths import Paths


class State:
    """Built once by the group callback; commands get it with @pass_state."""

    # A plain class, not a dataclass: dataclasses import inspect (~6 ms of start-up).
    def __init__(self, home: str | None = None, verbose: int = 0, quiet: int = 0) -> None:
        self.home = home
        self.verbose = verbose
        #: -q: fewer log lines (serve: warnings and errors; -qq: errors only).
        self.quiet = quiet
        self._paths: Paths | None = None

    @property
    def paths(self) -> Paths:
        if self._paths is None:
            self._paths = Paths.resolve(self.home)
        return self._paths

    @property
    def command(self) -> str:
        """`securecomm`, with the --home this run was given (unless SECURECOMM_HOME says the same), for
        commands shown to the user to type next: a hint without it works on another home."""
        import shlex

        if self.home and os.environ.get("SECURECOMM_HOME") != self.home:
            return f"securecomm --home {shlex.quote(self.home)}"
        return "securecomm"


pass_state = click.make_pass_decorator(State, ensure=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON object for scripts.")


def color_enabled() -> bool:
    return "NO_COLOR" not in os.environ


def style(text: str, **kw: Any) -> str:
    return click.style(text, **kw) if color_enabled() else text


def emit_json(obj: Any) -> None:
    import json

    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def info(message: str) -> None:
    click.echo(f"securecomm: {message}", err=True)


def warn(message: str) -> None:
    click.echo(style(f"securecomm: warning: {message}", fg="yellow", bold=True), err=True)


def shown(value: Any) -> str:
    """A value for the terminal: yes/no for booleans, - for nothing, and any text
    (which may come from a server or a peer) with control characters escaped."""
    from securecomm.client.events import printable  # the one escaping rule, as chat and inbox use

    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    return printable(str(value).encode())


def table(rows: list[list[Any]], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple")


def stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def load_identity(state: State, name: str, passphrase_file: Any = None) -> Any:
    """The named local identity; asks for its passphrase only if it is encrypted."""
    from securecomm.crypto import identity as ident
    from securecomm.errors import AuthError, NotFoundError

    key_path = state.paths.identity_key(name)
    if not key_path.exists():
        raise NotFoundError(f"no identity named {name!r} in {key_path.parent}",
                            hint=f"create one with: securecomm keygen --name {name}")

    def ask() -> bytes:
        if passphrase_file is not None:
            return read_passphrase_file(passphrase_file)
        if not stdin_is_tty():
            raise AuthError(f"{key_path} is encrypted", hint="pass --passphrase-file FILE")
        return click.prompt(f"passphrase for {name}", hide_input=True, err=True).encode()

    return ident.load(key_path, ask)


def read_passphrase_file(path: Any) -> bytes:
    """The first line of FILE: a passphrase for --passphrase-file (keygen, and every command that signs)."""
    import stat
    from pathlib import Path

    from securecomm.errors import UsageError
    from securecomm.files import check_private_mode, read_file

    with contextlib.suppress(OSError):
        if stat.S_ISREG(Path(path).stat().st_mode):  # a pipe (<(pass show ...)) is the shell's, and private
            # as a 0644 key is refused, so is the passphrase that guards one (the new-user check: used silently)
            check_private_mode(Path(path), "a passphrase file")
    data = read_file(Path(path)).splitlines()
    if not data or not data[0]:
        raise UsageError(f"{path} holds no passphrase on its first line")
    return data[0]


def profile_identity(state: State, passphrase_file: str | None) -> Any:
    """The identity the saved profile names (the one every connecting command signs with)."""
    from securecomm.config import Profile

    return load_identity(state, Profile.load(state.paths.profile).identity, passphrase_file)


def ask_trust(address: str, fingerprint: str) -> bool:
    """Trust on first use, as OpenSSH asks: only on a terminal."""
    if not stdin_is_tty():
        return False
    click.echo(f"The authenticity of server {address} can't be established.\n"
               f"Its CA fingerprint is {fingerprint}\n"
               "(the operator sees it in the output of `securecomm certgen` and `securecomm serve`).", err=True)
    if not click.confirm("Trust it and remember it in known_servers?", default=False, err=True):
        from securecomm.errors import InterruptedByUser

        # "no" at a prompt is 130, as the exit table says (the new-user check: it was 8, "not trusted")
        raise InterruptedByUser("the server was not trusted; nothing was saved")
    return True


T = TypeVar("T")


def run_client(work: Coroutine[Any, Any, T]) -> T:
    """Run one client coroutine to its end: the one asyncio entry of the client commands
    (asyncio is imported here, not at module level, so --help stays fast)."""
    import asyncio

    return asyncio.run(work)


def read_identity_arg(value: str) -> Any:
    """A public identity given as its line, or as a file holding one."""
    from pathlib import Path

    from securecomm.crypto import identity as ident
    from securecomm.errors import UsageError

    if value.startswith(ident.LINE_PREFIX):
        return ident.PublicIdentity.from_line(value)
    path = Path(value).expanduser()
    if path.is_file():
        return ident.load_public(path)
    raise UsageError(f"{value!r} is neither an identity line (securecomm:1:...) nor a file holding one")


passphrase_file_option = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False), help="Read the identity's passphrase from FILE."
)
server_option = click.option(
    "--server", help="HOST:PORT (default: the saved profile's server; for `user login` without one, localhost:7443)."
)
ca_option = click.option("--ca", type=click.Path(dir_okay=False), help="Trust this CA certificate (PEM).")
pin_option = click.option(
    "--pin", help="Trust the server's CA (or certificate) with this SHA256:... fingerprint (certgen and serve "
                  "print it)."
)


def connection_options(f: Any) -> Any:
    """--server, --ca, --pin and --passphrase-file: the one option stack of every command that connects."""
    for option in (passphrase_file_option, pin_option, ca_option, server_option):
        f = option(f)
    return f


name_option = click.option("--name", default="default", show_default=True, help="Local identity to use.")
