"""Distributed data parallel helpers for runs launched by ``torchrun``.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (and ``MASTER_ADDR``/``MASTER_PORT``); a plain
``python -m stages.train`` has none of them and runs as a world of one, with every helper below a
no-op. Backend: NCCL when training on CUDA, gloo on CPU. Only rank 0 logs, tracks and writes files.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# The trainer resolves its device through this module (``D.resolve_device(pref, local_rank)``);
# both names are the ones of pfcvr.runtime.device, re-exported, not a second implementation.
from pfcvr.runtime.device import DeviceError, resolve_device

__all__ = ["DeviceError", "DistInfo", "all_reduce_tensor", "barrier", "broadcast_object",
           "destroy", "env_info", "init", "is_initialized", "reduce_metrics", "resolve_device",
           "sum_scalar", "wrap_ddp"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank, local rank and world size from the torchrun environment (a world of one without)."""
    def _int(name: str, default: int) -> int:
        raw = os.environ.get(name, "")
        try:
            return int(raw) if raw != "" else default
        except ValueError:
            raise DeviceError(f"environment variable {name}={raw!r} is not an integer") from None
    world = _int("WORLD_SIZE", 1)
    rank = _int("RANK", 0)
    local = _int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise DeviceError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def init(device: torch.device, info: DistInfo | None = None, timeout_s: float = 1800) -> DistInfo:
    """Join the process group torchrun prepared (NCCL on CUDA, gloo on CPU); no-op for one process."""
    info = info or env_info()
    if not info.enabled or (dist.is_available() and dist.is_initialized()):
        return info
    if not dist.is_available():
        raise DeviceError("torch.distributed is not available in this torch build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    return info


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_tensor(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or mean) ``t`` over ranks in place and return it (unchanged for one process)."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if op == "mean":
            t /= dist.get_world_size()
    return t


def reduce_metrics(values: dict[str, float], weight: float = 1.0,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """Weighted mean of scalar metrics across ranks (``weight``: e.g. this rank's sample count).

    With one process it returns ``values`` unchanged. Keys must be the same on every rank.
    """
    if not is_initialized() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) * weight for k in keys] + [float(weight)],
                     dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    total = float(t[-1]) or 1.0
    return {k: float(v) / total for k, v in zip(keys, t[:-1].tolist())}


def sum_scalar(value: float, device: torch.device | str = "cpu") -> float:
    """``value`` summed over ranks (e.g. samples seen)."""
    if not is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; small objects only)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(model: torch.nn.Module, device: torch.device,
             find_unused: bool = True) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when a process group is active.

    ``find_unused``: must be true when some parameters get no gradient (a branch with loss weight
    0 is not computed); DDP would otherwise wait for them forever. It costs one extra traversal
    of the autograd graph per step, so the trainer turns it off when every branch is on.
    """
    if not is_initialized():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None,
               find_unused_parameters=find_unused)
