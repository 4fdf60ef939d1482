"""What the MLflow UI opens on: the ablation, with its numbers in columns (no mlflow import here).

The functions take the MlflowClient that pfcvr.tracking made. What they write, and why:

- the experiment tag ``mlflow.experimentKind = custom_model_development`` ("Machine learning"):
  the kind MLflow's UI uses to choose between its model-training pages and its GenAI pages
  (traces, token charts). MLflow 3.17's own UI lets the global GenAI / Model training switch
  (default GenAI, remembered by the browser) take precedence over the tag, so the URLs that
  ``make ui`` prints carry ``workflowType=machine_learning`` as well (:func:`runs_url`);
- the experiment tag ``mlflow.sharedViewState.ablation``: a saved runs-table view (MLflow's
  "shared view", opened by ``?viewStateShareKey=ablation``) that lists the finished
  ``evaluate@<variant>`` runs flat, best R1 first, with the columns R1, R5, R10, mAP, mINP, the
  DVC experiment and the logged model, so the ablation is visible without a click;
- ``mlflow.note.content`` (the description) of the experiment and of each parent run: the
  ablation table of reports/ablation.md (:func:`experiment_note`, :func:`fit_note`).

:func:`latest_variant_runs` finds the runs that ``make ui``'s compare URL puts side by side.
"""
from __future__ import annotations

import json
import urllib.parse
from typing import Any, Sequence

from pfcvr.metrics import METRIC_NAMES   # the columns: each evaluate@ run logs them
from pfcvr.tracking.state import KIND_TAG, PARENT_TAG

NOTE_TAG = "mlflow.note.content"                 # the description MLflow's UI shows
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"       # shown as "Machine learning" by the UI
VIEW_KEY = "ablation"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
RUN_NOTE_MAX = 8000                              # MLflow's limit for a run tag value
EXPERIMENT_NOTE_MAX = 20000                      # ... and for an experiment tag value
EVALUATE_PREFIX = "evaluate@"


def ablation_view() -> dict[str, Any]:
    """The saved runs-table view (MLflow's shared view state: search facets + table state).

    The filter makes MLflow list the matching runs flat instead of under collapsed parents (a
    table sorted by a metric is not nested), and ``selectedColumns`` uses MLflow's column keys
    (``metrics.`R1```, ``tags.`name```, ``attributes.`Models```).
    """
    metrics = [f"metrics.`{m}`" for m in METRIC_NAMES]
    columns = [*metrics, f"tags.`{PARENT_TAG}.name`", "attributes.`Models`"]
    return {"searchFilter": f"attributes.run_name LIKE '{EVALUATE_PREFIX}%' and "
                            "attributes.status = 'FINISHED'",
            "orderByKey": "metrics.`R1`", "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": columns}


def prepare_experiment(client, experiment) -> None:
    """Give the experiment the training kind and the ablation view, if it lacks them.

    A kind that a user chose explicitly (not empty and not one the UI inferred, ``*_inferred`` /
    ``no_inferred_type``) is left alone. Writes nothing when both are already there.
    """
    tags = dict(experiment.tags or {})
    kind = tags.get(EXPERIMENT_KIND_TAG, "")
    if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    view = json.dumps(ablation_view(), sort_keys=True)
    if tags.get(VIEW_TAG) != view:
        client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, view)


def fit_note(text: str, limit: int = RUN_NOTE_MAX) -> str:
    """``text`` cut at a line end to at most ``limit`` characters (MLflow refuses longer tag
    values), with a line saying where the whole text is."""
    if len(text) <= limit:
        return text
    tail = "\n\n... (cut here: the whole report is the artifact ablation.md of the parent run)"
    head = text[: limit - len(tail)]
    return head[: head.rfind("\n") + 1 or len(head)].rstrip() + tail


def code_span(text: str) -> str:
    """``text`` as a Markdown code span, whatever backticks it holds (a DVC experiment name is
    data): fenced by one more backtick than its longest run of them."""
    run, best = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    fence = "`" * (best + 1)
    pad = " " if best else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def experiment_note(markdown: str, dvc_exp: str, commit: str) -> str:
    """The experiment's description: the latest ablation report, then where it comes from (the
    UI shows the first lines of a description until it is expanded: the report's title)."""
    foot = (f"\n\n---\n_The latest ablation: DVC experiment {code_span(dvc_exp)}, git {commit[:10]}. "
            "Each parent run (one per DVC experiment) holds its own report._\n")
    return fit_note(markdown.rstrip(), EXPERIMENT_NOTE_MAX - len(foot)) + foot


def latest_variant_runs(client, exp_id: str) -> list:
    """The finished ``evaluate@<variant>`` runs of the DVC experiment that evaluated last: the
    newest finished run of each variant under the parent of the newest one, ordered by variant
    name. ``[]`` when there is none."""
    filt = (f"attributes.run_name LIKE '{EVALUATE_PREFIX}%' and attributes.status = 'FINISHED' "
            f"and tags.`{KIND_TAG}` = 'stage'")
    runs = client.search_runs([exp_id], filter_string=filt, max_results=1000,
                              order_by=["attributes.start_time DESC"])
    if not runs:
        return []
    parent = runs[0].data.tags.get("mlflow.parentRunId")
    newest: dict[str, Any] = {}
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") == parent:
            newest.setdefault(r.info.run_name, r)
    return [newest[name] for name in sorted(newest)]


def runs_url(base: str, exp_id: str, view: bool = True) -> str:
    """The experiment's runs page in the model-training pages (with the ablation view)."""
    query = {"workflowType": "machine_learning"}
    if view:
        query["viewStateShareKey"] = VIEW_KEY
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?{urllib.parse.urlencode(query)}"


def compare_url(base: str, exp_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare page of ``run_ids`` (one column per run)."""
    q = urllib.parse.quote
    return (f"{base.rstrip('/')}/#/compare-runs?runs={q(json.dumps(list(run_ids)))}"
            f"&experiments={q(json.dumps([exp_id]))}")
