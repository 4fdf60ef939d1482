"""Train one ablation variant for every seed of ``report.seeds``, resumably (the work of the DVC
stage ``train@<variant>``; ``stages/train.py`` only does the I/O around :func:`train_variant`).

Resume. Each seed trains in ``cache/seed<k>/`` (a checkpoint every epoch, then ``best/``,
``final/`` and ``result.json``). A run started again skips the seeds whose ``result.json`` carries
the same fingerprint and resumes the seed it was on from its checkpoint; a checkpoint or result
written for other params, data (images included), backbone, code or world size is not reused (see
:func:`fingerprint` and :mod:`pfcvr.engine.fingerprint`). Only when every seed is done is
``models/<variant>`` assembled, atomically, and the cache removed.

DDP (``torchrun``): every rank runs the same seed loop; rank 0 decides which seeds are finished
and broadcasts it, and only rank 0 writes files.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pfcvr.config import ConfigError, variant_description
from pfcvr.device import resolve_device
from pfcvr.engine import distributed as D
from pfcvr.engine import fingerprint as F
from pfcvr.engine.train import train_model
from pfcvr.io import atomic_dir, read_json, write_json, write_text
from pfcvr.reporting import history_tsv, train_model_card, train_summary
from pfcvr.storage import check_writable, write_errors

# Keys that do not change what training computes: a change to them keeps finished seeds.
COSMETIC = F.COSMETIC
RESUME = "a rerun skips the seeds already trained and resumes the others from their checkpoints"


@dataclass
class VariantResult:
    """What :func:`train_variant` produced on rank 0 (other ranks get ``summary == {}``).

    ``summary``: ``reporting.train_summary`` plus ``stage_seconds`` (wall time of the call);
    ``card``: the model card markdown; ``history``: every seed's per-epoch rows, in seed order.
    """

    summary: dict
    card: str = ""
    history: list[dict] | None = None


def check_world(params, info: D.DistInfo) -> None:
    """Raise ConfigError when ``train.batch_size`` (the global batch) does not split evenly over
    torchrun's ``info.world_size`` processes. Runs before the ranks join: one line, not one
    traceback per rank."""
    bs, world = params.train.batch_size, info.world_size
    if bs % world:
        fits = ", ".join(str(n) for n in range(2, min(bs, 64) + 1) if bs % n == 0) or "none"
        raise ConfigError(f"train.batch_size={bs} is not divisible by the world size {world} "
                          f"(torchrun processes); it is the global batch: use a multiple of "
                          f"{world} (e.g. {world * max(bs // world, 1)}) or a process count that "
                          f"divides {bs} ({fits})")


def join_world(params, outputs: Iterable[str | Path] = ()) -> D.DistInfo:
    """Check what fails fast, before any work, and join torchrun's process group (if any).

    ``report.seeds`` itself is checked when the params are read (pfcvr.config). Raises
    ConfigError for a batch that does not split over the processes (:func:`check_world`),
    ``pfcvr.storage.WriteError`` when a folder of ``outputs`` cannot be written (rank 0 checks)
    and ``DeviceError`` when ``train.device`` is not available on this machine (or LOCAL_RANK
    is beyond the visible GPUs).
    """
    info = D.env_info()
    check_world(params, info)
    if info.is_main:
        check_writable(outputs)
    D.init(resolve_device(params.train.device, info.local_rank), info)
    return info


def fingerprint(params, seed: int, world_size: int, data_files: Iterable[Path] = (),
                inputs: str = "") -> str:
    """16 hex digits of sha256 over what decides a training run: the merged params (less the
    COSMETIC keys), the seed, the world size, the bytes of ``data_files`` (a missing one counts
    as missing) and ``inputs`` (``pfcvr.engine.fingerprint.inputs_key``)."""
    return F.digest(F.params_key(params), seed, world_size, F.files_key(data_files),
                    inputs)[:16]


def finished_result(work: Path, fp: str) -> dict | None:
    """The result dict of a seed that finished in ``work`` with fingerprint ``fp``, else None."""
    res = work / "result.json"
    if not (res.is_file() and (work / "final").is_dir() and (work / "best").is_dir()):
        return None
    result = read_json(res)
    return result if result.get("fingerprint") == fp else None


def link_tree(src: Path, dst: Path) -> None:
    """Copy the folder ``src`` to ``dst`` with hard links (no data copied on one filesystem),
    falling back to real copies across filesystems."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link)


def assemble(models: Path, cache: Path, results: list[dict], card: str) -> None:
    """Replace ``models`` as a whole by ``seed<k>/{best,final}/`` + ``seed<k>/result.json`` (the
    result without its history) for every seed, and ``MODEL_CARD.md``."""
    with atomic_dir(models) as tmp, write_errors(models, "the trained models", advice=RESUME):
        for res in results:
            src, dst = cache / f"seed{res['seed']}", tmp / f"seed{res['seed']}"
            dst.mkdir(parents=True)
            for which in ("best", "final"):
                link_tree(src / which, dst / which)
            write_json(dst / "result.json",
                       {k: v for k, v in res.items() if k not in ("history", "out_dir")})
        write_text(tmp / "MODEL_CARD.md", card)


def train_variant(params, variant: str, *, base, prepared: Path, parts: Path, models: Path,
                  reports: Path, figure: Path, cache: Path, run=None,
                  progress: bool | None = None) -> VariantResult:
    """Train ``variant`` for every seed of ``params.report.seeds``; resume an interrupted run.

    ``params``: the variant's merged params; ``base``: the params without a variant (for the
    model card). Reads the train and val splits of ``prepared`` + ``parts`` (never test).
    Writes ``cache/seed<k>/`` while training, ``reports/history.tsv`` (rewritten after every
    epoch), ``reports/summary.json``, the curves to ``figure``, then ``models/`` (see
    :func:`assemble`), and removes ``cache``. ``run``: a tracking StageRun (rank 0) or None; it
    gets the per-epoch metrics ``seed<k>/<name>``, also replayed for the skipped seeds.
    ``progress``: as for ``train_model``. Call :func:`join_world` first under torchrun.
    """
    from pfcvr import viz
    from pfcvr.data.dataset import load_split

    t0 = time.perf_counter()
    info = D.env_info()
    description = variant_description(params, variant)
    train_split = load_split(prepared, parts, "train")
    val_split = load_split(prepared, parts, "val")
    history_path = reports / "history.tsv"
    # Rank 0 alone reads files and decides what is finished; the key covers the image files.
    inputs = F.inputs_key(params, prepared, parts, (train_split, val_split)) \
        if info.is_main else ""
    tokenizer = None
    results: list[dict] = []
    for seed in params.report.seeds:
        work = cache / f"seed{seed}"
        fp = fingerprint(params, seed, info.world_size, inputs=inputs)
        done = D.broadcast_object(finished_result(work, fp) if info.is_main else None)
        if done is not None:
            print(f"[train@{variant}] seed {seed}: already finished, skipped", flush=True)
            if run is not None:   # a restarted stage opens a new MLflow run: give it the curves
                for row in done["history"]:
                    run.log_metrics({f"seed{seed}/{k}": v for k, v in row.items()
                                     if k not in ("seed", "epoch") and v is not None},
                                    step=row["epoch"])
            results.append(done)
            continue
        if tokenizer is None:   # built once from the training captions, shared by the seeds
            from pfcvr.model import build_tokenizer

            tokenizer = build_tokenizer(params.model, train_split.captions()[0])
        live: list[dict] = []

        def on_epoch(row: dict) -> None:
            live.append(row)
            done_rows = [r for res in results for r in res["history"]]
            with write_errors(history_path, "the training history", advice=RESUME):
                write_text(history_path, history_tsv(done_rows + live))

        result = train_model(params, train_split, val_split, work, seed, run=run,
                             progress=progress, tokenizer=tokenizer, fingerprint=fp,
                             on_epoch=on_epoch,
                             extra={"variant": variant, "description": description})
        rd = result.to_dict()
        rd["fingerprint"] = fp
        if info.is_main:
            with write_errors(work / "result.json", "the seed's result", advice=RESUME):
                write_json(work / "result.json", rd)
        results.append(rd)
    if not info.is_main:
        D.barrier()
        return VariantResult(summary={})
    rows = [r for res in results for r in res["history"]]
    summary = train_summary(variant, results)
    summary["stage_seconds"] = time.perf_counter() - t0
    with write_errors(history_path, "the training history", advice=RESUME):
        write_text(history_path, history_tsv(rows))
    with write_errors(figure, "the training figure", advice=RESUME):
        viz.train_history_figure(rows, figure, title=f"train@{variant}: {description}")
    with write_errors(reports / "summary.json", "the training summary", advice=RESUME):
        write_json(reports / "summary.json", summary)
    card = train_model_card(variant, description, params, base, summary, results)
    assemble(models, cache, results, card)
    D.barrier()
    shutil.rmtree(cache, ignore_errors=True)
    return VariantResult(summary=summary, card=card, history=rows)
