"""`train.seed_workers`: the seeds of a variant trained side by side in spawned processes
(pfcvr.pipeline.train.run_seed_processes) give what the in-process sequential loop gives; a child's
error reaches the parent as the same exception, and no child outlives the parent.

The error and kill checks run stand-in training functions (module level below, so that a spawned
child imports them by name), told what to do per seed by an environment variable.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pfcvr.config import load_params
from pfcvr.engine import distributed as D
from pfcvr.engine import seed_pool
from pfcvr.engine.guard import NonFiniteLossError
from pfcvr.engine.trainer import TrainResult
from pfcvr.pipeline import train as train_stage
from tests.support.train_helpers import make_project

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "samples_per_s"}     # wall-clock values, the only ones allowed to differ
PLAN = "PFCVR_TEST_SEED_PLAN"             # {"<seed>": action} for stand_in_train, via the env


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed_workers")
    make_project(root, {"train.epochs": 2, "report.seeds": [0, 1]})
    return root


def _layout(root, out):
    return {"prepared": root / "data/prepared", "parts": root / "data/parts/parts.json",
            "models": out / "models/full", "reports": out / "reports/train/full",
            "figure": out / "reports/figures/train_full.png", "cache": out / ".cache/train/full"}


class RecordingRun:
    """Stands for the MLflow StageRun: keeps {(metric, step): value}."""

    def __init__(self):
        self.metrics, self.calls = {}, 0

    def log_metrics(self, metrics, step=None):
        self.calls += 1
        self.metrics.update({(k, step): v for k, v in metrics.items()})


def _train(project, out, workers, seeds_=(0, 1)):
    params = load_params(project / "params.yaml", variant="full",
                         overrides={"train.seed_workers": workers, "report.seeds": list(seeds_)})
    base = load_params(project / "params.yaml")
    run = RecordingRun()
    t0 = time.perf_counter()
    res = train_stage.train_variant(params, "full", base=base, run=run, progress=False,
                              **_layout(project, out))
    return res, run, time.perf_counter() - t0


@pytest.fixture(scope="module")
def sequential(project, tmp_path_factory):
    """Seeds 0 and 1 trained one after another in-process: the reference."""
    out = tmp_path_factory.mktemp("sequential")
    res, run, seconds = _train(project, out, 1)
    return {"out": out, "res": res, "run": run, "seconds": seconds}


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def _same_seed(a: Path, b: Path, seed: int) -> None:
    """models/<variant>/seed<k> of two runs: same result metrics, same files byte for byte."""
    ra = json.loads((a / f"seed{seed}/result.json").read_text())
    rb = json.loads((b / f"seed{seed}/result.json").read_text())
    assert rb["best"] == ra["best"] and rb["fingerprint"] == ra["fingerprint"]
    assert _untimed(rb["final"]) == _untimed(ra["final"])
    for which in ("best", "final"):                         # weights, config, tokenizer
        fa, fb = _files(a / f"seed{seed}/{which}"), _files(b / f"seed{seed}/{which}")
        assert fa and fa.keys() == fb.keys()
        for name in fa:
            assert fa[name] == fb[name], f"seed{seed}/{which}/{name} differs"


def test_parallel_seeds_equal_sequential_ones(project, sequential, tmp_path, capsys):
    seq, seq_run = sequential["res"], sequential["run"]
    capsys.readouterr()
    par, par_run, par_s = _train(project, tmp_path, 2)
    out = capsys.readouterr().out
    print(f"2 seeds x 2 epochs: seed_workers=1 {sequential['seconds']:.1f} s, "
          f"seed_workers=2 {par_s:.1f} s")

    for seed in (0, 1):
        assert f"[train@full] seed {seed}: best val R1 " in out, out
    for k in ("seeds", "best_val_R1_mean", "best_val_mAP_mean", "final_val_R1_mean",
              "final_loss_mean", "seed0/best_val_R1", "seed1/best_val_R1", "seed0/best_epoch",
              "seed1/best_epoch"):
        assert par.summary[k] == seq.summary[k], k
    assert [_untimed(r) for r in par.history] == [_untimed(r) for r in seq.history]
    assert [(r["seed"], r["epoch"]) for r in par.history] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for seed in (0, 1):
        _same_seed(sequential["out"] / "models/full", tmp_path / "models/full", seed)
    # the parent logs each finished seed's curves, as the trainer logs them in-process
    assert par_run.metrics.keys() == seq_run.metrics.keys()
    assert {k: v for k, v in par_run.metrics.items() if k[0].split("/")[1] not in TIMING} == \
        {k: v for k, v in seq_run.metrics.items() if k[0].split("/")[1] not in TIMING}
    hist = (tmp_path / "reports/train/full/history.tsv").read_text()
    assert hist.count("\n") == 1 + 4
    assert not (tmp_path / ".cache/train/full").exists()


class Interrupted(Exception):
    """Stands for a kill after seed 1's first checkpoint."""


def test_parallel_rerun_skips_finished_and_resumes_in_children(project, sequential, tmp_path,
                                                               monkeypatch, capsys):
    """Seeds 0, 1, 2 in-process until seed 1's first epoch is done ('killed'); the rerun with
    seed_workers=2 skips seed 0 and trains seed 1 (resumed) and seed 2 side by side. Seeds 0 and
    1 end as in the uninterrupted sequential run."""
    real = train_stage.train_model

    def killed_at_seed1(params, tr, val, out_dir, seed, *args, on_epoch=None, **kw):
        def hook(row):
            on_epoch(row)
            if seed == 1:
                raise Interrupted
        return real(params, tr, val, out_dir, seed, *args, on_epoch=hook, **kw)
    monkeypatch.setattr(train_stage, "train_model", killed_at_seed1)   # a closure: in-process
    with pytest.raises(Interrupted):
        _train(project, tmp_path, 2, seeds_=(0, 1, 2))
    assert (tmp_path / ".cache/train/full/seed1/checkpoint.pt").is_file()

    # one seed left with seed_workers=2: in-process, seed 0 announced and replayed once
    class Stop(Exception):
        pass

    def stop(*args, **kw):
        raise Stop
    monkeypatch.setattr(train_stage, "train_model", stop)
    monkeypatch.setattr(train_stage, "seed_workers", lambda params, info, **kw: 2)
    params = load_params(project / "params.yaml", variant="full",
                         overrides={"train.seed_workers": 2})
    run = RecordingRun()
    capsys.readouterr()
    with pytest.raises(Stop):
        train_stage.train_variant(params, "full", base=params, run=run, progress=False,
                                  **_layout(project, tmp_path))
    assert capsys.readouterr().out.count("seed 0: already finished, skipped") == 1
    assert sorted({step for (_, step) in run.metrics}) == [1, 2] and run.calls == 2

    monkeypatch.undo()
    capsys.readouterr()
    res, _, _ = _train(project, tmp_path, 2, seeds_=(0, 1, 2))
    out = capsys.readouterr().out
    assert "seed 0: already finished, skipped" in out
    assert "seed 1: best val R1" in out and "seed 2: best val R1" in out
    models = tmp_path / "models/full"
    assert [json.loads((models / f"seed{s}/result.json").read_text())["resumed_from"]
            for s in (0, 1, 2)] == [0, 1, 0]
    for seed in (0, 1):
        _same_seed(sequential["out"] / "models/full", models, seed)
    assert [(r["seed"], r["epoch"]) for r in res.history] == \
        [(s, e) for s in (0, 1, 2) for e in (1, 2)]


def test_seed_workers_falls_back_to_one(project):
    p2 = load_params(project / "params.yaml", overrides={"train.seed_workers": 2})
    assert seed_pool.seed_workers(p2, D.DistInfo()) == 2
    assert seed_pool.seed_workers(p2, D.DistInfo(rank=0, world_size=2)) == 1    # torchrun
    p1 = load_params(project / "params.yaml", overrides={"train.seed_workers": 1})
    assert seed_pool.seed_workers(p1, D.DistInfo()) == 1
    # a train function a spawned child cannot import by name (a closure, a lambda): in-process
    assert seed_pool.seed_workers(p2, D.DistInfo(), train_fn=lambda *a, **kw: None) == 1


def test_seed_workers_is_not_in_the_fingerprint(tmp_path):
    data = tmp_path / "manifest.json"
    data.write_text("[1]")
    fp = train_stage.fingerprint(load_params("params.yaml", overrides={"train.seed_workers": 1}),
                                 0, 1, [data])
    assert train_stage.fingerprint(load_params("params.yaml", overrides={"train.seed_workers": 4}),
                                   0, 1, [data]) == fp


# ----------------------------------------------------------------------------------------------
# Errors, interrupts and kills: stand-in training in the children
# ----------------------------------------------------------------------------------------------

def stand_in_train(params, tr, val, out_dir, seed, run=None, progress=None, *, tokenizer=None,
                   fingerprint="", on_epoch=None, extra=None):
    """Write ``out_dir/pid``, then do what ``$PFCVR_TEST_SEED_PLAN[seed]`` says: ``sleep``,
    ``nan`` / ``value`` (raise once the other seeds' pid files exist), ``kill`` (SIGKILL
    itself), ``epoch`` (report one epoch, then sleep), ``ok`` (return at once)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pid").write_text(str(os.getpid()))
    plan = json.loads(os.environ[PLAN])
    action = plan[str(seed)]
    if action in ("nan", "value"):
        others = [out_dir.parent / f"seed{s}/pid" for s in plan if int(s) != seed]
        deadline = time.time() + 60
        while not all(p.exists() for p in others) and time.time() < deadline:
            time.sleep(0.05)
        if action == "nan":
            raise NonFiniteLossError(f"seed {seed}: non-finite loss at epoch 1, step 2")
        raise ValueError(f"seed {seed}: train.weights are all zero")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "epoch":
        on_epoch({"seed": seed, "epoch": 1, "loss": 1.0})
    if action != "ok":
        time.sleep(120)
    return TrainResult(seed=seed, epochs=1, history=[], best=None, final={}, seconds=0.0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:              # a zombie is dead
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(work: Path, seeds_: list[int]) -> list[int]:
    return [int((work / f"seed{s}/pid").read_text()) for s in seeds_
            if (work / f"seed{s}/pid").is_file()]


def _run(tmp_path, plan: dict, **kw):
    jobs = [seed_pool.SeedJob(int(s), tmp_path / f"seed{s}", "fp") for s in plan]
    seed_pool.run_seed_processes(None, jobs, len(jobs), train_split=None, val_split=None,
                             train_fn=stand_in_train, **kw)


def test_child_error_is_raised_in_parent_and_stops_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv(PLAN, json.dumps({"0": "sleep", "1": "value"}))
    with pytest.raises(ValueError) as caught:
        _run(tmp_path, {"0": "sleep", "1": "value"})
    assert type(caught.value) is ValueError
    assert str(caught.value) == "seed 1: train.weights are all zero"
    assert "stand_in_train" in str(caught.value.__cause__)    # the child's traceback
    pids = _pids(tmp_path, [0, 1])
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


def test_child_error_through_train_variant_is_one_stage_line(project, tmp_path, monkeypatch):
    """A module-level train_model (importable by name) still runs in the children."""
    from pfcvr.runtime.stage import is_user_error, one_line

    monkeypatch.setenv(PLAN, json.dumps({"0": "nan", "1": "sleep"}))
    monkeypatch.setattr(train_stage, "train_model", stand_in_train)
    params = load_params(project / "params.yaml", variant="full",
                         overrides={"train.seed_workers": 2})
    lay = _layout(project, tmp_path)
    with pytest.raises(NonFiniteLossError) as caught:
        train_stage.train_variant(params, "full", base=params, progress=False, **lay)
    assert type(caught.value) is NonFiniteLossError and is_user_error(caught.value)
    assert one_line("train", caught.value) == \
        "train: error: seed 0: non-finite loss at epoch 1, step 2"
    assert not any(_alive(p) for p in _pids(lay["cache"], [0, 1]))
    assert not lay["models"].exists()


def test_killed_child_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(PLAN, json.dumps({"0": "sleep", "1": "kill"}))
    with pytest.raises(ChildProcessError, match=r"seed 1 ended with exit code -9 \(SIGKILL\)"):
        _run(tmp_path, {"0": "sleep", "1": "kill"})
    assert not any(_alive(p) for p in _pids(tmp_path, [0, 1]))


def test_interrupted_parent_stops_its_children(tmp_path, monkeypatch):
    plan = {"0": "epoch", "1": "sleep"}
    monkeypatch.setenv(PLAN, json.dumps(plan))

    def on_epoch(seed, row):                               # Ctrl-C while both seeds run
        deadline = time.time() + 60
        while len(_pids(tmp_path, [0, 1])) < 2 and time.time() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, plan, on_epoch=on_epoch)
    pids = _pids(tmp_path, [0, 1])
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


def test_killed_parent_takes_its_children(tmp_path):
    """SIGKILL (no cleanup can run) of the process that started the seeds: the children end."""
    plan = {"0": "sleep", "1": "sleep"}
    code = ("import json, sys\nfrom pathlib import Path\n"
            "from pfcvr.engine import seed_pool\nfrom tests.test_seed_workers import stand_in_train\n"
            "if __name__ == '__main__':\n"
            "    tmp = Path(sys.argv[1])\n"
            "    jobs = [seed_pool.SeedJob(s, tmp / f'seed{s}', 'fp') for s in (0, 1)]\n"
            "    seed_pool.run_seed_processes(None, jobs, 2, train_split=None, val_split=None,\n"
            "                             train_fn=stand_in_train)\n")
    env = {**os.environ, PLAN: json.dumps(plan), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env)
    try:
        deadline = time.time() + 60
        while len(_pids(tmp_path, [0, 1])) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        pids = _pids(tmp_path, [0, 1])
        assert len(pids) == 2 and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
