"""Issue 23 §7: comparing experiments in the terminal. `dvc exp show --only-changed` printed 415
columns (every cell an ellipsis at 200); `make compare` shows each experiment's changed params
and every default variant's test R1 / mAP within 120 columns. Here on a small real DVC project
with the real params.yaml and a report stage that writes reports/compare.json as the pipeline's
does; tests/test_pipeline.py runs the same command after the real pipeline's `dvc exp run`."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pfcvr.config import load_params, read_raw
from tests.support.compare import compare_command

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REPORT = """
import json, pathlib, yaml
from pfcvr.report.ablation import compare_cells
p = yaml.safe_load(open("params.yaml"))
mask = p["train"]["mask_ratio"]
table = {v: {"R1": {"mean": 10 + i + mask}, "mAP": {"mean": 20 + i - mask}}
         for i, v in enumerate(p["report"]["variants"])}
pathlib.Path("reports").mkdir(exist_ok=True)
json.dump(compare_cells(table), open("reports/compare.json", "w"))
json.dump({v: {m: {"mean": c["mean"], "std": 0.1} for m, c in t.items()} | {"seconds": mask}
           for v, t in table.items()}, open("reports/ablation.json", "w"))
"""
DVC_YAML = """
stages:
  report:
    cmd: python report.py
    deps: [report.py]
    params: [train, report.variants]
    metrics:
      - reports/ablation.json: {cache: false}
      - reports/compare.json: {cache: false}
"""


def test_param_sections_of_make_compare_are_those_of_params_yaml():
    makefile = (ROOT / "Makefile").read_text()
    sections = re.search(r"^PARAM_SECTIONS := (.+)$", makefile, re.M).group(1).split("|")
    assert sections == list(read_raw(ROOT / "params.yaml"))


def run(cmd, cwd, env):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
    return out.stdout


def test_make_compare_fits_120_columns_with_every_default_variant(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "report.py").write_text(REPORT)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT), COLUMNS="120",
               DVC_NO_ANALYTICS="1", DVC_UPDATER_DISABLED="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    dvc = str(BIN / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "repro", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "baseline"],
                [dvc, "exp", "run", "-q", "-S", "train.mask_ratio=0.3", "-n", "mask03"]):
        run(cmd, repo, env)
    shown = run(compare_command(dvc), repo, env)
    lines = [line.rstrip() for line in shown.splitlines() if line.strip()]
    assert max(map(len, lines)) <= 120, shown
    variants = list(load_params(ROOT / "params.yaml").report.variants)
    header = next(line for line in lines if "Experiment" in line).split()
    assert header == ["Experiment", *(f"test.{v}" for v in variants), "train.mask_ratio"], shown
    assert "…" not in shown
    rows = {re.search(r"\[(\w+)\]|^\s*(\w+)", line).group(1) or line.split()[0]: line
            for line in lines[lines.index(next(x for x in lines if "Experiment" in x)) + 1:]
            if not set(line.strip()) <= {"─"}}
    mask03 = json.loads((repo / "reports/compare.json").read_text())["test"]   # the workspace
    assert rows["mask03"].split()[-1] == "0.3" and rows["workspace"].split()[-1] == "0.3"
    for v in variants:
        assert mask03[v] in rows["mask03"] and mask03[v] in rows["workspace"]
    baseline = next(k for k in rows if k not in ("mask03", "workspace"))
    assert rows[baseline].split()[-1] == "0.75"
    assert all(v not in rows[baseline] for v in mask03.values())   # other numbers
