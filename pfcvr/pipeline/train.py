"""The work of the DVC stage ``train@<variant>``: train one ablation variant for every seed of
``report.seeds``, resumably (``stages/train.py`` only does the I/O around :func:`train_variant`).

Resume. Each seed trains in ``cache/seed<k>/`` (a checkpoint every epoch, then ``best/``,
``final/`` and ``result.json``). A run started again skips the seeds whose ``result.json`` carries
the same fingerprint and resumes the seed it was on from its checkpoint; a checkpoint or result
written for other params, data (images included), backbone, code or world size is not reused (see
:func:`fingerprint` and :mod:`pfcvr.engine.fingerprint`). Only when every seed is done are
the stage's outputs published, as one set (:func:`publish`), and the cache removed.

Live progress. While seeds train, ``<cache>/history.tsv`` (``.cache/train/<variant>/``) is
rewritten after every epoch; ``reports/train/<variant>/history.tsv`` changes only with the rest
of the set, so it never shows one run's epochs beside another run's models.

Seeds in parallel (``train.seed_workers``): with ``seed_workers: N > 1`` and two or more seeds left
to train, up to N seeds train at once, each in its own spawned process
(:mod:`pfcvr.engine.seed_pool`, which says why processes and what it costs). Where a seed runs does
not change what it computes: weights, history and ``result.json`` metrics equal those of the
sequential run (``tests/test_seed_workers.py``), so ``seed_workers`` is not part of the
fingerprint. This process keeps the rest: it decides which seeds are finished, builds the
tokenizer once, writes every ``result.json`` and the live ``history.tsv`` (rewritten after each
epoch a child reports), logs each finished seed's curves to the MLflow run and prints one line per
finished seed. ``seed_workers: 1``, a single seed left to train, torchrun, or a ``train_model``
replaced in this module by a function a child cannot import train the seeds one after another in
this process.

DDP (``torchrun``): every rank runs the same seed loop, one seed at a time (``seed_workers`` is
ignored: the ranks already share the machine); rank 0 decides which seeds are finished and
broadcasts it, and only rank 0 writes files.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pfcvr.config import ConfigError, variant_description
from pfcvr.engine import distributed as D
from pfcvr.engine import fingerprint as F
from pfcvr.engine.seed_pool import RESUME, SeedJob, run_seed_processes, seed_line, seed_workers
from pfcvr.engine.train import train_model
from pfcvr.report.cards import history_tsv, train_model_card, train_summary
from pfcvr.runtime.atomic import read_json, write_json, write_text
from pfcvr.runtime.device import resolve_device
from pfcvr.runtime.storage import check_writable, write_errors

# Keys that do not change what training computes: a change to them keeps finished seeds.
COSMETIC = F.COSMETIC


@dataclass
class VariantResult:
    """What :func:`train_variant` produced on rank 0 (other ranks get ``summary == {}``).

    ``summary``: ``pfcvr.report.cards.train_summary`` plus ``stage_seconds`` (wall time of the call);
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
    ``pfcvr.runtime.storage.WriteError`` when a folder of ``outputs`` cannot be written (rank 0 checks)
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


def assemble(folder: Path, cache: Path, results: list[dict], card: str) -> None:
    """Fill the empty folder ``folder`` (the new ``models/<variant>``) with
    ``seed<k>/{best,final}/`` + ``seed<k>/result.json`` (the result without its history) for
    every seed, and ``MODEL_CARD.md``."""
    for res in results:
        src, dst = cache / f"seed{res['seed']}", folder / f"seed{res['seed']}"
        dst.mkdir(parents=True)
        for which in ("best", "final"):
            link_tree(src / which, dst / which)
        write_json(dst / "result.json",
                   {k: v for k, v in res.items() if k not in ("history", "out_dir")})
    write_text(folder / "MODEL_CARD.md", card)


def publish(models: Path, reports: Path, figure: Path, cache: Path, results: list[dict],
            rows: list[dict], summary: dict, card: str, title: str) -> None:
    """Publish the variant's outputs as one set (:class:`pfcvr.runtime.output_set.OutputSet`,
    primary ``models``): ``models/<variant>/`` (:func:`assemble`), ``reports/history.tsv``, the
    training figure (optional: a figure that cannot be drawn is a warning and a placeholder)
    and, last, ``reports/summary.json``. Raises DiskSpaceError / WriteError naming the output."""
    from pfcvr.report.figures.training import train_history_figure
    from pfcvr.runtime.output_set import OutputSet

    with write_errors(models, "the trained models and their reports", advice=RESUME), \
            OutputSet(models) as outs:
        assemble(outs.dir(models), cache, results, card)
        outs.file(reports / "history.tsv").write_text(history_tsv(rows))
        outs.figure(figure, lambda path: train_history_figure(rows, path, title=title),
                    "training figure")
        outs.file(reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def train_variant(params, variant: str, *, base, prepared: Path, parts: Path, models: Path,
                  reports: Path, figure: Path, cache: Path, run=None,
                  progress: bool | None = None) -> VariantResult:
    """Train ``variant`` for every seed of ``params.report.seeds``; resume an interrupted run.

    ``params``: the variant's merged params; ``base``: the params without a variant (for the
    model card). Reads the train and val splits of ``prepared`` + ``parts`` (never test).
    Writes ``cache/seed<k>/`` and ``cache/history.tsv`` (rewritten after every epoch) while
    training, then publishes ``models/``, ``reports/history.tsv``, the curves to ``figure`` and
    ``reports/summary.json`` as one set (:func:`publish`), and removes ``cache``. ``run``: a
    tracking StageRun (rank 0) or None; it gets the per-epoch metrics ``seed<k>/<name>``, also
    replayed for the skipped seeds.
    ``progress``: as for ``train_model``. Call :func:`join_world` first under torchrun.

    What runs where: the splits, fingerprints, the finished-seed check and the tokenizer (built
    once from the training captions) are done here. The seeds left to train then run in this
    process one after another, or, with ``train.seed_workers`` > 1 and two or more of them, up
    to ``seed_workers`` at once, each in a spawned process
    (:func:`pfcvr.engine.seed_pool.run_seed_processes`). Either way every seed ends with the
    same weights, history and metrics, and the results, ``history.tsv`` and summary list the seeds in
    ``report.seeds`` order. In parallel the children train with ``run=None`` and plain log
    lines; this process logs each finished seed's history to ``run`` (as for a skipped seed),
    writes its ``result.json`` and prints ``[train@<variant>] seed <k>: best val R1 ...``. A
    child's exception is raised here with its type and message, after the other children are
    stopped (their last checkpoints stay for the resume).
    """
    from pfcvr.data.dataset import load_split

    t0 = time.perf_counter()
    info = D.env_info()
    description = variant_description(params, variant)
    train_split = load_split(prepared, parts, "train")
    val_split = load_split(prepared, parts, "val")
    history_path = cache / "history.tsv"     # live; the published one comes with the set
    # Rank 0 alone reads files and decides what is finished; the key covers the image files.
    inputs = F.inputs_key(params, prepared, parts, (train_split, val_split)) \
        if info.is_main else ""
    t = params.train           # saved with every model: what the report states comes from it
    extra = {"variant": variant, "description": description,
             "train": {"epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr,
                       "precision": t.precision}}
    seeds = list(params.report.seeds)

    def finished(seed: int) -> tuple[Path, str, dict | None]:
        """The seed's folder, its fingerprint and its finished result (None: to train); a
        finished seed is announced and its curves replayed to ``run``."""
        work = cache / f"seed{seed}"
        fp = fingerprint(params, seed, info.world_size, inputs=inputs)
        done = D.broadcast_object(finished_result(work, fp) if info.is_main else None)
        if done is not None:
            print(f"[train@{variant}] seed {seed}: already finished, skipped", flush=True)
            # a restarted stage opens a new MLflow run: give it the curves
            log_history(run, seed, done["history"])
        return work, fp, done

    def tokenizer_for_seeds():   # built once from the training captions, shared by the seeds
        from pfcvr.model import build_tokenizer

        return build_tokenizer(params.model, train_split.captions()[0])

    def write_history(rows: list[dict]) -> None:
        with write_errors(history_path, "the training history", advice=RESUME):
            write_text(history_path, history_tsv(rows))

    def store_result(work: Path, fp: str, rd: dict) -> dict:
        rd["fingerprint"] = fp
        if info.is_main:
            with write_errors(work / "result.json", "the seed's result", advice=RESUME):
                write_json(work / "result.json", rd)
        return rd

    decided = {seed: finished(seed) for seed in seeds}
    todo = [SeedJob(seed, work, fp) for seed, (work, fp, done) in decided.items() if done is None]
    workers = seed_workers(params, info, train_fn=train_model)
    if workers > 1 and len(todo) >= 2:      # side by side, one spawned process per seed
        by_seed = {seed: done for seed, (_, _, done) in decided.items() if done is not None}
        live: dict[int, list[dict]] = {job.seed: [] for job in todo}

        def rewrite_history() -> None:
            write_history([r for s in seeds
                           for r in (by_seed[s]["history"] if s in by_seed else live[s])])

        def on_epoch(seed: int, row: dict) -> None:
            live[seed].append(row)
            rewrite_history()

        def on_done(job: SeedJob, rd: dict, seconds: float) -> None:
            by_seed[job.seed] = store_result(job.work, job.fingerprint, rd)
            log_history(run, job.seed, rd["history"])
            rewrite_history()
            print(f"[train@{variant}] {seed_line(rd, seconds)}", flush=True)

        run_seed_processes(params, todo, workers, train_split=train_split,
                           val_split=val_split, tokenizer=tokenizer_for_seeds(),
                           extra=extra, progress=False if progress is False else "lines",
                           on_epoch=on_epoch, on_done=on_done, train_fn=train_model)
        results = [by_seed[s] for s in seeds]
    else:                       # in-process, one seed after another (as before seed_workers)
        results: list[dict] = []
        tokenizer = tokenizer_for_seeds() if todo else None
        for seed in seeds:
            work, fp, done = decided[seed]
            if done is not None:
                results.append(done)
                continue
            live_rows: list[dict] = []

            def on_seed_epoch(row: dict) -> None:
                live_rows.append(row)
                write_history([r for res in results for r in res["history"]] + live_rows)

            result = train_model(params, train_split, val_split, work, seed, run=run,
                                 progress=progress, tokenizer=tokenizer, fingerprint=fp,
                                 on_epoch=on_seed_epoch, extra=extra)
            results.append(store_result(work, fp, result.to_dict()))
    if not info.is_main:
        D.barrier()
        return VariantResult(summary={})
    rows = [r for res in results for r in res["history"]]
    summary = train_summary(variant, results)
    summary["stage_seconds"] = time.perf_counter() - t0
    card = train_model_card(variant, description, params, base, summary, results)
    publish(models, reports, figure, cache, results, rows, summary, card,
            title=f"train@{variant}: {description}")
    D.barrier()
    shutil.rmtree(cache, ignore_errors=True)
    return VariantResult(summary=summary, card=card, history=rows)


def log_history(run, seed: int, history: list[dict]) -> None:
    """Log a seed's per-epoch ``history`` rows to the tracking ``run`` (None: nothing) as the
    metrics ``seed<k>/<name>`` at step = epoch, as the trainer logs them live."""
    if run is None:
        return
    for row in history:
        run.log_metrics({f"seed{seed}/{k}": v for k, v in row.items()
                         if k not in ("seed", "epoch") and v is not None},
                        step=row["epoch"])
