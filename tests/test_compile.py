"""``train.compile``: the training step as one static-shape graph, equal to the eager step.

- no graph break (dynamo's explain) and no recompilation across batches whose captions differ in
  length; the eager default path does break where its shapes depend on the data (so the check
  is not vacuous);
- the static-shape model path gives the eager losses and gradients (no compiler involved);
- inductor's compiled step gives the eager losses and gradients, fp32 tightly and bf16 within
  bf16's own error (slow: one inductor compilation per precision);
- the Trainer wiring, the deferred non-finite guard of the GPU path, and the GPU benchmark's CPU
  smoke run.
"""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfcvr.engine.compiled import compile_training_loss, training_loss
from pfcvr.losses import Criterion
from tests.support.model_helpers import CAPTIONS, FULL, KW, random_batch, small_model

ROOT = Path(__file__).resolve().parents[1]
STATIC = {**KW, "static_shapes": True}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from scratch (dynamo's in-process caches are keyed on the code)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_model(**model_overrides):
    """The model section of params.yaml (the default tiny config), 4 identities."""
    from pfcvr.config import load_params
    from pfcvr.model import build_model, build_tokenizer

    params = load_params(ROOT / "params.yaml", overrides={
        "model.backbone": "tiny", **{f"model.{k}": v for k, v in model_overrides.items()}})
    torch.manual_seed(0)
    return build_model(params.model, 4, build_tokenizer(params.model, CAPTIONS * 3)).train()


def trimmed(model, batch: dict, captions: list[str]) -> dict:
    """``batch`` with new captions, cut to the longest one (as a collate trimming padding would)."""
    ids = model.tokenizer(captions)
    width = int((ids == model.tokenizer.eot_id).int().argmax(dim=1).max()) + 1
    return {**batch, "caption_ids": ids[:, :width]}


def step(fn, model, batch, kwargs, precision="fp32", seed=5):
    """One training forward + backward from a fixed RNG state: (values [1+T], names, grads)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, values, names = fn(model, batch, Criterion(FULL), kwargs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return values.detach(), names, grads


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([grads[k].flatten() for k in sorted(grads)])


# ---------------------------------------------------------------------------------- graph capture
@pytest.mark.parametrize("part_context,mim_mask", [("caption", "part"), ("image", "random")])
def test_training_step_is_one_graph_without_break(part_context, mim_mask):
    model = tiny_model(part_context=part_context)
    batch = random_batch(model, 4)
    explain = torch._dynamo.explain(training_loss)(model, batch, Criterion(FULL),
                                                   {**STATIC, "mim_mask": mim_mask})
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1


def test_eager_path_breaks_the_graph_at_the_data_dependent_mlm_selection():
    model = tiny_model()
    explain = torch._dynamo.explain(training_loss)(model, random_batch(model, 4), Criterion(FULL),
                                                   KW)
    assert explain.graph_break_count >= 1


def test_no_recompilation_across_caption_lengths():
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    fn = compile_training_loss(backend=counter)          # fullgraph, dynamic=False, as training
    model = small_model()
    a = random_batch(model, 4)
    b = trimmed(model, random_batch(model, 4, seed=1), ["red car", "a blue suv", "white van",
                                                        "silver hatchback with wheels"])
    c = trimmed(model, random_batch(model, 4, seed=2), ["a", "b", "c", "d"])
    widths = {x["caption_ids"].shape[1] for x in (a, b, c)}
    assert len(widths) == 3                                # three different caption widths
    for batch in (a, b, c):
        loss, _, _ = fn(model, batch, Criterion(FULL), STATIC)
        loss.backward()
    assert counter.frame_count == 1


# ---------------------------------------------------------------------------------- same numbers
@pytest.mark.parametrize("trim", [False, True])
def test_static_shapes_give_the_eager_losses_and_gradients(trim):
    """Same RNG draws, same maths: MLM's head at every position with ignored targets gives the
    mean over exactly the corrupted positions; trimmed captions are padded back (static_batch)."""
    model = small_model(**{"part_decoder.dropout": 0.1})
    batch = random_batch(model, 6)
    ref, names, ref_grads = step(training_loss, model, batch, KW)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    acc_ref = model(batch, terms=Criterion(FULL).terms, **KW).mlm_acc
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(6)]      # random_batch's captions
    other = model.static_batch(trimmed(model, batch, captions)) if trim else batch
    assert torch.equal(other["caption_ids"], batch["caption_ids"])
    got, got_names, grads = step(training_loss, model, other, STATIC)
    torch.manual_seed(5)
    acc = model(other, terms=Criterion(FULL).terms, **STATIC).mlm_acc
    assert got_names == names == ("loss", "sdm", "id", "mlm", "mim", "part")
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert acc.item() == acc_ref.item()
    scale = flat(ref_grads).abs().max().item()
    assert grads.keys() == ref_grads.keys()
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-5, atol=1e-6 * scale, msg=k)


@pytest.mark.slow     # one inductor compilation of forward + backward (about 1-2 min on 2 cores)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inductor_compiled_step_gives_the_eager_losses_and_gradients(precision):
    """fp32: losses to 1e-5 relative, each gradient to 1e-4 relative + 1e-5 of the largest
    gradient entry. bf16: losses to 1e-2 relative (bf16 keeps 8 bits: 4e-3 per rounding), the
    whole gradient vector to 10% relative L2, and no farther from the fp32 gradients than twice
    the eager bf16 step is (inductor keeps fp32 intermediates, so it is usually closer).
    ``fallback_random``: the compiled graph draws eager's random numbers (masks, dropout), so
    the two compute the same sample, not two samples of the same distribution."""
    model = small_model(**{"part_decoder.dropout": 0.1})
    batch = random_batch(model, 4)
    with torch._inductor.config.patch(fallback_random=True):
        compiled = compile_training_loss()
        got, names, grads = step(compiled, model, batch, STATIC, precision)
    ref, ref_names, ref_grads = step(training_loss, model, batch, STATIC, precision)
    assert names == ref_names and grads.keys() == ref_grads.keys()
    if precision == "fp32":
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        scale = flat(ref_grads).abs().max().item()
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5 * scale,
                                       msg=k)
        return
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2)
    _, _, fp32_grads = step(training_loss, model, batch, STATIC, "fp32")
    g, e, f = flat(grads), flat(ref_grads), flat(fp32_grads)
    assert (g - e).norm() / e.norm() < 0.1
    assert (g - f).norm() / f.norm() <= 2 * (e - f).norm() / f.norm()


# ---------------------------------------------------------------------------------- the trainer
class Samples(torch.utils.data.Dataset):
    """The rows of one random batch, as a dataset."""

    def __init__(self, batch: dict):
        self.batch, self.n = batch, len(batch["pids"])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def stack(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def run_trainer(tmp_path, compile_: bool):
    from pfcvr.config import load_params
    from pfcvr.engine.loader import EpochLoader, seed_everything
    from pfcvr.engine.train import forward_kwargs
    from pfcvr.engine.trainer import Trainer

    params = load_params(ROOT / "params.yaml", overrides={
        "train.epochs": 1, "train.batch_size": 4, "train.device": "cpu", "train.log_every": 0,
        "train.compile": compile_})
    seed_everything(0)
    model = small_model(**{"part_decoder.dropout": 0.0})
    loader = EpochLoader(Samples(random_batch(model, 8)), stack, batch_size=4, seed=0)
    criterion = Criterion(params.train.weights)
    kwargs = forward_kwargs(params.train)
    assert kwargs.get("static_shapes") is (True if compile_ else None)
    trainer = Trainer(model, loader, cfg=params.train, criterion=criterion, forward_kwargs=kwargs,
                      device=torch.device("cpu"), out_dir=tmp_path, seed=0, progress=False,
                      compile_backend="eager")
    assert (trainer.loss_fn is training_loss) is not compile_
    return trainer.fit().history


def test_trainer_with_compile_runs_the_compiled_step_and_matches_eager(tmp_path):
    eager = run_trainer(tmp_path / "eager", False)
    compiled = run_trainer(tmp_path / "compiled", True)
    for name in ("loss", "sdm", "id", "mlm", "mim", "part"):
        assert compiled[0][name] == pytest.approx(eager[0][name], rel=1e-5), name


def test_deferred_guard_skips_the_bad_update_and_stops_at_the_next_step(tmp_path, monkeypatch):
    """The GPU path (fused Adam, here on the CPU): no host read per step; a NaN loss at step 3
    leaves weights and Adam state as after step 2 and stops training at step 4, before its
    update."""
    import pfcvr.engine.trainer as T
    from pfcvr.engine.loader import EpochLoader, seed_everything
    from pfcvr.engine.trainer import NonFiniteLossError, Trainer
    from tests.support.train_helpers import StandInData, StandInModel, collate, train_cfg, trainer_losses

    real = T.build_optimizer
    monkeypatch.setattr(T, "build_optimizer",
                        lambda model, cfg, device: real(model, cfg, torch.device("cuda")))  # fused
    params = train_cfg(epochs=2)
    seed_everything(0)
    model = StandInModel(nan_at=3)
    loader = EpochLoader(StandInData(), collate, batch_size=8, seed=0)
    trainer = Trainer(model, loader, cfg=params.train, **trainer_losses(params),
                      device=torch.device("cpu"), out_dir=tmp_path, seed=0, progress=False)
    assert trainer.guard.deferred
    after = []
    trainer.optimizer.register_step_post_hook(
        lambda opt, *_: after.append([p.detach().clone() for p in model.parameters()]))
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "epoch 1, step 3: term 'mim' = nan" in msg and "detected at the next step" in msg
    assert model.calls == 4 and len(after) == 3          # step 4 ran forward, never updated
    for p, before, skipped in zip(model.parameters(), after[1], after[2]):
        assert torch.equal(before, skipped) and torch.equal(p.detach(), before)
    assert all(int(s["step"]) == 2 for s in trainer.optimizer.state.values())


# ---------------------------------------------------------------------------------- benchmark
def test_gpu_benchmark_smoke_run_on_cpu():
    out = subprocess.run([sys.executable, "benchmarks/train_gpu.py", "--smoke"], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    rows = [line.split() for line in lines
            if re.match(r"\s*(eager|compiled)\s+fp32\s+4\s+(full|baseline)\s", line)]
    assert sorted((r[0], r[3]) for r in rows) == [("compiled", "baseline"), ("compiled", "full"),
                                                  ("eager", "baseline"), ("eager", "full")]
    for r in rows:   # ms/step, samples/s, peak (none on CPU), TFLOP/step, TFLOP/s, MFU, 1st step
        assert float(r[4]) > 0 and float(r[5]) > 0 and r[6] == "-" and float(r[7]) > 0
        assert r[9] == "n/a"
    assert re.search(r"^full/baseline step ratio \(compiled, fp32, batch 4\): \d+\.\d\d$",
                     out.stdout, re.M)
    assert re.search(r"TFLOP/step full, .* baseline \(ratio \d\.\d\d\)", out.stdout)
    assert lines[-1] == "paper full bf16 MFU: n/a"


def test_benchmark_knows_the_dense_bf16_peaks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        bench = importlib.import_module("train_gpu")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench.chip_peak("NVIDIA H100 80GB HBM3")[0] == 989.4
    assert bench.chip_peak("NVIDIA H200")[0] == 989.4
    assert bench.chip_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert bench.chip_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    peak, why = bench.chip_peak("Some Future GPU")
    assert peak is None and "MFU n/a" in why


def test_inductor_cache_moves_to_the_project_unless_the_user_chose_a_folder(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from pfcvr.engine.compiled import use_inductor_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())   # torch's own default
    assert use_inductor_cache(tmp_path / "inductor") == tmp_path / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_inductor_cache(tmp_path / "inductor") == tmp_path / "mine"
