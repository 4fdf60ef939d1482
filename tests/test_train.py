"""The training engine: loop, determinism, resume, non-finite guard, precision, progress, MLflow.

Engine behaviour is tested on a small stand-in that follows the model contract (tests/
train_helpers.py); the real PFCVR model and data are exercised by the integration tests at the end.
"""
import os
import re

import pytest
import torch

from pfcvr.engine import distributed as D
from pfcvr.engine.checkpoint import read_checkpoint
from pfcvr.engine.loader import EpochLoader, seed_everything
from pfcvr.engine.trainer import NonFiniteLossError, Trainer
from tests.support.train_helpers import (StandInData, StandInModel, collate, nearest_center_eval,
                                 save_state, train_cfg, trainer_losses)

CPU = torch.device("cpu")


class Stop(Exception):
    pass


def fit(tmp, params, *, seed=0, model_kw=None, stop_after=None, fingerprint="fp", run=None,
        progress=False):
    seed_everything(seed)
    model = StandInModel(**(model_kw or {}))
    data, val = StandInData(), StandInData(noise=0.0)
    loader = EpochLoader(data, collate, batch_size=params.train.batch_size, seed=seed)

    def on_epoch(row):
        if stop_after is not None and row["epoch"] == stop_after:
            raise Stop

    trainer = Trainer(model, loader, cfg=params.train, **trainer_losses(params), device=CPU,
                      out_dir=tmp, seed=seed, evaluate=nearest_center_eval(val),
                      save_model=save_state, fingerprint=fingerprint, run=run,
                      progress=progress, on_epoch=on_epoch)
    return trainer.fit(), model


def losses(history):
    return [(r["epoch"], r["loss"], r["id"], r["mim"], r["val_R1"], r["lr"]) for r in history]


def test_trains_and_writes(tmp_path):
    params = train_cfg(epochs=3)
    result, model = fit(tmp_path, params)
    h = result.history
    assert [r["epoch"] for r in h] == [1, 2, 3] and h[-1]["step"] == 3 * (48 // 8)
    assert h[-1]["loss"] < h[0]["loss"]
    assert h[-1]["val_R1"] > 50                               # it learns the 4 classes
    assert h[-1]["sdm"] is None and h[-1]["mlm"] is None      # branches the model did not compute
    assert h[-1]["lr"] == pytest.approx(0.0, abs=1e-12)       # cosine ends at 0
    assert all(r["samples_per_s"] > 0 and r["seconds"] > 0 for r in h)
    assert result.best["R1"] == max(r["val_R1"] for r in h)
    ck = read_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["epoch"] == 3 and ck["best"]["epoch"] == result.best["epoch"]
    final = torch.load(tmp_path / "final" / "weights.pt", weights_only=True)
    assert final["extra"]["epoch"] == 3 and final["extra"]["seed"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(final["model"][k], v)
    best = torch.load(tmp_path / "best" / "weights.pt", weights_only=True)
    assert best["extra"]["epoch"] == result.best["epoch"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp leftovers


def test_deterministic_for_a_seed(tmp_path):
    params = train_cfg(epochs=2)
    a, ma = fit(tmp_path / "a", params, seed=3)
    b, mb = fit(tmp_path / "b", params, seed=3)
    c, mc = fit(tmp_path / "c", params, seed=4)
    assert losses(a.history) == losses(b.history)
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))
    assert losses(a.history) != losses(c.history)


def test_resume_equals_uninterrupted(tmp_path):
    params = train_cfg(epochs=4)
    ref, ref_model = fit(tmp_path / "ref", params)
    with pytest.raises(Stop):
        fit(tmp_path / "cut", params, stop_after=2)       # "killed" right after epoch 2
    assert read_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 2
    res, model = fit(tmp_path / "cut", params, seed=0)    # a fresh process would start like this
    assert res.resumed_from == 2
    assert losses(res.history) == losses(ref.history)
    for (k, v), w in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(v, w), k
    assert res.best == ref.best
    again, _ = fit(tmp_path / "cut", params)              # finished: nothing left to train
    assert again.resumed_from == 4 and losses(again.history) == losses(ref.history)


def test_other_fingerprint_starts_fresh(tmp_path, capsys):
    params = train_cfg(epochs=2)
    fit(tmp_path, params)
    res, _ = fit(tmp_path, params, fingerprint="other", progress=None)
    assert res.resumed_from == 0 and len(res.history) == 2
    assert "written for other params or data" in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    params = train_cfg(epochs=3)
    steps = 48 // 8
    with pytest.raises(NonFiniteLossError) as err:
        fit(tmp_path, params, model_kw={"nan_at": steps + 2})
    msg = str(err.value)
    assert f"epoch 2, step {steps + 2}" in msg and "term 'mim' = nan" in msg
    assert "checkpoint.pt (epoch 1)" in msg
    ck = read_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_gradient_clipping(tmp_path):
    params = train_cfg(epochs=1, grad_clip=1e-3)
    _, model = fit(tmp_path, params)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= 1e-3 * 1.001
    _, free = fit(tmp_path / "noclip", train_cfg(epochs=1, grad_clip=0.0))
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in free.parameters()])) > 1e-2


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_on_cpu(tmp_path, precision, dtype):
    params = train_cfg(epochs=1, precision=precision)
    res, model = fit(tmp_path, params)
    assert model.seen_dtype == dtype                              # autocast was active
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res.history)
    ck = read_checkpoint(tmp_path / "checkpoint.pt")
    assert bool(ck["scaler"]) == (precision == "fp16")           # the fp16 scaler is checkpointed


def test_plain_progress_lines(tmp_path, capsys):
    fit(tmp_path, train_cfg(epochs=1, log_every=2), progress=None)   # stderr is not a TTY here
    err = capsys.readouterr().err
    assert re.findall(r"step (\d+)/6 loss", err) == ["2", "4", "6"]
    assert re.search(r"epoch 1/1 loss [\d.]+ val R1 [\d.]+ mAP [\d.]+ [\d.]+ samples/s", err)


def test_cuda_request_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(D.DeviceError, match="train.device=cuda but CUDA is not available"):
        D.resolve_device("cuda")
    assert D.resolve_device("auto") == CPU


def test_loader_order_depends_on_seed_and_epoch_only():
    data = StandInData(noise=0.0)
    a = EpochLoader(data, collate, batch_size=8, seed=5)
    b = EpochLoader(data, collate, batch_size=8, seed=5)
    a.set_epoch(2)
    torch.manual_seed(0)
    order_a = torch.cat([x["image_index"] for x in a])
    b.set_epoch(2)
    torch.manual_seed(1)                                   # global RNG does not matter
    assert torch.equal(order_a, torch.cat([x["image_index"] for x in b]))
    b.set_epoch(3)
    assert not torch.equal(order_a, torch.cat([x["image_index"] for x in b]))
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochLoader(StandInData(n=4), collate, batch_size=8, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_trains_on_cuda(tmp_path, precision):
    params = train_cfg(epochs=2, precision=precision, device="cuda")
    seed_everything(0)
    model = StandInModel()
    data = StandInData()
    trainer = Trainer(model, EpochLoader(data, collate, batch_size=8, seed=0), cfg=params.train,
                      **trainer_losses(params), device=D.resolve_device("cuda"),
                      out_dir=tmp_path, seed=0, progress=False)
    assert trainer.optimizer.defaults["fused"]
    res = trainer.fit()
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert next(model.parameters()).is_cuda and next(model.parameters()).dtype == torch.float32
    ck = read_checkpoint(tmp_path / "checkpoint.pt")
    assert "cuda" in ck["rng"] and ck["epoch"] == 2


# ----------------------------------------------------------------------------------------------
# The real model and data (tiny configuration)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from tests.support.train_helpers import make_project

    root = tmp_path_factory.mktemp("project")
    make_project(root)
    return root


def _splits(root):
    from pfcvr.data.dataset import load_split

    return (load_split(root / "data/prepared", root / "data/parts/parts.json", "train"),
            load_split(root / "data/prepared", root / "data/parts/parts.json", "val"))


def test_train_model_real(project, tmp_path):
    import pfcvr
    from pfcvr.config import load_params
    from pfcvr.engine.train import train_model

    params = load_params(project / "params.yaml", variant="full", overrides={"train.epochs": 2})
    train, val = _splits(project)
    res = train_model(params, train, val, tmp_path, seed=0, progress=False, extra={"variant": "full"})
    assert [r["epoch"] for r in res.history] == [1, 2]
    for row in res.history:
        assert all(row[t] is not None and row[t] > 0 for t in ("sdm", "id", "mlm", "mim", "part"))
        assert 0.0 <= row["val_R1"] <= 100.0 and 0.0 < row["val_mAP"] <= 100.0
    assert res.extra["num_classes"] == len(set(train.ids))
    final = pfcvr.load(tmp_path / "final")
    ck = read_checkpoint(tmp_path / "checkpoint.pt")
    for k, v in final.state_dict().items():
        assert torch.equal(v, ck["model"][k]), k
    tok = final.tokenizer
    best = pfcvr.load(tmp_path / "best")
    assert best.tokenizer(["a red car"]).tolist() == tok(["a red car"]).tolist()
    import json
    cfg = json.loads((tmp_path / "best" / "config.json").read_text())
    assert "variant" in json.dumps(cfg) and "epoch" in json.dumps(cfg)
    assert json.loads((tmp_path / "result.json").read_text())["best"]["R1"] == res.best["R1"]


@pytest.mark.parametrize("variant, find_unused", [("full", False), ("no_mim", True)])
def test_train_model_asks_ddp_to_find_unused_parameters_only_with_a_branch_off(
        project, tmp_path, monkeypatch, variant, find_unused):
    from pfcvr.config import load_params
    from pfcvr.engine import trainer
    from pfcvr.engine.train import train_model

    seen = []

    def wrap_ddp(model, device, find_unused=True):
        seen.append(find_unused)
        return model
    monkeypatch.setattr(trainer.D, "wrap_ddp", wrap_ddp)
    params = load_params(project / "params.yaml", variant=variant,
                         overrides={"train.epochs": 1, "train.batch_size": 32})
    train, _ = _splits(project)
    res = train_model(params, train, None, tmp_path, seed=0, progress=False)
    assert seen == [find_unused]
    assert (res.history[0]["mim"] is None) == (variant == "no_mim")


def test_train_model_without_any_loss_weight_stops_before_work(project, tmp_path):
    from pfcvr.config import load_params
    from pfcvr.engine.train import train_model

    params = load_params(project / "params.yaml", overrides={
        "train.weights": {"sdm": 0.0, "id": 0.0, "mlm": 0.0, "mim": 0.0, "part": 0.0}})
    with pytest.raises(ValueError, match="train.weights: every loss weight is zero"):
        train_model(params, *_splits(project), tmp_path / "out", seed=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_bf16_step_on_cpu_real_model(project, tmp_path):
    from pfcvr.config import load_params
    from pfcvr.engine.train import train_model

    params = load_params(project / "params.yaml", variant="full",
                         overrides={"train.epochs": 1, "train.precision": "bf16",
                                    "train.batch_size": 32})
    train, _ = _splits(project)
    res = train_model(params, train, None, tmp_path, seed=0, progress=False)
    row = res.history[0]
    assert row["step"] >= 1 and torch.isfinite(torch.tensor(row["loss"]))
    assert row["val_R1"] is None                           # no val split given: no selection
    assert res.best is None and (tmp_path / "best" / "config.json").is_file()   # = final epoch
    ck = read_checkpoint(tmp_path / "checkpoint.pt")
    assert all(v.dtype != torch.bfloat16 for v in ck["model"].values())   # fp32 master weights


# ----------------------------------------------------------------------------------------------
# The stage (in-process, in a copy of the tiny project)
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def stage_dir(project, tmp_path, monkeypatch):
    import shutil

    work = tmp_path / "proj"
    shutil.copytree(project, work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_EXP_NAME", "stage-test")
    return work


def _set_params(root, **values):
    import yaml

    from pfcvr.config import read_raw, set_dotted
    raw = read_raw(root / "params.yaml")
    for k, v in values.items():
        set_dotted(raw, k.replace("__", "."), v)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_stage_outputs_and_mlflow(stage_dir):
    import csv
    import json

    from pfcvr import tracking
    from pfcvr.config import load_params
    from stages import train as stage

    _set_params(stage_dir, train__epochs=2, report__seeds=[5])
    summary = stage.main(["--variant", "no_mim"])
    models = stage_dir / "models/no_mim"
    for seed in (5,):
        for which in ("best", "final"):
            assert (models / f"seed{seed}/{which}/config.json").is_file()
        res = json.loads((models / f"seed{seed}/result.json").read_text())
        assert res["seed"] == seed and res["best"]["epoch"] in (1, 2)
        # issue 23 §4: the recipe travels with the model, so the report states what it read
        extra = json.loads((models / f"seed{seed}/final/config.json").read_text())["extra"]
        t = load_params(stage_dir / "params.yaml", variant="no_mim").train
        assert extra["epoch"] == 2 and extra["train"] == {
            "epochs": 2, "batch_size": t.batch_size, "lr": t.lr, "precision": t.precision}
    card = (models / "MODEL_CARD.md").read_text()
    assert "without masked image recovery" in card and "`train.weights.mim` | 0.5 | 0.0" in card
    with open(stage_dir / "reports/train/no_mim/history.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    from pfcvr.report.cards import HISTORY_COLUMNS

    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert [(r["seed"], r["epoch"]) for r in rows] == [("5", "1"), ("5", "2")]
    assert all(r["mim"] == "" and float(r["mlm"]) > 0 and r["val_R1"] for r in rows)
    assert (stage_dir / "reports/figures/train_no_mim.png").read_bytes()[:4] == b"\x89PNG"
    stored = json.loads((stage_dir / "reports/train/no_mim/summary.json").read_text())
    assert stored["best_val_R1_mean"] == summary["best_val_R1_mean"]
    assert not (stage_dir / ".cache/train/no_mim").exists()

    (run,) = tracking.stage_runs("train@no_mim")
    assert run["status"] == "FINISHED"
    assert run["tags"]["variant"] == "no_mim" and run["tags"]["seeds"] == "5"
    assert float(run["params"]["train.weights.mim"]) == 0.0
    assert {"seed5/loss", "seed5/val_R1", "seed5/mlm", "seed5/lr", "seed5/samples_per_s",
            "best_val_R1_mean"} <= set(run["metrics"])
    assert "seed5/mim" not in run["metrics"]                  # the branch is off
    hist = tracking._client().get_metric_history(run["run_id"], "seed5/loss")
    assert sorted(m.step for m in hist) == [1, 2]
    arts = {a.path for a in tracking._client().list_artifacts(run["run_id"])}
    assert {"model_card.md", "train_no_mim.png", "history.tsv"} <= arts


def test_stage_fails_fast_on_unavailable_device_or_tracking(stage_dir, monkeypatch):
    from pfcvr.engine.distributed import DeviceError
    from pfcvr.tracking import TrackingError
    from stages import train as stage

    if not torch.cuda.is_available():
        _set_params(stage_dir, train__device="cuda")
        with pytest.raises(DeviceError, match="train.device=cuda"):
            stage.main(["--variant", "full"])
        _set_params(stage_dir, train__device="cpu")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")   # nothing listens there
    with pytest.raises(TrackingError, match="cannot be reached"):
        stage.main(["--variant", "full"])
    assert not (stage_dir / "models").exists() and not (stage_dir / ".cache").exists()
    assert not (stage_dir / "reports").exists()


def test_stage_goes_on_without_tracking_when_not_required(stage_dir, monkeypatch):
    from stages import train as stage

    _set_params(stage_dir, train__epochs=1, report__seeds=[3], tracking__required=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.warns(UserWarning, match="going on without MLflow tracking"):
        stage.main(["--variant", "baseline"])
    assert (stage_dir / "models/baseline/seed3/final/config.json").is_file()
