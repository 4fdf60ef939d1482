"""Where runs go and how to reach the store: URI, experiment, parent run, one-line errors.

Part of the MLflow facade (pfcvr.tracking re-exports these). Conventions (docs/tracking.md):
- store ``sqlite:///<repo root>/mlflow.db``; the repo root is ``DVC_ROOT`` when DVC runs the stage
  (queued experiments then land in the same store), else the git top level; ``MLFLOW_TRACKING_URI``
  overrides the store;
- experiment ``pfcvr`` (``MLFLOW_EXPERIMENT_NAME`` overrides), marked as model training with the
  ablation view (pfcvr.tracking.views);
- one parent run per DVC experiment (``DVC_EXP_NAME``, or ``workspace``), found by tag.

Creating the store, the experiment and the parent run happens under the store's file lock
(pfcvr.runtime.sqlite_store; the MLflow store itself: pfcvr.tracking.store), so processes that
start at the same instant create one of each.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

from mlflow.tracking import MlflowClient  # noqa: E402

from pfcvr.runtime.sqlite_store import (TrackingError, check_folder, ensure_store,  # noqa: E402
                                         inspect_store, sqlite_path, store_lock)
from pfcvr.tracking.state import KIND_TAG, PARENT_TAG, note, one_line, quiet  # noqa: E402
from pfcvr.tracking.store import (ARTIFACTS, build_store, reconnect,  # noqa: E402
                                  repair_artifact_locations)
from pfcvr.tracking.views import prepare_experiment  # noqa: E402

EXPERIMENT = "pfcvr"


def repo_root() -> Path:
    """The repository root: DVC_ROOT, else the git top level, else the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        if top:
            return Path(top)
    except (OSError, subprocess.SubprocessError):
        pass
    return Path.cwd().resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT


def dvc_experiment() -> str:
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True, cwd=repo_root()).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def client() -> MlflowClient:
    """A client for the configured store, created (once, under the lock) if missing.

    Raises TrackingError (one line naming the store and what to do) when the store cannot be
    created, read or written.
    """
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None:
        check_folder(db)            # before the lock file is created there
        try:
            with store_lock(uri), quiet():
                if ensure_store(db, build_store):
                    reconnect(uri)
                    note(f"created the store {db}")
                inspect_store(db)
                moved = repair_artifact_locations(db)
        except TrackingError:
            raise
        except Exception as err:
            raise TrackingError(f"tracking store {db} could not be created or opened: "
                                f"{one_line(err)} (move it away to start a new one, or point "
                                "MLFLOW_TRACKING_URI elsewhere)") from None
        if moved:
            note(moved)
    elif uri.startswith(("http://", "https://")):
        # Fail fast instead of MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        with quiet():
            made = MlflowClient(tracking_uri=uri, registry_uri=uri)
            made.search_experiments(max_results=1)
    except Exception as err:  # any failure here means the store is unusable
        raise TrackingError(_explain(uri, db, err)) from None
    return made


def _explain(uri: str, db: Path | None, err: Exception) -> str:
    """One line: which store failed, why, and what to do."""
    text = one_line(err)
    schema = re.search(r"found version (\S+), but expected (\S+?)\)", text)
    if schema and db is not None:
        return (f"tracking store {db} has MLflow schema {schema[1]}, this MLflow needs "
                f"{schema[2]}: back it up (cp {db} {db}.bak) and run `mlflow db upgrade "
                f"sqlite:///{db}`, or move it away to start a new store")
    if db is not None:
        return (f"tracking store {db} cannot be opened: {text} (move it away to start a new "
                "store, or point MLFLOW_TRACKING_URI elsewhere)")
    return (f"tracking store {uri} cannot be reached: {text} (start the server or fix "
            "MLFLOW_TRACKING_URI)")


def experiment_id(mc: MlflowClient) -> str:
    """Get or create the experiment (under the store lock: two processes create one), marked as
    model training with the ablation view (pfcvr.tracking.views.prepare_experiment)."""
    name, uri = experiment_name(), tracking_uri()
    with store_lock(uri):
        exp = mc.get_experiment_by_name(name)
        if exp is None:
            location = None
            db = sqlite_path(uri)
            if db is not None:
                # Beside the store, not in whatever folder the stage happened to run in.
                location = (db.parent / ARTIFACTS).as_uri()
            try:
                mc.create_experiment(name, artifact_location=location)
            except Exception:  # created by a process on another machine (server stores)
                pass
            exp = mc.get_experiment_by_name(name)
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"experiment {name} in {uri} is deleted: restore it (mlflow "
                                f"experiments restore --experiment-id {exp.experiment_id}) or "
                                "set MLFLOW_EXPERIMENT_NAME")
        prepare_experiment(mc, exp)
        return exp.experiment_id


def parent_run_id(mc: MlflowClient, exp_id: str) -> str:
    """Get or create the DVC experiment's parent run (under the store lock)."""
    name = dvc_experiment()
    with store_lock(tracking_uri()):
        found = mc.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{name}'",
                               max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            return found[0].info.run_id
        run = mc.create_run(exp_id, run_name=name, tags={
            PARENT_TAG: name, KIND_TAG: "parent", "git_commit": git_commit()})
        return run.info.run_id


def check_tracking(required: bool) -> bool:
    """Check at start-up that the store is usable. Raises TrackingError when required, else
    warns. Returns whether tracking is enabled."""
    try:
        client()
        return True
    except TrackingError as err:
        return unavailable(err, required)


def unavailable(err: TrackingError, required: bool) -> bool:
    """Raise ``err`` (with what to do) when tracking is required, else warn; returns False."""
    if required:
        _one_line_if_uncaught()
        raise TrackingError(f"{err} (or set tracking.required: false to run without "
                            "tracking)") from None
    warnings.warn(f"{err}; going on without MLflow tracking (tracking.required is false)",
                  stacklevel=4)
    return False


def _one_line_if_uncaught() -> None:
    """Make an uncaught TrackingError print as its one-line message, not a traceback."""
    previous = sys.excepthook
    if getattr(previous, "_pfcvr", False):
        return

    def hook(kind, value, tb):
        if issubclass(kind, TrackingError):
            print(f"TrackingError: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    hook._pfcvr = True
    sys.excepthook = hook
