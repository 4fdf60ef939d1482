"""One MLflow run per stage: :func:`stage_run` opens the nested run of a stage (or
``stage@variant``) under its DVC experiment's parent run and yields a :class:`StageRun`; the
store-wide helpers :func:`settle_experiment`, :func:`stage_runs` and :func:`ui_urls`.

The conventions and guarantees are in the package docstring (:mod:`pfcvr.tracking`); a model is
logged by :func:`pfcvr.tracking.model.log_model`, which only the evaluate stage imports.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pfcvr.config import Params, flatten
from pfcvr.runtime.process import owner_token
from pfcvr.runtime.sqlite_store import TrackingError, hide_secret, redact_uri, store_lock
from pfcvr.tracking import views
from pfcvr.tracking.client import (CLONE_TAG, client, clone_id, dvc_experiment, experiment_id,
                                   explain_server, git_commit, is_server, parent_run_id,
                                   tracking_uri, unavailable)
from pfcvr.tracking.state import (KIND_TAG, OWNER_TAG, PARENT_TAG, Outbox, Terminated,
                                  close_stale, find_runs, note, now_ms, one_line, quiet,
                                  settle_parent, sigterm_raises, status_of)

_PARAM_VALUE_MAX = 6000
_BATCH = 900                         # MLflow accepts at most 1000 metrics per batch
# The names the tests and older callers use for the store helpers of pfcvr.tracking.client.
_client, _experiment_id, _parent_run_id = client, experiment_id, parent_run_id
# ``outcome`` of :meth:`StageRun.child`: the exception that ended the block (None: it ended
# normally) -> (status, or None for the default; tags to set on the run).
Outcome = Callable[[BaseException | None], tuple[str | None, dict[str, Any]]]


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
              tags: dict[str, Any] | None = None,
              outcome: Outcome | None = None) -> Iterator["StageRun"]:
        """A run nested under this one (e.g. one Optuna trial under ``tune``); it ends FINISHED,
        KILLED (SIGTERM, Ctrl-C) or FAILED (the exception propagates).

        ``outcome(err)`` (``err`` None when the block ended normally) may choose another status
        and tags: a pruned Optuna trial ends FINISHED with tag ``optuna.state=PRUNED``, not
        FAILED (pfcvr.tuning.study). The exception propagates whatever the status.
        """
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
        ended: BaseException | None = None
        try:
            yield handle
        except BaseException as err:
            ended = err
            raise
        finally:
            status, extra = (outcome(ended) if outcome else None) or (None, {})
            handle.set_tags(extra)
            handle._end(status or ("FINISHED" if ended is None else status_of(ended)))

    def call(self, what: str, fn: Callable[[], Any]) -> None:
        """Run the tracking call ``fn`` now, or queue it in the stage's outbox when the store
        fails (``what`` names it in the one warning); a no-op in a disabled run. For the calls
        that live elsewhere, e.g. :func:`pfcvr.tracking.model.log_model`."""
        if self.enabled:
            self._s.call(what, fn)

    @property
    def experiment_id(self) -> str | None:
        return self._s.exp_id if self._s else None

    @property
    def store_uri(self) -> str | None:
        """The URI of the store this run is in (with its password, for MLflow calls only)."""
        return self._s.secret_uri if self._s else None

    def log_to_parent(self, metrics: dict[str, float] | None = None,
                      artifacts: list[str | Path] = (), tags: dict[str, Any] | None = None) -> None:
        """Attach results to the experiment's parent run (used by the report stage). A
        description (tag ``mlflow.note.content``, the ablation table) becomes the experiment's
        description as well, with the DVC experiment it came from (pfcvr.tracking.views)."""
        if not self.enabled:
            return
        tags = dict(tags or {})
        note_text = tags.get(views.NOTE_TAG)
        if note_text is not None:
            tags[views.NOTE_TAG] = views.fit_note(str(note_text))
        parent = StageRun(self._s, self.parent_id, None)
        parent.log_metrics(metrics or {})
        parent.set_tags(tags)
        for a in artifacts:
            parent.log_artifact(a)
        if note_text is not None:
            text = views.experiment_note(str(note_text), dvc_experiment(), git_commit())
            self._s.call("describe the experiment", lambda: self.client.set_experiment_tag(
                self._s.exp_id, views.NOTE_TAG, text))


def _open(name: str, stage: str, variant: str | None, tags: dict[str, Any] | None) -> StageRun:
    """Create the store, experiment and parent if missing, close stale runs, open ``name``."""
    mc = _client()
    uri = tracking_uri()
    try:
        with store_lock(uri), quiet():
            exp_id = _experiment_id(mc)
            parent_id = _parent_run_id(mc, exp_id)
            closed = close_stale(mc, exp_id, parent_id, name)
            run = mc.create_run(exp_id, run_name=name, tags={
                "mlflow.parentRunId": parent_id, KIND_TAG: "stage", "stage": stage,
                "variant": variant or "", "git_commit": git_commit(),
                PARENT_TAG + ".name": dvc_experiment(), OWNER_TAG: owner_token(),
                **{k: str(v) for k, v in (tags or {}).items()}})
            settle_parent(mc, exp_id, parent_id)
    except TrackingError:
        raise
    except Exception as err:
        if is_server(uri):
            raise TrackingError(explain_server(uri, err)) from None
        raise TrackingError(f"tracking store {redact_uri(uri)} cannot be written: "
                            f"{hide_secret(one_line(err), uri)}") from None
    if closed:
        note(f"closed {len(closed)} stale RUNNING run(s) of experiment {dvc_experiment()} as "
              f"KILLED (their process is gone): {', '.join(sorted(closed))}")
    return StageRun(Outbox(mc, uri, exp_id), run.info.run_id, parent_id)


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
            unavailable(err, required)
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
    """Close stale runs and settle the parent of every DVC experiment in the store (in a server
    store: of this clone's DVC experiments); returns ``{DVC experiment: parent status}``
    (``python -m pfcvr.tracking --settle``)."""
    mc = _client()
    exp_id = _experiment_id(mc)
    mine = {CLONE_TAG: clone_id()} if is_server(tracking_uri()) else {}
    out = {}
    for p in find_runs(mc, exp_id, mine, where=f"tags.`{KIND_TAG}` = 'parent'"):
        name = p.data.tags.get(PARENT_TAG, "")
        with store_lock(tracking_uri()):
            close_stale(mc, exp_id, p.info.run_id)
            out[name] = settle_parent(mc, exp_id, p.info.run_id)
    return out


def stage_runs(stage_prefix: str | None = None) -> list[dict[str, Any]]:
    """Nested runs of the current DVC experiment's parent, newest first (for reports and tests)."""
    mc = _client()
    exp_id = _experiment_id(mc)
    parent_id = _parent_run_id(mc, exp_id)
    runs = mc.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
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


def ui_urls(base: str) -> dict[str, Any]:
    """The pages ``make ui`` prints for a UI served at ``base`` (e.g. http://127.0.0.1:5000).

    Returns ``{"runs": the experiment's runs page in the training view with the ablation view,
    "compare": the compare page of the latest DVC experiment's evaluate@ runs (None when there
    is none), "experiment": that DVC experiment, "variants": their run names}``. Writes the
    experiment's kind and view tags when an older store lacks them. Raises TrackingError.
    """
    mc = _client()
    exp_id = _experiment_id(mc)
    runs = views.latest_variant_runs(mc, exp_id)
    return {"runs": views.runs_url(base, exp_id),
            "compare": views.compare_url(base, exp_id, [r.info.run_id for r in runs])
            if runs else None,
            "experiment": runs[0].data.tags.get(PARENT_TAG + ".name", "") if runs else "",
            "variants": [r.info.run_name for r in runs]}
