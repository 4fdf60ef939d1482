"""What the MLflow UI opens on (pfcvr.tracking.views), on real sqlite stores: the experiment's kind
and ablation view, the descriptions, the headline metrics, the URLs `make ui` prints, and pruned
Optuna trials that end FINISHED. The browser side is in tests/test_pipeline.py (slow)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
import yaml

from pfcvr import tracking
from pfcvr.config import load_params, read_raw, set_dotted
from pfcvr.tracking import stage_run, views
from pfcvr.tracking.__main__ import main as tracking_main


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "t15")
    monkeypatch.setenv("DVC_EXP_NAME", "workspace")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path


def _experiment():
    mc = tracking._client()
    return mc, mc.get_experiment(tracking._experiment_id(mc))


def test_experiment_opens_as_model_training_with_the_ablation_view(store):
    with stage_run("prepare", required=True):
        pass
    mc, exp = _experiment()
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.ablation"])
    assert view["selectedColumns"][:5] == ["metrics.`R1`", "metrics.`R5`", "metrics.`R10`",
                                           "metrics.`mAP`", "metrics.`mINP`"]
    assert view["orderByKey"] == "metrics.`R1`" and view["orderByAsc"] is False
    assert view["searchFilter"] == ("attributes.run_name LIKE 'evaluate@%' and "
                                    "attributes.status = 'FINISHED'")
    # a kind the UI only inferred is replaced; one a user chose is kept
    mc.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "genai_development_inferred")
    assert _experiment()[1].tags["mlflow.experimentKind"] == "custom_model_development"
    mc.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "genai_development")
    assert _experiment()[1].tags["mlflow.experimentKind"] == "genai_development"


def test_report_publishes_the_table_to_the_parent_and_the_experiment(store):
    table = "# PFCVR ablation study\n\n| variant | R1 |\n|---|---|\n| `full` | 9.1 |\n"
    with stage_run("report", required=True) as run:
        run.log_to_parent(metrics={"full/R1": 9.1}, tags={"mlflow.note.content": table})
    mc, exp = _experiment()
    parent = mc.get_run(run.parent_id)
    assert parent.data.tags["mlflow.note.content"] == table
    note = exp.tags["mlflow.note.content"]
    assert note.startswith(table.rstrip()) and "DVC experiment `workspace`" in note
    # too long for MLflow's tag limits: cut at a line end, saying where the whole report is
    long = "".join(f"| `v{i}` | {i}.0 |\n" for i in range(2000))
    with stage_run("report", required=True) as run:
        run.log_to_parent(tags={"mlflow.note.content": long})
    mc, exp = _experiment()
    cut = mc.get_run(run.parent_id).data.tags["mlflow.note.content"]
    assert len(cut) <= 8000 and cut.endswith("artifact ablation.md of the parent run)")
    assert cut.split("\n\n...")[0].endswith(" |")
    assert len(exp.tags["mlflow.note.content"]) <= 20000


def test_fit_note_keeps_short_text_and_cuts_at_a_line_end():
    assert views.fit_note("a\nb", 10) == "a\nb"
    cut = views.fit_note("line one\n" * 50, 120)
    assert len(cut) <= 120 and cut.startswith("line one\nline one") and "(cut here" in cut


def test_headline_metrics_are_the_rounded_best_mean_over_seeds(tmp_path):
    from pfcvr.pipeline.evaluate import EvaluatedModel, VariantEvaluation

    def result(r1, m_ap):
        scal = {"R1": r1, "R5": 50.0, "R10": 70.0, "mAP": m_ap, "mINP": 5.0,
                "n_queries": 10.0, "n_gallery": 8.0}
        return SimpleNamespace(scalars=lambda: dict(scal), part_fusion_note=None)

    models = [EvaluatedModel(0, "best", tmp_path, {}, result(10.004, 20.0)),
              EvaluatedModel(0, "final", tmp_path, {}, result(1.0, 1.0)),
              EvaluatedModel(1, "best", tmp_path, {}, result(11.0, 21.111)),
              EvaluatedModel(1, "final", tmp_path, {}, result(2.0, 2.0))]
    ev = VariantEvaluation("full", [0, 1], 0.0, models, split=None)
    m = ev.mlflow_metrics()
    assert m["R1"] == 10.5 and m["mAP"] == 20.56 and m["mINP"] == 5.0
    assert m["best/R1_mean"] == pytest.approx(10.502) and m["best/seed1/mAP"] == 21.111
    assert ev.published_model().seed == 0 and ev.published_model().checkpoint == "best"


def _evaluate(name: str, r1: float, status_error: bool = False) -> str:
    try:
        with stage_run("evaluate", variant=name, required=True) as run:
            run.log_metrics({"R1": r1, "mAP": r1 / 2})
            if status_error:
                raise RuntimeError("boom")
    except RuntimeError:
        pass
    return run.run_id


def test_ui_urls_compare_the_latest_dvc_experiments_variants(store, monkeypatch, capsys):
    _evaluate("full", 10.0)
    _evaluate("no_part", 9.0)
    monkeypatch.setenv("DVC_EXP_NAME", "mask03")
    full = _evaluate("full", 12.0)
    _evaluate("no_part", 8.0)                       # replaced by the rerun below
    no_part = _evaluate("no_part", 8.5)
    _evaluate("random_mim", 1.0, status_error=True)  # failed: not compared
    urls = tracking.ui_urls("http://127.0.0.1:5000/")
    exp_id = _experiment()[1].experiment_id
    assert urls["experiment"] == "mask03"
    assert urls["variants"] == ["evaluate@full", "evaluate@no_part"]
    assert urls["runs"] == (f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?"
                            "workflowType=machine_learning&viewStateShareKey=ablation")
    assert urls["compare"] == (
        f"http://127.0.0.1:5000/#/compare-runs?runs=%5B%22{full}%22%2C%20%22{no_part}%22%5D"
        f"&experiments=%5B%22{exp_id}%22%5D")
    assert tracking_main(["--ui-urls", "http://127.0.0.1:5000"]) == 0
    out = capsys.readouterr().out
    assert urls["runs"] in out and urls["compare"] in out and "mask03" in out


def test_ui_urls_without_variant_runs_say_what_to_do(store, capsys):
    with stage_run("prepare", required=True):
        pass
    assert tracking.ui_urls("http://h:1")["compare"] is None
    assert tracking_main(["--ui-urls", "http://h:1"]) == 0
    assert "no finished evaluate@ run yet" in capsys.readouterr().out


def test_child_outcome_sets_status_and_tags(store):
    from pfcvr.tuning.study import trial_outcome

    with stage_run("tune", required=True) as run:
        with run.child("trial 0", outcome=trial_outcome):
            pass
        with pytest.raises(optuna.TrialPruned):
            with run.child("trial 1", outcome=trial_outcome):
                raise optuna.TrialPruned("val R1 low")
        with pytest.raises(ValueError):
            with run.child("trial 2", outcome=trial_outcome):
                raise ValueError("diverged")
    got = {r.info.run_name: (r.info.status, r.data.tags.get("optuna.state"))
           for r in tracking._client().search_runs(
               [_experiment()[1].experiment_id], "tags.`pfcvr.kind` = 'child'")}
    assert got == {"trial 0": ("FINISHED", "COMPLETE"), "trial 1": ("FINISHED", "PRUNED"),
                   "trial 2": ("FAILED", "FAIL")}


def test_pruned_trials_of_a_study_end_finished(store, tmp_path, monkeypatch):
    from pfcvr.tuning.study import run_study

    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    raw = read_raw("params.yaml")
    for k, v in {"tune.n_trials": 3, "tune.epochs": 2}.items():
        set_dotted(raw, k, v)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    calls = []

    def train_fn(tp, out_dir, on_epoch):   # the second trial is pruned by the trainer
        calls.append(1)
        if len(calls) == 2:
            raise optuna.TrialPruned("pruned at epoch 1")
        on_epoch({"epoch": 1, "val_R1": 40.0, "val_mAP": 20.0, "loss": 1.0})
        return SimpleNamespace(best={"R1": 40.0})

    with stage_run("tune", required=True) as run:
        study = run_study(load_params(path), path, tmp_path, train_fn=train_fn, run=run,
                          progress=False)
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") == 1 and states.count("COMPLETE") == 2
    trials = tracking._client().search_runs([_experiment()[1].experiment_id],
                                            "tags.`pfcvr.kind` = 'child'")
    assert sorted((r.info.status, r.data.tags["optuna.state"]) for r in trials) == [
        ("FINISHED", "COMPLETE"), ("FINISHED", "COMPLETE"), ("FINISHED", "PRUNED")]
