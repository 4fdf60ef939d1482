"""Kill a real `python -m stages.train` mid-run, start it again, and get the uninterrupted result.

The stage trains seeds 0 and 1 of a tiny project. The first run is SIGKILLed as soon as seed 1's
first checkpoint exists (seed 0 finished, seed 1 in progress); the restart must skip seed 0, resume
seed 1 and end with the same weights, history and val metrics as a run that was never interrupted.
The killed run leaves the previous run's models, history, summary and figure untouched (issue 23:
one set; its live history is in .cache/train/full/).
"""
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.train_helpers import make_project

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TIMING = {"seconds", "samples_per_s"}     # wall-clock columns, the only ones allowed to differ


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
               MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _start(project: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.train", "--variant", "full"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    import pfcvr

    return pfcvr.load(folder).state_dict()


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path.parent)): p.read_bytes() for p in files}


def _history(project: Path) -> list[dict]:
    with open(project / "reports/train/full/history.tsv") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING}
                for row in csv.DictReader(fh, delimiter="\t")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    ref, cut = tmp / "ref", tmp / "cut"
    ref.mkdir()
    make_project(ref, {"train.epochs": 3, "train.seed_workers": 1})   # seed 0 ends before seed 1
    # The test split's images are removed: training must never read them.
    for rec in __import__("json").loads((ref / "data/prepared/manifest.json").read_text()):
        if rec["split"] == "test":
            (ref / "data/prepared/images" / rec["file_path"]).unlink()
    shutil.copytree(ref, cut)
    env = _env(tmp)
    ref_log = _finish(_start(ref, env))
    # issue 23 §3: `cut` holds a previous run's outputs, which the killed run must leave whole
    previous = ("models/full", "reports/train/full", "reports/figures/train_full.png")
    for rel in previous:
        (cut / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ref / rel).is_dir() else shutil.copy2)(ref / rel, cut / rel)
    before = {rel: _tree(cut / rel) for rel in previous}

    proc = _start(cut, env)
    marker = cut / ".cache/train/full/seed1/checkpoint.pt"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.kill()
    first_log, _ = proc.communicate()
    assert alive, f"the stage ended before it could be killed:\n{first_log[-3000:]}"
    # the new run's epochs are in its live history only, beside the previous run's whole set
    assert {rel: _tree(cut / rel) for rel in previous} == before
    live = (cut / ".cache/train/full/history.tsv").read_text().splitlines()
    assert live[0].startswith("seed\tepoch") and live[1].startswith("0\t1\t")
    resumed_log = _finish(_start(cut, env))
    return {"ref": ref, "cut": cut, "ref_log": ref_log, "first_log": first_log,
            "resumed_log": resumed_log}


def test_restart_skips_finished_seed_and_resumes(runs):
    log = runs["resumed_log"]
    assert "seed 0: already finished, skipped" in log
    assert "resuming from" in log and "seed1/checkpoint.pt" in log
    assert not (runs["cut"] / ".cache/train/full").exists()      # cleaned up after success


def test_same_weights_as_uninterrupted(runs):
    for seed in (0, 1):
        for which in ("best", "final"):
            a = _weights(runs["ref"] / f"models/full/seed{seed}/{which}")
            b = _weights(runs["cut"] / f"models/full/seed{seed}/{which}")
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), f"seed {seed} {which}: {k} differs"


def test_same_history_and_metrics(runs):
    ref, cut = _history(runs["ref"]), _history(runs["cut"])
    assert len(ref) == 2 * 3 and ref == cut
    assert {r["seed"] for r in ref} == {"0", "1"}
    assert all(r["val_R1"] != "" for r in ref)
    import json

    a = json.loads((runs["ref"] / "reports/train/full/summary.json").read_text())
    b = json.loads((runs["cut"] / "reports/train/full/summary.json").read_text())
    for k in ("best_val_R1_mean", "best_val_mAP_mean", "final_val_R1_mean", "final_loss_mean"):
        assert a[k] == b[k], k
