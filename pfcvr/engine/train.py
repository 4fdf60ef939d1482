"""The training loop: AMP, gradient clipping, DDP, per-epoch checkpoints and exact resume.

Two layers:
- :class:`Trainer` runs epochs over any module that follows the model contract
  (``model(batch, **forward_kwargs) -> {"loss": ..., "<term>": ...}``) with any dataset/collate and
  any ``evaluate(model) -> {"R1", ...}``; the tests drive it with small stand-ins.
- :func:`train_model` builds the real pieces (tokenizer, datasets, PFCVR model, val evaluation)
  from params and runs a Trainer.

Determinism and resume. Every seed is trained from ``seed_everything(seed)``; the order of the
samples of epoch ``e`` depends only on (seed, e) (a DistributedSampler, also for one process, so
that one process with batch B sees exactly the union of what two processes with B/2 see), and the
DataLoader worker seeds come from a generator seeded with (seed, e, rank). A checkpoint is written
atomically at the end of every epoch with the RNG states; a resumed run restarts at the epoch
after the last checkpoint and, on CPU, ends with the same weights and metrics as an uninterrupted
one. Work done inside an interrupted epoch is redone (resume granularity: one epoch).
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pfcvr.engine import distributed as D
from pfcvr.engine.checkpoint import (CheckpointError, load_checkpoint, read_checkpoint,
                                     save_checkpoint, unwrap)
from pfcvr.engine.optim import build_optimizer, build_scheduler
from pfcvr.io import atomic_dir, write_json

TERMS = ("sdm", "id", "mlm", "mim", "part")
CHECKPOINT = "checkpoint.pt"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The loss (or a gradient) became NaN/inf; training stopped before updating the weights."""


# ----------------------------------------------------------------------------------------------
# Seeding, precision, loaders
# ----------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every CUDA device included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (epoch-, rank- and seed-specific streams)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def set_cpu_threads(n: int) -> None:
    """Use ``n`` torch CPU threads (0 keeps torch's default, one per core).

    Why 1 by default: on a small or shared CPU every parallel op waits for its slowest thread, and
    a thread descheduled by another process stalls it for a whole time slice; with 2 threads on 2
    busy cores a training step was measured 10-40x slower than with 1 (and only ~1.4x faster on
    idle cores).
    """
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def worker_init_fn(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for bf16/fp16 (fp32 master weights stay untouched); a no-op for fp32."""
    if precision not in _DTYPES:
        raise ValueError(f"train.precision={precision!r}: must be one of fp32 | bf16 | fp16")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


class EpochLoader:
    """A training DataLoader whose sample order and worker seeds are a function of the epoch.

    ``batch_size`` is the *global* batch; each of the ``world_size`` ranks gets an equal share.
    Incomplete last batches are dropped (constant batch shape; SDM needs several pairs).
    """

    def __init__(self, dataset: Dataset, collate_fn: Callable, *, batch_size: int, seed: int,
                 num_workers: int = 0, info: D.DistInfo = D.DistInfo(), pin_memory: bool = False):
        if batch_size % info.world_size:
            raise ValueError(f"train.batch_size={batch_size} is not divisible by the number of "
                             f"processes ({info.world_size}); it is the global batch")
        self.per_rank = batch_size // info.world_size
        self.seed, self.rank = seed, info.rank
        self.sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                          shuffle=True, seed=seed, drop_last=False)
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=self.per_rank, sampler=self.sampler,
                                 collate_fn=collate_fn, num_workers=num_workers, drop_last=True,
                                 pin_memory=pin_memory, generator=self.generator,
                                 worker_init_fn=worker_init_fn,
                                 persistent_workers=False)
        if len(self.loader) == 0:
            raise ValueError(f"the training split has {len(dataset)} samples, fewer than one batch "
                             f"of train.batch_size={batch_size}; lower train.batch_size")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(_mix(self.seed, epoch, self.rank))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------

class Progress:
    """tqdm bar when stderr is a terminal, else a plain line every ``log_every`` steps/epoch."""

    def __init__(self, mode: bool | None, label: str, log_every: int, enabled: bool = True):
        self.enabled = enabled and mode is not False
        self.tty = self.enabled and (mode is True or sys.stderr.isatty())
        self.label, self.log_every, self.bar = label, log_every, None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=f"{self.label} epoch {epoch}/{epochs}",
                            leave=False, dynamic_ncols=True, file=sys.stderr)
        self.epoch, self.epochs, self.steps = epoch, epochs, steps

    def step(self, i: int, loss: float, samples_per_s: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", sps=f"{samples_per_s:.1f}", refresh=False)
            self.bar.update(1)
        elif self.enabled and self.log_every and (i % self.log_every == 0):
            self.line(f"epoch {self.epoch}/{self.epochs} step {i}/{self.steps} loss {loss:.4f} "
                      f"lr {lr:.3g} {samples_per_s:.1f} samples/s")

    def end_epoch(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            val = "" if row.get("val_R1") is None else f" val R1 {row['val_R1']:.2f} mAP {row['val_mAP']:.2f}"
            self.line(f"epoch {row['epoch']}/{self.epochs} loss {row['loss']:.4f}{val} "
                      f"{row['samples_per_s']:.1f} samples/s {row['seconds']:.1f}s")

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"[{self.label}] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The generic loop
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What one training run produced (plain data; ``to_dict`` for JSON)."""

    seed: int
    epochs: int
    history: list[dict[str, Any]]
    best: dict[str, Any] | None          # {"epoch", "R1", "mAP", ...} of the best val epoch
    final: dict[str, Any]                 # last history row
    seconds: float                        # training wall time, all sessions of a resumed run
    resumed_from: int = 0                 # epoch of the checkpoint this session started from
    out_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epochs": self.epochs, "best": self.best, "final": self.final,
                "seconds": self.seconds, "resumed_from": self.resumed_from,
                "out_dir": self.out_dir, "history": self.history, **self.extra}


class Trainer:
    """Train ``model`` for ``epochs`` epochs with per-epoch checkpoints in ``out_dir``.

    Writes (rank 0 only) ``out_dir/checkpoint.pt`` every epoch, ``out_dir/best/`` when the val
    R1 improves and ``out_dir/final/`` after the last epoch, through ``save_model(model, folder)``
    (atomically). ``evaluate(model) -> {"R1", "mAP", ...}`` runs on rank 0 every ``eval_every``
    epochs and after the last one.
    """

    def __init__(self, model: nn.Module, loader: EpochLoader, *, cfg, forward_kwargs: dict,
                 device: torch.device, out_dir: str | Path, seed: int,
                 evaluate: Callable[[nn.Module], dict] | None = None,
                 save_model: Callable[[nn.Module, Path, dict], None] | None = None,
                 fingerprint: str = "", run=None, progress: bool | None = None,
                 on_epoch: Callable[[dict], None] | None = None, label: str = "train",
                 info: D.DistInfo = D.DistInfo()):
        self.cfg = cfg
        self.device, self.seed, self.info = device, seed, info
        self.out_dir = Path(out_dir)
        self.epochs, self.eval_every = cfg.epochs, cfg.eval_every
        self.precision, self.grad_clip = cfg.precision, cfg.grad_clip
        self.model = model.to(device)
        self.optimizer = build_optimizer(self.model, cfg, device)
        self.loader = loader
        self.scheduler = build_scheduler(self.optimizer, cfg, len(loader))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        weights = forward_kwargs.get("weights")
        all_on = weights is not None and all(getattr(weights, t) > 0 for t in TERMS)
        self.ddp = D.wrap_ddp(self.model, device, find_unused=not all_on)
        self.forward_kwargs = forward_kwargs
        self.evaluate, self.save_model = evaluate, save_model
        self.fingerprint, self.run, self.on_epoch = fingerprint, run, on_epoch
        self.progress = Progress(progress, label, cfg.log_every, enabled=info.is_main)
        self.checkpoint = self.out_dir / CHECKPOINT

    # -- resume ------------------------------------------------------------------------------
    def _resume(self) -> dict[str, Any] | None:
        """Load the checkpoint when it exists and fits (rank 0 decides, every rank loads it)."""
        decision = None
        if self.info.is_main and self.checkpoint.is_file():
            try:
                stored = read_checkpoint(self.checkpoint)["fingerprint"]
                if self.fingerprint and stored != self.fingerprint:
                    self.progress.line(f"{self.checkpoint}: written for other params or data; "
                                       "starting from scratch")
                else:
                    decision = str(self.checkpoint)
            except CheckpointError as err:
                warnings.warn(f"{err}; starting this seed from scratch")
        decision = D.broadcast_object(decision)
        if decision is None:
            return None
        if not self.checkpoint.is_file():
            raise CheckpointError(f"rank {self.info.rank} cannot read {self.checkpoint}, which rank 0 "
                                  "resumes from; multi-node resume needs out_dir on a shared "
                                  "filesystem")
        state = load_checkpoint(self.checkpoint, model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler,
                                map_location=self.device)
        if self.info.rank:  # the stored RNG state is rank 0's; keep the other ranks' own streams
            torch.manual_seed(_mix(self.seed, self.info.rank, state["epoch"]))
        return state

    # -- one step ----------------------------------------------------------------------------
    def _step(self, batch: dict, epoch: int, step: int, last_good: str) -> tuple[torch.Tensor, list[str]]:
        """Forward, finiteness check, backward, update. Returns ([1 + terms] values, names)."""
        with autocast(self.device, self.precision):
            out = self.ddp(batch, **self.forward_kwargs)
        names = ["loss"] + [t for t in TERMS if t in out]
        vals = torch.stack([out[n].detach().float().reshape(()) for n in names])
        check = D.all_reduce_tensor(vals.clone()) if self.info.enabled else vals
        host = check.cpu()  # the one sync per step; its mean over ranks is what progress shows
        self.last_loss = float(host[0]) / self.info.world_size
        if not torch.isfinite(host).all():
            bad = [n for n, v in zip(names, host.tolist()) if not math.isfinite(v)]
            term = next((n for n in bad if n != "loss"), bad[0])
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, step {step}: term '{term}' = "
                f"{host[names.index(term)].item()} (total loss {host[0].item()}); training "
                f"stopped before updating the weights; last good checkpoint: {last_good}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            if not self.scaler.is_enabled() and not torch.isfinite(norm):
                raise NonFiniteLossError(
                    f"non-finite gradient norm at epoch {epoch}, step {step} (loss {host[0].item()});"
                    f" training stopped before updating the weights; last good checkpoint: {last_good}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():
            # fp16: the scaler skips the steps whose gradients overflowed; the schedule goes on.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        return vals, names

    # -- epochs ------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        main = self.info.is_main
        state = self._resume()
        start = state["epoch"] if state else 0
        step = state["step"] if state else 0
        best = state["best"] if state else None
        history = list(state["history"]) if state else []
        if state:
            self.progress.line(f"resuming from {self.checkpoint} (epoch {start}/{self.epochs})")
            for row in history:  # a restarted stage opens a new MLflow run: give it the curves
                self._log_epoch(row)
        last_good = f"{self.checkpoint} (epoch {start})" if state else "none (no epoch finished)"
        for epoch in range(start + 1, self.epochs + 1):
            t0 = time.perf_counter()
            self.model.train()
            self.loader.set_epoch(epoch)
            self.progress.start_epoch(epoch, self.epochs, len(self.loader))
            sums: torch.Tensor | None = None
            names: list[str] = []
            n = 0
            for i, batch in enumerate(self.loader, 1):
                batch = to_device(batch, self.device)
                bs = int(batch["pids"].shape[0])
                step += 1
                vals, names = self._step(batch, epoch, step, last_good)
                sums = vals * bs if sums is None else sums + vals * bs
                n += bs
                elapsed = time.perf_counter() - t0
                self.progress.step(i, self.last_loss, n * self.info.world_size / elapsed,
                                   self.optimizer.param_groups[0]["lr"])
            train_s = time.perf_counter() - t0
            means = (sums / n).tolist()
            losses = D.reduce_metrics(dict(zip(names, means)), weight=n, device=self.device)
            total = D.sum_scalar(n, self.device)
            val = None
            if epoch % self.eval_every == 0 or epoch == self.epochs:
                val = self._evaluate()
            row = {"seed": self.seed, "epoch": epoch, "step": step, "loss": losses["loss"]}
            row.update({t: losses.get(t) for t in TERMS})
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["val_R1"] = val.get("R1") if val else None
            row["val_mAP"] = val.get("mAP") if val else None
            row["samples_per_s"] = total / train_s
            if val and (best is None or val["R1"] > best["R1"]):
                best = {"epoch": epoch, **val}
                self._save("best", {"epoch": epoch, "val": val})
            if epoch == self.epochs:
                self._save("final", {"epoch": epoch, "val": val})
                if self.evaluate is None:  # nothing to select on: best is the last epoch
                    self._save("best", {"epoch": epoch, "val": None,
                                        "selection": "no validation split: the final epoch"})
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if main:
                save_checkpoint(self.checkpoint, model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler, epoch=epoch,
                                step=step, best=best, history=history,
                                fingerprint=self.fingerprint)
            D.barrier()
            last_good = f"{self.checkpoint} (epoch {epoch})"
            self.progress.end_epoch(row)
            self._log_epoch(row)
            if self.on_epoch is not None and main:
                self.on_epoch(row)
        final = history[-1] if history else {}
        return TrainResult(seed=self.seed, epochs=self.epochs, history=history, best=best,
                           final=final, seconds=float(sum(r["seconds"] for r in history)),
                           resumed_from=start, out_dir=str(self.out_dir))

    def _evaluate(self) -> dict[str, float] | None:
        if self.evaluate is None:
            return None
        val = None
        if self.info.is_main:
            with torch.no_grad(), autocast(self.device, self.precision):
                val = {k: float(v) for k, v in self.evaluate(unwrap(self.model)).items()}
        self.model.train()
        return D.broadcast_object(val)

    def _save(self, which: str, extra: dict) -> None:
        if self.save_model is None or not self.info.is_main:
            return
        with atomic_dir(self.out_dir / which) as tmp:
            self.save_model(unwrap(self.model), tmp, {"seed": self.seed, **extra})

    def _log_epoch(self, row: dict) -> None:
        if self.run is None or not self.info.is_main:
            return
        metrics = {f"seed{self.seed}/{k}": v for k, v in row.items()
                   if k not in ("seed", "epoch") and isinstance(v, (int, float))}
        self.run.log_metrics(metrics, step=row["epoch"])


# ----------------------------------------------------------------------------------------------
# The real model
# ----------------------------------------------------------------------------------------------

def forward_kwargs(cfg) -> dict[str, Any]:
    """The model's training-forward arguments from the ``train`` params section."""
    return {"weights": cfg.weights, "mask_ratio": cfg.mask_ratio,
            "text_mask_ratio": cfg.text_mask_ratio, "mim_mask": cfg.mim_mask}


def train_model(params, split_train, split_val, out_dir: str | Path, seed: int, run=None,
                progress: bool | None = None, *, tokenizer=None, fingerprint: str = "",
                on_epoch: Callable[[dict], None] | None = None,
                extra: dict[str, Any] | None = None) -> TrainResult:
    """Train PFCVR on ``split_train``, select on ``split_val`` (Rank-1), write to ``out_dir``.

    ``split_train`` / ``split_val``: what ``pfcvr.data.dataset.load_split`` returns.
    ``out_dir`` receives ``checkpoint.pt`` (every epoch), ``best/`` and ``final/`` (model folders
    that ``pfcvr.load`` restores) and ``result.json``; an existing checkpoint with the same
    ``fingerprint`` is resumed. ``tokenizer``: built from the training captions when None.
    ``run``: a pfcvr.tracking StageRun for per-epoch metrics ``seed<k>/<name>``. ``progress``:
    None = tqdm on a terminal else log lines, True = bar, False = silent.
    """
    from pfcvr.data.dataset import ImageTextDataset, pid_map
    from pfcvr.engine.evaluate import evaluate_retrieval
    from pfcvr.model import build_model, build_tokenizer
    from pfcvr.model.io import save_model

    cfg = params.train
    info = D.env_info()
    device = D.resolve_device(cfg.device, info.local_rank)
    D.init(device, info)
    set_cpu_threads(cfg.cpu_threads)
    out_dir = Path(out_dir)
    seed_everything(seed)
    if tokenizer is None:
        tokenizer = build_tokenizer(params.model, split_train.captions()[0])
    labels = pid_map(split_train.ids)
    num_classes = len(labels)
    model = build_model(params.model, num_classes, tokenizer)
    if info.rank:  # different masks/dropout per rank; rank 0 keeps the single-process stream
        torch.manual_seed(_mix(seed, info.rank))
    # The model decides the input size and patch grid (a real CLIP keeps its own patch size).
    train_set = ImageTextDataset(split_train, tokenizer, model.image_size,
                                 model.image_size // model.grid_size, train=True,
                                 hflip=cfg.hflip, flip_masks=cfg.flip_masks, pid_map=labels)
    if cfg.num_workers > 0 and train_set.store.cached:
        train_set.store.preload()  # decode once here; forked workers share the pages
    loader = EpochLoader(train_set, train_set.collate, batch_size=cfg.batch_size, seed=seed,
                         num_workers=cfg.num_workers, info=info,
                         pin_memory=device.type == "cuda")
    ev = params.eval
    gallery = None
    if split_val is not None and len(split_val) > 0:
        from pfcvr.data.dataset import ImageDataset

        gallery = ImageDataset(split_val, model.image_size, model.image_size // model.grid_size)

    def evaluate(m: nn.Module) -> dict:
        # Selection on the published score (global features); part fusion is an eval extension.
        return evaluate_retrieval(m, split_val, batch_size=ev.batch_size, chunk_size=ev.chunk_size,
                                  device=device, gallery_dataset=gallery)

    card = dict(extra or {})

    def save(m: nn.Module, folder: Path, info_: dict) -> None:
        save_model(m, folder, {**card, **info_})

    has_val = split_val is not None and len(split_val) > 0
    trainer = Trainer(model, loader, cfg=cfg, forward_kwargs=forward_kwargs(cfg), device=device,
                      out_dir=out_dir, seed=seed, evaluate=evaluate if has_val else None,
                      save_model=save, fingerprint=fingerprint, run=run, progress=progress,
                      on_epoch=on_epoch, label=f"train seed{seed}", info=info)
    result = trainer.fit()
    result.extra.update({"num_classes": num_classes, "world_size": info.world_size,
                         "device": str(device), "precision": cfg.precision})
    if info.is_main:
        write_json(out_dir / "result.json", result.to_dict())
    return result
