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
from tests.support.tmpfs import mounted_tmpfs


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


# ----------------------------------------------------------------------------------------------
# Issue 12: a full disk is named (file, bytes, what to do), before the first step when possible
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root may mount; skipped where mount is not permitted)."""
    with mounted_tmpfs(tmp_path / "disk", "size=1M") as mnt:
        yield mnt


def _big_objects():
    """About 3 MB of weights and AdamW moments: more than the 1 MB disk."""
    model = nn.Linear(500, 500)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 500)).sum().backward()
    opt.step()
    return model, opt


def test_disk_full_while_writing_a_checkpoint_names_the_file(small_disk):
    """Before: RuntimeError 'basic_ios::clear: iostream error' (or 'unexpected pos ...')."""
    from pfcvr.runtime.storage import DiskSpaceError

    model, opt = _big_objects()
    path = small_disk / "seed0" / "checkpoint.pt"
    with pytest.raises(DiskSpaceError) as caught:
        save_checkpoint(path, model=model, optimizer=opt, scheduler=None, scaler=None, epoch=1,
                        step=1, best=None, history=[])
    message = str(caught.value)
    assert message.startswith(f"disk full while writing the training checkpoint {path} (about "
                              "3.0 MB needed, ")
    assert message.endswith("free): free space on that disk (or make the folder a link to a larger "
                            "one), then rerun; training resumes from the last checkpoint written")
    assert "\n" not in message and caught.value.errno == 28
    assert list(path.parent.iterdir()) == []                          # no partial temp file left


def test_write_failures_map_to_one_line(tmp_path, monkeypatch):
    from pfcvr.runtime import storage
    from pfcvr.runtime.storage import DiskSpaceError, WriteError, write_errors

    with pytest.raises(DiskSpaceError, match=r"^disk full while writing the history /dev/full \("):
        with write_errors("/dev/full", "the history"), open("/dev/full", "w") as fh:
            fh.write("x" * 10_000)                        # ENOSPC from the kernel
    # torch's bare RuntimeError on a full disk: recognised by the space left
    monkeypatch.setattr(storage, "free_bytes", lambda path: 1000)
    with pytest.raises(DiskSpaceError) as caught:
        with write_errors(tmp_path / "c.pt", "the training checkpoint", size=3_000_000):
            raise RuntimeError("basic_ios::clear: iostream error")
    assert str(caught.value) == (f"disk full while writing the training checkpoint {tmp_path}/c.pt "
                                 "(about 3.0 MB needed, 1.0 kB free): free space on that disk (or "
                                 "make the folder a link to a larger one), then rerun")
    monkeypatch.setattr(storage, "free_bytes", lambda path: 10**12)
    with pytest.raises(WriteError) as caught:         # not a full disk: the cause, with the file
        with write_errors(tmp_path / "c.pt", "the training checkpoint", size=3_000_000):
            raise RuntimeError("unexpected pos 576 vs 534\nsecond line")
    assert str(caught.value) == (f"cannot write the training checkpoint {tmp_path}/c.pt: "
                                 "unexpected pos 576 vs 534 second line; check that disk "
                                 "(permissions, mount, health) and rerun")
    with pytest.raises(KeyError):                     # not a write error: passes unchanged
        with write_errors(tmp_path / "c.pt", "x"):
            raise KeyError("bug")


def test_free_space_is_checked_before_the_first_step(tmp_path, monkeypatch):
    from pfcvr.engine.checkpoint import check_checkpoint_space, checkpoint_bytes
    from pfcvr.runtime import storage
    from pfcvr.runtime.storage import DiskSpaceError

    model = nn.Linear(1000, 250)                       # 250,250 parameters
    assert checkpoint_bytes(model) == (3_003_000, 1_001_000)   # weights + AdamW moments, weights
    monkeypatch.setattr(storage, "free_bytes", lambda path: 1_000_000)
    with pytest.raises(DiskSpaceError) as caught:
        check_checkpoint_space(tmp_path / "seed0", model)
    assert str(caught.value) == (
        f"not enough disk space in {tmp_path / 'seed0'} for training checkpoints (a checkpoint of "
        "3.0 MB and model folders of 1.0 MB): about 9.0 MB needed, 1.0 MB free; free space on "
        "that disk (or make the folder a link to a larger one) and rerun")
    monkeypatch.setattr(storage, "free_bytes", lambda path: 9_009_000)
    assert check_checkpoint_space(tmp_path / "seed0", model) == 9_009_000   # 2 x 3.0 + 3 x 1.0 MB


def test_trainer_refuses_to_start_on_a_full_disk(small_disk):
    from pfcvr.engine.loader import EpochLoader
    from pfcvr.engine.trainer import Trainer
    from pfcvr.runtime.storage import DiskSpaceError
    from tests.support.train_helpers import StandInData, StandInModel, collate, train_cfg, trainer_losses

    params = train_cfg(epochs=1)
    model = StandInModel(n_in=6, dim=400)              # ~ 0.2 M parameters: a few MB of checkpoints
    loader = EpochLoader(StandInData(), collate, batch_size=8, seed=0)
    with pytest.raises(DiskSpaceError, match=rf"^not enough disk space in {small_disk}/seed0 for "
                                             r"training checkpoints .* MB needed, .* free"):
        Trainer(model, loader, cfg=params.train, **trainer_losses(params),
                device=torch.device("cpu"), out_dir=small_disk / "seed0", seed=0, progress=False)
