"""The package layering, read from the source with ast.

Every import counts: module level, under `if TYPE_CHECKING`, and deferred inside a function. A
deferred import keeps start-up light but hides a dependency (and a cycle) from the interpreter,
not from the design; today's three cycles are all hidden that way.

cli -> server | client -> net -> wire | crypto | store -> errors | paths. The rules for
server/ and client/ apply to whatever exists: a package that is not there has nothing to check.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "securecomm"
IO_MODULES = {"asyncio", "ssl", "socket", "sqlite3", "selectors"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports: `from a import b` names `a` and, if it is a module, `a.b`."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        names.add(base)
        names |= {f"{base}.{a.name}" for a in node.names if a.name != "*"}
    return names


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
GRAPH = {mod: _imports(path) for mod, path in MODULES.items()}


def _under(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in GRAPH.items() if m == prefix or m.startswith(prefix + ".")}


def _hits(deps: set[str], forbidden: set[str]) -> set[str]:
    return {d for d in deps for f in forbidden if d == f or d.startswith(f + ".")}


def _violations(prefix: str, forbidden: set[str]) -> dict[str, set[str]]:
    return {m: hit for m, deps in _under(prefix).items() if (hit := _hits(deps, forbidden))}


def test_the_graph_sees_the_package():
    """Guards the rules below against passing because they looked at nothing."""
    assert "securecomm.wire.protocol" in GRAPH
    assert "securecomm.wire.relayed" in GRAPH["securecomm.wire.protocol"]
    assert "click" in GRAPH["securecomm.cli.main"]


def test_wire_is_free_of_io():
    assert _violations("securecomm.wire", IO_MODULES) == {}


def test_only_cli_imports_cli_or_click():
    """`python -m securecomm` (__main__) is the entry point above cli, like the console script."""
    bad = {m: hit for m, deps in GRAPH.items() if not m.startswith(("securecomm.cli", "securecomm.__main__"))
           and (hit := _hits(deps, {"securecomm.cli", "click"}))}
    assert bad == {}


@pytest.mark.parametrize(("wing", "other"), [("server", "client"), ("client", "server")])
def test_the_two_wings_never_import_each_other(wing, other):
    assert _violations(f"securecomm.{wing}", {f"securecomm.{other}"}) == {}


@pytest.mark.parametrize("module", ["securecomm.server.session", "securecomm.server.intake"])
def test_session_and_intake_do_not_touch_sqlite(module):
    assert _hits(GRAPH.get(module, set()), {"sqlite3"}) == set()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            comp.append(v)
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _module_graph() -> dict[str, set[str]]:
    """Edges between securecomm modules only: the standard library and third parties drop out."""
    return {m: {d for d in deps if d in MODULES and d != m} for m, deps in GRAPH.items()}


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(_module_graph()) == []


def test_help_of_every_subcommand_stays_light():
    """One subprocess walks the whole Click tree, nested groups included, one fork per command."""
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("help_walk.py"))], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    loaded = json.loads(out)
    assert {"user", "user add", "contacts", "contacts trust", "send"} <= set(loaded)
    assert {cmd: heavy for cmd, heavy in loaded.items() if heavy} == {}
