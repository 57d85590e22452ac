"""The `securecomm` group: global options, lazy subcommands, error mapping.

Errors become messages once, here: a SecurecommError is printed as
`securecomm: error: ...` (plus `securecomm: hint: ...`) and exits with the
code its class carries; tracebacks appear only with -v.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from securecomm import __version__
from securecomm.cli.context import State
from securecomm.errors import InterruptedByUser, SecurecommError

# name -> (module, attribute, short help). The short help lives here so that
# `securecomm --help` lists commands without importing a single one of them.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "certgen": ("securecomm.cli.keys", "certgen", "Create a local CA and a TLS server certificate."),
    "keygen": ("securecomm.cli.keys", "keygen", "Create (or show) a user identity: KEM + Ed25519 keys."),
    "encrypt": ("securecomm.cli.offline", "encrypt", "Seal a file to a recipient identity, offline."),
    "decrypt": ("securecomm.cli.offline", "decrypt", "Open a sealed file and check its sender."),
    "serve": ("securecomm.cli.serve", "serve", "Run the TLS 1.3 message server."),
    "send": ("securecomm.cli.client", "send", "Send one message and print its receipt."),
    "status": ("securecomm.cli.client", "status", "Connect and print a security report of the session."),
    "chat": ("securecomm.cli.chat", "chat", "Interactive chat: rooms and end-to-end direct messages."),
    "fetch": ("securecomm.cli.files", "fetch", "Download, verify and decrypt a received file."),
    "inbox": ("securecomm.cli.client", "inbox", "Fetch and print pending direct messages."),
    "contacts": ("securecomm.cli.client", "contacts", "Show pinned contact keys; trust a changed one."),
    "devices": ("securecomm.cli.devices", "devices", "List this account's devices; remove or approve one."),
    "user": ("securecomm.cli.users", "user", "Manage user accounts and log in."),
    "db": ("securecomm.cli.db", "db", "Create, upgrade and fill a PostgreSQL database for several relays."),
    "paths": ("securecomm.cli.misc", "paths", "Print where securecomm keeps its files."),
    "backup": ("securecomm.cli.backup", "backup", "Copy a running server's database, consistently."),
    "restore": ("securecomm.cli.backup", "restore", "Put a backup in place of a stopped server's database."),
    "completion": ("securecomm.cli.misc", "completion", "Print the shell completion script."),
}


#: Options of the group itself; given after a command they are unknown there.
GLOBAL_OPTIONS = ("--home", "-v", "--verbose", "-q", "--quiet", "--version")


class CliError(click.ClickException):
    """Carries a SecurecommError through Click's standalone handling."""

    def __init__(self, error: SecurecommError) -> None:
        super().__init__(error.message)
        self.error = error
        self.exit_code = error.exit_code  # type: ignore[misc]  # per instance: the error's own code

    def show(self, file: Any = None) -> None:
        click.echo(f"securecomm: error: {self.error.message}", err=True)
        if self.error.hint:
            click.echo(f"securecomm: hint: {self.error.hint}", err=True)


class SecurecommGroup(click.Group):
    """Loads subcommands on first use and maps every error to an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        # Click suggests from self.commands, which lazy loading leaves empty:
        # give it the names so that `securecomm sned` gets "did you mean 'send'?".
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:
            raise click.exceptions.NoSuchCommand(e.command_name, possibilities=list(COMMANDS), ctx=ctx) from None

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # bare `securecomm`: Click prints the help, as for `securecomm user`
        except click.UsageError as e:  # a bad global option: same grammar as every other usage error
            raise usage_failure(e) from e

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        return getattr(module, spec[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CliError, click.exceptions.NoArgsIsHelpError, click.exceptions.Exit):
            raise
        except click.Abort as e:  # Ctrl-C or Ctrl-D at a prompt, or "no" to a confirmation
            raise CliError(InterruptedByUser("interrupted at a prompt; nothing was changed")) from e
        except click.ClickException as e:  # Click's own errors, from any subcommand: one grammar
            raise usage_failure(e) from e
        except BrokenPipeError:
            raise  # the reader went away (`| head`): Click's main exits quietly, it is no internal error
        except SecurecommError as e:
            _maybe_traceback(ctx)
            raise CliError(e) from e
        except KeyboardInterrupt as e:
            raise CliError(InterruptedByUser()) from e
        except Exception as e:
            _maybe_traceback(ctx)
            raise CliError(
                SecurecommError(f"internal error ({type(e).__name__})", hint="rerun with -v for the traceback")
            ) from e


def usage_failure(e: click.ClickException) -> CliError:
    """Click's `Error: No such option...` as `securecomm: error: ...` plus a hint, keeping Click's exit code."""
    possibilities = getattr(e, "possibilities", None)
    if isinstance(e, click.exceptions.NoSuchOption | click.exceptions.NoSuchCommand):
        text = e.message  # without Click's own "(Did you mean ...)": that becomes the hint
    else:
        text = e.format_message()
    text = text.strip().rstrip(".")
    text = text[:1].lower() + text[1:]
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.exceptions.NoSuchOption) and e.option_name in GLOBAL_OPTIONS:
        hint: str | None = (f"{e.option_name} is a global option: put it before the command, "
                            f"as in: securecomm {e.option_name} ... {_command_words(ctx)} ...")
    elif possibilities:
        hint = "did you mean " + " or ".join(repr(p) for p in possibilities) + "?"
    elif ctx is not None:
        hint = f"see: {ctx.command_path} --help"
    else:
        hint = None
    error = SecurecommError(text, hint=hint)
    error.exit_code = e.exit_code
    return CliError(error)


def _command_words(ctx: click.Context | None) -> str:
    """`user list` for `securecomm user list`: the command as typed after the program name."""
    if ctx is None:
        return "COMMAND"
    return ctx.command_path.split(" ", 1)[1] if " " in ctx.command_path else "COMMAND"


def _maybe_traceback(ctx: click.Context) -> None:
    state = ctx.find_object(State)
    if state is not None and state.verbose:
        import traceback  # lazily: it costs ~14 ms of start-up that --help must not pay

        traceback.print_exc(file=sys.stderr)


@click.group(
    cls=SecurecommGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: securecomm --home /tmp/sc certgen && securecomm --home /tmp/sc serve",
)
@click.version_option(__version__, "--version", prog_name="securecomm")
@click.option("-v", "--verbose", count=True, help="More logging; tracebacks on errors. Repeatable.")
@click.option("-q", "--quiet", count=True, help="Less logging (serve: -q warnings and errors, -qq errors only).")
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="SECURECOMM_HOME",
    help="Keep every config, key, certificate and database under DIR [env: SECURECOMM_HOME].",
    metavar="DIR",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, home: str | None) -> None:
    """securecomm: TLS 1.3 messaging with end-to-end HPKE envelopes.

    Messages are sealed to their recipient with HPKE (ML-KEM-768 + X25519 by
    default) and signed with Ed25519, then carried over TLS 1.3.
    """
    ctx.obj = State(home=home, verbose=verbose, quiet=quiet)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="securecomm")
