"""Where runs go and how to reach the store: URI, experiment, parent run, one-line errors.

Part of the MLflow facade (pfcvr.tracking re-exports these). Conventions (docs/tracking.md):
- store ``sqlite:///<repo root>/mlflow.db``; the repo root is ``DVC_ROOT`` when DVC runs the stage
  (queued experiments then land in the same store), else the git top level; ``MLFLOW_TRACKING_URI``
  overrides the store;
- experiment ``pfcvr`` (``MLFLOW_EXPERIMENT_NAME`` overrides), marked as model training with the
  ablation view (pfcvr.tracking.views);
- one parent run per DVC experiment (``DVC_EXP_NAME``, or ``workspace``), found by tag; with a
  tracking server that several clones share, one per DVC experiment *and clone* (tag
  ``pfcvr.clone`` = host and repository folder), so two machines' ``workspace`` runs stay apart.

Creating the store, the experiment and the parent run happens under the store's file lock
(pfcvr.runtime.sqlite_store; the MLflow store itself: pfcvr.tracking.store), so processes that
start at the same instant create one of each; for a server only a lock of this machine remains
(other machines' parents are other runs).

A server (``http://host:port``, e.g. ``mlflow server --backend-store-uri postgresql://...
--serve-artifacts``) is checked at start-up: one that is down, refuses the credentials
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, or ``user:password@`` in the URI)
or is not an MLflow server is one line naming the URI with its password hidden. Artifacts and
models then go over HTTP; nothing assumes a filesystem shared with the server.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

from mlflow.tracking import MlflowClient  # noqa: E402

from pfcvr.runtime.sqlite_store import (TrackingError, check_folder, ensure_store,  # noqa: E402
                                         hide_secret, inspect_store, redact_uri, sqlite_path,
                                         store_lock)
from pfcvr.tracking.state import (KIND_TAG, PARENT_TAG, find_runs, note,  # noqa: E402
                                  one_line, quiet)
from pfcvr.tracking.store import (ARTIFACTS, build_store, reconnect,  # noqa: E402
                                  repair_artifact_locations)
from pfcvr.tracking.views import prepare_experiment  # noqa: E402

EXPERIMENT = "pfcvr"
CLONE_TAG = "pfcvr.clone"            # value: host:repository folder, on parents in a server store
# A start-up check must not wait for MLflow's default of 7 retries with back-off (minutes).
HTTP_RETRIES, HTTP_TIMEOUT_S = "0", "10"


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


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (HTTP), as opposed to a database the client opens."""
    return uri.startswith(("http://", "https://"))


def clone_id() -> str:
    """``host:folder`` of this clone of the repository (queued experiments: the repository they
    came from, via DVC_ROOT): tells apart the parents of two machines in one server store."""
    return f"{socket.gethostname()}:{repo_root()}"


def parent_tags() -> dict[str, str]:
    """The tags that identify the current DVC experiment's parent run: its name, and in a server
    store the clone (a sqlite store belongs to one clone and may move with it)."""
    tags = {PARENT_TAG: dvc_experiment()}
    if is_server(tracking_uri()):
        tags[CLONE_TAG] = clone_id()
    return tags


def parent_run_name() -> str:
    """The parent's run name: the DVC experiment, with the host and folder in a server store."""
    name = dvc_experiment()
    if is_server(tracking_uri()):
        name += f" @ {socket.gethostname()}:{repo_root().name}"
    return name


@contextlib.contextmanager
def process_store(uri: str) -> Iterator[None]:
    """Make ``uri`` MLflow's process-wide tracking URI while inside.

    Some MLflow calls look a logged model up through a client of their own (``MlflowClient()``
    inside the registry's ``create_model_version`` for a database store), which reads the
    process-wide URI, not the client's: in DVC's temporary copy of a queued or ``--temp``
    experiment that default is the copy's ``./mlflow.db``, another store. The previous setting
    (and the ``MLFLOW_TRACKING_URI`` variable) is restored on leaving.
    """
    import mlflow

    var = "MLFLOW_TRACKING_URI"
    before_env, before = os.environ.get(var), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)         # also unsets the variable ...
        if before_env is not None:            # ... which we put back as it was
            os.environ[var] = before_env
        if mlflow.get_tracking_uri() != before:
            mlflow.set_tracking_uri(before)


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
    elif is_server(uri):
        # Fail fast instead of MLflow's default minutes of retries; a call that fails later
        # waits in the outbox (pfcvr.tracking.state.Outbox) and is retried by us.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)
        # MLflow prints "View run ... at: <url>" for every run that ends on a server: a stage
        # log holds the stage's own lines (the pages to open come from make ui / --ui-urls).
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        with quiet():
            made = MlflowClient(tracking_uri=uri, registry_uri=uri)
            made.search_experiments(max_results=1)
    except Exception as err:  # any failure here means the store is unusable
        raise TrackingError(_explain(uri, db, err)) from None
    return made


# What a failed request says when nothing answered at that address (requests/urllib3 wording).
_UNREACHABLE = re.compile(r"\[Errno -?\d+\] [^\"')(]+|Read timed out|timed out|Name or service "
                          r"not known|Temporary failure in name resolution|No route to host")
_NOT_HTTP = re.compile(r"RemoteDisconnected|BadStatusLine|Connection aborted|"
                       r"Connection reset by peer|wrong version number|SSLError")


def explain_server(uri: str, err: Exception) -> str:
    """One line for a tracking server that cannot be used: down, refusing the credentials, or
    not an MLflow server; it names the URI with its password hidden and says what to do."""
    shown = redact_uri(uri)
    full = hide_secret(" ".join(str(err).split()), uri)   # searched whole: one_line cuts it
    text = hide_secret(one_line(err), uri)
    status = getattr(err, "get_http_status_code", lambda: None)()
    if status in (401, 403):
        return (f"tracking server {shown} refused the credentials (HTTP {status}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that "
                "server")
    if _NOT_HTTP.search(full):
        return (f"{shown} is not an MLflow tracking server (it does not answer HTTP as one): "
                "point MLFLOW_TRACKING_URI at the `mlflow server` address (docs: make lab-server)")
    unreachable = _UNREACHABLE.search(full)
    if unreachable:
        return (f"tracking server {shown} cannot be reached ({unreachable[0].strip()}): start "
                "it (make lab-server) or fix MLFLOW_TRACKING_URI")
    if "Response body" in full or status in (404, 405, 501):
        return (f"{shown} answers, but not as an MLflow tracking server (HTTP {status}): point "
                "MLFLOW_TRACKING_URI at the `mlflow server` address, e.g. http://host:5000")
    return f"tracking server {shown} cannot be used: {text} (check the server's log)"


def _explain(uri: str, db: Path | None, err: Exception) -> str:
    """One line: which store failed, why, and what to do."""
    if db is None and is_server(uri):
        return explain_server(uri, err)
    text = hide_secret(one_line(err), uri)
    schema = re.search(r"found version (\S+), but expected (\S+?)\)", text)
    if schema and db is not None:
        return (f"tracking store {db} has MLflow schema {schema[1]}, this MLflow needs "
                f"{schema[2]}: back it up (cp {db} {db}.bak) and run `mlflow db upgrade "
                f"sqlite:///{db}`, or move it away to start a new store")
    if db is not None:
        return (f"tracking store {db} cannot be opened: {text} (move it away to start a new "
                "store, or point MLFLOW_TRACKING_URI elsewhere)")
    return (f"tracking store {redact_uri(uri)} cannot be reached: {text} (start the server or "
            "fix MLFLOW_TRACKING_URI)")


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
            raise TrackingError(f"experiment {name} in {redact_uri(uri)} is deleted: restore it (mlflow "
                                f"experiments restore --experiment-id {exp.experiment_id}) or "
                                "set MLFLOW_EXPERIMENT_NAME")
        prepare_experiment(mc, exp)
        return exp.experiment_id


def parent_run_id(mc: MlflowClient, exp_id: str) -> str:
    """Get or create the DVC experiment's parent run (under the store lock). The DVC experiment
    name is data (``bob's-mask``): it is matched as such, never pasted into a filter string."""
    tags = parent_tags()
    with store_lock(tracking_uri()):
        found = find_runs(mc, exp_id, tags, where=f"tags.`{KIND_TAG}` = 'parent'",
                          max_results=1)
        if found:
            return found[0].info.run_id
        run = mc.create_run(exp_id, run_name=parent_run_name(), tags={
            **tags, KIND_TAG: "parent", "git_commit": git_commit()})
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
