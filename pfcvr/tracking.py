"""The MLflow facade: the only module of the project that imports mlflow.

Conventions (DESIGN.md):
- store ``sqlite:///<repo root>/mlflow.db``; the repo root is ``DVC_ROOT`` when DVC runs the stage
  (queued experiments then land in the same store), else the git top level; ``MLFLOW_TRACKING_URI``
  overrides the store;
- experiment ``pfcvr`` (``MLFLOW_EXPERIMENT_NAME`` overrides);
- one parent run per DVC experiment (``DVC_EXP_NAME``, or ``workspace``), found by tag;
- one nested run per stage and variant (``prepare``, ``train@full``, ``evaluate@no_part``, ...),
  with every parameter flattened to dotted keys and tags for git commit, variant and seed.

What the store shows stays true when several processes share it or get killed:
- creating the store, the experiment and the parent run happens under one file lock, and a new
  store is built aside and renamed into place (pfcvr.tracking_store), so processes starting at
  the same instant create one of each and never see a half-built store;
- SIGTERM ends a stage's run KILLED and the process exits 143; a run left RUNNING by a process
  that is gone (SIGKILL, a reboot) is closed KILLED by the next stage of that DVC experiment;
  when a stage ends, its parent run takes the status of its stages (pfcvr.tracking_state);
- a store error at start-up is one line (with ``tracking.required: false`` a warning, and the
  stage goes on untracked); after start-up a failing store never stops the work: the calls wait
  in an outbox and are retried later, with one warning;
- a store moved to another folder keeps its artifacts beside it (mlartifacts/).
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow  # noqa: E402,F401
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pfcvr.config import Params, flatten  # noqa: E402
from pfcvr.tracking_state import (KIND_TAG, OWNER_TAG, PARENT_TAG, Outbox,  # noqa: E402
                                  Terminated, close_stale, note, now_ms, one_line,
                                  owner_token, quiet, settle_parent, sigterm_raises, status_of)
from pfcvr.tracking_store import (ARTIFACTS, TrackingError, check_folder,  # noqa: E402
                                  ensure_store, inspect_store, repair_artifact_locations,
                                  sqlite_path, store_lock)

__all__ = ["TrackingError", "StageRun", "stage_run", "stage_runs", "check_tracking",
           "settle_experiment", "tracking_uri", "experiment_name", "dvc_experiment", "repo_root"]

EXPERIMENT = "pfcvr"
_PARAM_VALUE_MAX = 6000
_BATCH = 900                         # MLflow accepts at most 1000 metrics per batch


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


def _build_store(path: Path) -> None:
    """A complete, empty MLflow store at ``path`` (artifacts go to mlartifacts/ beside it)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path}"
    store = SqlAlchemyStore(uri, (path.parent / ARTIFACTS).as_uri())
    store.engine.dispose()          # no connection may outlive the rename
    getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)


def _reconnect(uri: str) -> None:
    """Drop this process's pooled connections to ``uri`` (they point at a replaced file)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).get(uri)
    if engine is not None:
        engine.dispose()


def _client() -> MlflowClient:
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
                if ensure_store(db, _build_store):
                    _reconnect(uri)
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
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as err:  # any failure here means the store is unusable
        raise TrackingError(_explain(uri, db, err)) from None
    return client


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


def _experiment_id(client: MlflowClient) -> str:
    """Get or create the experiment (under the store lock: two processes create one)."""
    name, uri = experiment_name(), tracking_uri()
    with store_lock(uri):
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = None
            db = sqlite_path(uri)
            if db is not None:
                # Beside the store, not in whatever folder the stage happened to run in.
                location = (db.parent / ARTIFACTS).as_uri()
            try:
                return client.create_experiment(name, artifact_location=location)
            except Exception:  # created by a process on another machine (server stores)
                exp = client.get_experiment_by_name(name)
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"experiment {name} in {uri} is deleted: restore it (mlflow "
                                f"experiments restore --experiment-id {exp.experiment_id}) or "
                                "set MLFLOW_EXPERIMENT_NAME")
        return exp.experiment_id


def _parent_run_id(client: MlflowClient, exp_id: str) -> str:
    """Get or create the DVC experiment's parent run (under the store lock)."""
    name = dvc_experiment()
    with store_lock(tracking_uri()):
        found = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{name}'",
                                   max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            return found[0].info.run_id
        run = client.create_run(exp_id, run_name=name, tags={
            PARENT_TAG: name, KIND_TAG: "parent", "git_commit": git_commit()})
        return run.info.run_id


def _as_param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _PARAM_VALUE_MAX else text[: _PARAM_VALUE_MAX - 3] + "..."


class StageRun:
    """One nested MLflow run. All methods are no-ops in a disabled run (tracking not required);
    in an enabled one a failing store delays them (outbox) but never raises."""

    def __init__(self, session: Outbox | None, run_id: str | None, parent_id: str | None):
        self._s, self.run_id, self.parent_id = session, run_id, parent_id

    @property
    def enabled(self) -> bool:
        return self._s is not None

    @property
    def client(self) -> MlflowClient | None:
        return self._s.client if self._s else None

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled or not params:
            return
        items = [Param(k, _as_param(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            batch = items[i:i + 100]
            self._s.call("log params", lambda b=batch: self.client.log_batch(self.run_id, params=b))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        now = now_ms()   # taken now, so that metrics logged late keep their time
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), _BATCH):
            batch = items[i:i + _BATCH]
            self._s.call("log metrics",
                         lambda b=batch: self.client.log_batch(self.run_id, metrics=b))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled and tags:
            items = [RunTag(k, str(v)) for k, v in tags.items()]
            self._s.call("set tags", lambda: self.client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(path).exists():
            if Path(path).is_dir():
                self._s.call(f"log {path}", lambda: self.client.log_artifacts(
                    self.run_id, str(path), artifact_path))
            else:
                self._s.call(f"log {path}", lambda: self.client.log_artifact(
                    self.run_id, str(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self._s.call(f"log {artifact_file}",
                         lambda: self.client.log_text(self.run_id, text, artifact_file))

    def _end(self, status: str) -> None:
        end = now_ms()
        self._s.call(f"end run ({status})",
                     lambda: self.client.set_terminated(self.run_id, status, end_time=end))

    @contextlib.contextmanager
    def child(self, name: str, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None) -> Iterator["StageRun"]:
        """A run nested under this one (e.g. one Optuna trial under ``tune``); it ends FINISHED,
        KILLED (SIGTERM, Ctrl-C) or FAILED (the exception propagates)."""
        if not self.enabled:
            yield StageRun(None, None, None)
            return
        handle = StageRun(self._s, None, self.run_id)
        start, all_tags = now_ms(), {KIND_TAG: "child", OWNER_TAG: owner_token(),
                                      **{k: str(v) for k, v in (tags or {}).items()}}

        def create() -> None:   # later calls of the handle read run_id when they run
            handle.run_id = self.client.create_run(
                self._s.exp_id, run_name=name, start_time=start,
                tags={"mlflow.parentRunId": self.run_id, **all_tags}).info.run_id

        self._s.call(f"open run {name}", create)
        handle.log_params(params or {})
        status = "FINISHED"
        try:
            yield handle
        except BaseException as err:
            status = status_of(err)
            raise
        finally:
            handle._end(status)

    def log_to_parent(self, metrics: dict[str, float] | None = None,
                      artifacts: list[str | Path] = (), tags: dict[str, Any] | None = None) -> None:
        """Attach results to the experiment's parent run (used by the report stage)."""
        if not self.enabled:
            return
        parent = StageRun(self._s, self.parent_id, None)
        parent.log_metrics(metrics or {})
        parent.set_tags(tags or {})
        for a in artifacts:
            parent.log_artifact(a)


def check_tracking(required: bool) -> bool:
    """Check at start-up that the store is usable. Raises TrackingError when required, else
    warns. Returns whether tracking is enabled."""
    try:
        _client()
        return True
    except TrackingError as err:
        return _unavailable(err, required)


def _unavailable(err: TrackingError, required: bool) -> bool:
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


def _open(name: str, stage: str, variant: str | None, tags: dict[str, Any] | None) -> StageRun:
    """Create the store, experiment and parent if missing, close stale runs, open ``name``."""
    client = _client()
    uri = tracking_uri()
    try:
        with store_lock(uri), quiet():
            exp_id = _experiment_id(client)
            parent_id = _parent_run_id(client, exp_id)
            closed = close_stale(client, exp_id, dvc_experiment(), name)
            run = client.create_run(exp_id, run_name=name, tags={
                "mlflow.parentRunId": parent_id, KIND_TAG: "stage", "stage": stage,
                "variant": variant or "", "git_commit": git_commit(),
                PARENT_TAG + ".name": dvc_experiment(), OWNER_TAG: owner_token(),
                **{k: str(v) for k, v in (tags or {}).items()}})
            settle_parent(client, exp_id, parent_id)
    except TrackingError:
        raise
    except Exception as err:
        raise TrackingError(f"tracking store {uri} cannot be written: {one_line(err)}") from None
    if closed:
        note(f"closed {len(closed)} stale RUNNING run(s) of experiment {dvc_experiment()} as "
              f"KILLED (their process is gone): {', '.join(sorted(closed))}")
    return StageRun(Outbox(client, uri, exp_id), run.info.run_id, parent_id)


def _close(handle: StageRun, status: str) -> None:
    """End the stage run, log what waits in the outbox and settle the parent; never raises."""
    s = handle._s
    if s.outbox:
        s.flush()
    handle._end(status)

    def settle() -> None:
        with store_lock(s.uri):
            settle_parent(s.client, s.exp_id, handle.parent_id)

    s.call("settle parent run", settle)
    if s.outbox:
        warnings.warn(f"tracking store {s.uri} still fails at the end of the stage ({s.error}): "
                      f"{len(s.outbox)} tracking call(s) were not logged; the stage's own files "
                      "hold its results, and the next stage start closes the run", stacklevel=4)


@contextlib.contextmanager
def stage_run(stage: str, params: Params | None = None, *, variant: str | None = None,
              tags: dict[str, Any] | None = None, extra_params: dict[str, Any] | None = None,
              required: bool | None = None) -> Iterator[StageRun]:
    """Open the nested run ``stage`` (``stage@variant``) under the experiment's parent run.

    Logs ``params`` flattened with dotted keys plus tags for git commit, stage, variant and the
    owning process. The run ends FINISHED, FAILED (an exception, which propagates) or KILLED
    (Ctrl-C, or SIGTERM: inside the block SIGTERM raises :class:`Terminated`, so the process
    exits with status 143 unless the caller catches it), and the parent run then takes its
    stages' status. ``required`` (default ``params.tracking.required``): a store that cannot be
    used at start-up raises TrackingError (one line, also when uncaught) when True, else warns
    and yields a disabled run. After start-up, tracking failures only warn (module docstring).
    """
    if required is None:
        required = params.tracking.required if params is not None else True
    name = f"{stage}@{variant}" if variant else stage
    with sigterm_raises():
        try:
            handle = _open(name, stage, variant, tags)
        except TrackingError as err:
            handle = None
            _unavailable(err, required)
        if handle is None:   # outside the except: the body's errors must not chain to it
            yield StageRun(None, None, None)
            return
        # The ablations table is the same for every run; a variant run logs its merged params.
        flat = {k: v for k, v in flatten(params).items() if not k.startswith("ablations.")} \
            if params is not None else {}
        flat.update(extra_params or {})
        handle.log_params(flat)
        status = "FINISHED"
        try:
            yield handle
        except BaseException as err:
            status = status_of(err)
            if isinstance(err, Terminated):
                note(f"{name}: terminated by SIGTERM; run marked KILLED")
            raise
        finally:
            _close(handle, status)


def settle_experiment() -> dict[str, str]:
    """Close stale runs and settle the parent of every DVC experiment in the store; returns
    ``{DVC experiment: parent status}`` (``python -m pfcvr.tracking --settle``)."""
    client = _client()
    exp_id = _experiment_id(client)
    out = {}
    for p in client.search_runs([exp_id], filter_string=f"tags.`{KIND_TAG}` = 'parent'",
                                max_results=1000):
        name = p.data.tags.get(PARENT_TAG, "")
        with store_lock(tracking_uri()):
            close_stale(client, exp_id, name)
            out[name] = settle_parent(client, exp_id, p.info.run_id)
    return out


def stage_runs(stage_prefix: str | None = None) -> list[dict[str, Any]]:
    """Nested runs of the current DVC experiment's parent, newest first (for reports and tests)."""
    client = _client()
    exp_id = _experiment_id(client)
    parent_id = _parent_run_id(client, exp_id)
    runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    out = []
    for r in runs:
        name = r.info.run_name or ""
        if stage_prefix and not name.startswith(stage_prefix):
            continue
        out.append({"run_id": r.info.run_id, "name": name, "status": r.info.status,
                    "metrics": dict(r.data.metrics), "params": dict(r.data.params),
                    "tags": dict(r.data.tags)})
    return out


if __name__ == "__main__":  # `python -m pfcvr.tracking [--settle]` prints where runs go
    print(f"tracking URI: {tracking_uri()}\nexperiment:   {experiment_name()}\n"
          f"parent run:   {dvc_experiment()}", file=sys.stdout)
    if "--settle" in sys.argv[1:]:
        for exp, status in settle_experiment().items():
            print(f"parent run {exp}: {status}")
