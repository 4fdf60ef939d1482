"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is one ``torch.save`` file written atomically (temporary file + rename), holding the
model, optimiser, scheduler and gradient-scaler states, the RNG states (python, numpy, torch, every
CUDA device), the epoch just finished, the global step, the best validation metric and the history.
It is written at epoch boundaries, so a killed run continues from the last finished epoch.

RNG states are stored as plain lists and tensors so that the file loads with
``torch.load(weights_only=True)``.

Disk. :func:`check_checkpoint_space` runs before the first step (room for a checkpoint, its
temporary copy and the two model folders, estimated from the parameter count); a write that fails
anyway (disk full, read-only disk) raises one line naming the file (:mod:`pfcvr.runtime.storage`).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pfcvr.runtime.atomic import atomic_path
from pfcvr.runtime.storage import check_free_space, write_errors

FORMAT_VERSION = 1
ADAM_STATE_BYTES = 8      # AdamW keeps two fp32 moments per trainable parameter
RESUME_ADVICE = "training resumes from the last checkpoint written"


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or does not fit the run."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel (or compiled) wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def rng_state() -> dict[str, Any]:
    """Every RNG state that training consumes, in a weights_only-loadable form."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, epoch: int, step: int,
                    best: dict[str, Any] | None, history: list[dict[str, Any]],
                    fingerprint: str = "", extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint for the end of ``epoch`` (1-based) atomically; returns its path."""
    state = {
        "format": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "epoch": int(epoch),
        "step": int(step),
        "best": dict(best) if best else None,
        "history": list(history),
        "fingerprint": fingerprint,
        "extra": dict(extra or {}),
    }
    path = Path(path)
    size = sum(_tensor_bytes(v) for v in (state["model"], state["optimizer"]))
    with atomic_path(path) as tmp, write_errors(path, "the training checkpoint", size,
                                                RESUME_ADVICE):
        torch.save(state, tmp)
    return path


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside nested dicts / lists / tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def checkpoint_bytes(model: nn.Module) -> tuple[int, int]:
    """(checkpoint file, one model folder) bytes estimated from the parameter count, before any
    optimiser state exists: the state dict, plus the AdamW moments of the trainable parameters."""
    weights = _tensor_bytes(unwrap(model).state_dict())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return weights + ADAM_STATE_BYTES * trainable, weights


def check_checkpoint_space(out_dir: str | Path, model: nn.Module) -> int:
    """Raise ``pfcvr.runtime.storage.DiskSpaceError`` unless ``out_dir``'s disk has room for what a run
    writes there at its peak: the checkpoint and its temporary successor, ``best/``, ``final/``
    and a temporary copy of ``best/`` (less what ``out_dir`` already holds, which they replace).
    Returns the bytes that were needed."""
    ckpt, folder = checkpoint_bytes(model)
    out_dir = Path(out_dir)
    present = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) \
        if out_dir.is_dir() else 0
    needed = max(2 * ckpt + 3 * folder - present, 0)
    check_free_space(out_dir, needed, "training checkpoints (a checkpoint of "
                     f"{ckpt / 1e6:.1f} MB and model folders of {folder / 1e6:.1f} MB)")
    return needed


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file as a dict (no state is applied)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a PFCVR training checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'}, "
                              f"expected {FORMAT_VERSION})")
    return state


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer=None, scheduler=None,
                    scaler=None, map_location: str | torch.device = "cpu",
                    restore_rng: bool = True) -> dict[str, Any]:
    """Apply a checkpoint to the given objects; returns ``{epoch, step, best, history, ...}``."""
    state = read_checkpoint(path, map_location)
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: model weights do not fit this model ({err})") from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {k: state[k] for k in ("epoch", "step", "best", "history", "fingerprint", "extra")}
