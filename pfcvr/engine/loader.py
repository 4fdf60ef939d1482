"""Seeding and the training DataLoader whose sample order is a function of (seed, epoch).

Determinism. Every seed is trained from :func:`seed_everything`; the order of the samples of
epoch ``e`` depends only on (seed, e): a DistributedSampler, also for one process, so that one
process with batch B sees exactly the union of what two processes with B/2 see. The DataLoader
worker seeds come from a generator seeded with (seed, e, rank), so a resumed run draws the same
augmentations as an uninterrupted one.
"""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pfcvr.engine import distributed as D


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every CUDA device included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mix_seeds(*values: int) -> int:
    """A 63-bit seed from several integers (epoch-, rank- and seed-specific streams).

    numpy's SeedSequence hashes the values, so nearby inputs (seed 0 epoch 1, seed 1 epoch 0)
    give unrelated streams.
    """
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


class EpochLoader:
    """A training DataLoader whose sample order and worker seeds are a function of the epoch.

    ``batch_size`` is the *global* batch; each of the ``world_size`` ranks gets an equal share.
    Incomplete last batches are dropped (constant batch shape; SDM needs several pairs). Call
    :meth:`set_epoch` before iterating an epoch.

    Raises ValueError when ``batch_size`` is not divisible by the number of processes or the
    dataset holds fewer samples than one batch.
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
        self.generator.manual_seed(mix_seeds(self.seed, epoch, self.rank))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch dict to ``device`` (asynchronously from pinned memory on CUDA);
    other values pass unchanged."""
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}
