"""The static import graph of the project's own modules, read with ast (no import is run).

Every ``import`` / ``from`` counts, the ones inside functions included (a lazy import still runs
when its function does), and importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b``
first. Used by tests/test_imports.py (no cycles) and tests/test_dvc_deps.py (every file a stage
imports is a dvc.yaml dep of it).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pfcvr"
PACKAGES = ("pfcvr", "stages")          # the project's own code: what a stage can import


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of ``package`` (a package by its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> [a, a.b]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_in(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Modules of ``known`` that module ``name`` imports, anywhere in ``source``.

    Edges: each module an import names (``import a.b``; ``from a import b`` when ``a.b`` is a
    module), the package of a ``from pkg import attribute`` (its attributes are read at import
    time), and the packages above a named module whose ``__init__`` runs first. A package that
    contains ``name`` is no such implicit edge: Python is already importing it when ``name`` runs.
    """
    package = name if is_package else name.rpartition(".")[0]
    mine = set(_ancestors(name))
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            targets = [s for s in subs if s in known]
            if len(targets) < len(subs):         # some names are attributes of base
                targets.append(base)
        else:
            continue
        for target in targets:
            if target in known:
                found.add(target)
            found.update(p for p in _ancestors(target) if p in known and p not in mine)
    found.discard(name)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """``{module: {pfcvr modules it imports}}`` for every module of ``package``."""
    files = module_names(root, package)
    known = set(files)
    return {name: imports_in(path.read_text(), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]`` (depth-first, in sorted order), or None."""
    state: dict[str, str] = {}          # "open" while on the stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def transitive_files(module: str, root: Path = ROOT) -> set[Path]:
    """Every project file that ``python -m <module>`` can import, itself and its packages'
    ``__init__`` files included."""
    files: dict[str, Path] = {}
    for package in PACKAGES:
        files.update(module_names(root, package))
    known = set(files)
    todo = [m for m in [*_ancestors(module), module] if m in known]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = files[name]
        todo.extend(imports_in(path.read_text(), name, path.name == "__init__.py", known))
        todo.extend(p for p in _ancestors(name) if p in known)
    return {files[m] for m in seen}
