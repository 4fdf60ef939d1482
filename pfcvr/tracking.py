"""The MLflow facade: the only module of the project that imports mlflow.

Conventions (DESIGN.md):
- store ``sqlite:///<repo root>/mlflow.db``; the repo root is ``DVC_ROOT`` when DVC runs the stage
  (queued experiments then land in the same store), else the git top level; ``MLFLOW_TRACKING_URI``
  overrides the store;
- experiment ``pfcvr`` (``MLFLOW_EXPERIMENT_NAME`` overrides);
- one parent run per DVC experiment (``DVC_EXP_NAME``, or ``workspace``), found by tag;
- one nested run per stage and variant (``prepare``, ``train@full``, ``evaluate@no_part``, ...),
  with every parameter flattened to dotted keys and tags for git commit, variant and seed.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pfcvr.config import Params, flatten  # noqa: E402

EXPERIMENT = "pfcvr"
PARENT_TAG = "pfcvr.experiment"      # value: DVC experiment name, on the parent run
KIND_TAG = "pfcvr.kind"              # parent | stage
_PARAM_VALUE_MAX = 6000
_BATCH = 900                         # MLflow accepts at most 1000 metrics per batch


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written."""


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


def _client() -> MlflowClient:
    """A client for the configured store; raises TrackingError when it cannot be reached."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
            raise TrackingError(f"tracking store {uri}: folder {db.parent} is missing or not writable")
    elif uri.startswith(("http://", "https://")):
        # Fail fast instead of MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # any failure here means the store is unusable
        raise TrackingError(f"tracking store {uri} cannot be reached: {err}") from None
    return client


def _experiment_id(client: MlflowClient) -> str:
    name = experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        # Keep artifacts beside the store, not in whatever folder the stage happened to run in.
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another stage
        return client.get_experiment_by_name(name).experiment_id


def _parent_run_id(client: MlflowClient, exp_id: str) -> str:
    name = dvc_experiment()
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
    """One nested MLflow run. All methods are no-ops in a disabled run (tracking not required)."""

    def __init__(self, client: MlflowClient | None, run_id: str | None, parent_id: str | None):
        self.client, self.run_id, self.parent_id = client, run_id, parent_id

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled or not params:
            return
        items = [Param(k, _as_param(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        import time

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + _BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled and tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(path).exists():
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    @contextlib.contextmanager
    def child(self, name: str, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None) -> Iterator["StageRun"]:
        """A run nested under this one (e.g. one Optuna trial under ``tune``)."""
        if not self.enabled:
            yield StageRun(None, None, None)
            return
        exp_id = self.client.get_run(self.run_id).info.experiment_id
        run = self.client.create_run(exp_id, run_name=name, tags={
            "mlflow.parentRunId": self.run_id, KIND_TAG: "child",
            **{k: str(v) for k, v in (tags or {}).items()}})
        handle = StageRun(self.client, run.info.run_id, self.run_id)
        handle.log_params(params or {})
        try:
            yield handle
        except BaseException:
            self.client.set_terminated(run.info.run_id, "FAILED")
            raise
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def log_to_parent(self, metrics: dict[str, float] | None = None,
                      artifacts: list[str | Path] = (), tags: dict[str, Any] | None = None) -> None:
        """Attach results to the experiment's parent run (used by the report stage)."""
        if not self.enabled:
            return
        parent = StageRun(self.client, self.parent_id, None)
        parent.log_metrics(metrics or {})
        parent.set_tags(tags or {})
        for a in artifacts:
            parent.log_artifact(a)


def check_tracking(required: bool) -> bool:
    """Check at start-up that the store is usable. Raises when required, else warns.

    Returns whether tracking is enabled.
    """
    try:
        _client()
        return True
    except TrackingError as err:
        if required:
            raise TrackingError(f"{err}\n(set tracking.required: false to train without tracking, "
                                "or fix MLFLOW_TRACKING_URI)") from None
        warnings.warn(f"{err}; going on without MLflow tracking (tracking.required is false)")
        return False


@contextlib.contextmanager
def stage_run(stage: str, params: Params | None = None, *, variant: str | None = None,
              tags: dict[str, Any] | None = None, extra_params: dict[str, Any] | None = None,
              required: bool | None = None) -> Iterator[StageRun]:
    """Open the nested run ``stage`` (``stage@variant``) under the experiment's parent run.

    Logs ``params`` flattened with dotted keys plus tags for git commit, stage and variant. The run
    ends FINISHED, or FAILED when the body raises (the exception propagates).
    """
    if required is None:
        required = params.tracking.required if params is not None else True
    if not check_tracking(required):
        yield StageRun(None, None, None)
        return
    client = _client()
    exp_id = _experiment_id(client)
    parent_id = _parent_run_id(client, exp_id)
    name = f"{stage}@{variant}" if variant else stage
    run = client.create_run(exp_id, run_name=name, tags={
        "mlflow.parentRunId": parent_id, KIND_TAG: "stage", "stage": stage,
        "variant": variant or "", "git_commit": git_commit(), PARENT_TAG + ".name": dvc_experiment(),
        **{k: str(v) for k, v in (tags or {}).items()}})
    handle = StageRun(client, run.info.run_id, parent_id)
    # The ablations table is the same for every run; a variant run logs its merged params instead.
    flat = {k: v for k, v in flatten(params).items() if not k.startswith("ablations.")} \
        if params is not None else {}
    flat.update(extra_params or {})
    handle.log_params(flat)
    try:
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


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


if __name__ == "__main__":  # `python -m pfcvr.tracking` prints where runs go
    print(f"tracking URI: {tracking_uri()}\nexperiment:   {experiment_name()}\n"
          f"parent run:   {dvc_experiment()}", file=sys.stdout)
