"""pfcvr.tracking with real processes and signals (tests/support/tracking_proc.py is the stage).

- several processes that are the first to touch a store, started at the same instant, all
  succeed and make one store, one experiment and one parent run;
- a process killed while it builds the store leaves no half-built store;
- SIGTERM ends the run KILLED (exit 143); SIGKILL leaves it RUNNING until the next start of that
  stage closes it; afterwards nothing is RUNNING;
- a read-only store is one line at start-up, and a warning with `tracking.required: false`.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def env_for(db: Path, dvc_exp: str = "exp") -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_", "OPTUNA_", "PYTEST_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{db}", MLFLOW_EXPERIMENT_NAME="t13",
               DVC_EXP_NAME=dvc_exp, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    return env


def spawn(db: Path, name: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.support.tracking_proc", name, *args],
                            cwd=ROOT, env=env_for(db), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def statuses(db: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, status in query(db, "SELECT name, status FROM runs ORDER BY start_time, rowid"):
        out.setdefault(name, []).append(status)
    return out


def first_starts(folder: Path, n: int) -> list[tuple[int, str, str]]:
    """``n`` stage processes that open their runs on a fresh store at the same instant."""
    db, go = folder / "mlflow.db", folder / "go"
    procs = [spawn(db, f"stage{i}", "--ready", str(folder / f"ready{i}"), "--go", str(go))
             for i in range(n)]
    wait_for(lambda: all((folder / f"ready{i}").exists() for i in range(n)))
    go.touch()   # all of them imported mlflow and now race for the store
    return [finish(p) for p in procs]


@pytest.mark.parametrize("rounds,n", [pytest.param(1, 3, id="1x3"),
                                      pytest.param(8, 4, id="8x4", marks=pytest.mark.slow)])
def test_simultaneous_first_starts_make_one_store(tmp_path, rounds, n):
    for k in range(rounds):
        folder = tmp_path / f"round{k}"
        folder.mkdir()
        results = first_starts(folder, n)
        for rc, out, err in results:
            assert rc == 0 and "work done" in out, err[-3000:]
        db = folder / "mlflow.db"
        assert query(db, "SELECT count(*) FROM experiments WHERE name='t13'") == [(1,)]
        got = statuses(db)
        assert got.pop("exp") == ["FINISHED"]             # one parent run, finished
        assert got == {f"stage{i}": ["FINISHED"] for i in range(n)}
        assert not list(folder.glob("mlflow.db.new-*"))
        assert sum("created the store" in err for _, _, err in results) == 1


def test_a_process_killed_while_building_leaves_no_half_built_store(tmp_path):
    db = tmp_path / "mlflow.db"
    proc = spawn(db, "prepare")
    # Kill it while the temporary store exists: in the middle of MLflow's schema creation.
    wait_for(lambda: list(tmp_path.glob("mlflow.db.new-*")) or proc.poll() is not None)
    assert proc.poll() is None, "the build finished before the test could kill it"
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert not db.exists()                       # never renamed into place
    rc, out, err = finish(spawn(db, "prepare"))
    assert rc == 0 and "work done" in out, err[-3000:]
    assert not list(tmp_path.glob("mlflow.db.new-*"))        # the leftover is cleaned up
    assert statuses(db) == {"exp": ["FINISHED"], "prepare": ["FINISHED"]}


def test_sigterm_ends_the_run_killed_and_exits_nonzero(tmp_path):
    db = tmp_path / "mlflow.db"
    proc = spawn(db, "train@full", "--child", "--sleep", "120")
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc)
    assert rc == 143 and "work done" not in out
    assert "train@full: terminated by SIGTERM; run marked KILLED" in err
    assert "Traceback" not in err
    assert statuses(db) == {"exp": ["KILLED"], "train@full": ["KILLED"], "trial 0": ["KILLED"]}
    rc, out, err = finish(spawn(db, "train@full"))
    assert rc == 0 and "stale" not in err
    assert statuses(db) == {"exp": ["FINISHED"], "train@full": ["KILLED", "FINISHED"],
                            "trial 0": ["KILLED"]}


def test_sigkill_then_rerun_leaves_no_run_running(tmp_path):
    db = tmp_path / "mlflow.db"
    proc = spawn(db, "tune", "--child", "--sleep", "120")
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGKILL)
    rc, _, _ = finish(proc)
    assert rc == -signal.SIGKILL
    # Nothing can run in a SIGKILLed process: its runs stay RUNNING ...
    assert statuses(db) == {"exp": ["RUNNING"], "tune": ["RUNNING"], "trial 0": ["RUNNING"]}
    rc, out, err = finish(spawn(db, "tune"))
    assert rc == 0 and "work done" in out
    # ... until the next start of that stage closes them, in one line.
    assert [line for line in err.splitlines() if "stale" in line] == [
        "[tracking] closed 1 stale RUNNING run(s) of experiment exp as KILLED (their process "
        "is gone): tune"]
    assert statuses(db) == {"exp": ["FINISHED"], "tune": ["KILLED", "FINISHED"],
                            "trial 0": ["KILLED"]}


@pytest.fixture()
def read_only(tmp_path):
    """A function that makes a file read-only for this process, even when it runs as root
    (`chattr +i`, undone at teardown so that the folder can be removed)."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o444)
            return
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root, and chattr +i is not available here")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_store_is_one_line_or_a_warning(tmp_path, read_only):
    db = tmp_path / "mlflow.db"
    rc, out, err = finish(spawn(db, "prepare"))
    assert rc == 0, err
    read_only(db)
    rc, out, err = finish(spawn(db, "parts"))
    lines = err.strip().splitlines()
    assert rc == 1 and "work done" not in out and len(lines) == 1, err
    assert lines[0].startswith(f"TrackingError: tracking store {db} is read-only (")
    assert f"chmod u+w {db} {tmp_path}" in lines[0]
    rc, out, err = finish(spawn(db, "parts", "--optional"))
    assert rc == 0 and "work done" in out and "Traceback" not in err
    warned = [line for line in err.splitlines() if "UserWarning" in line]
    assert len(warned) == 1 and "is read-only" in warned[0]
    assert "going on without MLflow tracking" in warned[0]


@pytest.mark.slow   # starts `mlflow server` twice
def test_a_server_that_stops_mid_stage_does_not_stop_the_work(tmp_path):
    from tests.support.uicheck import MlflowServer

    db = tmp_path / "mlflow.db"
    rc, _, err = finish(spawn(db, "prepare"))           # the store, created beside the server
    assert rc == 0, err
    with MlflowServer(f"sqlite:///{db}") as server:
        env = dict(env_for(db), MLFLOW_TRACKING_URI=server.url)
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.tracking_proc", "train@full",
                                 "--child", "--sleep", "3"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "inside"
        server.stop()                                    # the server goes away mid-stage
        rc, out, err = finish(proc)
    assert rc == 0 and "work done" in out, err[-3000:]
    assert "Traceback" not in err
    warned = [line for line in err.splitlines() if "UserWarning" in line]
    assert len(warned) == 2, err                # the failure, then what was not logged
    assert "failed" in warned[0] and "goes on" in warned[0]
    assert "still fails at the end of the stage" in warned[1]
    assert statuses(db)["train@full"] == ["RUNNING"]     # nobody could tell the store
    with MlflowServer(f"sqlite:///{db}") as server:      # the server is back
        env = dict(env_for(db), MLFLOW_TRACKING_URI=server.url)
        out = subprocess.run([sys.executable, "-m", "tests.support.tracking_proc", "train@full"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "closed 1 stale RUNNING run(s)" in out.stderr, out.stderr
    got = statuses(db)
    assert got["train@full"] == ["KILLED", "FINISHED"] and got["trial 0"] == ["KILLED"]
    assert got["exp"] == ["FINISHED"]
