"""The life of MLflow runs across processes: owners, signals, stale runs, parent status, outbox.

No mlflow import here (the facade pfcvr.tracking and its client imports it): the functions take
the MlflowClient that pfcvr.tracking made.

- each run carries the process that opened it (:func:`pfcvr.runtime.process.owner_token`: host,
  boot id, pid, start time), so a later start can tell a dead owner from a live one;
- :func:`sigterm_raises`: SIGTERM becomes :class:`Terminated` (exit 143), so the run can end
  KILLED instead of staying RUNNING;
- :func:`close_stale`: RUNNING runs whose process is gone (SIGKILL, reboot) are closed KILLED;
- :func:`settle_parent`: the parent run of a DVC experiment takes its stages' status;
- :class:`Outbox`: after start-up a failing store delays tracking calls, never the work; a call
  the store refuses for good (a bad value) is dropped with one warning, so it never holds back
  the calls behind it (the end of the run among them);
- :func:`filter_literal` / :func:`find_runs`: names are data: a DVC experiment name such as
  ``bob's-mask`` is quoted for MLflow's filter strings (which have no escape character), or
  matched in Python when no quote fits.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Iterator

from pfcvr.runtime.process import owner_state
from pfcvr.runtime.sqlite_store import hide_secret, redact_uri

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


def filter_literal(value: str) -> str | None:
    """``value`` as a string literal of an MLflow filter string, or None when it cannot be one.

    MLflow's filter grammar has no escape character: a value is quoted with ``'`` or ``"`` and
    may not contain that quote (``'bob''s'`` is read as the text ``bob''s``). So ``bob's-mask``
    becomes ``"bob's-mask"``; a value holding both quotes has no literal (see :func:`find_runs`).
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def find_runs(client, exp_id: str, tags: dict[str, str], where: str = "",
              order_by: Iterable[str] = ("attributes.start_time DESC",),
              max_results: int | None = None) -> list:
    """Runs of ``exp_id`` whose tags equal ``tags`` (names as data) and that match ``where`` (a
    filter string of constant text), in ``order_by`` order; at most ``max_results``.

    Each tag value goes into the filter as :func:`filter_literal`; one that has no literal is
    left out of the filter and compared here instead (all pages are read then). Every returned
    run is compared here, so the result never depends on how MLflow parses a value.
    """
    clauses = [where] if where else []
    exact = True
    for key, value in tags.items():
        literal = filter_literal(value)
        if literal is None:
            exact = False
        else:
            clauses.append(f"tags.`{key}` = {literal}")
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=" and ".join(clauses),
                                  order_by=list(order_by), max_results=1000, page_token=token)
        out += [r for r in page if all(r.data.tags.get(k) == v for k, v in tags.items())]
        token = page.token
        if not token or (max_results and len(out) >= max_results and exact):
            break
    return out[:max_results] if max_results else out


def close_stale(client, exp_id: str, parent_id: str, name: str | None = None) -> list[str]:
    """Close as KILLED the RUNNING stage runs under ``parent_id`` (one DVC experiment of one
    clone) whose process is gone.

    ``name``: the run about to be opened; a RUNNING run of that name that carries no owner (an
    older version opened it) is closed too. Runs owned by a live process, or by another
    machine, are left alone (tune workers may share a stage). Their RUNNING children (trials)
    are closed with them. Returns the closed runs' names.
    """
    closed = []
    filt = f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
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


# MLflow error codes of a request that reached the store and was refused for what it holds (a
# name or value it does not accept, a run or model that does not exist): sending it again cannot
# help. Every other failure (connection refused, time-out, HTTP 5xx, a locked SQLite file:
# INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, ...) may pass later and is retried.
REFUSED_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST",
                           "RESOURCE_ALREADY_EXISTS", "INVALID_STATE", "BAD_REQUEST",
                           "MALFORMED_REQUEST", "ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED",
                           "FEATURE_DISABLED"})


def refused(err: BaseException) -> bool:
    """Whether ``err`` is a refusal that a retry cannot fix (see REFUSED_CODES): an MLflow error
    with such a code, or a ValueError / TypeError / LookupError raised before anything was sent
    (a model folder that cannot embed its input example, a bad metric value)."""
    code = getattr(err, "error_code", None)
    if isinstance(code, str):
        return code in REFUSED_CODES
    return isinstance(err, (ValueError, TypeError, LookupError))


class Outbox:
    """A stage's MlflowClient and the tracking calls that wait for it.

    :meth:`call` runs a call now, or queues it behind earlier failed ones; queued calls keep
    their order and are retried every RETRY_S seconds and by :meth:`flush` at the end of the
    stage. The first failure is one warning. A call the store refuses for good (:func:`refused`)
    is dropped with a warning of its own instead of being queued: queued, it would hold back
    every later call, the end of the run among them. Never raises Exception (SIGTERM passes).
    """

    def __init__(self, client, uri: str, exp_id: str):
        self.client, self.exp_id = client, exp_id
        self.secret_uri, self.uri = uri, redact_uri(uri)   # .uri is the one shown
        self.outbox: list[tuple[str, Callable[[], Any]]] = []
        self.last_try = 0.0
        self.warned = False
        self.error = ""

    def _failed(self, what: str, err: Exception) -> None:
        self.error = hide_secret(one_line(err), self.secret_uri)
        if not self.warned:
            self.warned = True
            warnings.warn(f"tracking store {self.uri} failed ({what}: {self.error}); the stage "
                          "goes on, its own files keep the record, and the tracking calls are "
                          f"retried every {RETRY_S:.0f} s and at the end", stacklevel=4)

    def _dropped(self, what: str, err: Exception) -> None:
        warnings.warn(f"tracking store {self.uri} refused {what} "
                      f"({hide_secret(one_line(err), self.secret_uri)}); it is not "
                      "retried, the stage goes on and its own files keep the record",
                      stacklevel=4)

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
                if not refused(err):
                    self._failed(what, err)
                    return False
                self._dropped(what, err)
                self.outbox.pop(0)
                continue
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
            if refused(err):
                self._dropped(what, err)
                return
            self._failed(what, err)
            self.last_try = time.monotonic()
            self.outbox.append((what, fn))
