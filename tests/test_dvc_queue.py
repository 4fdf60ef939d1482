"""Queued DVC experiments run in parallel against one fresh MLflow store (real `dvc`, real sqlite).

A tiny git + DVC project whose one stage opens `pfcvr.tracking.stage_run` (the store is found as
the stages find it: `DVC_ROOT`, no MLFLOW_TRACKING_URI). On a fresh clone (no mlflow.db),
`dvc exp run --queue -S seed=1 -n a` and `... seed=2 -n b`, then `dvc exp run --run-all -j 2`,
five times: both experiments finish every time, the store holds one experiment, and each DVC
experiment's parent run is FINISHED (so is `workspace` after `dvc repro`), also as a real
`mlflow server` (what the UI reads) reports it.

DVC's celery queue itself sometimes hangs with several workers: a task stays queued for ever
(treeverse/dvc#10398 and #10428, open; one cause is a worker dying on a half-written kombu message).
A round that hangs is stopped after RUN_ALL_TIMEOUT, its workers are killed, and it runs once more
in a fresh clone, with a warning; every assertion applies to the round that finishes.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow
RUN_ALL_TIMEOUT = 300      # seconds; a round takes about 40 s on 2 loaded cores

STAGE = '''\
import yaml
from pfcvr.tracking import stage_run

seed = yaml.safe_load(open("params.yaml"))["seed"]
with stage_run("prepare", None, required=True) as run:
    run.log_metrics({"seed": seed})
    open("out.txt", "w").write(f"{seed}\\n")
'''
DVC_YAML = """\
stages:
  prepare:
    cmd: python stage.py
    deps: [stage.py]
    params: [seed]
    outs: [out.txt]
"""


def sh(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, \
        f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def fresh_project(path: Path, env: dict, stage: str = STAGE) -> None:
    path.mkdir()
    (path / "stage.py").write_text(stage)
    (path / "params.yaml").write_text("seed: 0\n")
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / ".gitignore").write_text("/mlflow.db*\n/mlartifacts/\n")
    sh(["git", "init", "-q"], path, env)
    sh([str(BIN / "dvc"), "init", "-q"], path, env)
    sh(["git", "add", "-A"], path, env)
    sh(["git", "commit", "-qm", "init"], path, env)


def kill_workers(repo: Path) -> int:
    """Kill every process working in ``repo`` (DVC's queue workers and their stages); the count."""
    killed = 0
    for proc in psutil.process_iter(["cwd"]):
        try:
            if proc.info["cwd"] and Path(proc.info["cwd"]).is_relative_to(repo):
                proc.kill()
                killed += 1
        except psutil.Error:
            pass
    return killed


class QueueHung(AssertionError):
    """`dvc exp run --run-all` did not return within RUN_ALL_TIMEOUT (module doc)."""


def queued_round(repo: Path, env: dict, dvc: str) -> str:
    """A fresh clone with experiments a (seed=1) and b (seed=2) queued, then run with 2 workers.
    Raises QueueHung (its workers killed, their logs in the message) when the queue hangs."""
    fresh_project(repo, env)
    sh([dvc, "exp", "run", "--queue", "-S", "seed=1", "-n", "a", "prepare"], repo, env)
    sh([dvc, "exp", "run", "--queue", "-S", "seed=2", "-n", "b", "prepare"], repo, env)
    try:
        return sh([dvc, "exp", "run", "--run-all", "-j", "2"], repo, env, timeout=RUN_ALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        logs = "".join(f.read_text(errors="replace")[-1500:]
                       for f in repo.glob(".dvc/tmp/exps/celery/*.out"))
        raise QueueHung(f"{repo.name}: `dvc exp run --run-all -j 2` hung for {RUN_ALL_TIMEOUT} s "
                        f"(treeverse/dvc#10398); killed {kill_workers(repo)} processes. Worker "
                        f"logs:\n{logs}") from None


def parent_statuses(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT r.name, r.status FROM runs r JOIN tags t ON "
                           "t.run_uuid = r.run_uuid WHERE t.key = 'pfcvr.kind' AND "
                           "t.value = 'parent'").fetchall()
        (n_exp,) = con.execute("SELECT count(*) FROM experiments WHERE name = 'pfcvr'").fetchone()
        running = con.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    finally:
        con.close()
    assert n_exp == 1 and running == 0
    return dict(rows)


def test_queued_experiments_in_parallel_on_a_fresh_store(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_", "OPTUNA_", "PYTEST_"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    dvc = str(BIN / "dvc")
    for k in range(5):
        repo = tmp_path / f"clone{k}"
        try:
            log = queued_round(repo, env, dvc)
        except QueueHung as hung:           # DVC's queue hung (module doc): once more
            warnings.warn(f"{hung}\nrunning round {k} again")
            repo = tmp_path / f"clone{k}-again"
            log = queued_round(repo, env, dvc)
        assert "Traceback" not in log and "duplicate column" not in log, log[-3000:]
        shown = sh([dvc, "exp", "show", "--no-pager", "--csv"], repo, env)
        assert sum(line.split(",")[0] in ("a", "b") and "Success" in line
                   for line in shown.splitlines()) == 2, shown
        assert parent_statuses(repo / "mlflow.db") == {"a": "FINISHED", "b": "FINISHED"}
        assert not list(repo.glob("mlflow.db.new-*"))
        if k == 0:   # a plain `dvc repro` ends its `workspace` parent too
            sh([dvc, "repro"], repo, env)
            assert parent_statuses(repo / "mlflow.db") == {
                "a": "FINISHED", "b": "FINISHED", "workspace": "FINISHED"}
            assert ui_statuses(repo / "mlflow.db") == {
                "a": ["FINISHED"], "b": ["FINISHED"], "workspace": ["FINISHED"],
                "prepare": ["FINISHED"] * 3}


def ui_statuses(db: Path) -> dict[str, list[str]]:
    """Run statuses as the MLflow UI gets them: the REST API of a real `mlflow server`."""
    from tests.support.uicheck import MlflowServer

    with MlflowServer(f"sqlite:///{db}") as server:
        exp = server.api("experiments/get-by-name?experiment_name=pfcvr")["experiment"]
        runs = server.api("runs/search", {"experiment_ids": [exp["experiment_id"]],
                                          "max_results": 100})["runs"]
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r["info"]["run_name"], []).append(r["info"]["status"])
    return out


# ----------------------------------------------------------------------------------------------
# Issue 23, items 1 and 2: queued, temporary and oddly named experiments are recorded exactly as
# a workspace run (runs FINISHED, a model version registered per run, R1 in the ablation view).
# ----------------------------------------------------------------------------------------------

EVAL_STAGE = '''\
import yaml
from pfcvr.tracking import stage_run
from pfcvr.tracking.model import log_model

seed = yaml.safe_load(open("params.yaml"))["seed"]
with stage_run("evaluate", None, variant="full", required=True) as run:
    run.log_metrics({"R1": 10.0 + seed, "R5": 20.0, "R10": 30.0, "mAP": 5.0 + seed, "mINP": 1.0})
    log_model(run, MODEL, "pfcvr-full", metadata={"variant": "full", "seed": seed})
open("out.txt", "w").write(f"{seed}\\n")
'''


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A real (tiny, untrained) PFCVR model folder, what evaluate@full publishes."""
    from pfcvr.config import load_params
    from pfcvr.data.dataset import load_split
    from pfcvr.model.io import save_model
    from tests.support.eval_helpers import build_tiny_model, make_split_data, write_params

    root = tmp_path_factory.mktemp("queue_model")
    params = load_params(write_params(root / "params.yaml", {"report.seeds": [0]}),
                         variant="full")
    prepared, parts = make_split_data(root, params)
    train = load_split(prepared, parts, "train")
    folder = root / "model"
    save_model(build_tiny_model(params, [c for r in train.records for c in r["captions"]]),
               folder, {"variant": "full", "seed": 0})
    return folder


def wait_for_queue(repo: Path, env: dict, dvc: str, names: set[str]) -> str:
    """Wait until the queued experiments ``names`` are done (`dvc queue status`); their table.
    Raises QueueHung (workers killed) after RUN_ALL_TIMEOUT."""
    deadline = time.monotonic() + RUN_ALL_TIMEOUT
    while True:
        status = sh([dvc, "queue", "status"], repo, env)
        rows = [line.split() for line in status.splitlines()]
        done = {r[1] for r in rows if len(r) > 2 and r[1] in names and r[-1] in ("Success",
                                                                                  "Failed")}
        if done == names:
            return status
        if time.monotonic() > deadline:
            raise QueueHung(f"{repo.name}: `dvc queue start -j 2` did not finish {names} within "
                            f"{RUN_ALL_TIMEOUT} s (treeverse/dvc#10398); killed "
                            f"{kill_workers(repo)} processes:\n{status}")
        time.sleep(2)


def queue_round(repo: Path, env: dict, dvc: str, stage: str) -> str:
    """A fresh clone; experiments a and b queued and run by `dvc queue start -j 2`."""
    fresh_project(repo, env, stage)
    sh([dvc, "exp", "run", "--queue", "-S", "seed=1", "-n", "a", "prepare"], repo, env)
    sh([dvc, "exp", "run", "--queue", "-S", "seed=2", "-n", "b", "prepare"], repo, env)
    sh([dvc, "queue", "start", "-j", "2"], repo, env)
    return wait_for_queue(repo, env, dvc, {"a", "b"})


def test_queued_temp_and_named_experiments_are_recorded_like_the_workspace(tmp_path,
                                                                           model_folder):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_", "OPTUNA_", "PYTEST_"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    dvc = str(BIN / "dvc")
    stage = EVAL_STAGE.replace("MODEL", repr(str(model_folder)))
    repo = tmp_path / "clone"
    try:
        status = queue_round(repo, env, dvc, stage)
    except QueueHung as hung:           # DVC's own queue hung (module doc): once more
        warnings.warn(f"{hung}\nrunning the queue once more")
        repo = tmp_path / "clone-again"
        status = queue_round(repo, env, dvc, stage)
    assert "Failed" not in status, status
    sh([dvc, "exp", "run", "--temp", "-S", "seed=3", "-n", "t", "prepare"], repo, env)
    sh([dvc, "exp", "run", "-S", "seed=4", "-n", "bob's-mask", "prepare"], repo, env)
    db = repo / "mlflow.db"
    con = sqlite3.connect(db)
    try:
        runs = con.execute("SELECT run_uuid, name, status FROM runs").fetchall()
        versions = con.execute("SELECT name, version, run_id, status FROM model_versions "
                               "ORDER BY version").fetchall()
        r1 = dict(con.execute("SELECT run_uuid, value FROM latest_metrics WHERE key = 'R1'"))
    finally:
        con.close()
    names = sorted(name for _, name, _ in runs)
    assert names == sorted(["a", "b", "t", "bob's-mask"] + ["evaluate@full"] * 4), names
    assert {status for *_, status in runs} == {"FINISHED"}, runs
    evaluate = {uuid for uuid, name, _ in runs if name == "evaluate@full"}
    # one registered version per run, each pointing at its own run
    assert [(n, v) for n, v, *_ in versions] == [("pfcvr-full", k) for k in (1, 2, 3, 4)]
    assert {run for _, _, run, _ in versions} == evaluate
    assert {s for *_, s in versions} == {"READY"}
    assert sorted(r1[u] for u in evaluate) == [11.0, 12.0, 13.0, 14.0]
    # the ablation view (the experiment's saved filter) lists all four evaluate@ runs
    from mlflow.tracking import MlflowClient

    from pfcvr.tracking.views import ablation_view

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("pfcvr")
    shown = client.search_runs([exp.experiment_id], ablation_view()["searchFilter"])
    assert sorted(r.data.metrics["R1"] for r in shown) == [11.0, 12.0, 13.0, 14.0]
    assert not (repo / ".dvc" / "tmp" / "exps").exists() or \
        not list((repo / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))
