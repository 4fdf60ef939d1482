"""Train one ablation variant for every seed of ``report.seeds``, resumably (the work of the DVC
stage ``train@<variant>``; ``stages/train.py`` only does the I/O around :func:`train_variant`).

Resume. Each seed trains in ``cache/seed<k>/`` (a checkpoint every epoch, then ``best/``,
``final/`` and ``result.json``). A run started again skips the seeds whose ``result.json`` carries
the same fingerprint and resumes the seed it was on from its checkpoint; a checkpoint or result
written for other params, data (images included), backbone, code or world size is not reused (see
:func:`fingerprint` and :mod:`pfcvr.engine.fingerprint`). Only when every seed is done is
``models/<variant>`` assembled, atomically, and the cache removed.

Seeds in parallel (``train.seed_workers``). With ``seed_workers: N > 1`` and two or more seeds left
to train, up to N seeds train at once, each in its own *spawned* process that runs
:func:`~pfcvr.engine.train.train_model` for that one seed with ``train.cpu_threads`` torch threads
(:func:`run_seed_processes`). Processes rather than more threads: on a small shared CPU the threads
of one torch process spin-wait for each other (two threads in one process measured several times
slower than one: ``pfcvr.engine.loader.set_cpu_threads``), while one thread in each of two
processes keeps two cores busy without waiting. Each process pays a fixed start-up cost (importing
torch and transformers, building the model: ~5-8 s of CPU), so parallel seeds pay off when a seed
trains for longer than that, and only on cores that are free. Where a seed runs does not change
what it computes (every RNG is seeded from the seed; data and tokenizer are the parent's): weights,
history and ``result.json`` metrics equal those of the sequential run
(``tests/test_seed_workers.py``), so ``seed_workers`` is not part of the fingerprint. The parent
keeps the rest: it decides which seeds are finished, builds the tokenizer once, writes every
``result.json`` and ``history.tsv`` (rewritten after each epoch a child reports), logs each
finished seed's curves to the MLflow run and prints one line per finished seed; children print
plain per-epoch log lines (never tqdm bars) and get no MLflow run. An error in a child stops the
other children and is raised in the parent with its type and message (the child's traceback as its
``__cause__``); an interrupted or killed parent takes its children with it. ``seed_workers: 1``, a
single seed left to train, torchrun, or a ``train_model`` replaced in this process by a function a
child cannot import train the seeds one after another in this process, as before.
``train.cpu_threads: 0`` gives every process one thread per core: keep 1 with parallel seeds on a
small CPU.

DDP (``torchrun``): every rank runs the same seed loop, one seed at a time (``seed_workers`` is
ignored: the ranks already share the machine); rank 0 decides which seeds are finished and
broadcasts it, and only rank 0 writes files.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

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

    What runs where: the splits, fingerprints, the finished-seed check and the tokenizer (built
    once from the training captions) are done here. The seeds left to train then run in this
    process one after another, or, with ``train.seed_workers`` > 1 and two or more of them, up
    to ``seed_workers`` at once, each in a spawned process (:func:`run_seed_processes`; why
    processes: see the module docstring). Either way every seed ends with the same weights,
    history and metrics, and the results, ``history.tsv`` and summary list the seeds in
    ``report.seeds`` order. In parallel the children train with ``run=None`` and plain log
    lines; this process logs each finished seed's history to ``run`` (as for a skipped seed),
    writes its ``result.json`` and prints ``[train@<variant>] seed <k>: best val R1 ...``. A
    child's exception is raised here with its type and message, after the other children are
    stopped (their last checkpoints stay for the resume).
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
    extra = {"variant": variant, "description": description}
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
    workers = seed_workers(params, info)
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
                           on_epoch=on_epoch, on_done=on_done)
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
    write_history(rows)
    with write_errors(figure, "the training figure", advice=RESUME):
        viz.train_history_figure(rows, figure, title=f"train@{variant}: {description}")
    with write_errors(reports / "summary.json", "the training summary", advice=RESUME):
        write_json(reports / "summary.json", summary)
    card = train_model_card(variant, description, params, base, summary, results)
    assemble(models, cache, results, card)
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


def seed_line(rd: dict, seconds: float) -> str:
    """``seed <k>: best val R1 <x> (epoch <e>), <n> s`` for a finished seed's result dict
    (``seconds``: its wall time in this run; without a val split: the final epoch)."""
    best = rd.get("best")
    if best is None:
        what = f"no validation split, final epoch {rd['epochs']}"
    else:
        what = f"best val R1 {best['R1']:.2f} (epoch {best['epoch']})"
    return f"seed {rd['seed']}: {what}, {seconds:.1f} s"


# ----------------------------------------------------------------------------------------------
# Seeds in parallel processes (train.seed_workers)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedJob:
    """One seed to train: its folder ``work`` (``cache/seed<k>``) and resume fingerprint."""

    seed: int
    work: Path
    fingerprint: str


def seed_workers(params, info: D.DistInfo) -> int:
    """How many seeds may train at once: ``train.seed_workers``, but 1 under torchrun (the ranks
    train each seed together) and when ``train_model`` was replaced in this process by a function
    that a spawned child cannot import by name (its replacement would be bypassed)."""
    if info.world_size > 1 or params.train.seed_workers <= 1:
        return 1
    try:
        pickle.dumps(train_model)          # by reference: module + name, as a child imports it
    except Exception:
        return 1
    return params.train.seed_workers


class ChildTraceback(Exception):
    """The traceback of an exception raised in a seed's process (set as its ``__cause__``)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def run_seed_processes(params, jobs: list[SeedJob], workers: int, *, train_split, val_split,
                       tokenizer=None, extra: dict | None = None,
                       progress: bool | str | None = False,
                       on_epoch: Callable[[int, dict], None] | None = None,
                       on_done: Callable[[SeedJob, dict, float], None] | None = None,
                       train_fn: Callable | None = None) -> None:
    """Train every job, at most ``workers`` at once, each in its own spawned process running
    ``train_model(params, train_split, val_split, job.work, job.seed, run=None, progress=...,
    tokenizer=..., fingerprint=job.fingerprint, extra=...)``; jobs start in list order.

    In this process: ``on_epoch(seed, row)`` after each epoch a child reports, and
    ``on_done(job, result_dict, wall_seconds)`` when a seed finishes (``TrainResult.to_dict()``).
    The splits travel without their decoded-image caches; a tokenizer that does not pickle is
    rebuilt by each child from the training captions (deterministic). Raises the first child's
    exception (same type and message, the child's traceback as ``__cause__``), or
    ChildProcessError when a child dies without one (killed, out of memory); any exception here,
    KeyboardInterrupt included, terminates the running children before it propagates. Children
    are also killed by the kernel if this process dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a
    watchdog thread), so none is left behind. ``train_fn``: what the children run instead of
    ``train_model`` (same signature; a function importable by name).

    Each child gets the (large) shared inputs through its own pipe once it runs, not as process
    arguments: a spawned child that dies while starting up then fails the send here, where
    arguments larger than a pipe buffer would block ``Process.start`` for good.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    try:
        pickle.dumps(tokenizer)
    except Exception:
        tokenizer = None                   # train_model builds it from the same captions
    shared = pickle.dumps({
        "params": params, "train": _without_cache(train_split), "val": _without_cache(val_split),
        "tokenizer": tokenizer, "extra": dict(extra or {}), "progress": progress,
        "train_model": train_fn or train_model})
    queue = list(jobs)
    running: dict[Any, tuple[SeedJob, Any, float]] = {}    # our pipe end -> (job, process, t0)
    ending: list = []                      # finished children, exiting (torch teardown: ~1 s)

    def died(conn) -> ChildProcessError:   # no word from it: a signal, the OOM killer, os._exit
        job, proc, _ = running.pop(conn)
        conn.close()
        proc.join(10)
        code = proc.exitcode
        return ChildProcessError(
            f"the training process of seed {job.seed} ended with exit code {code}"
            f"{_signal_name(code)} and no result (killed? out of memory?); {RESUME}")

    try:
        while queue or running:
            started = []
            while queue and len(running) < max(workers, 1):
                job = queue.pop(0)
                ours, theirs = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_seed_process, name=f"pfcvr-train-seed{job.seed}",
                                   args=(theirs, os.getpid(), job))
                proc.start()
                theirs.close()             # the child holds the other end alone: EOF when it exits
                running[ours] = (job, proc, time.perf_counter())
                started.append(ours)
            for conn in started:           # the children start up (imports) side by side
                try:
                    conn.send_bytes(shared)
                except OSError:            # BrokenPipeError, ConnectionResetError
                    raise died(conn) from None
            for conn in wait(list(running)):
                job, proc, t_start = running[conn]
                try:
                    kind, value = conn.recv()
                except EOFError:
                    raise died(conn) from None
                if kind == "epoch":
                    if on_epoch is not None:
                        on_epoch(job.seed, value)
                elif kind == "done":
                    del running[conn]
                    conn.close()
                    ending.append(proc)
                    if on_done is not None:
                        on_done(job, value, time.perf_counter() - t_start)
                else:                      # "error"
                    raise _rebuild_error(*value)
    finally:
        _stop(proc for _, proc, _ in running.values())
        for conn in running:
            conn.close()
        _stop(ending, grace=30)


def _without_cache(split):
    """``split`` (a SplitData or None) without its decoded-image cache, for pickling."""
    if split is None or not dataclasses.is_dataclass(split) or not hasattr(split, "_stores"):
        return split
    return dataclasses.replace(split, _stores={})


def _stop(procs: Iterable, grace: float = 0) -> None:
    """Reap the processes: wait up to ``grace`` seconds for them to exit, then terminate those
    still alive (SIGTERM, then SIGKILL after 10 s)."""
    procs = list(procs)
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None or exitcode >= 0:
        return ""
    try:
        return f" ({signal.Signals(-exitcode).name})"
    except ValueError:
        return ""


def _die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` dies, however it dies (SIGKILL included)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:     # PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:                # it died before the call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _seed_process(conn, parent_pid: int, job: SeedJob) -> None:
    """A spawned child: receive the shared inputs, train ``job``'s seed alone; send ("epoch",
    row) per epoch, then ("done", result dict) or ("error", (pickled exception, (module,
    qualname), message, traceback))."""
    _die_with_parent(parent_pid)
    try:
        shared = pickle.loads(conn.recv_bytes())
        result = shared["train_model"](
            shared["params"], shared["train"], shared["val"], job.work, job.seed, run=None,
            progress=shared["progress"], tokenizer=shared["tokenizer"],
            fingerprint=job.fingerprint, on_epoch=lambda row: conn.send(("epoch", row)),
            extra=shared["extra"])
        conn.send(("done", result.to_dict()))
    except BaseException as err:           # KeyboardInterrupt too: the parent decides
        try:
            blob = pickle.dumps(err)
            pickle.loads(blob)
        except Exception:
            blob = None
        kind = (type(err).__module__, type(err).__qualname__)
        try:
            conn.send(("error", (blob, kind, str(err), traceback.format_exc())))
        except OSError:
            pass                           # the parent is gone
    finally:
        conn.close()


def _rebuild_error(blob: bytes | None, kind: tuple[str, str], message: str,
                   tb: str) -> BaseException:
    """The child's exception: unpickled, else ``Type(message)``, else a RuntimeError naming it;
    the child's traceback becomes its ``__cause__``."""
    err: BaseException | None = None
    if blob is not None:
        try:
            err = pickle.loads(blob)
        except Exception:
            err = None
    if err is None:
        import importlib

        module, qualname = kind
        try:
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            err = cls(message)
        except Exception:
            err = RuntimeError(f"{module}.{qualname}: {message}")
    err.__cause__ = ChildTraceback(tb)
    return err
