"""The life of MLflow runs across processes: owners, signals, stale runs, parent status, outbox.

No mlflow import here (the facade pfcvr.tracking and its client imports it): the functions take
the MlflowClient that pfcvr.tracking made.

- each run carries the process that opened it (:func:`pfcvr.runtime.process.owner_token`: host,
  boot id, pid, start time), so a later start can tell a dead owner from a live one;
- :func:`sigterm_raises`: SIGTERM becomes :class:`Terminated` (exit 143), so the run can end
  KILLED instead of staying RUNNING;
- :func:`close_stale`: RUNNING runs whose process is gone (SIGKILL, reboot) are closed KILLED;
- :func:`settle_parent`: the parent run of a DVC experiment takes its stages' status;
- :class:`Outbox`: after start-up a failing store delays tracking calls, never the work.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterator

from pfcvr.runtime.process import owner_state

PARENT_TAG = "pfcvr.experiment"      # value: DVC experiment name, on the parent run
KIND_TAG = "pfcvr.kind"              # parent | stage | child
OWNER_TAG = "pfcvr.owner"            # host|boot id|pid|start ticks of the process that opened it
RETRY_S = 30.0                       # a failing store is tried again at most this often


class Terminated(SystemExit):
    """SIGTERM arrived during a stage run; exits with status 128 + 15 when not caught."""


def status_of(err: BaseException) -> str:
    """The status of a run that ``err`` ended: KILLED for SIGTERM and Ctrl-C, else FAILED."""
    return "KILLED" if isinstance(err, (KeyboardInterrupt, Terminated)) else "FAILED"


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises Terminated (so the run can end KILLED), if nobody else
    handles SIGTERM in this process; the default action comes back on leaving."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum, frame):
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def one_line(err: BaseException) -> str:
    """``err`` as one line of at most about 300 characters."""
    text = " ".join(str(err).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(err).__name__)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence MLflow's own log records (a failing call logs a 30-line traceback): our one-line
    error or warning says what happened instead."""
    log = logging.getLogger("mlflow")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def note(text: str) -> None:
    """One ``[tracking]`` line on stderr (something the user should know, not a warning)."""
    print(f"[tracking] {text}", file=sys.stderr, flush=True)


def now_ms() -> int:
    """Wall-clock time in milliseconds, as MLflow stores it."""
    return int(time.time() * 1000)


def close_stale(client, exp_id: str, dvc_exp: str, name: str | None = None) -> list[str]:
    """Close as KILLED the RUNNING runs of DVC experiment ``dvc_exp`` whose process is gone.

    ``name``: the run about to be opened; a RUNNING run of that name that carries no owner (an
    older version opened it) is closed too. Runs owned by a live process, or by another
    machine, are left alone (tune workers may share a stage). Their RUNNING children (trials)
    are closed with them. Returns the closed runs' names.
    """
    closed = []
    filt = f"tags.`{PARENT_TAG}.name` = '{dvc_exp}' and attributes.status = 'RUNNING'"
    for r in client.search_runs([exp_id], filter_string=filt, max_results=1000):
        state = owner_state(r.data.tags.get(OWNER_TAG))
        if state == "dead" or (state == "unknown" and r.info.run_name == name):
            for c in client.search_runs([exp_id], filter_string=(
                    f"tags.mlflow.parentRunId = '{r.info.run_id}' and "
                    "attributes.status = 'RUNNING'"), max_results=1000):
                client.set_terminated(c.info.run_id, "KILLED")
            client.set_terminated(r.info.run_id, "KILLED")
            closed.append(r.info.run_name)
    return closed


def settle_parent(client, exp_id: str, parent_id: str) -> str:
    """Give the parent run the status of its stage runs; returns it.

    RUNNING while any runs (tune workers may share a name); else the latest run of each stage
    name decides: FAILED if one failed, KILLED if one was killed, else FINISHED.
    """
    latest: dict[str, str] = {}
    running = False
    for r in client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                order_by=["attributes.start_time DESC"], max_results=1000):
        if r.data.tags.get(KIND_TAG) == "stage":
            latest.setdefault(r.info.run_name, r.info.status)
            running |= r.info.status == "RUNNING"
    found = set(latest.values())
    status = "RUNNING" if running else next(
        (s for s in ("FAILED", "KILLED") if s in found), "FINISHED")
    info = client.get_run(parent_id).info
    if status == "RUNNING":
        if info.status != "RUNNING":
            client.update_run(parent_id, status="RUNNING")
    elif info.status != status or info.end_time is None:
        client.set_terminated(parent_id, status)
    return status


class Outbox:
    """A stage's MlflowClient and the tracking calls that wait for it.

    :meth:`call` runs a call now, or queues it behind earlier failed ones; queued calls keep
    their order and are retried every RETRY_S seconds and by :meth:`flush` at the end of the
    stage. The first failure is one warning. Never raises Exception (SIGTERM still passes).
    """

    def __init__(self, client, uri: str, exp_id: str):
        self.client, self.uri, self.exp_id = client, uri, exp_id
        self.outbox: list[tuple[str, Callable[[], Any]]] = []
        self.last_try = 0.0
        self.warned = False
        self.error = ""

    def _failed(self, what: str, err: Exception) -> None:
        self.error = one_line(err)
        if not self.warned:
            self.warned = True
            warnings.warn(f"tracking store {self.uri} failed ({what}: {self.error}); the stage "
                          "goes on, its own files keep the record, and the tracking calls are "
                          f"retried every {RETRY_S:.0f} s and at the end", stacklevel=4)

    def flush(self) -> bool:
        """Try the waiting calls in order; stop at the first failure. Returns whether all went."""
        self.last_try = time.monotonic()
        sent = 0
        while self.outbox:
            what, fn = self.outbox[0]
            try:
                with quiet():
                    fn()
            except Exception as err:
                self._failed(what, err)
                return False
            self.outbox.pop(0)
            sent += 1
        if sent and self.warned:
            note(f"store {self.uri} answers again: {sent} waiting call(s) logged")
        return True

    def call(self, what: str, fn: Callable[[], Any]) -> None:
        if self.outbox and (time.monotonic() - self.last_try < RETRY_S or not self.flush()):
            self.outbox.append((what, fn))
            return
        try:
            with quiet():
                fn()
        except Exception as err:
            self._failed(what, err)
            self.last_try = time.monotonic()
            self.outbox.append((what, fn))
