"""End to end: the real DVC pipeline on a tiny config, in a temporary copy of the repository.

One module-scoped `dvc repro` feeds every test here:
- every stage's outputs exist and hold sane values;
- every key of params.yaml is read by some stage, and each stage lists in dvc.yaml the params it
  reads (tests/support/record_params/sitecustomize.py, on the stages' PYTHONPATH with PFCVR_RECORD_PARAMS
  set, records the reads; dvc.lock says what DVC tracks);
- MLflow holds one parent run with the nested stage runs, seen through a real `mlflow server`'s REST
  API and in headless Chromium; offline, the pages `make ui` prints open on the variant runs with
  R1 ... mINP columns and compare them, no parent run stays RUNNING, and each variant's registered
  model embeds a caption (issue 15; PFCVR_UPDATE_FIGURES=1 refreshes the screenshots of docs/tracking.md);
- `dvc exp run -S train.mask_ratio=0.3` re-runs exactly the affected stages and shows up in
  `dvc exp show`, in `make compare` within 120 columns (issue 23), and as a new MLflow parent run;
  a queued experiment writes to the same store.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pfcvr.config import read_raw, set_dotted
from pfcvr.data.categories import PART_CATEGORIES
from tests.support.compare import compare_command
from tests.support.offline_browser import require_chromium
from tests.support.pipeline_config import PIPELINE_TINY

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# A tiny but complete configuration: every stage and branch runs, in about a minute per repro.
TINY = {**PIPELINE_TINY, "train.epochs": 2, "report.seeds": [0, 1], "tune.n_trials": 2}
# Three variants: the reference, one without a loss, one with an official-code switch (not among
# the default report.variants: picking it is what `-S report.variants=[...]` does).
VARIANTS = ("full", "no_part", "random_mim")
TINY["report.variants"] = list(VARIANTS)


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n"
                             f"{out.stdout[-4000:]}\n{out.stderr[-6000:]}")
    return out


def copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("reports/", "tests/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline")
    copy_project(repo)
    raw = read_raw(repo / "params.yaml")
    for key, value in TINY.items():
        set_dotted(raw, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    record = repo / "params_read.tsv"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_", "OPTUNA_"))}
    # The recorder lives in the tests, not the library: Python imports its sitecustomize at start-up.
    recorder = os.pathsep.join(filter(None, [str(ROOT / "tests" / "support" / "record_params"),
                                             env.get("PYTHONPATH")]))
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PFCVR_RECORD_PARAMS=str(record),
               PYTHONPATH=recorder,
               MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", PYTHONUNBUFFERED="1")
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny pipeline"], repo, env)
    out = run([str(BIN / "dvc"), "repro"], repo, env, timeout=1800)
    return {"repo": repo, "env": env, "record": record, "log": out.stdout + out.stderr}


def test_outputs_exist_and_are_sane(pipeline):
    repo = pipeline["repo"]
    manifest = json.loads((repo / "data/prepared/manifest.json").read_text())
    assert {r["split"] for r in manifest} == {"train", "val", "test"}
    parts = json.loads((repo / "data/parts/parts.json").read_text())
    assert parts["categories"] == list(PART_CATEGORIES) and len(parts["images"]) == len(manifest)
    for variant in VARIANTS:
        metrics = json.loads((repo / f"reports/metrics/{variant}.json").read_text())
        r1 = metrics["best"]["R1"]
        assert len(r1["runs"]) == 2 and all(0.0 <= x <= 100.0 for x in r1["runs"])
        for seed in (0, 1):
            assert (repo / f"models/{variant}/seed{seed}/best/config.json").is_file()
            assert (repo / f"models/{variant}/seed{seed}/final/config.json").is_file()
        assert (repo / f"reports/figures/topk_{variant}.png").is_file()
    ablation = json.loads((repo / "reports/ablation.json").read_text())
    assert set(ablation) == set(VARIANTS) | {"paired", "mde_R1", "mde", "zero_shot", "environment"}
    assert ablation["environment"]["cores"] >= 1 and ablation["environment"]["torch"]   # issue 21
    assert 0.0 <= ablation["zero_shot"]["R1"] <= 100.0
    assert "| `zero_shot` | pretrained backbone, no fine-tuning" in \
        (repo / "reports/ablation.md").read_text()
    pre = json.loads((repo / "reports/pretrain/stats.json").read_text())
    assert pre["shared_full_attribute_sets_with_benchmark"] == 0 and pre["steps"] == 20
    assert (repo / "models/pretrained/config.json").is_file()
    assert "no_part" in (repo / "reports/ablation.md").read_text()
    summary = json.loads((repo / "reports/tune/summary.json").read_text())
    assert summary["n_trials"] >= 2 and summary["command"].startswith("dvc exp run -S")
    for fig in ("data_samples", "part_pairs", "pretrain", "ablation", "tune_history", "train_full"):
        assert (repo / f"reports/figures/{fig}.png").read_bytes()[:4] == b"\x89PNG"


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted leaves of params.yaml; a mapping-valued parameter (ablations, tune.space) is a leaf."""
    keys = set()
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and key not in ("ablations", "tune.space"):
            keys |= _leaf_keys(v, key)
        else:
            keys.add(key)
    return keys


def _reads(record: Path) -> dict[str, set[str]]:
    by_stage: dict[str, set[str]] = {}
    for line in record.read_text().splitlines():
        stage, key = line.split("\t")
        by_stage.setdefault(stage, set()).add(key)
    return by_stage


def test_every_param_is_read(pipeline):
    raw = read_raw(pipeline["repo"] / "params.yaml")
    reads = set().union(*_reads(pipeline["record"]).values())
    unread = sorted(_leaf_keys(raw) - reads)
    assert not unread, f"params.yaml keys that no stage reads (dead -S knobs): {unread}"


def test_each_stage_lists_the_params_it_reads(pipeline):
    lock = yaml.safe_load((pipeline["repo"] / "dvc.lock").read_text())["stages"]
    for stage, keys in _reads(pipeline["record"]).items():
        assert stage in lock, f"params read outside a DVC stage: {stage}"
        tracked = set()
        for section in lock[stage].get("params", {}).values():
            tracked |= set(section)
        for key in keys:
            assert any(key == t or key.startswith(t + ".") for t in tracked), \
                f"stage {stage} reads {key} but dvc.yaml does not list it (lists {sorted(tracked)})"


def test_mlflow_runs_and_ui(pipeline, tmp_path):
    from tests.support.uicheck import MlflowServer, check_ui

    store = f"sqlite:///{pipeline['repo'] / 'mlflow.db'}"
    with MlflowServer(store) as server:
        exp = server.api("experiments/get-by-name?experiment_name=pfcvr")["experiment"]
        runs = server.api("runs/search", {"experiment_ids": [exp["experiment_id"]],
                                          "max_results": 500})["runs"]
    names = {r["info"]["run_name"] for r in runs}
    expected = {"workspace", "prepare", "parts", "pretrain", "zero_shot", "report", "tune"}
    expected |= {f"{s}@{v}" for s in ("train", "evaluate") for v in VARIANTS}
    assert expected <= names, f"missing runs: {expected - names}"
    parent = next(r for r in runs if r["info"]["run_name"] == "workspace")["info"]["run_id"]
    for r in runs:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        if r["info"]["run_name"] in expected - {"workspace"}:
            assert tags.get("mlflow.parentRunId") == parent
    trials = [r for r in runs if r["info"]["run_name"].startswith("trial ")]
    assert len(trials) >= 2
    require_chromium()
    found = check_ui(store, ("full", "no_part"), screenshot_path=tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert found["evaluate@full"]["metrics"] > 0


def test_dvc_exp_run_set_param(pipeline):
    repo, env = pipeline["repo"], pipeline["env"]
    dvc = str(BIN / "dvc")
    out = run([dvc, "exp", "run", "-S", "train.mask_ratio=0.3", "-n", "mask03"], repo, env,
              timeout=1800)
    log = out.stdout + out.stderr
    # Only the stages that read train.* (and what depends on them) re-run.
    assert "Running stage 'train@full'" in log and "Running stage 'report'" in log
    assert "Running stage 'prepare'" not in log and "Running stage 'parts'" not in log
    # issue 10: the pretrained backbone is cached, not retrained, by a fine-tuning override
    assert "Running stage 'pretrain'" not in log and "Running stage 'zero_shot'" not in log
    shown = json.loads(run([dvc, "exp", "show", "--json"], repo, env).stdout)
    text = json.dumps(shown)
    assert "mask03" in text and "0.3" in text
    # issue 23 §7: `make compare` fits 120 columns: the changed param and each variant's test
    # R1 / mAP (reports/compare.json; the workspace holds the experiment's outputs)
    table = run(compare_command(dvc), repo, {**env, "COLUMNS": "120"}).stdout
    lines = [line.rstrip() for line in table.splitlines() if line.strip()]
    assert max(map(len, lines)) <= 120 and "…" not in table, table
    assert next(line for line in lines if "Experiment" in line).split() == [
        "Experiment", *(f"test.{v}" for v in VARIANTS), "train.mask_ratio"], table
    cells = json.loads((repo / "reports/compare.json").read_text())["test"]
    row = next(line for line in lines if "[mask03]" in line)
    assert all(cells[v] in row for v in VARIANTS) and row.split()[-1] == "0.3", table
    from pfcvr import tracking
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    try:
        client = tracking._client()
        exp_id = tracking._experiment_id(client)
        parents = client.search_runs([exp_id], filter_string=f"tags.`{tracking.PARENT_TAG}` = 'mask03'")
        assert len(parents) == 1
        nested = client.search_runs([exp_id], filter_string=
                                    f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
        nested_names = {r.info.run_name for r in nested}
        assert {"train@full", "evaluate@full", "report"} <= nested_names
        assert "prepare" not in nested_names
        params = next(r for r in nested if r.info.run_name == "train@full").data.params
        assert float(params["train.mask_ratio"]) == 0.3
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def _parents(db: Path) -> set[str]:
    """DVC experiments that have a parent run in the store (read with sqlite3)."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return {v for (v,) in con.execute("SELECT value FROM tags WHERE key = 'pfcvr.experiment'")}
    finally:
        con.close()


def test_mlflow_ui_opens_on_the_ablation(pipeline, tmp_path, monkeypatch):
    """Issue 15, in headless Chromium with the network cut off, over the real pipeline's store:
    the printed runs page opens on the variant runs with R1 ... mINP columns, every parent run
    (workspace and mask03) is FINISHED, the printed compare page puts the variants side by side,
    and each variant's best model is registered and embeds a caption. PFCVR_UPDATE_FIGURES=1
    writes the screenshots to reports/figures/ (docs/tracking.md shows them)."""
    from tests.support.uicheck import check_ui

    require_chromium()
    repo, env = pipeline["repo"], pipeline["env"]
    if "mask03" not in _parents(repo / "mlflow.db"):   # run alone: make the second experiment
        run([str(BIN / "dvc"), "exp", "run", "-S", "train.mask_ratio=0.3", "-n", "mask03"], repo,
            env, timeout=1800)
    figures = ROOT / "reports/figures" if os.environ.get("PFCVR_UPDATE_FIGURES") else tmp_path
    store = f"sqlite:///{repo / 'mlflow.db'}"
    found = check_ui(store, VARIANTS, screenshot_path=figures / "mlflow_compare.png",
                     runs_screenshot=figures / "mlflow_runs.png",
                     finished_parents=("workspace", "mask03"))
    assert found["parents"] == {"workspace": "FINISHED", "mask03": "FINISHED"}
    assert "viewStateShareKey=ablation" in found["runs_url"]
    assert all(f"evaluate@{v}" in found for v in VARIANTS)
    for png in ("mlflow_compare.png", "mlflow_runs.png"):
        path = figures / png
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    mc = MlflowClient(store, store)
    for v in VARIANTS:
        latest = max(mc.search_model_versions(f"name = 'pfcvr-{v}'"), key=lambda m: int(m.version))
        assert mc.get_run(latest.run_id).info.run_name == f"evaluate@{v}"
    emb = mlflow.pyfunc.load_model("models:/pfcvr-full/latest").predict(
        pd.DataFrame({"caption": ["a white sedan with a black roof"]}))
    assert emb.shape == (1, 64) and abs(float((emb ** 2).sum()) - 1.0) < 1e-4
    trials = [r for r in mc.search_runs([found["experiment_id"]], "tags.`pfcvr.kind` = 'child'")
              if r.info.run_name.startswith("trial ")]
    assert trials and all(r.info.status == "FINISHED" and
                          r.data.tags.get("optuna.state") in ("COMPLETE", "PRUNED") for r in trials)
