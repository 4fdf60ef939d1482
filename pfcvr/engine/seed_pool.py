"""Seeds of a variant trained side by side, each in its own spawned process
(``train.seed_workers``).

:func:`run_seed_processes` trains a list of :class:`SeedJob` with up to N at once, each in a
*spawned* process that runs :func:`~pfcvr.engine.train.train_model` for that one seed with
``train.cpu_threads`` torch threads. Processes rather than more threads: on a small shared CPU the
threads of one torch process spin-wait for each other (two threads in one process measured several
times slower than one: ``pfcvr.engine.loader.set_cpu_threads``), while one thread in each of two
processes keeps two cores busy without waiting. Each process pays a fixed start-up cost (importing
torch and transformers, building the model: ~5-8 s of CPU), so parallel seeds pay off when a seed
trains for longer than that, and only on cores that are free. Where a seed runs does not change
what it computes (every RNG is seeded from the seed; data and tokenizer are the parent's).

Children print plain per-epoch log lines (never tqdm bars) and get no MLflow run; the parent gets
each epoch's row and each finished result through callbacks. An error in a child stops the other
children and is raised in the parent with its type and message (the child's traceback as its
``__cause__``); an interrupted or killed parent takes its children with it.
``train.cpu_threads: 0`` gives every process one thread per core: keep 1 with parallel seeds on a
small CPU. The seed loop that uses the pool is :mod:`pfcvr.pipeline.train`.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from pfcvr.engine import distributed as D
from pfcvr.engine.train import train_model

RESUME = "a rerun skips the seeds already trained and resumes the others from their checkpoints"


@dataclass(frozen=True)
class SeedJob:
    """One seed to train: its folder ``work`` (``cache/seed<k>``) and resume fingerprint."""

    seed: int
    work: Path
    fingerprint: str


def seed_workers(params, info: D.DistInfo, train_fn: Callable | None = None) -> int:
    """How many seeds may train at once: ``train.seed_workers``, but 1 under torchrun (the ranks
    train each seed together) and when ``train_fn`` (default ``train_model``; the caller's,
    possibly replaced in its module) is a function that a spawned child cannot import by name
    (the replacement would be bypassed)."""
    if info.world_size > 1 or params.train.seed_workers <= 1:
        return 1
    try:
        pickle.dumps(train_fn or train_model)   # by reference: module + name, as a child imports it
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


def seed_line(rd: dict, seconds: float) -> str:
    """``seed <k>: best val R1 <x> (epoch <e>), <n> s`` for a finished seed's result dict
    (``seconds``: its wall time in this run; without a val split: the final epoch)."""
    best = rd.get("best")
    if best is None:
        what = f"no validation split, final epoch {rd['epochs']}"
    else:
        what = f"best val R1 {best['R1']:.2f} (epoch {best['epoch']})"
    return f"seed {rd['seed']}: {what}, {seconds:.1f} s"
