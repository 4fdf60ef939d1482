"""The training driver: build the real pieces from params and run a :class:`Trainer`.

:func:`train_model` trains one seed of PFCVR: tokenizer, datasets, model, the loss
:class:`~pfcvr.losses.Criterion` of ``train.weights``, val evaluation, then the generic loop of
:mod:`pfcvr.engine.trainer` (AMP, clipping, DDP, checkpoints, exact resume). Seeding and sample
order: :mod:`pfcvr.engine.loader`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pfcvr.engine import distributed as D
from pfcvr.engine.loader import EpochLoader, mix_seeds, seed_everything, set_cpu_threads
from pfcvr.engine.trainer import Trainer, TrainResult
from pfcvr.losses import Criterion
from pfcvr.runtime.atomic import write_json


def forward_kwargs(cfg) -> dict[str, Any]:
    """``PFCVR.forward``'s keyword arguments from the ``train`` params section: the branches to
    run (``Criterion(cfg.weights).terms``, the weights > 0), ``mask_ratio``, ``text_mask_ratio``
    and ``mim_mask``, plus ``static_shapes=True`` with ``train.compile`` (no graph break; absent
    otherwise). Raises ValueError when every weight is zero."""
    kwargs = {"terms": Criterion(cfg.weights).terms, "mask_ratio": cfg.mask_ratio,
              "text_mask_ratio": cfg.text_mask_ratio, "mim_mask": cfg.mim_mask}
    if cfg.compile:
        kwargs["static_shapes"] = True
    return kwargs


def train_model(params, split_train, split_val, out_dir: str | Path, seed: int, run=None,
                progress: bool | str | None = None, *, tokenizer=None, fingerprint: str = "",
                on_epoch: Callable[[dict], None] | None = None,
                extra: dict[str, Any] | None = None) -> TrainResult:
    """Train PFCVR on ``split_train``, select on ``split_val`` (Rank-1), write to ``out_dir``.

    ``split_train`` / ``split_val``: what ``pfcvr.data.dataset.load_split`` returns.
    ``out_dir`` receives ``checkpoint.pt`` (every epoch), ``best/`` and ``final/`` (model folders
    that ``pfcvr.load`` restores) and ``result.json``; an existing checkpoint with the same
    ``fingerprint`` is resumed. ``tokenizer``: built from the training captions when None.
    ``run``: a pfcvr.tracking StageRun for per-epoch metrics ``seed<k>/<name>``. ``progress``:
    None = tqdm on a terminal else log lines, True = bar, False = silent, ``"lines"`` = log lines
    even on a terminal.

    Raises ValueError before any work when every ``train.weights`` entry is zero, DeviceError
    when ``train.device`` is not available, and what :meth:`Trainer.fit` raises
    (NonFiniteLossError ...).
    """
    from pfcvr.data.dataset import ImageTextDataset, pid_map
    from pfcvr.engine.evaluate import evaluate_retrieval
    from pfcvr.model import build_model, build_tokenizer
    from pfcvr.model.io import save_model

    cfg = params.train
    criterion = Criterion(cfg.weights)
    info = D.env_info()
    device = D.resolve_device(cfg.device, local_rank=info.local_rank)
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
        torch.manual_seed(mix_seeds(seed, info.rank))
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
                                  device=device, gallery_dataset=gallery).scalars()

    card = dict(extra or {})

    def save(m: nn.Module, folder: Path, info_: dict) -> None:
        save_model(m, folder, {**card, **info_})

    has_val = split_val is not None and len(split_val) > 0
    trainer = Trainer(model, loader, cfg=cfg, criterion=criterion,
                      forward_kwargs=forward_kwargs(cfg), device=device, out_dir=out_dir,
                      seed=seed, evaluate=evaluate if has_val else None, save_model=save,
                      fingerprint=fingerprint, run=run, progress=progress, on_epoch=on_epoch,
                      label=f"train seed{seed}", info=info,
                      # a zero-weight branch leaves its parameters without gradient
                      find_unused_parameters=not criterion.all_active)
    result = trainer.fit()
    result.extra.update({"num_classes": num_classes, "world_size": info.world_size,
                         "device": str(device), "precision": cfg.precision})
    if info.is_main:
        write_json(out_dir / "result.json", result.to_dict())
    return result
