"""The file side of the shared sqlite stores: lock, create and check (no mlflow, no optuna here).

pfcvr.tracking (``mlflow.db``) and pfcvr.tuning.storage (``optuna.db``) call these under one file
lock per store, so that several processes may be the first to touch a store at the same instant
(``dvc exp run --run-all -j N`` on a fresh clone, several tune workers):

- :func:`store_lock`: a ``filelock`` lock beside the sqlite file (``mlflow.db.lock``), or in the
  temporary folder for a server URI; it serialises creating the store and get-or-create of the
  experiment and parent run. The OS drops it when its process dies, even by SIGKILL.
- :func:`ensure_store`: a missing or empty store is built under a temporary name and renamed into
  place, so no process ever sees (or leaves behind) a half-built one.
- :func:`inspect_store`: a corrupt, read-only, locked or foreign file -> one-line TrackingError
  saying what to do, before MLflow prints a traceback about it.

What is MLflow's own (its artifacts folder, building an empty MLflow store) is
:mod:`pfcvr.tracking.store`. The error class keeps its name, TrackingError, for both stores.

None of this applies to a server (``http://`` MLflow, ``postgresql://`` Optuna): the server owns
its database, so there is no file to lock, build or repair. :func:`redact_uri` and
:func:`hide_secret` keep a password of any store URI out of every message and log line.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple
from urllib.parse import urlsplit

from filelock import FileLock, Timeout

LOCK_TIMEOUT_S = 300.0         # creating a store takes seconds; minutes means a stuck process
BUSY_WAIT_S = 10.0             # how long a start-up check waits for another writer's lock


class TrackingError(RuntimeError):
    """The tracking store cannot be reached, created or written (a one-line message)."""


class StoreKind(NamedTuple):
    """What a store file must hold, and how the user points the code at another one."""
    label: str                 # in messages: "tracking store", "Optuna storage"
    tables: tuple[str, ...]    # tables that every such store has
    what: str                  # "an MLflow store", ...
    env: str                   # the variable that overrides the store


MLFLOW = StoreKind("tracking store", ("experiments", "runs"), "an MLflow store",
                   "MLFLOW_TRACKING_URI")
OPTUNA = StoreKind("Optuna storage", ("studies", "trials"), "an Optuna storage", "OPTUNA_STORAGE")


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its ``user:password@`` part replaced by ``***`` (any scheme:
    ``postgresql://``, ``http://``, ...); unchanged when it has none."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:   # not a URL at all (a bad port, ...): hide everything before '@'
        password = None
    if not password:
        return uri
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def hide_secret(text: str, uri: str) -> str:
    """``text`` (an error message that may quote ``uri``) with the password of ``uri`` hidden."""
    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None
    text = text.replace(uri, redact_uri(uri))
    if password:
        text = text.replace(f":{password}@", ":***@").replace(password, "***")
    return text


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (absolute or relative to the working folder), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).absolute()


class _Lock:
    """A FileLock whose time-out is a TrackingError that names the lock file."""

    def __init__(self, path: Path):
        self.path = path
        # 0o666: several users may share one store (the lock file outlives its holder).
        self.lock = FileLock(str(path), timeout=LOCK_TIMEOUT_S, mode=0o666)

    def __enter__(self) -> "_Lock":
        try:
            self.lock.acquire()
        except Timeout:
            raise TrackingError(
                f"tracking store lock {self.path} held by another process for more than "
                f"{LOCK_TIMEOUT_S:.0f} s: stop that process (fuser -v {self.path}) and run again"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


_locks: dict[str, _Lock] = {}


def store_lock(uri: str) -> _Lock:
    """The lock of the store ``uri`` (one object per store, re-entrant in a thread)."""
    db = sqlite_path(uri)
    if db is not None:
        path = db.with_name(db.name + ".lock")
    else:  # a server: processes of this machine still must not race on get-or-create
        digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"pfcvr-tracking-{digest}.lock"
    key = str(path)
    if key not in _locks:
        _locks[key] = _Lock(path)
    return _locks[key]


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__


def check_folder(db: Path, kind: StoreKind = MLFLOW) -> None:
    """Raise TrackingError unless the folder of ``db`` exists and is writable."""
    folder = db.parent
    if not folder.is_dir():
        raise TrackingError(f"{kind.label} {db}: folder {folder} is missing or not writable: "
                            f"create it or point {kind.env} at another store")
    if not os.access(folder, os.W_OK):
        raise TrackingError(f"{kind.label} {db}: folder {folder} is missing or not writable "
                            "(SQLite writes its journal there): make it writable or point "
                            f"{kind.env} elsewhere")


def inspect_store(db: Path, wait_s: float | None = None, kind: StoreKind = MLFLOW) -> str:
    """Check the sqlite file ``db``: ``"missing"`` (absent, 0 bytes or no tables) or ``"ok"``.

    Reads it and writes a table that it rolls back, waiting up to ``wait_s`` s (default
    BUSY_WAIT_S) for another writer.
    Raises TrackingError naming ``db`` and what to do when the file is corrupt, read-only, locked
    for longer than ``wait_s``, not of ``kind`` (an MLflow store by default), or its folder is
    not writable.
    """
    check_folder(db, kind)
    folder = db.parent
    wait_s = BUSY_WAIT_S if wait_s is None else wait_s
    if not db.exists() or db.stat().st_size == 0:
        return "missing"
    what = "read"
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=wait_s,
                              isolation_level=None)   # we issue BEGIN and ROLLBACK
        try:
            tables = _tables(con)
            what = "write"
            con.execute("BEGIN IMMEDIATE")     # waits for another writer
            try:   # a real write, rolled back: BEGIN alone succeeds on a read-only file
                con.execute("CREATE TABLE pfcvr_write_probe (x INTEGER)")
            finally:
                con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as err:
        msg = str(err).lower()
        if "locked" in msg or "busy" in msg:
            raise TrackingError(
                f"{kind.label} {db} has been locked by another process for more than "
                f"{wait_s:.0f} s ({_one_line(err)}): stop or wait for that process "
                f"(fuser -v {db}), then run again") from None
        if "readonly" in msg or "read-only" in msg or (what == "write" and "open" in msg):
            raise TrackingError(
                f"{kind.label} {db} is read-only ({_one_line(err)}): make the file and its "
                f"folder writable (chmod u+w {db} {folder}) or point {kind.env} "
                "elsewhere") from None
        raise TrackingError(
            f"{kind.label} {db} is not a readable SQLite database ({_one_line(err)}): move it "
            f"away (mv {db} {db}.broken) to start a new store, or point {kind.env} "
            "elsewhere") from None
    if not tables:
        return "missing"
    if not set(kind.tables) <= tables:
        raise TrackingError(
            f"{kind.label} {db} is an SQLite file but not {kind.what} (tables: "
            f"{', '.join(sorted(tables)[:6])}): point {kind.env} at {kind.what} "
            "or move the file away") from None
    return "ok"


def ensure_store(db: Path, build: Callable[[Path], None], kind: StoreKind = MLFLOW) -> bool:
    """Create the store ``db`` if it is missing; call under :func:`store_lock`. Returns whether
    it was built.

    ``build(path)`` creates a complete store at ``path``; it runs on ``<db>.new-<pid>`` and the
    result is renamed over ``db`` in one step, so a process killed while building leaves only a
    temporary file (removed by the next builder) and never a half-built ``db``.
    """
    if inspect_store(db, kind=kind) == "ok":
        return False
    for stale in db.parent.glob(db.name + ".new-*"):   # left by a builder that was killed
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f"{db.name}.new-{os.getpid()}")
    try:
        build(tmp)
        os.replace(tmp, db)
    finally:
        for leftover in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
    return True
