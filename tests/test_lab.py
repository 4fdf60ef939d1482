"""A lab's setup against real servers (issue 22): PostgreSQL, an MLflow server, a DVC remote.

`python -m pfcvr.tracking.lab start` (what `make lab-server` runs) starts Debian's PostgreSQL as an
unprivileged user in a temporary folder on a free 127.0.0.1 port, and `mlflow server
--backend-store-uri postgresql://... --serve-artifacts` with accounts (basic-auth) over it. Two
clones of the repository act as two machines (as root, clone B runs in a UTS namespace of its own,
so its host name differs, as another machine's would):

1. each runs a tiny `dvc repro report` (prepare -> ... -> evaluate -> report) at the same time,
   then both run `dvc repro tune` at the same time: the server holds both clones' parent runs,
   every run FINISHED, the artifacts (files and registered models) come back over HTTP, and the
   one study holds both workers' trials: exactly tune.n_trials finished, counts adding up, and
   both summaries counting the whole study;
2. a tune worker SIGKILLed mid-trial: after tune.grace_period the other machine's worker fails
   its trial (Optuna's heartbeat: it cannot see another machine's processes) and runs one more;
3. clone A pushes to a DVC remote (a folder); a fresh clone `dvc pull`s, its `dvc repro` runs no
   stage, and `dvc exp run -S eval.topk_queries=2` re-runs evaluation only;
4. bad input stops a stage before work with one line, the password hidden, nothing written:
   server down, wrong password (MLflow account, PostgreSQL), not an MLflow server, sqlite URIs
   to a missing folder;
5. the Optuna dashboard (`make tune-ui` = `python -m pfcvr.tuning.dashboard`) opens the PostgreSQL
   storage and lists the study.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from pfcvr.config import read_raw, set_dotted
from pfcvr.runtime.postgres import LabError, pg_binaries
from pfcvr.tracking.lab import free_port
from tests.support.pipeline_config import PIPELINE_TINY

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# One variant, one seed, one epoch: every stage runs, in about a minute per clone on 2 cores.
LAB_TINY = {
    **PIPELINE_TINY,
    "train.epochs": 1, "train.seed_workers": 1, "report.seeds": [0], "report.variants": ["full"],
    "tune.n_trials": 3, "tune.heartbeat_interval": 2, "tune.grace_period": 10,
}
AS_ROOT = os.geteuid() == 0
HOST_B = "machine-b"


def machine_b(cmd: list[str]) -> list[str]:
    """``cmd`` as run on "another machine": as root, in a UTS namespace named HOST_B."""
    if not AS_ROOT or shutil.which("unshare") is None:
        return cmd
    return ["unshare", "--uts", "--", "sh", "-c", f'hostname {HOST_B} && exec "$@"', "sh", *cmd]


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900,
        check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n"
                             f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def finish(proc: subprocess.Popen, what: str, timeout: int = 900) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out[-4000:]}\n{err[-4000:]}"
    return out + err


def copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("reports/", "tests/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def snapshot(repo: Path) -> dict[str, int]:
    """mtime of every file under the outputs of a clone (to prove nothing was written)."""
    return {str(p): p.stat().st_mtime_ns for d in ("data", "models", "reports")
            for p in (repo / d).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def lab():
    try:
        pg_binaries()
    except LabError as err:
        pytest.skip(f"{err} (make postgres installs it)")
    # Under /tmp with o+x: as root, PostgreSQL runs as user postgres and must reach its folder.
    home = Path(tempfile.mkdtemp(prefix="pfcvr-lab-"))
    home.chmod(0o755)
    folder, port, pg_port = home / "server", free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("MLFLOW_", "DVC_", "OPTUNA_", "PYTEST_", "LAB_"))}
    base_env.update(PATH=f"{BIN}:{base_env.get('PATH', '')}", OMP_NUM_THREADS="1",
                    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
                    MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", PYTHONUNBUFFERED="1",
                    GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                    GIT_COMMITTER_EMAIL="t@t")
    started = time.monotonic()
    run([sys.executable, "-m", "pfcvr.tracking.lab", "start", "--dir", str(folder),
         "--port", str(port), "--pg-port", str(pg_port), "--workers", "1",
         "--public-host", "127.0.0.1"], ROOT, base_env, timeout=300)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME",
                                              "MLFLOW_TRACKING_PASSWORD")}
    try:
        lines = run([sys.executable, "-m", "pfcvr.tracking.lab", "env", "--dir", str(folder),
                     "--public-host", "127.0.0.1"], ROOT, base_env).stdout
        member = dict(line.removeprefix("export ").split("=", 1) for line in lines.splitlines())
        env = {**base_env, **member}
        os.environ.update({k: member[k] for k in saved})   # for MlflowClient in this process
        state = {"home": home, "folder": folder, "port": port, "pg_port": pg_port, "env": env,
                 "password": (folder / "password").read_text().strip(),
                 "admin": member["MLFLOW_TRACKING_PASSWORD"], "remote": home / "dvc-remote",
                 "timings": {"lab start": time.monotonic() - started}}
        yield prepare_clones(state)
    finally:
        servers = json.loads((folder / "lab.json").read_text())
        cpu = {}
        for name in ("mlflow", "postgres"):
            try:
                proc = psutil.Process(servers[f"{name}_pid"])
                cpu[name] = sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(True)])
            except (psutil.Error, KeyError):
                pass
        print(f"\n[lab] server CPU seconds (alive processes): {cpu}", flush=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        subprocess.run([sys.executable, "-m", "pfcvr.tracking.lab", "stop", "--dir", str(folder)],
                       cwd=ROOT, env=base_env, capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def prepare_clones(state: dict) -> dict:
    """Clone A (tiny params, committed) and clone B (`git clone` of A); both run the pipeline,
    then a tune worker each, at the same time; A pushes its outputs to the DVC remote."""
    home, env, dvc = state["home"], state["env"], str(BIN / "dvc")
    a, b = home / "clone-a", home / "clone-b"
    a.mkdir()
    copy_project(a)
    raw = read_raw(a / "params.yaml")
    for key, value in LAB_TINY.items():
        set_dotted(raw, key, value)
    (a / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"[lab] servers started in {state['timings']['lab start']:.0f} s", flush=True)
    run(["git", "init", "-q"], a, env)
    run([dvc, "remote", "add", "-d", "lab", str(state["remote"])], a, env)
    run(["git", "add", "-A"], a, env)
    run(["git", "commit", "-qm", "lab test"], a, env)
    run(["git", "clone", "-q", str(a), str(b)], home, env)
    timings = state["timings"]
    for target in ("report", "tune"):   # the pipelines together, then the workers together
        t0 = time.monotonic()
        procs = {name: subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                 for name, repo, cmd in (("A", a, [dvc, "repro", target]),
                                         ("B", b, machine_b([dvc, "repro", target])))}
        state[f"log_{target}"] = {name: finish(p, f"clone {name}: dvc repro {target}")
                                  for name, p in procs.items()}
        timings[f"dvc repro {target} (A and B at once)"] = time.monotonic() - t0
        print(f"[lab] dvc repro {target} in A and B: {time.monotonic() - t0:.0f} s", flush=True)
    run(["git", "add", "-A"], a, env)
    run(["git", "commit", "-qm", "outputs"], a, env)
    t0 = time.monotonic()
    run([dvc, "push"], a, env)
    timings["dvc push"] = time.monotonic() - t0
    state.update(a=a, b=b, dvc=dvc)
    return state


def all_runs(client, exp_id: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def study(lab: dict):
    import optuna

    name = json.loads((lab["a"] / "reports/tune/summary.json").read_text())["study"]
    return optuna.load_study(study_name=name, storage=lab["env"]["OPTUNA_STORAGE"])


def test_two_machines_share_one_tracking_server_and_one_study(lab):
    from mlflow.tracking import MlflowClient

    uri = lab["env"]["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pfcvr")
    runs = all_runs(client, exp.experiment_id)
    parents = [r for r in runs if r.data.tags.get("pfcvr.kind") == "parent"]
    clones = {r.data.tags["pfcvr.clone"] for r in parents}
    assert len(parents) == 2 and len(clones) == 2, [r.info.run_name for r in parents]
    if AS_ROOT:
        assert {c.split(":")[0] for c in clones} == {os.uname().nodename, HOST_B}
    assert {r.info.status for r in runs} == {"FINISHED"}, \
        sorted((r.info.run_name, r.info.status) for r in runs if r.info.status != "FINISHED")
    stages = {"prepare", "parts", "pretrain", "zero_shot", "train@full", "evaluate@full",
              "report", "tune"}
    for p in parents:
        children = {r.info.run_name for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == p.info.run_id}
        assert children == stages, (p.info.run_name, children)
    # artifacts went over HTTP (proxied locations) and come back equal to the clone's files
    for p in parents:
        repo = lab["a"] if p.data.tags["pfcvr.clone"].endswith(str(lab["a"])) else lab["b"]
        ev = next(r for r in runs if r.info.run_name == "evaluate@full"
                  and r.data.tags.get("mlflow.parentRunId") == p.info.run_id)
        assert ev.info.artifact_uri.startswith("mlflow-artifacts:"), ev.info.artifact_uri
        got = client.download_artifacts(ev.info.run_id, "full.json", str(lab["home"]))
        assert Path(got).read_text() == (repo / "reports/metrics/full.json").read_text()
        assert ev.data.metrics["R1"] == round(
            json.loads(Path(got).read_text())["best"]["R1"]["mean"], 2)
    versions = client.search_model_versions("name = 'pfcvr-full'")
    evaluate_ids = {r.info.run_id for r in runs if r.info.run_name == "evaluate@full"}
    assert {v.run_id for v in versions} == evaluate_ids and len(versions) == 2
    import mlflow.artifacts

    from pfcvr.tracking.client import process_store

    with process_store(uri):   # `models:/` is resolved through the process-wide registry URI
        folder = mlflow.artifacts.download_artifacts("models:/pfcvr-full/1",
                                                     dst_path=str(lab["home"] / "model1"))
    assert (Path(folder) / "MLmodel").is_file()
    assert len(list(Path(folder).rglob("model.safetensors"))) == 1   # the weights came too
    # one study, both machines' workers, exactly tune.n_trials finished, counts adding up
    summaries = [json.loads((repo / "reports/tune/summary.json").read_text())
                 for repo in (lab["a"], lab["b"])]
    assert summaries[0]["study"] == summaries[1]["study"], "the clones opened different studies"
    trials = study(lab).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 3 and "RUNNING" not in states
    owners = {t.user_attrs["pfcvr.owner"].split("|")[0] + "|" + t.user_attrs["pfcvr.owner"]
              .split("|")[2] for t in trials}
    assert len(owners) == 2, owners
    counts = {(s["n_trials"], s["n_complete"], s["n_pruned"], s["n_failed"], s["n_running"])
              for s in summaries}
    assert counts == {(len(trials), states.count("COMPLETE"), states.count("PRUNED"),
                       states.count("FAIL"), 0)}, summaries
    print(f"\ntimings (s): {json.dumps({k: round(v, 1) for k, v in lab['timings'].items()})}")


def test_a_sigkilled_worker_is_failed_after_the_grace_period(lab):
    import optuna

    more = read_raw(lab["a"] / "params.yaml")
    set_dotted(more, "tune.n_trials", 4)   # one more trial than the study holds
    for repo in (lab["a"], lab["b"]):
        (repo / "params-more.yaml").write_text(yaml.safe_dump(more, sort_keys=False))
    cmd = [sys.executable, "-m", "stages.tune", "--params", "params-more.yaml"]
    s = study(lab)
    before = len(s.trials)
    doomed = subprocess.Popen(cmd, cwd=lab["a"], env=lab["env"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not s.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        assert doomed.poll() is None and time.monotonic() < deadline, "no trial started"
        time.sleep(0.3)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=60)
    t0 = time.monotonic()
    out = run(machine_b(cmd), lab["b"], lab["env"], timeout=600)
    took = time.monotonic() - t0
    trials = study(lab).trials
    states = [t.state.name for t in trials]
    assert states[before] == "FAIL" and "RUNNING" not in states, states
    assert states.count("COMPLETE") + states.count("PRUNED") == 4
    assert len(states) == before + 2
    if AS_ROOT:   # the other machine cannot see the process: Optuna's heartbeat decides
        assert (f"without a heartbeat for tune.grace_period: {before}" in out.stdout), out.stdout
        assert took >= LAB_TINY["tune.grace_period"]
    summary = json.loads((lab["b"] / "reports/tune/summary.json").read_text())
    assert (summary["n_trials"], summary["n_failed"], summary["n_running"]) == \
        (len(states), 1, 0)


def test_a_second_clone_pulls_the_outputs_and_runs_nothing(lab):
    dvc, env = lab["dvc"], lab["env"]
    c = lab["home"] / "clone-c"
    run(["git", "clone", "-q", str(lab["a"]), str(c)], lab["home"], env)
    run([dvc, "pull"], c, env)
    for path in ("data/prepared/manifest.json", "data/parts/parts.json",
                 "models/pretrained/config.json", "models/full/seed0/best/config.json"):
        assert (c / path).is_file(), path
    log = run([dvc, "repro"], c, env).stdout
    assert "Running stage" not in log, log
    assert "Data and pipelines are up to date" in run([dvc, "status"], c, env).stdout
    log = run([dvc, "exp", "run", "-S", "eval.topk_queries=2"], c, env).stdout
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    assert "evaluate@full" in ran and not ran & {"prepare", "parts", "pretrain", "train@full",
                                                 "tune"}, ran


def test_bad_input_is_one_line_and_writes_nothing(lab):
    from mlflow.tracking import MlflowClient

    a, env, missing = lab["a"], lab["env"], lab["home"] / "no-such-folder"
    pg = lab["env"]["OPTUNA_STORAGE"]
    wrong_pg = pg.replace(f":{lab['password']}@", ":wrong-password@")
    cases = [
        ("prepare", {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"},
         "cannot be reached ([Errno 111] Connection refused)"),
        ("prepare", {"MLFLOW_TRACKING_PASSWORD": "wrong-password"},
         "refused the credentials (HTTP 401)"),
        ("prepare", {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": "",
                     "MLFLOW_TRACKING_URI": f"http://admin:wrong-password@127.0.0.1:"
                                            f"{lab['port']}"},
         "http://admin:***@127.0.0.1"),
        ("prepare", {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{lab['pg_port']}"},
         "is not an MLflow tracking server"),
        ("prepare", {"MLFLOW_TRACKING_URI": f"sqlite:///{missing}/mlflow.db"},
         f"folder {missing} is missing or not writable"),
        ("tune", {"OPTUNA_STORAGE": wrong_pg}, "password authentication failed"),
        ("tune", {"OPTUNA_STORAGE": f"sqlite:///{missing}/optuna.db"},
         f"folder {missing} is missing or not writable"),
    ]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("pfcvr").experiment_id
    n_runs, n_trials, files = len(all_runs(client, exp)), len(study(lab).trials), snapshot(a)
    for stage, change, expected in cases:
        out = run([sys.executable, "-m", f"stages.{stage}"], a, {**env, **change}, check=False)
        errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
        assert out.returncode == 1 and len(errors) == 1, (change, out.stderr[-3000:])
        assert errors[0].startswith(f"{stage}: error: ") and expected in errors[0], errors[0]
        for secret in (lab["password"], lab["admin"], "wrong-password"):
            assert secret not in out.stdout + out.stderr, (change, errors[0])
    assert len(all_runs(client, exp)) == n_runs and len(study(lab).trials) == n_trials
    assert snapshot(a) == files and not missing.exists()


def test_the_dashboard_opens_the_postgresql_storage(lab):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pfcvr.tuning.dashboard", "127.0.0.1", str(port)],
                            cwd=lab["a"], env=lab["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        head = [proc.stdout.readline() for _ in range(2)]
        name = study(lab).study_name
        assert f"storage postgresql://pfcvr:***@127.0.0.1:{lab['pg_port']}/optuna" in head[0]
        assert f"study {name}: {len(study(lab).trials)} trials" in head[1], head
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as r:
                    listed = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
        assert name in {s["study_name"] for s in listed["study_summaries"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
