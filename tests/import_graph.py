"""The static import graph of the project's own modules (pfcvr/, stages/), read with ast.

Every ``import`` and ``from ... import`` counts, the ones inside functions included (a lazy import
still runs when its function does), and importing ``a.b.c`` also runs ``a/__init__.py`` and
``a/b/__init__.py``. Used by the DVC-dependency test and the import-cycle test.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pfcvr", "stages")


def module_file(name: str) -> Path | None:
    """``pfcvr.data.dataset`` -> its file under ROOT (module or package), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> [a, a.b, a.b.c]: importing a submodule runs its packages' __init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@lru_cache(maxsize=None)
def direct_imports(path: Path) -> frozenset[str]:
    """Names of the project modules ``path`` imports directly (anywhere in the file)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                       # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod]
            # `from pkg import sub` may import a submodule
            names += [f"{mod}.{a.name}" for a in node.names]
        for name in names:
            for candidate in _with_parents(name):
                if module_file(candidate) is not None:
                    found.add(candidate)
    found.discard(module_name(path))
    return frozenset(found)


def transitive_files(module: str) -> set[Path]:
    """Every project file that running ``python -m <module>`` can import (itself included)."""
    todo = [m for m in _with_parents(module) if module_file(m) is not None]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(direct_imports(module_file(name)))
    return {module_file(m) for m in seen}


def graph(package: str = "pfcvr") -> dict[str, set[str]]:
    """``{module: {imported project modules}}`` for every module of ``package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        out[module_name(path)] = {m for m in direct_imports(path) if m.startswith(package)}
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. A package importing its own submodules
    (``pfcvr/__init__`` -> ``pfcvr.x``) is the normal re-export and is not a cycle by itself."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + "."):        # package -> own submodule
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if state.get(node) is None:
            cycle = visit(node)
            if cycle:
                return cycle
    return None
