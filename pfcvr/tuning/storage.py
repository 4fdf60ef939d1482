"""The Optuna storage that tune workers share: created once, and trials that end even when killed.

- :func:`open_study` creates or loads the study under the storage's file lock; a fresh sqlite
  storage is built under a temporary name and renamed into place (pfcvr.runtime.sqlite_store), so
  several workers that start at once on a fresh clone all get the one storage and study (without
  the lock, Optuna's own table creation fails in all but one: "table studies already exists").
  The storage runs Optuna's heartbeat: a trial of a worker that died on another machine is
  failed by the next worker that starts a trial, GRACE_S seconds after its last heartbeat.
- :func:`claim` writes the process that runs a trial into it (user attr ``pfcvr.owner``);
  :func:`fail_stale` fails at once the RUNNING trials whose process on this machine is gone
  (SIGKILL), :func:`fail_own` those of this process (SIGTERM), so that a resumed study's counts
  (complete + pruned + failed) add up to its trials.
"""
from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Any

import optuna

from pfcvr.runtime.process import owner_state, owner_token
from pfcvr.runtime.sqlite_store import OPTUNA, ensure_store, sqlite_path, store_lock

OWNER_ATTR = "pfcvr.owner"
HEARTBEAT_S = 60       # seconds between a running trial's heartbeats
GRACE_S = 600          # a trial without a heartbeat for this long is failed by the next worker
UNCLAIMED_S = 120      # a RUNNING trial without an owner this old is stale (see fail_stale)
RUNNING = optuna.trial.TrialState.RUNNING


def _build(path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    storage.engine.dispose()          # no connection may outlive the rename


def open_study(name: str, url: str, **kwargs: Any) -> optuna.Study:
    """Create or load the study ``name`` in the storage ``url`` (``kwargs`` go to
    ``optuna.create_study``: direction, sampler, pruner).

    Raises pfcvr.runtime.sqlite_store.TrackingError (one line naming the file and what to do) when a
    sqlite storage is corrupt, read-only, locked or not an Optuna storage.
    """
    db = sqlite_path(url)
    with store_lock(url):
        if db is not None:
            ensure_store(db, _build, OPTUNA)
        with warnings.catch_warnings():   # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S)
        return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                   **kwargs)


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
    worker killed before it claimed the trial) unowned and started more than UNCLAIMED_S ago.
    Trials of live processes and of other machines are left to run (Optuna's heartbeat covers
    the latter). Prints one line when it fails any (unless ``progress`` is False).
    """
    now = dt.datetime.now()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(RUNNING,)):
        state = owner_state(t.user_attrs.get(OWNER_ATTR))
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        if state == "dead" or (state == "unknown" and age > UNCLAIMED_S):
            stale.append(t)
    failed = _fail(study, stale)
    if failed and progress:
        print(f"[tune] failed {len(failed)} stale RUNNING trial(s) of study {study.study_name} "
              f"(their process is gone): {', '.join(map(str, failed))}", flush=True)
    return failed


def fail_own(study: optuna.Study) -> list[int]:
    """Fail the trials that this process left RUNNING (Optuna leaves a trial RUNNING when
    SystemExit, e.g. SIGTERM, ends it); returns their numbers."""
    me = owner_token()
    return _fail(study, [t for t in study.get_trials(deepcopy=False, states=(RUNNING,))
                         if t.user_attrs.get(OWNER_ATTR) == me])
