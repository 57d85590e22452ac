"""Run as a script: print, as JSON, which heavy modules `--help` of every (sub)command loads.

One process: the parent imports only the CLI group, then forks a fresh child per command path,
so each child starts from the parent's light module set and what it loads is its own doing.
A child that shows a group's help also reports the group's subcommands, which the parent
then walks in turn (nested groups such as `user` and `contacts`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import click

from securecomm.cli.main import cli, main

HEAVY = ("cryptography", "asyncio", "ssl", "sqlite3")


def _child(path: list[str]) -> dict[str, object]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*path, "--help"])
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    cmd: click.Command | None = cli
    ctx = click.Context(cli)
    for name in path:
        cmd = cmd.get_command(ctx, name) if isinstance(cmd, click.Group) else None
    children = cmd.list_commands(ctx) if isinstance(cmd, click.Group) else []
    return {"heavy": heavy, "children": children}


def _run(path: list[str]) -> dict[str, object]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        os.close(r)
        with os.fdopen(w, "w") as out:
            json.dump(_child(path), out)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def walk() -> dict[str, list[str]]:
    todo, seen = [[name] for name in cli.list_commands(click.Context(cli))], {}
    while todo:
        path = todo.pop()
        report = _run(path)
        seen[" ".join(path)] = report["heavy"]
        todo.extend([*path, child] for child in report["children"])
    return seen


if __name__ == "__main__":
    assert not any(m in sys.modules for m in HEAVY), "the walker itself must start light"
    print(json.dumps(walk()))
