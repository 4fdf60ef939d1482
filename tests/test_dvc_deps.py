"""dvc.yaml dependencies cannot go stale: every project file a stage imports is a dep of it.

The truth is derived from the code (tests/support/import_graph.py walks each stage's transitive
imports); a stage whose dvc.yaml entry misses one would be reported "up to date" by `dvc repro`
after that file changed. Listing a whole folder is accepted (it is honest: the folder's files are
covered). And the other way: a stage that does not use the model does not depend on it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.import_graph import ROOT, transitive_files

DVC_YAML = ROOT / "dvc.yaml"


def stage_commands(dvc: dict) -> dict[str, tuple[str, list[str]]]:
    """``{stage: (module run by its cmd, deps)}`` for every stage (a foreach counts once)."""
    out = {}
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        match = re.search(r"python -m ([\w.]+)", body["cmd"])
        assert match, f"dvc.yaml stage {name}: cmd does not run `python -m <module>`"
        out[name] = (match.group(1), [str(d) for d in body.get("deps", [])])
    return out


def missing_deps(module: str, deps: list[str]) -> list[str]:
    """Project files imported by ``python -m module`` that no dep (file or folder) covers."""
    covered = [ROOT / d for d in deps]
    missing = []
    for path in sorted(transitive_files(module)):
        if not any(path == c or c in path.parents for c in covered):
            missing.append(str(path.relative_to(ROOT)))
    return missing


def test_every_stage_lists_every_imported_file():
    stages = stage_commands(yaml.safe_load(DVC_YAML.read_text()))
    assert {"prepare", "parts", "train", "evaluate", "report", "tune"} <= set(stages)
    problems = {name: missing for name, (module, deps) in stages.items()
                if (missing := missing_deps(module, deps))}
    assert not problems, f"dvc.yaml deps miss files the stage imports: {problems}"


def test_every_listed_code_dep_exists():
    """A dep that names a moved or deleted module is stale too (DVC would fail on it)."""
    stages = stage_commands(yaml.safe_load(DVC_YAML.read_text()))
    for name, (_, deps) in stages.items():
        for dep in deps:
            if dep.startswith(("pfcvr", "stages")):
                assert (ROOT / dep).exists(), f"dvc.yaml stage {name}: dep {dep} does not exist"


@pytest.mark.parametrize("stage", ["train", "prepare"])
def test_deleting_one_dep_line_is_caught(stage):
    """The check has teeth: drop one imported library file from a stage's deps and it is named."""
    module, deps = stage_commands(yaml.safe_load(DVC_YAML.read_text()))[stage]
    dropped = "pfcvr/config.py"
    assert dropped in deps
    assert missing_deps(module, [d for d in deps if d != dropped]) == [dropped]


def test_lazy_imports_count():
    """An import inside a function is a dependency too: pfcvr.data.oracle imports pfcvr.metrics
    (torch) only when the oracle runs, and the prepare stage still depends on it."""
    files = {str(p.relative_to(ROOT)) for p in transitive_files("pfcvr.data.oracle")}
    assert "pfcvr/metrics.py" in files
    module, deps = stage_commands(yaml.safe_load(DVC_YAML.read_text()))["prepare"]
    assert "pfcvr/metrics.py" in deps


MODEL_CODE = ("pfcvr/model/", "pfcvr/losses.py")


def _model_files(files) -> list[str]:
    return sorted(f for f in map(str, files) if f.startswith(MODEL_CODE))


@pytest.mark.parametrize("stage", ["prepare", "parts", "report"])
def test_stages_that_use_no_model_do_not_depend_on_it(stage):
    """An edit to the model or a loss does not mark the data stages or the report stale: neither
    their imports nor their dvc.yaml deps reach pfcvr/model/ or pfcvr/losses.py."""
    module, deps = stage_commands(yaml.safe_load(DVC_YAML.read_text()))[stage]
    imported = [p.relative_to(ROOT) for p in transitive_files(module)]
    assert _model_files(imported) == [], f"{stage} imports {_model_files(imported)}"
    assert _model_files(deps) == [] and "pfcvr/model" not in deps, \
        f"dvc.yaml stage {stage} lists model code: {_model_files(deps)}"


def test_project_code_never_calls_pfcvr_load():
    """`pfcvr.load` reaches the model by name (importlib), which the import graph cannot see: so
    no stage or library module may use it; they import pfcvr.model.io.load_model instead."""
    import ast

    users = []
    for path in sorted([*(ROOT / "pfcvr").rglob("*.py"), *(ROOT / "stages").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pfcvr" and \
                    any(a.name == "load" for a in node.names):
                users.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, ast.Attribute) and node.attr == "load" and \
                    isinstance(node.value, ast.Name) and node.value.id == "pfcvr":
                users.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert users == [], f"project code calls pfcvr.load (invisible to the deps check): {users}"


def _dvc_paths(dvc: dict) -> set[str]:
    """Every data path dvc.yaml names (outs, metrics, plots and non-code deps), for variant full."""
    found = set()
    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        entries = [d for d in body.get("deps", []) if not str(d).startswith(("pfcvr", "stages"))]
        for key in ("outs", "metrics", "plots"):
            entries += [next(iter(e)) if isinstance(e, dict) else e for e in body.get(key, [])]
        found |= {str(e).replace("${item}", "full") for e in entries}
    return found


def test_dvc_yaml_paths_come_from_pfcvr_paths():
    """pfcvr/paths.py is where the stages take their paths from: every path dvc.yaml tracks is
    one of its constants or lies inside one of its folders, so the two cannot drift apart."""
    from pathlib import Path

    from pfcvr import paths

    known = {v for v in vars(paths).values() if isinstance(v, Path)}
    stray = sorted(p for p in _dvc_paths(yaml.safe_load(DVC_YAML.read_text()))
                   if not any(Path(p) == k or k in Path(p).parents for k in known))
    assert not stray, f"dvc.yaml paths that pfcvr/paths.py does not know: {stray}"
    assert "reports/figures/train_full.png" in _dvc_paths(yaml.safe_load(DVC_YAML.read_text()))
