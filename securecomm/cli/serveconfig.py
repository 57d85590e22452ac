"""`serve --config FILE` and `serve --print-config`: a TOML file for every serve option.

Theory of operation: the keys are not listed anywhere. They are the `serve`
command's own Click options, named as their long flag without the dashes
(`--max-clients` -> `max-clients`), so an option added to `serve` gets its key
for free and the two cannot drift. `ConfigCommand.parse_args` lets Click parse
the command line first; then, for every option Click filled from its default,
the file's value (converted by the option's own Click type, so the same ranges
apply) takes its place. Flags given on the command line always win.

Errors name the file, the key and the line the key is on: tomllib gives no
positions for valid TOML, so the line is found by scanning the text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from securecomm.errors import NotFoundError, UsageError
from securecomm.store.urls import mask

#: Options that steer the file itself; they have no key in it.
META_OPTIONS = ("config", "print_config")
#: An option whose name holds one of these words is never printed (a password, a token, a DSN with a password).
SECRET_WORDS = ("password", "secret", "token")
#: A URL's password (`scheme://user:PASSWORD@host`) is masked wherever it appears.
#: A config file larger than this is not a config file (read into memory whole).
MAX_CONFIG_BYTES = 1024 * 1024


def option_key(param: click.Parameter) -> str:
    """The TOML key of an option: its longest flag without the leading dashes."""
    flags = [o for o in param.opts if o.startswith("--")]
    return max(flags, key=len)[2:] if flags else str(param.name)


def config_params(command: click.Command) -> dict[str, click.Option]:
    """key -> option, for every option of `command` that may appear in a config file."""
    return {option_key(p): p for p in command.params
            if isinstance(p, click.Option) and p.name not in META_OPTIONS and not p.hidden
            and not p.is_eager}


def key_line(text: str, key: str) -> int | None:
    """The 1-based line where `key = ...` (or a table `[key]`) is written, or None."""
    name = rf"""(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')"""
    pattern = re.compile(rf"^\s*(?:{name}\s*[=.]|\[\[?\s*{name}\s*[].])")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _where(path: Path, text: str, key: str) -> str:
    line = key_line(text, key)
    return f"{path}, line {line}" if line else str(path)


def read_config(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed TOML file and its text; a missing or malformed file is one clear error."""
    import tomllib

    try:
        if path.exists() and not path.is_file():  # a FIFO would hang the start, /dev/zero fill memory
            raise UsageError(f"config file {path} is not a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more than the limit, whatever the file
    except FileNotFoundError as e:
        raise NotFoundError(f"config file {path} does not exist",
                            hint="see contrib/securecomm.toml for a commented example") from e
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode()
        return tomllib.loads(text), text
    except UnicodeDecodeError as e:
        raise UsageError(f"config file {path} is not UTF-8 text") from e
    except tomllib.TOMLDecodeError as e:  # its message ends with "(at line N, column M)"
        raise UsageError(f"config file {path}: {e}", hint="the file must be TOML: key = value, one per line") from e


def _check_kind(option: click.Option, value: Any) -> str | None:
    """Why a TOML value has the wrong kind for the option, or None. Stricter than Click's
    conversion on purpose: `port = "7443"` or `rate = true` in a file is a mistake, not a number."""
    base = option.type
    wants_number = isinstance(base, click.types.IntParamType | click.types.FloatParamType)
    if option.is_flag or isinstance(base, click.types.BoolParamType):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(value, bool | dict | list):
        return "expected a number" if wants_number else "expected a string"
    if not wants_number and not isinstance(base, click.types.StringParamType | click.Path | click.Choice):
        return None  # a type of our own (a duration): it takes both `30d` and seconds, and checks itself
    if wants_number and not isinstance(value, int | float):
        return "expected a number"
    if not wants_number and not isinstance(value, str):
        return "expected a string"
    return None


def convert_value(ctx: click.Context, option: click.Option, value: Any, base: Path) -> Any:
    """A file value through the option's own Click type; relative paths are taken from the file's folder."""
    if isinstance(option.type, click.Path) and isinstance(value, str) and "://" not in value:  # --db takes URLs too
        value = os.path.abspath(base / Path(value).expanduser())  # absolute: --print-config reads back the same
    return option.type_cast_value(ctx, value)


def load_into(ctx: click.Context, path: Path) -> None:
    """Fill ctx.params from the file wherever the command line left an option at its default."""
    data, text = read_config(path)
    params = config_params(ctx.command)
    for key, value in data.items():
        option = params.get(key)
        if option is None:
            raise UsageError(f"unknown key {key!r} in {_where(path, text, key)}",
                             hint="the keys are the serve options without the dashes; see: securecomm serve --help")
        assert option.name is not None
        problem = _check_kind(option, value)
        if problem is None:
            try:
                converted = convert_value(ctx, option, value, path.parent)
            except click.BadParameter as e:
                problem = e.message.rstrip(".")
        if problem is not None:
            raise UsageError(f"bad value for {key!r} in {_where(path, text, key)}: {problem}")
        if ctx.get_parameter_source(option.name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            ctx.params[option.name] = converted


def _toml_value(value: Any) -> str:
    import json
    import math

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def hidden(key: str, value: Any) -> Any:
    """The value as it may be printed: secrets replaced, passwords inside URLs masked."""
    if any(word in key for word in SECRET_WORDS) and value is not None:
        return "(hidden)"
    if isinstance(value, str) and "://" in value:
        return mask(value)  # a password, a secret parameter or a NATS token inside a URL
    return value


#: What an option left unset means, for --print-config (each was once "the default location", which
#: --metrics, off, and --bus, in-process, are not).
UNSET = {
    "db": "securecomm.db in the data folder",
    "cert": "tls/server.pem in the data folder",
    "key": "tls/server.key in the data folder",
    "metrics": "off, no metrics endpoint",
    "bus": "in-process, this relay alone",
}


def effective_config(ctx: click.Context) -> str:
    """The configuration serve would run with, as TOML that --config reads back."""
    lines = ["# securecomm serve: effective configuration (secrets are not shown)"]
    for key, option in config_params(ctx.command).items():
        value = hidden(key, ctx.params.get(str(option.name)))
        if value is None:
            lines.append(f"# {key} = (unset: {UNSET.get(key, 'the default')})")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


class ConfigCommand(click.Command):
    """A Click command whose options may also come from `--config FILE` (TOML)."""

    #: Checks the effective options before `--print-config` prints them (raises what the command would).
    check_printed: Callable[[dict[str, Any]], None] | None = None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        config = ctx.params.get("config")
        if config is not None:
            load_into(ctx, Path(config))
        return rest

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.params.pop("print_config", False):
            ctx.params.pop("config", None)
            if self.check_printed is not None:
                self.check_printed(dict(ctx.params))
            click.echo(effective_config(ctx), nl=False)
            return None
        ctx.params.pop("config", None)
        return super().invoke(ctx)


config_option = click.option("--config", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                             help="Read options from this TOML file (keys: the options without dashes); "
                                  "flags given here win.")
print_config_option = click.option("--print-config", is_flag=True,
                                   help="Print the effective configuration as TOML (no secrets) and exit.")
