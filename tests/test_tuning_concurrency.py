"""The Optuna storage with real processes and signals (tests/support/tuning_proc.py is the tune worker).

- workers that are the first to touch a fresh optuna.db at the same instant all succeed, with one
  study (without the lock Optuna's table creation failed in most of them);
- a tune worker killed during a trial (SIGKILL) leaves the trial RUNNING until the next worker
  fails it, and the resumed study's counts add up; after SIGTERM the trial is failed at once and
  the tune run and its trial's MLflow run end KILLED;
- workers share `tune.n_trials` (issue 23, item 5): two workers started together on a fresh
  optuna.db with n_trials 2 finish exactly 2 trials, and both summaries count the whole study;
- a worker that froze (SIGSTOP: alive, but no heartbeat) has its trial failed by Optuna's
  heartbeat after `tune.grace_period`, and another worker takes its place in n_trials.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pfcvr.config import read_raw, set_dotted

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import sys, time
from pathlib import Path
from pfcvr.tuning.storage import claim, open_study
folder = Path(sys.argv[1])
(folder / f"ready{sys.argv[2]}").write_text("ready")
while not (folder / "go").exists():
    time.sleep(0.005)
study = open_study("s", f"sqlite:///{folder / 'optuna.db'}", direction="maximize",
                   heartbeat_interval=60, grace_period=600)

def objective(trial):
    claim(trial)
    return trial.suggest_float("x", 0, 1)

study.optimize(objective, n_trials=2)
print("work done")
"""


def env_for(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_", "OPTUNA_", "PYTEST_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               MLFLOW_EXPERIMENT_NAME="t13", DVC_EXP_NAME="exp", OMP_NUM_THREADS="1",
               OPTUNA_STORAGE=f"sqlite:///{tmp_path / 'optuna.db'}",
               MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    return env


def trial_states(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT state FROM trials ORDER BY number")]
    finally:
        con.close()


def run_statuses(db: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(db)
    try:
        out: dict[str, list[str]] = {}
        for name, status in con.execute("SELECT name, status FROM runs ORDER BY start_time"):
            out.setdefault(name, []).append(status)
        return out
    finally:
        con.close()


def test_workers_that_start_together_share_one_fresh_storage(tmp_path):
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(i)], cwd=ROOT,
                              env=env_for(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "work done" in out, err[-3000:]
    con = sqlite3.connect(tmp_path / "optuna.db")
    assert con.execute("SELECT count(*) FROM studies").fetchone() == (1,)
    con.close()
    assert trial_states(tmp_path / "optuna.db") == ["COMPLETE"] * (2 * n)
    assert not list(tmp_path.glob("optuna.db.new-*"))


@pytest.fixture()
def params_file(tmp_path) -> Path:
    raw = read_raw(ROOT / "params.yaml")
    for key, value in {"tune.n_trials": 2, "tune.epochs": 1}.items():
        set_dotted(raw, key, value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def worker(params: Path, tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.support.tuning_proc", str(params),
                             str(tmp_path), *args], cwd=ROOT, env=env_for(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_while_training(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    for line in proc.stdout:
        if line.strip() == "training":
            break
    else:
        raise AssertionError(f"the worker never trained: {proc.stderr.read()[-3000:]}")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def resume(params: Path, tmp_path: Path) -> tuple[dict, str]:
    out = subprocess.run([sys.executable, "-m", "tests.support.tuning_proc", str(params), str(tmp_path),
                          "--tracked"], cwd=ROOT, env=env_for(tmp_path), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def test_sigkilled_trial_is_failed_by_the_next_worker_and_counts_add_up(tmp_path, params_file):
    rc, _ = kill_while_training(worker(params_file, tmp_path, "--tracked", "--sleep", "120"),
                                signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert trial_states(tmp_path / "optuna.db") == ["RUNNING"]
    summary, out = resume(params_file, tmp_path)
    assert "[tune] failed 1 stale RUNNING trial(s) of study" in out and ": 0" in out
    assert trial_states(tmp_path / "optuna.db") == ["FAIL", "COMPLETE", "COMPLETE"]
    assert summary["n_trials"] == 3 and summary["n_failed"] == 1
    assert summary["n_complete"] + summary["n_pruned"] + summary["n_failed"] == summary["n_trials"]
    runs = run_statuses(tmp_path / "mlflow.db")
    assert runs["tune"] == ["KILLED", "FINISHED"] and runs["trial 0"] == ["KILLED"]
    assert runs["exp"] == ["FINISHED"]
    assert "RUNNING" not in {s for v in runs.values() for s in v}


def test_sigterm_fails_the_trial_at_once_and_ends_the_runs_killed(tmp_path, params_file):
    rc, err = kill_while_training(worker(params_file, tmp_path, "--tracked", "--sleep", "120"),
                                  signal.SIGTERM)
    assert rc == 143 and "tune: terminated by SIGTERM; run marked KILLED" in err
    assert trial_states(tmp_path / "optuna.db") == ["FAIL"]
    assert run_statuses(tmp_path / "mlflow.db") == {
        "exp": ["KILLED"], "tune": ["KILLED"], "trial 0": ["KILLED"]}
    summary, out = resume(params_file, tmp_path)
    assert "stale" not in out
    assert (summary["n_trials"], summary["n_failed"], summary["n_complete"]) == (3, 1, 2)
    assert run_statuses(tmp_path / "mlflow.db")["exp"] == ["FINISHED"]


def start_together(params: Path, tmp_path: Path, n: int, *args: str) -> list[subprocess.Popen]:
    """``n`` tune workers that open the (fresh) storage at the same instant."""
    go = tmp_path / "go"
    procs = [worker(params, tmp_path, "--ready", str(tmp_path / f"ready{i}"), "--go", str(go),
                    *args) for i in range(n)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()
    return procs


def test_two_workers_on_a_fresh_storage_finish_exactly_n_trials(tmp_path, params_file):
    """The issue's example: n_trials 2, two workers started together on a fresh optuna.db. Before
    the fix they finished 3 trials and their summaries said 3 and 2 complete."""
    procs = start_together(params_file, tmp_path, 2, "--trial-s", "2")
    summaries = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    assert trial_states(tmp_path / "optuna.db") == ["COMPLETE", "COMPLETE"]
    counts = [(s["n_trials"], s["n_complete"], s["n_pruned"], s["n_failed"], s["n_running"])
              for s in summaries]
    assert counts == [(2, 2, 0, 0, 0)] * 2
    # each worker ran one of the two trials, in parallel (their owners differ)
    con = sqlite3.connect(tmp_path / "optuna.db")
    owners = {r[0] for r in con.execute(
        "SELECT value_json FROM trial_user_attributes WHERE key = 'pfcvr.owner'")}
    con.close()
    assert len(owners) == 2


def test_frozen_worker_is_failed_by_the_heartbeat_and_replaced(tmp_path):
    """A worker stopped with SIGSTOP (alive, so not 'gone') sends no heartbeat: after
    tune.grace_period the other worker fails its trial and runs one more, so the study finishes
    n_trials, with the frozen trial counted as failed."""
    raw = read_raw(ROOT / "params.yaml")
    for key, value in {"tune.n_trials": 2, "tune.epochs": 1, "tune.heartbeat_interval": 1,
                       "tune.grace_period": 3}.items():
        set_dotted(raw, key, value)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    frozen = worker(params, tmp_path, "--sleep", "600")
    for line in frozen.stdout:
        if line.strip() == "training":
            break
    frozen.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        summary, out = resume(params, tmp_path)
        took = time.monotonic() - started
    finally:
        frozen.kill()
        frozen.communicate(timeout=60)
    assert "without a heartbeat for tune.grace_period: 0" in out, out
    assert trial_states(tmp_path / "optuna.db") == ["FAIL", "COMPLETE", "COMPLETE"]
    assert (summary["n_trials"], summary["n_failed"], summary["n_complete"],
            summary["n_running"]) == (3, 1, 2, 0)
    assert took >= 3          # not before the grace period
