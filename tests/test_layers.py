"""The layers of docs/ARCHITECTURE.md: which package may import which, and what the command
line's fast paths load.

Imports are read from the source with ``ast`` (every ``import`` statement, those inside
functions included), so the check needs no import of the packages and sees lazy imports too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent

ALLOWED = {
    "sim": set(),
    "models": set(),
    "search": {"sim", "models"},
    "deploy": {"sim", "models", "search"},
    "experiments": {"sim", "models", "search", "deploy"},
    "jmsnas": {"sim", "models", "search", "deploy", "experiments"},
}
"""Package -> the project's packages it may import (docs/ARCHITECTURE.md)."""

PACKAGES = set(ALLOWED)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the packages: dotted name -> (file, is a package's __init__)."""
    out = {}
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_init else parts)] = (file, is_init)
    return out


def _imported(module: str, is_init: bool, node: ast.Import | ast.ImportFrom,
              known: dict[str, tuple[Path, bool]]) -> list[str]:
    """The modules an import statement names (``from a import b``: ``a.b`` if it is a module,
    else ``a``), relative imports resolved."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".")
        if not is_init:
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        name = ".".join([*base, node.module] if node.module else base)
    else:
        name = node.module or ""
    return [f"{name}.{a.name}" if f"{name}.{a.name}" in known else name for a in node.names]


def _import_time(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run when the module is imported: top level, in class bodies and in
    ``if``/``try``/``with`` blocks there, not in functions nor under ``if TYPE_CHECKING``."""
    for stmt in body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt
        elif isinstance(stmt, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(stmt.test):
                yield from _import_time(stmt.body)
            yield from _import_time(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody,
                          *(h.body for h in stmt.handlers)):
                yield from _import_time(block)
        elif isinstance(stmt, ast.With | ast.ClassDef):
            yield from _import_time(stmt.body)


def _graphs() -> tuple[nx.DiGraph, nx.DiGraph]:
    """(packages, every import), (modules, imports run at import time)."""
    known = _modules()
    packages: nx.DiGraph = nx.DiGraph()
    packages.add_nodes_from(PACKAGES)
    modules: nx.DiGraph = nx.DiGraph()
    for module, (file, is_init) in known.items():
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported(module, is_init, node, known):
                    target = name.split(".")[0]
                    if target in PACKAGES and target != module.split(".")[0]:
                        packages.add_edge(module.split(".")[0], target, where=module)
        for node in _import_time(tree.body):
            for name in _imported(module, is_init, node, known):
                if name.split(".")[0] in PACKAGES:
                    modules.add_edge(module, name)
    return packages, modules


def test_the_declared_layers_form_no_circle() -> None:
    declared = nx.DiGraph([(a, b) for a, allowed in ALLOWED.items() for b in allowed])
    assert nx.is_directed_acyclic_graph(declared)


def test_each_package_imports_only_the_layers_below_it() -> None:
    """Catches a library package importing the command line (or any import against the
    layers, lazy ones inside functions included)."""
    packages, _ = _graphs()
    wrong = [f"{a} imports {b} (in {data['where']})" for a, b, data in packages.edges(data=True)
             if b not in ALLOWED[a]]
    assert not wrong, "; ".join(wrong)
    assert not any(packages.has_edge(p, "jmsnas") for p in PACKAGES)
    assert nx.is_directed_acyclic_graph(packages)


def test_no_module_circle_at_import_time() -> None:
    """Catches a circle of imports that run when a module loads (as experiments' cli, common
    and runner once made); a function's import may point back within its package."""
    _, modules = _graphs()
    cycles = list(nx.simple_cycles(modules))
    assert not cycles, cycles


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The parser itself: a relative import inside a function counts for the package graph,
    not for the import-time one."""
    tree = ast.parse("from . import a\ndef f():\n    from ..sim import x\n"
                     "if TYPE_CHECKING:\n    import deploy\n")
    known = {"jmsnas": (tmp_path, True), "jmsnas.a": (tmp_path, False)}
    lazy = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 2]
    assert _imported("jmsnas.b", False, lazy[0], known) == ["sim"]
    assert [_imported("jmsnas.b", False, n, known) for n in _import_time(tree.body)] \
        == [["jmsnas.a"]]


HEAVY = ("torch", "scipy.stats", "search", "models", "deploy", "experiments.common",
         "matplotlib", "deap")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules loaded by a fresh interpreter after running ``code``."""
    script = ("import contextlib, io, sys\nwith contextlib.redirect_stdout(io.StringIO()):\n"
              + "".join(f"    {line}\n" for line in code.splitlines())
              + f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("command", [["--help"], ["--version"], ["simulate", "--help"],
                                     ["search", "--help"], ["deploy", "--help"]])
def test_help_imports_nothing_heavy(command: list[str]) -> None:
    """Catches ``jmsnas --help`` paying for torch (a second at start-up) or the search."""
    code = ("from jmsnas.main import main\n"
            f"try:\n    main({command!r})\nexcept SystemExit:\n    pass")
    assert _loaded_after(code) == []


def test_simulate_imports_neither_torch_nor_scipy_stats(tmp_path: Path) -> None:
    code = ("from jmsnas.main import main\n"
            f"assert main(['simulate', 'three-tier', '--tasks', '300', '--timeline', "
            f"{str(tmp_path / 't.csv')!r}]) == 0")
    assert _loaded_after(code) == []


def test_python_dash_m_jmsnas_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "jmsnas", "--version"], capture_output=True,
                          text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("jmsnas ")
