"""Checkpoint round trip: model, optimiser, scheduler, scaler and RNG states restore exactly."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from pfcvr.config import load_params
from pfcvr.engine.checkpoint import (CheckpointError, load_checkpoint, read_checkpoint,
                                     rng_state, save_checkpoint, set_rng_state)
from pfcvr.engine.optim import build_optimizer, build_scheduler


def _objects(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    cfg = load_params("params.yaml", overrides={"train.epochs": 4, "train.warmup_epochs": 1.0}).train
    opt = build_optimizer(model, cfg, "cpu")
    sched = build_scheduler(opt, cfg, steps_per_epoch=3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, opt, sched, scaler


def _train(model, opt, sched, steps):
    """Steps that consume every RNG (python, numpy, torch): a resumed run must draw the same."""
    for _ in range(steps):
        x = torch.randn(4, 5) + random.random() + float(np.random.rand())
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_round_trip_continues_identically(tmp_path):
    torch.manual_seed(1); random.seed(1); np.random.seed(1)
    model, opt, sched, scaler = _objects()
    _train(model, opt, sched, 3)
    path = save_checkpoint(tmp_path / "ck" / "checkpoint.pt", model=model, optimizer=opt,
                           scheduler=sched, scaler=scaler, epoch=1, step=3,
                           best={"epoch": 1, "R1": 12.5}, history=[{"epoch": 1, "loss": 0.5}],
                           fingerprint="abc")
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]   # no temp leftovers
    _train(model, opt, sched, 4)                      # the uninterrupted continuation
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    lr_ref = opt.param_groups[0]["lr"]

    # a fresh process: other init, other RNG positions
    torch.manual_seed(99); random.seed(99); np.random.seed(99)
    model2, opt2, sched2, scaler2 = _objects(seed=7)
    state = load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2)
    assert state["epoch"] == 1 and state["step"] == 3 and state["best"]["R1"] == 12.5
    assert state["history"] == [{"epoch": 1, "loss": 0.5}] and state["fingerprint"] == "abc"
    assert sched2.last_epoch == 3
    _train(model2, opt2, sched2, 4)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert opt2.param_groups[0]["lr"] == lr_ref


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_loads_with_weights_only(tmp_path):
    model, opt, sched, scaler = _objects()
    _train(model, opt, sched, 1)
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched,
                           scaler=scaler, epoch=1, step=1, best=None, history=[])
    raw = torch.load(path, weights_only=True)       # no pickled code objects inside
    assert raw["epoch"] == 1 and set(raw["rng"]) >= {"python", "numpy", "torch"}


def test_bad_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt: not a readable checkpoint"):
        read_checkpoint(bad)
    model, opt, sched, scaler = _objects()
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched,
                           scaler=scaler, epoch=1, step=1, best=None, history=[])
    with pytest.raises(CheckpointError, match="do not fit this model"):
        load_checkpoint(path, model=nn.Linear(3, 3))
