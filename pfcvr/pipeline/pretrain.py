"""The work of the DVC stage ``pretrain``: CLIP-style pretraining of the tiny backbone on the
synthetic pretraining corpus (``stages/pretrain.py`` only does the I/O around :func:`pretrain`).

PFCVR fine-tunes a pretrained CLIP (docs/method.md §3.1: OpenAI's ViT-B/16). The pipeline's
stand-in: the tiny CLIP of ``model.tiny.*`` trained with the symmetric InfoNCE loss of CLIP
(:func:`pfcvr.losses.info_nce`, fixed logit scale ``1 / model.temperature``, the one fine-tuning
uses) on the corpus of :mod:`pfcvr.data.synthetic.corpus` (coarse alt-text captions, identities
disjoint from the benchmark). The result is a transformers CLIP folder plus its tokenizer, which
``model.backbone: pretrained`` loads like any other CLIP checkpoint.

Zero-shot val Rank-1 (the benchmark's val split, never test) is measured at every checkpoint,
every ``pretrain.eval_every`` steps. Resume: a checkpoint is written at each of those points; a
killed run started again with the same params, data and code continues from the last one and
ends with the same weights as an uninterrupted run (batch order and augmentation are functions of
(seed, step)).
"""
from __future__ import annotations

import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfcvr.data.dataset import normalize
from pfcvr.engine import fingerprint as FP
from pfcvr.engine.loader import mix_seeds
from pfcvr.losses import info_nce
from pfcvr.runtime.atomic import read_json, write_json, write_text

STREAM = 104729            # torch seed tag of pretraining (batch order, flips, caption choice)
CHECKPOINT = "checkpoint.pt"
HISTORY_COLUMNS = ("step", "loss", "lr", "val_R1", "seconds")   # reports/pretrain/history.tsv


@dataclass
class PretrainResult:
    """``history``: one row per checkpoint {step, loss, lr, val_R1, seconds}; ``stats``: the
    corpus stats plus the run's; ``clip``: the trained transformers ``CLIPModel``;
    ``tokenizer``: its ``pfcvr.model.tokenizer.Tokenizer`` (learned on the corpus captions)."""

    history: list[dict]
    stats: dict
    clip: Any
    tokenizer: Any


def benchmark_identity_keys(records: list[dict]) -> list[tuple] | None:
    """Full attribute sets of every benchmark identity (all splits) of the prepared manifest
    ``records``, or None when they carry no attributes (a real dataset: disjointness cannot be
    checked)."""
    from pfcvr.data.synthetic.identities import identity_key

    if not records or any("attributes" not in r for r in records):
        return None
    return sorted({identity_key(r["attributes"]) for r in records})


def _batch(corpus, tokens: torch.Tensor, n_caps: int, seed: int, step: int, batch_size: int,
           hflip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, S, S] (normalised) and caption ids [B, L] of ``step``: a function of
    (seed, step) alone, so a resumed run sees the same batches."""
    n = len(corpus.images)
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    idx = order[k * batch_size:(k + 1) * batch_size]
    g = torch.Generator().manual_seed(mix_seeds(seed, STREAM, step))
    cap = torch.randint(n_caps, (batch_size,), generator=g)
    flip = torch.rand(batch_size, generator=g) < hflip
    images = torch.from_numpy(corpus.images[idx.numpy()]).permute(0, 3, 1, 2)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return normalize(images), tokens[idx * n_caps + cap]


def _zero_shot_r1(model, val_split, batch_size: int) -> float:
    """Val Rank-1 (%) of a GlobalEncoder (restored to train mode by evaluate_retrieval)."""
    from pfcvr.engine.evaluate import evaluate_retrieval

    return float(evaluate_retrieval(model, val_split, batch_size=batch_size, chunk_size=None,
                                    device="cpu").R1)


def pretrain(params, *, prepared: Path, parts: Path, cache: Path, run=None,
             progress: bool | None = None) -> PretrainResult:
    """Pretrain the tiny CLIP of ``params.model`` with ``params.pretrain`` (publish the result
    with :func:`write_outputs`).

    Reads the benchmark manifest of ``prepared`` (identities to avoid) and its val split with
    ``parts`` (zero-shot Rank-1). ``cache`` holds the resumable checkpoint. ``run``: a tracking
    StageRun or None (gets ``pretrain/loss`` and ``pretrain/val_R1`` per checkpoint).
    ``progress``: tqdm bar (None: on a terminal). Raises ValueError for a corpus smaller than
    one batch.
    """
    from transformers import CLIPModel

    from pfcvr.data.dataset import load_split
    from pfcvr.data.oracle import attribute_oracle
    from pfcvr.data.synthetic.corpus import build_corpus
    from pfcvr.engine.checkpoint import (CheckpointError, load_checkpoint, read_checkpoint,
                                         save_checkpoint)
    from pfcvr.engine.loader import set_cpu_threads
    from pfcvr.engine.optim import WarmupCosine
    from pfcvr.model.backbone import CLIPBackbone, install_stem, tiny_clip_config
    from pfcvr.model.global_encoder import GlobalEncoder
    from pfcvr.model.tokenizer import Tokenizer

    p, m = params.pretrain, params.model
    set_cpu_threads(params.train.cpu_threads)
    t0 = time.perf_counter()
    manifest = read_json(Path(prepared) / "manifest.json")
    exclude = benchmark_identity_keys(manifest)
    corpus = build_corpus(p.n_ids, p.images_per_id, p.captions_per_image, p.part_rate,
                          m.image_size, params.seed, exclude or ())
    corpus.stats["identity_disjoint_check"] = "checked" if exclude is not None else \
        "not possible: the benchmark has no attribute annotations"
    if len(corpus.images) < p.batch_size:
        raise ValueError(f"pretrain.batch_size={p.batch_size} exceeds the corpus's "
                         f"{len(corpus.images)} images; raise pretrain.n_ids or lower the batch")
    captions = [c for caps in corpus.captions for c in caps]
    tokenizer = Tokenizer.train(captions, m.tiny.vocab_size, m.tiny.context_length)
    tokens = tokenizer(captions)
    torch.manual_seed(params.seed)
    clip = install_stem(CLIPModel(tiny_clip_config(m, tokenizer)))
    model = GlobalEncoder(CLIPBackbone(clip), tokenizer)
    backbone = model.backbone
    opt = torch.optim.AdamW(backbone.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(p.steps, p.warmup_steps))
    val_split = load_split(prepared, parts, "val")
    key = FP.digest(FP.params_key(params.pretrain), FP.params_key(m.tiny), m.image_size,
                    m.patch_size, m.embed_dim, m.temperature, params.seed, exclude,
                    FP.code_key())[:16]
    ckpt = Path(cache) / CHECKPOINT
    history, step = [], 0
    if ckpt.is_file():
        try:
            stale = read_checkpoint(ckpt)["fingerprint"] != key
        except CheckpointError as err:
            warnings.warn(f"{err}; pretraining from scratch")
            stale = None
        if stale:
            print(f"[pretrain] {ckpt} was written for other params, data or code: starting over",
                  flush=True)
        elif stale is False:
            state = load_checkpoint(ckpt, model=backbone, optimizer=opt, scheduler=sched)
            history, step = state["history"], state["step"]
            t0 -= history[-1]["seconds"] if history else 0.0   # seconds count the whole run
            print(f"[pretrain] resuming at step {step} of {p.steps}", flush=True)
    scale = 1.0 / m.temperature
    n_caps = p.captions_per_image
    from tqdm.auto import tqdm

    if progress is None:          # a bar on a terminal; in a log, one line per checkpoint
        progress = sys.stderr.isatty()
    bar = tqdm(total=p.steps, initial=step, desc="pretrain", unit="step", disable=not progress,
               mininterval=1.0)
    losses: list[float] = []
    backbone.train()
    while step < p.steps:
        images, ids = _batch(corpus, tokens, n_caps, params.seed, step, p.batch_size, p.hflip)
        loss = info_nce(model.encode_image(images), model.encode_text(ids), scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5.0)
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % p.eval_every == 0 or step == p.steps:
            r1 = _zero_shot_r1(model, val_split, params.eval.batch_size)
            row = {"step": step, "loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
                   "val_R1": r1, "seconds": time.perf_counter() - t0}
            losses = []
            history.append(row)
            bar.write(f"[pretrain] step {step}: loss {row['loss']:.3f}, zero-shot val R1 {r1:.2f}")
            if run is not None:
                run.log_metrics({"pretrain/loss": row["loss"], "pretrain/val_R1": r1}, step=step)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt, model=backbone, optimizer=opt, scheduler=sched, scaler=None,
                            epoch=step // (len(corpus.images) // p.batch_size), step=step,
                            best=None, history=history, fingerprint=key)
    bar.close()
    oracle = attribute_oracle(manifest, split="val")
    stats = {**corpus.stats, "oracle_val_global_R1": oracle.get("oracle_global_R1"),
             "steps": p.steps, "batch_size": p.batch_size,
             "final_val_R1": history[-1]["val_R1"], "best_val_R1": max(r["val_R1"] for r in history),
             "seconds": time.perf_counter() - t0, "parameters": sum(x.numel() for x in backbone.parameters())}
    return PretrainResult(history, stats, clip, tokenizer)


def write_outputs(result: PretrainResult, out: Path, reports: Path, figure: Path,
                  cache: Path | None = None) -> None:
    """Publish, as one set (pfcvr.runtime.output_set): ``out`` = the CLIP folder (``config.json`` +
    weights, transformers ``save_pretrained``) with its tokenizer and ``stats.json``;
    ``reports/history.tsv`` (step, loss, lr, val_R1, seconds) and ``reports/stats.json``;
    ``figure`` (loss curve, zero-shot val Rank-1 per checkpoint). Then removes ``cache``."""
    from pfcvr.report.cards import history_tsv
    from pfcvr.report.figures.training import pretrain_figure
    from pfcvr.runtime.output_set import OutputSet

    with OutputSet(out) as outs:
        folder = outs.dir(out)
        history, _, stats = (outs.file(Path(reports) / "history.tsv"), outs.file(figure),
                             outs.file(Path(reports) / "stats.json"))   # stats published last
        result.clip.save_pretrained(folder)
        result.tokenizer.save(folder)
        write_json(folder / "stats.json", result.stats)
        write_text(history, history_tsv(result.history, HISTORY_COLUMNS))
        outs.figure(figure, lambda path: pretrain_figure(
            result.history, path, result.stats.get("oracle_val_global_R1")), "pretraining figure")
        write_json(stats, result.stats)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
