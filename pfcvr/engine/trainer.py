"""The generic training loop: AMP, gradient clipping, DDP, per-epoch checkpoints, exact resume.

:class:`Trainer` runs epochs over any module that follows the model contract with any
dataset/collate and any ``evaluate(model) -> {"R1", "mAP", ...}``; the tests drive it with small
stand-ins, :func:`pfcvr.engine.train.train_model` with the real PFCVR pieces. The contract:

- ``output = model(batch, **forward_kwargs)``, where ``output.terms()`` gives the loss terms it
  computed, {name: scalar tensor []} (``pfcvr.model.PFCVROutput``);
- ``criterion(output)`` -> the total loss to minimise (a scalar tensor []), and
  ``criterion.names`` the loss names that make the history columns (``pfcvr.losses.Criterion``).

Resume. A checkpoint is written atomically at the end of every epoch with the RNG states; a
resumed run restarts at the epoch after the last checkpoint and, on CPU, ends with the same
weights and metrics as an uninterrupted one (sample order: :mod:`pfcvr.engine.loader`). Work done
inside an interrupted epoch is redone (resume granularity: one epoch).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pfcvr.engine import distributed as D
from pfcvr.engine.checkpoint import (RESUME_ADVICE, CheckpointError, check_checkpoint_space,
                                     load_checkpoint, read_checkpoint, save_checkpoint, unwrap)
from pfcvr.engine.compiled import CUDAGRAPH_MODES, compile_training_loss, training_loss
from pfcvr.engine.guard import NonFiniteLossError, StepGuard, supports_found_inf
from pfcvr.engine.loader import EpochLoader, mix_seeds, to_device
from pfcvr.engine.optim import build_optimizer, build_scheduler
from pfcvr.engine.progress import Progress
from pfcvr.runtime.atomic import atomic_dir
from pfcvr.runtime.storage import write_errors

CHECKPOINT = "checkpoint.pt"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["CHECKPOINT", "NonFiniteLossError", "TrainResult", "Trainer", "autocast"]


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for bf16/fp16 (fp32 master weights stay untouched); a no-op for fp32.

    Raises ValueError for another ``precision`` (named as ``train.precision``).
    """
    if precision not in _DTYPES:
        raise ValueError(f"train.precision={precision!r}: must be one of fp32 | bf16 | fp16")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


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

    ``cfg``: the ``train`` params section (epochs, lr schedule, precision, clipping ...);
    ``criterion`` and ``forward_kwargs``: see the module docstring. Writes (rank 0 only)
    ``out_dir/checkpoint.pt`` every epoch, ``out_dir/best/`` when the val R1 improves and
    ``out_dir/final/`` after the last epoch, through ``save_model(model, folder)`` (atomically).
    ``evaluate(model) -> {"R1", "mAP", ...}`` runs on rank 0 every ``eval_every`` epochs and after
    the last one. ``find_unused_parameters``: DDP's option; True is always correct, False is faster
    and only right when every parameter gets a gradient at every step (the driver knows: for PFCVR
    ``not criterion.all_active``).

    ``cfg.compile``: run the step's forward and loss through ``torch.compile``
    (:mod:`pfcvr.engine.compiled`, mode ``cfg.compile_mode``; the CUDA-graph modes mark every
    step); ``compile_backend`` is ``inductor`` but for tests. The non-finite check
    (:mod:`pfcvr.engine.guard`) syncs every step, except with a fused optimizer (CUDA) and no fp16
    scaler, where it is read one step later and the bad step's update is skipped on the device.

    :meth:`fit` raises NonFiniteLossError on a NaN/inf loss or gradient norm (before the update),
    CheckpointError when a non-zero rank cannot read the checkpoint rank 0 resumes from.
    """

    def __init__(self, model: nn.Module, loader: EpochLoader, *, cfg, criterion,
                 forward_kwargs: dict, device: torch.device, out_dir: str | Path, seed: int,
                 evaluate: Callable[[nn.Module], dict] | None = None,
                 save_model: Callable[[nn.Module, Path, dict], None] | None = None,
                 fingerprint: str = "", run=None, progress: bool | None = None,
                 on_epoch: Callable[[dict], None] | None = None, label: str = "train",
                 info: D.DistInfo = D.DistInfo(), find_unused_parameters: bool = True,
                 compile_backend: str = "inductor"):
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
        self.ddp = D.wrap_ddp(self.model, device, find_unused=find_unused_parameters)
        self.criterion, self.forward_kwargs = criterion, forward_kwargs
        self.loss_fn = training_loss
        mode = cfg.compile_mode     # read either way: it is validated and recorded with the run
        if cfg.compile:     # DDP: dynamo leaves DDP's own forward eager (a deliberate break)
            self.loss_fn = compile_training_loss(mode, fullgraph=not info.enabled,
                                                 backend=compile_backend)
        self.cudagraphs = cfg.compile and device.type == "cuda" and mode in CUDAGRAPH_MODES
        self.guard = StepGuard(supports_found_inf(self.optimizer) and not self.scaler.is_enabled(),
                               device, info.world_size)
        self.evaluate, self.save_model = evaluate, save_model
        self.fingerprint, self.run, self.on_epoch = fingerprint, run, on_epoch
        self.progress = Progress(progress, label, cfg.log_every, enabled=info.is_main)
        self.checkpoint = self.out_dir / CHECKPOINT
        if info.is_main:  # a full disk is named before the first step, not after an epoch
            check_checkpoint_space(self.out_dir, self.model)

    # -- resume ------------------------------------------------------------------------------
    def _resume(self) -> dict[str, Any] | None:
        """Load the checkpoint when it exists and fits (rank 0 decides, every rank loads it)."""
        decision = None
        if self.info.is_main and self.checkpoint.is_file():
            try:
                stored = read_checkpoint(self.checkpoint)["fingerprint"]
                if self.fingerprint and stored != self.fingerprint:
                    self.progress.line(f"{self.checkpoint}: written for other params or data "
                                       "(images, backbone and code included); starting from "
                                       "scratch")
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
            torch.manual_seed(mix_seeds(self.seed, self.info.rank, state["epoch"]))
        return state

    # -- one step ----------------------------------------------------------------------------
    def _step(self, batch: dict, epoch: int, step: int, last_good: str) -> tuple[torch.Tensor, list[str]]:
        """Forward, finiteness check, backward, update. Returns ([1 + terms] values, names)."""
        if self.cudagraphs:   # the previous step's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(self.device, self.precision):
            loss, vals, names = self.loss_fn(self.ddp, batch, self.criterion, self.forward_kwargs)
        names = list(names)
        # Summed over ranks, so that every rank stops at the same step; progress shows the mean.
        check = D.all_reduce_tensor(vals.clone()) if self.info.enabled else vals
        self.guard.loss_values(check, names, f"epoch {epoch}, step {step}", last_good)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        norm = None
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.guard.before_update(self.optimizer, norm, check_norm=not self.scaler.is_enabled())
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
                self.progress.step(i, self.guard.last_loss, n * self.info.world_size / elapsed,
                                   self.optimizer.param_groups[0]["lr"])
            self.guard.flush()      # the epoch's last step is checked before anything is saved
            train_s = time.perf_counter() - t0
            means = (sums / n).tolist()
            losses = D.reduce_metrics(dict(zip(names, means)), weight=n, device=self.device)
            total = D.sum_scalar(n, self.device)
            val = None
            if epoch % self.eval_every == 0 or epoch == self.epochs:
                val = self._evaluate()
            row = {"seed": self.seed, "epoch": epoch, "step": step, "loss": losses["loss"]}
            row.update({t: losses.get(t) for t in self.criterion.names})
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
        folder = self.out_dir / which
        with atomic_dir(folder) as tmp, write_errors(folder, "the model folder",
                                                     advice=RESUME_ADVICE):
            self.save_model(unwrap(self.model), tmp, {"seed": self.seed, **extra})

    def _log_epoch(self, row: dict) -> None:
        if self.run is None or not self.info.is_main:
            return
        metrics = {f"seed{self.seed}/{k}": v for k, v in row.items()
                   if k not in ("seed", "epoch") and isinstance(v, (int, float))}
        self.run.log_metrics(metrics, step=row["epoch"])
