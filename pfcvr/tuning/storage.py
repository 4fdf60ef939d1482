"""The Optuna storage that tune workers share: created once, counted exactly, trials that end.

- :func:`open_study` creates or loads the study under the storage's file lock; a fresh sqlite
  storage is built under a temporary name and renamed into place (pfcvr.runtime.sqlite_store), so
  several workers that start at once on a fresh clone all get the one storage and study (without
  the lock, Optuna's own table creation fails in all but one: "table studies already exists").
  On a database server (``postgresql://``) a worker on another machine may create the tables at
  the same instant: the loser's "already exists" is retried. The storage runs Optuna's
  heartbeat (`tune.heartbeat_interval`): a RUNNING trial without a heartbeat for
  `tune.grace_period` seconds (its worker was killed or froze, on any machine) is failed by the
  next worker that looks.
- :class:`TrialSlots`: workers decide "is there room for one more trial?" and create it as one
  step, under a lock that all of them share: the storage's file lock for sqlite, a PostgreSQL
  advisory lock for a server (dropped by the server when the worker's connection dies). So
  `tune.n_trials` finished trials are never exceeded, however many workers start together.
- :func:`claim` writes the process that runs a trial into it (user attr ``pfcvr.owner``);
  :func:`fail_stale` fails at once the RUNNING trials whose process on this machine is gone
  (SIGKILL), :func:`fail_own` those of this process (SIGTERM), so that a resumed study's counts
  (complete + pruned + failed + running) add up to its trials.
- :func:`check_storage` stops a stage before any work when the storage cannot be used (server
  down, password refused, missing folder): one line, the password hidden.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from pfcvr.runtime.process import owner_state, owner_token
from pfcvr.runtime.sqlite_store import (OPTUNA, TrackingError, check_folder, ensure_store,
                                        hide_secret, inspect_store, redact_uri, sqlite_path,
                                        store_lock)

OWNER_ATTR = "pfcvr.owner"
UNCLAIMED_S = 120      # a RUNNING trial without an owner this old is stale (see fail_stale)
RUNNING = optuna.trial.TrialState.RUNNING
SLOT_WAIT_S = 300.0    # deciding and creating a trial takes milliseconds: minutes is a stuck worker
CREATE_TRIES = 3       # table creation racing with another machine's worker (server storages)

# RDBStorage objects opened by this process, by URL: TrialSlots takes the advisory lock through
# the same connection pool.
_storages: dict[str, optuna.storages.RDBStorage] = {}


def _build(path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    storage.engine.dispose()          # no connection may outlive the rename


def _explain(url: str, err: BaseException) -> str:
    """One line for a storage that cannot be opened (the password hidden)."""
    reason = " ".join(str(getattr(err, "orig", None) or err).split()) or type(err).__name__
    reason = hide_secret(reason, url)[:300]
    return (f"Optuna storage {redact_uri(url)} cannot be used ({reason}): start the database "
            "server or fix OPTUNA_STORAGE (user, password, host, port, database)")


def _rdb(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats; retries a table creation that raced with another worker."""
    for attempt in range(CREATE_TRIES):
        try:
            with warnings.catch_warnings():   # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                                  grace_period=grace_period)
        except Exception as err:
            text = str(err).lower()
            racing = "already exists" in text or "duplicate key" in text
            if not racing or attempt == CREATE_TRIES - 1:
                raise TrackingError(_explain(url, err)) from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("not reached")


def check_storage(url: str) -> None:
    """Stop before any work when the storage ``url`` cannot be used.

    A sqlite file: its folder must exist and be writable and the file (if there) an Optuna
    storage (pfcvr.runtime.sqlite_store.inspect_store); nothing is created. Another database: a
    connection is opened and closed. Raises TrackingError (one line, password hidden).
    """
    db = sqlite_path(url)
    if db is not None:
        check_folder(db, OPTUNA)
        inspect_store(db, kind=OPTUNA)
        return
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as err:
        raise TrackingError(_explain(url, err)) from None


def open_study(name: str, url: str, *, heartbeat_interval: int, grace_period: int,
               **kwargs: Any) -> optuna.Study:
    """Create or load the study ``name`` in the storage ``url`` (``kwargs`` go to
    ``optuna.create_study``: direction, sampler, pruner), with Optuna's heartbeat every
    ``heartbeat_interval`` s and stale trials failed after ``grace_period`` s
    (`tune.heartbeat_interval`, `tune.grace_period`).

    Raises pfcvr.runtime.sqlite_store.TrackingError (one line naming the storage and what to do) when a
    sqlite storage is corrupt, read-only, locked or not an Optuna storage, or a database server
    cannot be reached or refuses the login.
    """
    db = sqlite_path(url)
    with store_lock(url):
        if db is not None:
            ensure_store(db, _build, OPTUNA)
        storage = _rdb(url, heartbeat_interval, grace_period)
        _storages[url] = storage
        return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                   **kwargs)


class TrialSlots:
    """The lock under which a worker counts the study's trials and creates its next one.

    ``acquire()`` / ``release()`` (idempotent, so the objective can release it as soon as its
    trial exists): a file lock beside a sqlite storage (one machine), a PostgreSQL session
    advisory lock keyed by the study name for a PostgreSQL server (every machine; the server
    drops it when the holder's connection ends, e.g. by SIGKILL). Other databases: the file lock
    of this machine only, which is said once.
    """

    def __init__(self, study: optuna.Study, url: str):
        self.url, self.held = url, False
        self.storage = _storages.get(url)
        dialect = self.storage.engine.dialect.name if self.storage is not None else "sqlite"
        self.kind = "file" if sqlite_path(url) is not None else dialect
        digest = hashlib.sha1(study.study_name.encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self.connection = None
        if self.kind not in ("file", "postgresql"):
            warnings.warn(f"Optuna storage {redact_uri(url)} ({dialect}): tune.n_trials is "
                          "counted exactly only among the workers of one machine", stacklevel=2)

    def acquire(self) -> None:
        if self.held:
            return
        if self.kind == "postgresql":
            import sqlalchemy

            self.connection = self.storage.engine.connect()
            deadline = time.monotonic() + SLOT_WAIT_S
            query = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
            while not self.connection.execute(query, {"key": self.key}).scalar():
                self.connection.commit()
                if time.monotonic() > deadline:
                    self.connection.close()
                    raise TrackingError(
                        f"Optuna storage {redact_uri(self.url)}: another tune worker has held "
                        f"the study's trial lock for more than {SLOT_WAIT_S:.0f} s; stop the "
                        "stuck worker (its database session ends the lock) and run again")
                time.sleep(0.1)
            self.connection.commit()
        else:
            store_lock(self.url).__enter__()
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.kind == "postgresql":
            import sqlalchemy

            try:
                self.connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                        {"key": self.key})
                self.connection.commit()
            finally:
                self.connection.close()   # back to the pool; a lost session unlocks anyway
                self.connection = None
        else:
            store_lock(self.url).__exit__(None, None, None)


def claim(trial: optuna.Trial) -> None:
    """Record in ``trial`` the process that runs it (see :func:`fail_stale`)."""
    trial.set_user_attr(OWNER_ATTR, owner_token())


def _fail(study: optuna.Study, trials: list) -> list[int]:
    for t in trials:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return [t.number for t in trials]


def fail_stale(study: optuna.Study, progress: bool = True) -> list[int]:
    """Fail the RUNNING trials whose process is gone; returns their numbers.

    Gone: owned by a dead process on this machine, or (opened by an older version, or by a
    worker killed before it claimed the trial) unowned and started more than UNCLAIMED_S ago;
    or, on any machine, without a heartbeat for `tune.grace_period` seconds (Optuna's own
    ``fail_stale_trials``). Trials of live processes and of other machines are left to run.
    Prints one line when it fails any (unless ``progress`` is False).
    """
    now = dt.datetime.now()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(RUNNING,)):
        state = owner_state(t.user_attrs.get(OWNER_ATTR))
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        if state == "dead" or (state == "unknown" and age > UNCLAIMED_S):
            stale.append(t)
    failed = _fail(study, stale)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(RUNNING,))}
    silent = sorted(before - after)          # failed by the heartbeat (or ended meanwhile)
    if failed and progress:
        print(f"[tune] failed {len(failed)} stale RUNNING trial(s) of study {study.study_name} "
              f"(their process is gone): {', '.join(map(str, failed))}", flush=True)
    beat = [n for n in silent if study.trials[n].state == optuna.trial.TrialState.FAIL]
    if beat and progress:
        print(f"[tune] failed {len(beat)} RUNNING trial(s) of study {study.study_name} without "
              f"a heartbeat for tune.grace_period: {', '.join(map(str, beat))}", flush=True)
    return failed + beat


def fail_own(study: optuna.Study) -> list[int]:
    """Fail the trials that this process left RUNNING (Optuna leaves a trial RUNNING when
    SystemExit, e.g. SIGTERM, ends it); returns their numbers."""
    me = owner_token()
    return _fail(study, [t for t in study.get_trials(deepcopy=False, states=(RUNNING,))
                         if t.user_attrs.get(OWNER_ATTR) == me])
