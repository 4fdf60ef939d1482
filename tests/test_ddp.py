"""DDP on CPU (gloo): two processes with half the batch each = one process with the full batch."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.support.train_helpers import ddp_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    ddp_worker(0, 1, 0, str(work))                                   # reference, this process
    mp.spawn(ddp_worker, args=(2, _free_port(), str(work)), nprocs=2, join=True)
    load = lambda name: torch.load(work / name, weights_only=False)  # noqa: E731
    return load("rank0_of1.pt"), load("rank0_of2.pt"), load("rank1_of2.pt")


def test_ranks_split_the_batch(runs):
    single, r0, r1 = runs
    assert len(r0["seen"]) == len(r1["seen"]) == len(single["seen"]) // 2
    assert sorted(torch.cat([r0["seen"], r1["seen"]]).tolist()) == sorted(single["seen"].tolist())


def test_same_first_step_gradients(runs):
    single, r0, r1 = runs
    for name, g in single["grads"].items():
        assert torch.allclose(r0["grads"][name], g, atol=1e-6, rtol=1e-5), name
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name   # all-reduced
        assert torch.allclose(r0["weights"][name], single["weights"][name], atol=1e-6), name
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name


def test_metrics_reduced_across_ranks(runs):
    single, r0, r1 = runs
    # the epoch loss is the mean over both ranks' samples = the single-process loss
    for key in ("loss", "id", "mim"):
        assert r0["history"][0][key] == pytest.approx(single["history"][0][key], rel=1e-5)
        assert r1["history"][0][key] == r0["history"][0][key]
    # rank 0 evaluates, every rank receives the result
    assert r1["history"][0]["val_R1"] == r0["history"][0]["val_R1"] == pytest.approx(
        single["history"][0]["val_R1"])
    # weighted mean: (1*1 + 2*2) / 3 and (0*1 + 10*2) / 3; sum 1 + 2
    for r in (r0, r1):
        assert r["reduced"] == pytest.approx({"a": 5 / 3, "b": 20 / 3})
        assert r["summed"] == 3.0
    assert single["reduced"] == {"a": 1.0, "b": 0.0}


def test_real_model_same_first_step_gradients(tmp_path):
    from tests.support.train_helpers import ddp_real_worker, make_project

    project = tmp_path / "project"
    project.mkdir()
    make_project(project)
    ddp_real_worker(0, 1, 0, str(project), str(tmp_path))
    mp.spawn(ddp_real_worker, args=(2, _free_port(), str(project), str(tmp_path)), nprocs=2,
             join=True)
    single = torch.load(tmp_path / "real_rank0_of1.pt", weights_only=False)
    r0 = torch.load(tmp_path / "real_rank0_of2.pt", weights_only=False)
    r1 = torch.load(tmp_path / "real_rank1_of2.pt", weights_only=False)
    assert single["grads"].keys() == r0["grads"].keys() == r1["grads"].keys()
    assert any(n.startswith("part.") for n in single["grads"])          # the part branch ran
    assert any(n.startswith("classifier.") for n in single["grads"])
    for name, g in single["grads"].items():
        assert torch.allclose(r0["grads"][name], g, atol=1e-6, rtol=1e-4), name
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name
    for key in ("loss", "id", "part"):
        assert r0["history"][0][key] == pytest.approx(single["history"][0][key], rel=1e-5)


@pytest.mark.slow
def test_torchrun_stage_two_processes(tmp_path, monkeypatch):
    """The stage itself under torchrun (gloo): rank 0 alone writes files and tracks."""
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.train_helpers import make_project

    root = Path(__file__).resolve().parents[1]
    project = tmp_path / "project"
    project.mkdir()
    make_project(project, {"train.epochs": 2, "report.seeds": [0]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "stages.train", "--variant", "full"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert log.count("[train seed0] epoch 2/2") == 1                 # rank 0 logs alone
    assert (project / "models/full/seed0/final/config.json").is_file()
    with open(project / "reports/train/full/history.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    n_pairs = 2 * sum(1 for _ in __import__("json").loads(
        (project / "data/prepared/manifest.json").read_text()) if _["split"] == "train")
    assert int(rows[-1]["step"]) == 2 * (n_pairs // 8)          # global batch 8 = 2 x 4
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    from pfcvr import tracking

    runs = tracking.stage_runs("train@full")
    assert len(runs) == 1 and runs[0]["status"] == "FINISHED"
    assert runs[0]["tags"]["world_size"] == "2"
