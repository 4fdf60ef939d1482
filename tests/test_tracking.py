"""pfcvr.tracking in one process against real sqlite stores: parent status, stale runs, store
errors at start-up, a store that fails mid-way, a moved project folder.

Runs are read back with plain sqlite3 (not through pfcvr.tracking), so the checks do not trust the
code they check. Signals and concurrent processes: tests/test_tracking_concurrency.py.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pfcvr import tracking
from pfcvr.runtime import process, sqlite_store
from pfcvr.tracking import TrackingError, stage_run
from pfcvr.tracking import state as tracking_state
from pfcvr.tracking import views as tracking_views


@pytest.fixture()
def store(tmp_path, monkeypatch) -> Path:
    """A fresh store path under tmp_path (not created yet), experiment `t13`, DVC exp `exp`."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "t13")
    monkeypatch.setenv("DVC_EXP_NAME", "exp")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path / "mlflow.db"


def runs(db: Path) -> dict[str, list[str]]:
    """``{run name: [status, ...]}`` oldest first, read with sqlite3."""
    con = sqlite3.connect(db)
    try:
        out: dict[str, list[str]] = {}
        for name, status in con.execute("SELECT name, status FROM runs ORDER BY start_time, "
                                        "rowid"):
            out.setdefault(name, []).append(status)
        return out
    finally:
        con.close()


def hold_lock(db: Path) -> subprocess.Popen:
    """Another process that holds an exclusive lock on ``db`` until its stdin closes."""
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)
    proc.stdout.close()


def test_parent_run_takes_the_status_of_its_stages(store):
    with stage_run("prepare", required=True):
        assert runs(store)["exp"] == ["RUNNING"]            # parent runs while a stage runs
    assert runs(store) == {"exp": ["FINISHED"], "prepare": ["FINISHED"]}
    with pytest.raises(ValueError):
        with stage_run("train", variant="full", required=True):
            raise ValueError("boom")
    assert runs(store)["train@full"] == ["FAILED"] and runs(store)["exp"] == ["FAILED"]
    with stage_run("train", variant="full", required=True):   # the rerun that works
        pass
    assert runs(store)["exp"] == ["FINISHED"]                 # the latest run of each stage counts
    with pytest.raises(KeyboardInterrupt):
        with stage_run("report", required=True) as run:
            with run.child("trial 0"):
                raise KeyboardInterrupt
    got = runs(store)
    assert got["report"] == ["KILLED"] and got["trial 0"] == ["KILLED"] and got["exp"] == ["KILLED"]


def test_a_live_run_of_the_same_stage_is_left_running(store):
    # Two tune workers of one DVC experiment: the second must not close the first's run.
    with stage_run("tune", required=True):
        with stage_run("tune", required=True):
            assert runs(store)["tune"] == ["RUNNING", "RUNNING"]
        assert runs(store)["tune"] == ["RUNNING", "FINISHED"]
        assert runs(store)["exp"] == ["RUNNING"]
    assert runs(store) == {"exp": ["FINISHED"], "tune": ["FINISHED", "FINISHED"]}


def test_stale_runs_are_closed_killed_at_start_up(store, capsys):
    with stage_run("prepare", required=True):
        pass
    client = tracking._client()
    exp_id = tracking._experiment_id(client)
    parent = tracking._parent_run_id(client, exp_id)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    base = {"mlflow.parentRunId": parent, tracking.KIND_TAG: "stage",
            tracking.PARENT_TAG + ".name": "exp"}
    # train@full: an older version's run (no owner); evaluate@full: its process is gone;
    # tune: a live process on another machine; prepare in another DVC experiment.
    client.create_run(exp_id, run_name="train@full", tags=base)
    stale = client.create_run(exp_id, run_name="evaluate@full", tags={
        **base, tracking.OWNER_TAG: process.owner_token(int(dead))})
    client.create_run(exp_id, run_name="trial 3", tags={"mlflow.parentRunId": stale.info.run_id})
    client.create_run(exp_id, run_name="tune", tags={
        **base, tracking.OWNER_TAG: "other-host|x|1|1"})
    client.create_run(exp_id, run_name="prepare", tags={
        **base, tracking.PARENT_TAG + ".name": "other"})
    capsys.readouterr()
    with stage_run("train", variant="full", required=True):
        pass
    err = capsys.readouterr().err
    assert "closed 2 stale RUNNING run(s) of experiment exp as KILLED" in err
    assert "evaluate@full, train@full" in err
    got = runs(store)
    assert got["train@full"] == ["KILLED", "FINISHED"]
    assert got["evaluate@full"] == ["KILLED"] and got["trial 3"] == ["KILLED"]
    assert got["tune"] == ["RUNNING"]                      # cannot tell: left alone
    assert got["prepare"] == ["FINISHED", "RUNNING"]       # another experiment's run
    assert got["exp"] == ["RUNNING"]                       # tune still runs (as far as we know)


def test_owner_state_of_live_dead_and_foreign_processes():
    assert process.owner_state(process.owner_token()) == "alive"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    token = process.owner_token(proc.pid)
    proc.wait()
    assert process.owner_state(token) == "dead"
    assert process.owner_state("elsewhere|b|1|2") == "elsewhere"
    assert process.owner_state(None) == "unknown"
    assert process.owner_state("garbage") == "unknown"


def test_corrupt_store_is_one_line_and_optional_tracking_goes_on(store):
    store.write_bytes(b"this is not sqlite" * 300)
    with pytest.raises(TrackingError) as err:
        with stage_run("prepare", required=True):
            pass
    msg = str(err.value)
    assert "\n" not in msg and str(store) in msg and "not a readable SQLite database" in msg
    assert f"mv {store} {store}.broken" in msg and "tracking.required: false" in msg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with stage_run("prepare", required=False) as run:
            run.log_metrics({"x": 1.0})           # a no-op, not an error
            done = True
    assert done and not run.enabled
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "going on without MLflow tracking" in texts[0]
    assert store.read_bytes() == b"this is not sqlite" * 300     # left for the user to inspect


def test_foreign_sqlite_file_is_refused_and_left_unchanged(store):
    con = sqlite3.connect(store)
    con.execute("CREATE TABLE studies (study_id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(TrackingError, match="an SQLite file but not an MLflow store"):
        with stage_run("prepare", required=True):
            pass
    con = sqlite3.connect(store)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert tables == {"studies"}


def test_store_from_another_mlflow_version_is_one_line(store):
    with stage_run("prepare", required=True):
        pass
    con = sqlite3.connect(store)
    con.execute("UPDATE alembic_version SET version_num = 'abcdef012345'")
    con.commit()
    con.close()
    # A new process, as a stage is: MLflow checks the schema once per process.
    out = subprocess.run([sys.executable, "-m", "tests.support.tracking_proc", "parts"],
                         capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 1 and "work done" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"TrackingError: tracking store {store} has MLflow schema "
                               "abcdef012345, this MLflow needs ")
    assert f"mlflow db upgrade sqlite:///{store}" in lines[0]


def test_locked_store_at_start_up(store, monkeypatch):
    with stage_run("prepare", required=True):
        pass
    monkeypatch.setattr(sqlite_store, "BUSY_WAIT_S", 1.0)
    holder = hold_lock(store)
    try:
        with pytest.raises(TrackingError) as err:
            with stage_run("parts", required=True):
                pass
        msg = str(err.value)
        assert "\n" not in msg and "locked by another process for more than 1 s" in msg
        assert f"fuser -v {store}" in msg
        with pytest.warns(UserWarning, match="going on without MLflow tracking"):
            with stage_run("parts", required=False) as run:
                assert not run.enabled
    finally:
        release(holder)
    with stage_run("parts", required=True):        # the store is fine once the lock is gone
        pass
    assert runs(store)["parts"] == ["FINISHED"]


def test_missing_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    with pytest.raises(TrackingError, match="missing or not writable"):
        with stage_run("prepare", required=True):
            pass
    assert not (tmp_path / "nope").exists()


@pytest.mark.slow   # MLflow waits 20 s (its busy_timeout) before a call on a locked store fails
def test_store_failing_mid_way_warns_once_and_logs_later(store, monkeypatch, capsys):
    monkeypatch.setattr(tracking_state, "RETRY_S", 3600.0)   # only the end-of-stage retry
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with stage_run("train", variant="full", required=True) as run:
            run.log_metrics({"loss": 3.0}, step=1)
            holder = hold_lock(store)                    # the store is locked for a while
            try:
                run.log_metrics({"loss": 2.0}, step=2)   # fails after SQLite's busy timeout
                run.log_metrics({"loss": 1.0}, step=3)   # waits in the outbox, no new wait
                with run.child("trial 0") as trial:      # opened late too
                    trial.log_metrics({"val_R1": 5.0})
                work = sum(range(1000))                  # the work goes on
            finally:
                release(holder)
            run.log_text("card", "model_card.md")
    assert work == 499500
    texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(texts) == 1 and "failed" in texts[0] and "goes on" in texts[0], texts
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # loss@2, loss@3, open trial, its val_R1, end trial, model_card.md
    assert "answers again: 6 waiting call(s) logged" in err
    got = runs(store)
    assert got["train@full"] == ["FINISHED"] and got["trial 0"] == ["FINISHED"]
    assert got["exp"] == ["FINISHED"]
    con = sqlite3.connect(store)
    steps = sorted(r for r in con.execute("SELECT step, value FROM metrics WHERE key='loss'"))
    con.close()
    assert steps == [(1, 3.0), (2, 2.0), (3, 1.0)]
    arts = list((store.parent / "mlartifacts").rglob("model_card.md"))
    assert len(arts) == 1 and arts[0].read_text() == "card"


def test_moved_project_writes_artifacts_beside_the_store(tmp_path, monkeypatch, capsys):
    old, new = tmp_path / "proj", tmp_path / "moved" / "proj"
    old.mkdir()
    (tmp_path / "moved").mkdir()
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "t13")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(old))
    with stage_run("prepare", required=True) as run:
        run.log_text("before", "note.txt")
        first = run.run_id
    assert len(list((old / "mlartifacts").rglob("note.txt"))) == 1
    subprocess.run(["mv", str(old), str(new)], check=True)
    monkeypatch.setenv("DVC_ROOT", str(new))
    capsys.readouterr()
    with stage_run("parts", required=True) as run:
        run.log_text("after", "note2.txt")
    assert "was moved: 2 experiment(s) and 2 run(s)" in capsys.readouterr().err
    assert not old.exists()                        # nothing re-created in the old folder
    assert len(list((new / "mlartifacts").rglob("note2.txt"))) == 1
    con = sqlite3.connect(new / "mlflow.db")
    locations = [r[0] for r in con.execute("SELECT artifact_location FROM experiments")]
    uris = [r[0] for r in con.execute("SELECT artifact_uri FROM runs")]
    con.close()
    assert all(str(new / "mlartifacts") in x for x in locations + uris), locations + uris
    # The run from before the move still reads its artifact.
    client = tracking._client()
    assert client.download_artifacts(first, "note.txt", str(tmp_path)) and \
        (tmp_path / "note.txt").read_text() == "before"


def test_store_is_created_once_and_atomically(store):
    assert not store.exists()
    with stage_run("prepare", required=True):
        pass
    assert store.is_file() and not list(store.parent.glob("mlflow.db.new-*"))
    con = sqlite3.connect(store)
    (n_exp,) = con.execute("SELECT count(*) FROM experiments WHERE name='t13'").fetchone()
    con.close()
    assert n_exp == 1
    # An empty file (e.g. from `touch`) is a missing store, built again.
    store.unlink()
    store.touch()
    with stage_run("prepare", required=True):
        pass
    assert runs(store) == {"exp": ["FINISHED"], "prepare": ["FINISHED"]}
    assert os.path.getsize(store) > 0


def test_settle_closes_dead_runs_of_every_dvc_experiment(store, monkeypatch):
    with stage_run("prepare", required=True):
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "other")
    client = tracking._client()
    exp_id = tracking._experiment_id(client)
    parent = tracking._parent_run_id(client, exp_id)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    token = process.owner_token(proc.pid)
    proc.wait()
    client.create_run(exp_id, run_name="train@full", tags={
        "mlflow.parentRunId": parent, tracking.KIND_TAG: "stage",
        tracking.PARENT_TAG + ".name": "other", tracking.OWNER_TAG: token})
    assert runs(store)["other"] == ["RUNNING"]
    out = subprocess.run([sys.executable, "-m", "pfcvr.tracking", "--settle"], env=os.environ,
                         capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "parent run exp: FINISHED" in out.stdout and "parent run other: KILLED" in out.stdout
    got = runs(store)
    assert got["other"] == ["KILLED"] and got["train@full"] == ["KILLED"]
    assert got["exp"] == ["FINISHED"]


# ----------------------------------------------------------------------------------------------
# Names are data (issue 23, item 2)
# ----------------------------------------------------------------------------------------------

def parents(db: Path) -> dict[str, tuple[str, int]]:
    """``{parent run name: (status, number of stage runs under it)}``, read with sqlite3."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.name, r.status FROM runs r JOIN tags t ON t.run_uuid = "
            "r.run_uuid WHERE t.key = 'pfcvr.kind' AND t.value = 'parent'").fetchall()
        out = {}
        for uuid, name, status in rows:
            (n,) = con.execute("SELECT count(*) FROM tags WHERE key = 'mlflow.parentRunId' AND "
                               "value = ?", (uuid,)).fetchone()
            out[name] = (status, n)
        return out
    finally:
        con.close()


@pytest.mark.parametrize("name", ["bob's-mask", 'say "hi"', "both'\"quotes", "back`tick",
                                  "and or = 'x' --"])
def test_a_dvc_experiment_name_is_data(store, monkeypatch, name):
    """`dvc exp run -n "bob's-mask"` stopped every stage with "Invalid clause(s) in filter
    string" (the name was pasted into a filter). Any name: one parent, found again by the next
    stage, every run FINISHED; the experiment's note quotes the name as code."""
    monkeypatch.setenv("DVC_EXP_NAME", name)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lab's \"t13\"")
    for stage in ("prepare", "parts"):
        with stage_run(stage, required=True) as run:
            run.log_metrics({"x": 1.0})
    with stage_run("report", required=True) as run:
        run.log_to_parent(tags={"mlflow.note.content": "# table"})
    assert parents(store) == {name: ("FINISHED", 3)}
    assert set(runs(store)) == {name, "prepare", "parts", "report"}
    client = tracking._client()
    note = client.get_experiment_by_name("lab's \"t13\"").tags["mlflow.note.content"]
    assert tracking_views.code_span(name) in note


def test_filter_literal_and_find_runs(store):
    from pfcvr.tracking.state import filter_literal, find_runs

    assert filter_literal("bob's") == '"bob\'s"' and filter_literal('a"b') == "'a\"b'"
    assert filter_literal("plain") == "'plain'" and filter_literal("x'\"y") is None
    with stage_run("prepare", required=True):
        pass
    client = tracking._client()
    exp = tracking._experiment_id(client)
    for value in ("bob's", 'a"b', "x'\"y"):
        client.create_run(exp, run_name=value, tags={"k": value})
    for value in ("bob's", 'a"b', "x'\"y"):
        found = find_runs(client, exp, {"k": value})
        assert [r.info.run_name for r in found] == [value]


def test_a_refused_call_is_dropped_and_never_leaves_a_run_running(store, tmp_path):
    """A call the store refuses for good (here: a folder that is no model) used to wait in the
    outbox and hold back every later call, the end of the run among them: the run stayed
    RUNNING. Now: one warning naming the call, the rest logged, the run FINISHED."""
    from pfcvr.tracking.model import log_model

    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with stage_run("evaluate", variant="full", required=True) as run:
            log_model(run, not_a_model, "pfcvr-full")
            run.log_metrics({"R1": 12.5})
    texts = [str(w.message) for w in caught if "refused" in str(w.message)]
    assert len(texts) == 1 and "log model pfcvr-full" in texts[0] and "not retried" in texts[0]
    assert runs(store) == {"exp": ["FINISHED"], "evaluate@full": ["FINISHED"]}
    con = sqlite3.connect(store)
    assert con.execute("SELECT value FROM latest_metrics WHERE key='R1'").fetchall() == [(12.5,)]
    con.close()


# ----------------------------------------------------------------------------------------------
# A tracking server that cannot be used (issue 22): one line, the password hidden. The real
# MLflow server (refused credentials included) is in tests/test_lab.py.
# ----------------------------------------------------------------------------------------------

def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def not_mlflow():
    """A plain HTTP server (answers 501 to MLflow's POST) and a TCP port that hangs up at once
    (not HTTP at all), on 127.0.0.1; yields their ports."""
    import http.server
    import socket
    import threading

    web = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen()

    def hang_up():
        while True:
            try:
                con, _ = raw.accept()
            except OSError:
                return
            con.close()

    threads = [threading.Thread(target=web.serve_forever, daemon=True),
               threading.Thread(target=hang_up, daemon=True)]
    for t in threads:
        t.start()
    yield web.server_address[1], raw.getsockname()[1]
    web.shutdown()
    raw.close()


def test_an_unusable_server_is_one_line_with_the_password_hidden(monkeypatch, not_mlflow):
    web, raw = not_mlflow
    cases = [(f"http://bob:s3cret@127.0.0.1:{_closed_port()}",
              "tracking server http://bob:***@127.0.0.1:{port} cannot be reached ([Errno 111] "
              "Connection refused): start it (make lab-server) or fix MLFLOW_TRACKING_URI"),
             (f"http://bob:s3cret@127.0.0.1:{web}",
              "http://bob:***@127.0.0.1:{port} answers, but not as an MLflow tracking server "
              "(HTTP 501): point MLFLOW_TRACKING_URI at the `mlflow server` address, e.g. "
              "http://host:5000"),
             (f"http://127.0.0.1:{raw}",
              "http://127.0.0.1:{port} is not an MLflow tracking server (it does not answer HTTP "
              "as one): point MLFLOW_TRACKING_URI at the `mlflow server` address (docs: make "
              "lab-server)")]
    for uri, expected in cases:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(TrackingError) as info:
            with stage_run("prepare", required=True):
                raise AssertionError("the work must not start")
        port = uri.rsplit(":", 1)[1]
        assert str(info.value) == expected.format(port=port) + \
            " (or set tracking.required: false to run without tracking)"
        assert "s3cret" not in str(info.value)


@pytest.mark.slow   # starts a real `mlflow server` twice (about 10 s each)
def test_a_server_lost_during_the_stage_never_stops_it(tmp_path, monkeypatch, capsys):
    """Issue 22: the tracking server goes away mid-stage (stopped) and comes back on the same
    address: the work goes on with one warning, the waiting calls are logged at the end, the run
    ends FINISHED, and its artifacts went to the server over HTTP."""
    from tests.support.uicheck import MlflowServer

    monkeypatch.setattr(tracking_state, "RETRY_S", 3600.0)   # only the end-of-stage retry
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "t22")
    monkeypatch.setenv("DVC_EXP_NAME", "exp")
    store = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.chdir(tmp_path)   # the server keeps its artifacts in ./mlartifacts
    first = MlflowServer(store).__enter__()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first.url)
    card = tmp_path / "card.md"
    card.write_text("card")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with stage_run("train", variant="full", required=True) as run:
                run.log_metrics({"loss": 3.0}, step=1)
                first.stop()                                  # the server is gone
                run.log_metrics({"loss": 2.0}, step=2)        # fails: waits in the outbox
                run.log_artifact(card)
                work = sum(range(1000))                       # the work goes on
                second = MlflowServer(store, port=first.port).__enter__()   # back again
    finally:
        first.stop()
    try:
        assert work == 499500
        texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert len(texts) == 1 and "goes on" in texts[0], texts
        assert "answers again: 2 waiting call(s) logged" in capsys.readouterr().err
        client = tracking._client()
        exp = client.get_experiment_by_name("t22").experiment_id
        got = {r.info.run_name: r for r in client.search_runs([exp])}
        parent = f"exp @ {os.uname().nodename}:{tracking.repo_root().name}"   # server: + clone
        assert set(got) == {"train@full", parent}
        assert got["train@full"].info.status == got[parent].info.status == "FINISHED"
        history = client.get_metric_history(got["train@full"].info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 2.0)]
        assert got["train@full"].info.artifact_uri.startswith("mlflow-artifacts:")
        path = client.download_artifacts(got["train@full"].info.run_id, "card.md",
                                         str(tmp_path / "back"))
        assert Path(path).read_text() == "card"
    finally:
        second.stop()
