"""The package's import structure: no cycles, every module importable alone, a light `import pfcvr`.

- The static import graph of pfcvr/ (every ``import`` / ``from`` of a pfcvr module, the ones
  inside functions included: a lazy import still runs when its function does) has no cycle. A
  cycle is what function-level imports used to hide (cli <-> search).
- Each module imports in a fresh interpreter of its own, so none depends on another module having
  been imported first.
- ``import pfcvr`` loads neither torch nor the model package, so that light tools (the prepare
  stage, the CLI's argument parsing) stay light; the params, the metric names, the MLflow facade
  and the ablation report load no torch either.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.import_graph import (PACKAGE, ROOT, find_cycle, import_graph, imports_in,
                                        module_names)

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}


# ----------------------------------------------------------------------------------------------
# the checker itself
# ----------------------------------------------------------------------------------------------

def test_cycle_finder_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_lazy_relative_and_package_imports():
    known = {"p", "p.b", "p.sub", "p.sub.a", "p.sub.x", "p.sub.y", "q", "q.r"}
    src = ("import os\n"
           "import q.r\n"                       # q.r, and q's __init__ runs first
           "def g():\n"
           "    from p import b\n"              # function level still counts; b is a module
           "    from . import a\n")             # relative to p.sub.x's package: p.sub.a
    assert imports_in(src, "p.sub.x", False, known) == {"q", "q.r", "p.b", "p.sub.a"}
    # the packages containing p.sub.x are no edge (already importing) unless their attributes
    # are read
    assert imports_in("from p.sub.y import f\n", "p.sub.x", False, known) == {"p.sub.y"}
    assert imports_in("from p.sub import y\n", "p.sub.x", False, known) == {"p.sub.y"}
    assert imports_in("from p.sub import CONST\n", "p.sub.x", False, known) == {"p.sub"}
    assert imports_in("from .. import CONST, b\n", "p.sub.x", False, known) == {"p", "p.b"}
    # the cycle of the old cli <-> search, hidden in a function, is found
    graph = {"p.cli": imports_in("def h():\n    from p.search import run\n", "p.cli", False,
                                 {"p.cli", "p.search"}),
             "p.search": imports_in("def main():\n    from p.cli import main\n", "p.search", False,
                                    {"p.cli", "p.search"})}
    assert find_cycle(graph) == ["p.cli", "p.search", "p.cli"]


# ----------------------------------------------------------------------------------------------
# the package
# ----------------------------------------------------------------------------------------------

def test_no_import_cycle_in_pfcvr():
    graph = import_graph()
    assert {"pfcvr", "pfcvr.cli", "pfcvr.search", "pfcvr.data.dataset"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cli_and_search_do_not_import_each_other_back():
    """Only the CLI parses arguments; the search package never reaches up to it (its
    ``__main__`` is the command-line entry, which may)."""
    graph = import_graph()
    search = [m for m in graph if m == "pfcvr.search" or m.startswith("pfcvr.search.")]
    assert [m for m in search if "pfcvr.cli" in graph[m]] == ["pfcvr.search.__main__"]
    assert "pfcvr.data.parts" not in graph["pfcvr.data.dataset"]


# A fresh interpreter that loads the heavy third-party libraries once (never a pfcvr module),
# then forks one child per pfcvr module; each child imports its module into a process where no
# pfcvr module was ever imported, which is what "alone" needs, at a fraction of the cost of one
# interpreter start (torch: seconds) per module. torch is made to be forked after import (its
# DataLoader workers are). A child's failure comes back as its traceback.
_ZYGOTE = r"""
import importlib, json, os, sys, traceback
for lib in sys.argv[1].split():
    importlib.import_module(lib)
package = sys.argv[2]
results = {}
for name in sys.argv[3:]:
    assert not [m for m in sys.modules if m == package or m.startswith(package + ".")]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            os.write(w, traceback.format_exc()[-1500:].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as fh:
        err = fh.read()
    results[name] = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err]
print("RESULTS " + json.dumps(results))
"""
PRELOAD = "numpy PIL.Image torch transformers"


def import_each_alone(names: list[str], root: Path = ROOT, package: str = PACKAGE,
                      preload: str = PRELOAD) -> dict[str, tuple[int, str]]:
    """``{module: (exit code, traceback)}``: each module imported in a child process of a fresh
    interpreter that has loaded ``preload`` (third-party) and no module of ``package``."""
    env = {**ENV, "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, "-c", _ZYGOTE, preload, package, *names], cwd=root,
                         env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULTS ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    return {n: (code, err) for n, (code, err) in json.loads(lines[-1][len("RESULTS "):]).items()}


def test_import_alone_catches_an_import_order_dependency(tmp_path):
    """zz.a and zz.b import each other: whichever comes first fails, alone."""
    pkg = tmp_path / "zz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from zz.b import X\nY = 1\n")
    (pkg / "b.py").write_text("from zz.a import Y\nX = 2\n")
    (pkg / "ok.py").write_text("import json\n")
    out = import_each_alone(["zz.a", "zz.b", "zz.ok"], tmp_path, "zz", preload="")
    assert out["zz.ok"] == (0, "")
    for name in ("zz.a", "zz.b"):
        assert out[name][0] == 1 and "ImportError" in out[name][1]


def test_every_module_imports_alone():
    """Each module in a process of its own where no other pfcvr module was imported first."""
    names = list(module_names())
    results = import_each_alone(names)
    assert sorted(results) == sorted(names)
    failed = {n: err for n, (code, err) in results.items() if code != 0}
    assert not failed, "\n\n".join(f"import {n} failed alone:\n{err}" for n, err in failed.items())


def _loaded(module: str) -> list[str]:
    """The heavy libraries and model/loss modules that ``import <module>`` loads, in a fresh
    interpreter."""
    code = (f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m in "
            "('torch', 'transformers', 'mlflow', 'matplotlib') or m.startswith('pfcvr.model') "
            "or m == 'pfcvr.losses')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_import_pfcvr_is_light():
    assert _loaded("pfcvr") == [], "`import pfcvr` loads more than it should"


@pytest.mark.parametrize("module", ["pfcvr.config", "pfcvr.metrics", "pfcvr.tracking",
                                    "pfcvr.report.ablation", "pfcvr.pipeline.report"])
def test_light_modules_load_no_torch(module):
    """The params, the metric names (METRIC_NAMES), the MLflow facade and the ablation report
    are read by light tools and by the report stage: none of them may load torch or the model."""
    heavy = [m for m in _loaded(module) if m not in ("mlflow", "matplotlib")]
    assert heavy == [], f"`import {module}` loads {heavy}"
