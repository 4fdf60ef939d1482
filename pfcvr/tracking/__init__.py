"""The MLflow facade: the only package that imports mlflow.

    with stage_run("train", params, variant="full") as run:
        run.log_metrics({...}); run.log_artifact(path)

Conventions (docs/tracking.md; where and how: pfcvr.tracking.client):
- store ``sqlite:///<repo root>/mlflow.db`` (``MLFLOW_TRACKING_URI`` overrides), experiment
  ``pfcvr`` (``MLFLOW_EXPERIMENT_NAME`` overrides);
- one parent run per DVC experiment (``DVC_EXP_NAME``, or ``workspace``), found by tag;
- one nested run per stage and variant (``prepare``, ``train@full``, ``evaluate@no_part``, ...),
  with every parameter flattened to dotted keys and tags for git commit, variant and seed.

What the UI shows is the ablation (pfcvr.tracking.views): the experiment is marked as model
training and carries the shared view ``ablation`` (the ``evaluate@`` runs with R1 / mAP / mINP
columns) and, like each parent run, the latest ablation table as its description;
``python -m pfcvr.tracking --ui-urls URL`` prints the pages to open. Each variant's best model is
a registered pyfunc (:func:`pfcvr.tracking.model.log_model`, imported only by the evaluate
stage, so that no other stage depends on the model code).

What the store shows stays true when several processes share it or get killed:
- creating the store, the experiment and the parent run happens under one file lock, and a new
  store is built aside and renamed into place (pfcvr.runtime.sqlite_store), so processes starting at
  the same instant create one of each and never see a half-built store;
- SIGTERM ends a stage's run KILLED and the process exits 143; a run left RUNNING by a process
  that is gone (SIGKILL, a reboot) is closed KILLED by the next stage of that DVC experiment;
  when a stage ends, its parent run takes the status of its stages (pfcvr.tracking.state);
- a store error at start-up is one line (with ``tracking.required: false`` a warning, and the
  stage goes on untracked); after start-up a failing store never stops the work: the calls wait
  in an outbox and are retried later, with one warning;
- a store moved to another folder keeps its artifacts beside it (mlartifacts/).
"""
from __future__ import annotations

from pfcvr.runtime.sqlite_store import TrackingError
from pfcvr.tracking.client import (EXPERIMENT, check_tracking, dvc_experiment, experiment_name,
                                   repo_root, tracking_uri)
from pfcvr.tracking.runs import (StageRun, _client, _experiment_id, _parent_run_id,
                                 settle_experiment, stage_run, stage_runs, ui_urls)
from pfcvr.tracking.state import KIND_TAG, OWNER_TAG, PARENT_TAG

__all__ = ["TrackingError", "StageRun", "stage_run", "stage_runs", "check_tracking",
           "settle_experiment", "ui_urls", "tracking_uri", "experiment_name", "dvc_experiment",
           "repo_root", "EXPERIMENT", "PARENT_TAG", "KIND_TAG", "OWNER_TAG"]
