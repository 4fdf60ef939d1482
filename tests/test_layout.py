"""The package reads like the pipeline (issue 20): each dvc.yaml stage has its thin
``stages/<name>.py`` and its work in ``pfcvr/pipeline/<name>.py``; the top level of pfcvr/ stays
small and no module grows past what a reader takes in at once."""
from __future__ import annotations

import re

import yaml

from tests.support.import_graph import ROOT

MAX_TOP_LEVEL = 10        # modules directly in pfcvr/ (packages not counted)
MAX_LINES = 400           # lines of any module of pfcvr/


def _stages() -> dict[str, str]:
    """``{stage: the module its cmd runs}`` of dvc.yaml (a foreach stage counts once)."""
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        out[name] = re.search(r"python -m ([\w.]+)", cmd).group(1)
    return out


def test_every_stage_has_its_script_and_its_pipeline_module():
    stages = _stages()
    assert {"prepare", "parts", "pretrain", "zero_shot", "train", "evaluate", "report",
            "tune"} <= set(stages)
    for name, module in stages.items():
        assert module == f"stages.{name}", f"dvc.yaml stage {name} runs {module}"
        assert (ROOT / "pfcvr" / "pipeline" / f"{name}.py").is_file(), name
        script = (ROOT / "stages" / f"{name}.py").read_text()
        assert f"from pfcvr.pipeline.{name} import" in script, \
            f"stages/{name}.py does not call pfcvr.pipeline.{name}"
    extra = {p.stem for p in (ROOT / "pfcvr" / "pipeline").glob("*.py")} - set(stages) - {
        "__init__"}
    assert not extra, f"pfcvr/pipeline/ modules without a dvc.yaml stage: {sorted(extra)}"


def test_top_level_is_small_and_modules_are_short():
    top = sorted(p.name for p in (ROOT / "pfcvr").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules at the top of pfcvr/: {top}"
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "pfcvr").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_tests_folder_lists_tests():
    """Helpers that are not tests live in tests/support/."""
    stray = sorted(p.name for p in (ROOT / "tests").glob("*.py")
                   if not p.name.startswith("test_") and p.name != "__init__.py")
    assert not stray, f"non-test modules in tests/: {stray} (move them to tests/support/)"
