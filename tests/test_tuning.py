"""Optuna study mechanics on a real sqlite storage: resume, pruning, failures, the command line."""
from types import SimpleNamespace

import optuna
import pytest
import yaml

from pfcvr.config import load_params, parse_params, read_raw, set_dotted
from pfcvr.tuning.study import (exp_run_command, redact, run_study, study_name, summarize,
                                trial_params)


def _copy_params(tmp_path, params_overrides):
    raw = read_raw("params.yaml")
    for k, v in params_overrides.items():
        set_dotted(raw, k, v)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def fake_training(fail_when=None):
    """A deterministic stand-in for train_model: val R1 rises with epochs and peaks at mask 0.6."""
    calls = []

    def train_fn(tp, out_dir, on_epoch):
        ratio = tp.train.mask_ratio
        calls.append(ratio)
        if fail_when and fail_when(tp):
            raise RuntimeError("diverged")
        best = None
        for epoch in range(1, tp.train.epochs + 1):
            r1 = 50 - 100 * (ratio - 0.6) ** 2 + epoch
            on_epoch({"epoch": epoch, "val_R1": r1, "val_mAP": r1 / 2, "loss": 1.0 / epoch})
            best = {"R1": r1} if best is None or r1 > best["R1"] else best
        return SimpleNamespace(best=best)
    return train_fn, calls


def test_study_resumes_and_counts_finished_trials(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    ov = {"tune.n_trials": 4, "tune.epochs": 3}
    path = _copy_params(tmp_path, ov)
    params = load_params(path)
    fn, calls = fake_training()
    study = run_study(params, path, tmp_path, train_fn=fn, progress=False)
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                   optuna.trial.TrialState.PRUNED)]
    assert len(done) == 4 and len(calls) == 4
    # A second run of the same setup resumes the finished study and trains nothing.
    study2 = run_study(params, path, tmp_path, train_fn=fn, progress=False)
    assert len(calls) == 4 and len(study2.trials) == 4
    s = summarize(study2)
    assert s["n_complete"] + s["n_pruned"] == 4
    assert s["command"].startswith("dvc exp run -S ")
    best_ratio = s["best_params"]["train.mask_ratio"]
    assert s["best_value"] == pytest.approx(50 - 100 * (best_ratio - 0.6) ** 2 + 3)


def test_failing_trial_is_recorded_and_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    path = _copy_params(tmp_path, {"tune.n_trials": 3, "tune.epochs": 2})
    fn, calls = fake_training(fail_when=lambda tp: len(calls) == 1)
    study = run_study(load_params(path), path, tmp_path, train_fn=fn, progress=False)
    s = summarize(study)
    assert s["n_failed"] == 1 and s["n_complete"] + s["n_pruned"] == 3


def test_trial_params_apply_point_and_epochs():
    tp = trial_params(read_raw("params.yaml"), {"train.weights.mim": 0.25, "train.mask_ratio": 0.5}, 2)
    assert tp.train.weights.mim == 0.25 and tp.train.mask_ratio == 0.5 and tp.train.epochs == 2


def test_study_name_depends_on_fixed_setup_only():
    a = load_params("params.yaml")
    b = load_params("params.yaml", overrides={"tune.n_trials": 99, "report.seeds": [5]})
    c = load_params("params.yaml", overrides={"train.lr": 5e-4})
    assert study_name(a) == study_name(b) != study_name(c)


def test_command_and_redaction():
    assert exp_run_command({"train.mask_ratio": 0.31234, "train.weights.mim": 1.0}) == \
        "dvc exp run -S train.mask_ratio=0.3123 -S train.weights.mim=1"
    assert redact("postgresql://user:secret@db:5432/optuna") == "postgresql://user:***@db:5432/optuna"


def test_best_markdown():
    from pfcvr.tuning.study import best_markdown

    summary = {"study": "s", "n_trials": 3, "n_complete": 2, "n_pruned": 1, "n_failed": 0,
               "objective": "val R1 (best epoch)", "best_value": 51.234, "best_trial": 1,
               "best_params": {"train.mask_ratio": 0.61234, "model.embed_dim": 64},
               "command": "dvc exp run -S train.mask_ratio=0.6123 -S model.embed_dim=64",
               "importance": {"train.mask_ratio": 0.75, "model.embed_dim": 0.25}}
    assert best_markdown(summary) == "\n".join([
        "# Tuning result", "",
        "Study `s`: 3 trials (2 complete, 1 pruned, 0 failed). Objective: val R1 (best epoch) on "
        "the val split.", "",
        "Best val R1: **51.23** (trial 1)", "", "| parameter | value |", "|---|---|",
        "| `train.mask_ratio` | 0.6123 |", "| `model.embed_dim` | 64 |", "", "Apply it:", "",
        "```", "dvc exp run -S train.mask_ratio=0.6123 -S model.embed_dim=64", "```", "",
        "Parameter importance (fANOVA): `train.mask_ratio` 0.75, `model.embed_dim` 0.25", ""])
    empty = {k: summary[k] for k in ("study", "n_trials", "n_complete", "n_pruned", "n_failed",
                                     "objective")}
    assert "Best val R1" not in best_markdown(empty)


def test_stage_honours_params_and_writes_reports(tmp_path, monkeypatch):
    """`python -m stages.tune --params other.yaml` in-process, with training replaced by the fake."""
    import json

    import pfcvr.data.dataset
    import pfcvr.engine.train
    from pfcvr import tracking
    from stages import tune as stage

    path = _copy_params(tmp_path, {"tune.n_trials": 3, "tune.epochs": 2})
    path = path.rename(tmp_path / "other.yaml")
    fn, calls = fake_training()
    empty_split = SimpleNamespace(split="train", records=[], images_root=tmp_path)
    monkeypatch.setattr(pfcvr.data.dataset, "load_split", lambda *a, **k: empty_split)
    monkeypatch.setattr(pfcvr.engine.train, "train_model",
                        lambda tp, tr, val, out, seed, run, progress, on_epoch: fn(tp, out, on_epoch))
    monkeypatch.chdir(tmp_path)
    for k, v in {"OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}", "DVC_ROOT": str(tmp_path),
                 "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "DVC_EXP_NAME": "tune-test"}.items():
        monkeypatch.setenv(k, v)
    summary = stage.main(["--params", str(path)])
    assert len(calls) == 3 and summary["n_complete"] + summary["n_pruned"] == 3
    stored = json.loads((tmp_path / "reports/tune/summary.json").read_text())
    assert stored["best_value"] == summary["best_value"]
    assert stored["storage"] == "sqlite:///<repo>/optuna.db"
    assert yaml.safe_load((tmp_path / "reports/tune/best_params.yaml").read_text()) == \
        summary["best_params"]
    assert (tmp_path / "reports/tune/best.md").read_text().startswith("# Tuning result")
    for fig in ("tune_history.png", "tune_importance.png"):
        assert (tmp_path / "reports/figures" / fig).read_bytes()[:4] == b"\x89PNG"
    (run,) = tracking.stage_runs("tune")
    assert run["status"] == "FINISHED" and run["metrics"]["best_value"] == summary["best_value"]
    client = tracking._client()
    trials = client.search_runs([client.get_run(run["run_id"]).info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{run['run_id']}'")
    assert sorted(t.info.run_name for t in trials) == ["trial 0", "trial 1", "trial 2"]


# ----------------------------------------------------------------------------------------------
# Issue 12: a failing study is an error, not a success; the study name covers every input
# ----------------------------------------------------------------------------------------------

def test_study_whose_trials_all_fail_stops_after_three_and_is_kept(tmp_path, monkeypatch):
    from pfcvr.tuning.study import MAX_CONSECUTIVE_FAILURES, TuneError

    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    path = _copy_params(tmp_path, {"tune.n_trials": 4, "tune.epochs": 2, "tune.timeout": 3600})
    fn, calls = fake_training(fail_when=lambda tp: True)
    params = load_params(path)
    with pytest.raises(TuneError) as caught:
        run_study(params, path, tmp_path, train_fn=fn, progress=False)
    assert MAX_CONSECUTIVE_FAILURES == 3 and len(calls) == 3       # not retried until the timeout
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("3 trials in a row failed, the last: trial 2 (train.")
    assert "): RuntimeError: diverged; fix the cause (tune.space or the train/model params)" in message
    assert f"the study {study_name(params)} is kept in sqlite:///{tmp_path}/optuna.db" in message
    kept = optuna.load_study(study_name=study_name(params),
                             storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in kept.trials] == ["FAIL", "FAIL", "FAIL"]


def test_study_with_no_complete_trial_at_timeout_is_an_error(tmp_path, monkeypatch):
    from pfcvr.tuning.study import TuneError

    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    path = _copy_params(tmp_path, {"tune.n_trials": 4, "tune.epochs": 2, "tune.timeout": 0.001})
    fn, calls = fake_training(fail_when=lambda tp: True)
    with pytest.raises(TuneError, match=r"^no trial completed within tune.timeout=0.001 s; the last "
                                        r"failure: trial 0 \(.*\): RuntimeError: diverged"):
        run_study(load_params(path), path, tmp_path, train_fn=fn, progress=False)
    assert len(calls) == 1


def test_failures_between_successes_do_not_stop_the_study(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    path = _copy_params(tmp_path, {"tune.n_trials": 3, "tune.epochs": 2})
    fn, calls = fake_training(fail_when=lambda tp: len(calls) in (1, 2, 4, 5))   # 2 in a row, twice
    s = summarize(run_study(load_params(path), path, tmp_path, train_fn=fn, progress=False))
    assert s["n_failed"] == 4 and s["n_complete"] + s["n_pruned"] == 3


def test_study_name_covers_data_code_and_not_the_searched_values():
    a = load_params("params.yaml")
    searched = load_params("params.yaml", overrides={"train.weights.mlm": 0.9})   # in tune.space
    cosmetic = load_params("params.yaml", overrides={"train.log_every": 7, "eval.topk_queries": 2})
    assert study_name(a) == study_name(searched) == study_name(cosmetic)
    assert study_name(a, inputs="data+code v1") != study_name(a, inputs="data+code v2")
    assert study_name(load_params("params.yaml", overrides={"tune.epochs": 3})) != study_name(a)


def test_study_name_covers_the_space_by_dotted_name():
    a = load_params("params.yaml")
    narrower = load_params("params.yaml", overrides={"tune.space.train.mask_ratio": [0.4, 0.9]})
    more = load_params("params.yaml", overrides={"tune.space.train.lr": [1e-4, 1e-3]})
    names = {study_name(a), study_name(narrower), study_name(more)}
    assert len(names) == 3
    # the same ranges with the same names, whatever the order of the tree: the same study
    raw = read_raw("params.yaml")
    space = raw["tune"]["space"]["train"]
    raw["tune"]["space"]["train"] = dict(reversed(list(space.items())))
    assert study_name(parse_params(raw)) == study_name(a)


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    from tests.support.train_helpers import make_project

    root = tmp_path_factory.mktemp("tune_project")
    make_project(root, {"tune.n_trials": 4, "tune.epochs": 1, "tune.timeout": 3600,
                        "tune.space": {"train": {"batch_size": [200, 300]}}})
    return root


def test_the_issue_example_batch_larger_than_the_train_split(tiny_project, tmp_path, monkeypatch,
                                                            capsys):
    """`tune.space: {train: {batch_size: [200, 300]}}` on a train split of fewer samples: every
    trial fails the same way; the stage exits 1 with one line, writes no best_params.yaml."""
    import functools

    from pfcvr.runtime.stage import run_stage
    from stages import tune as stage

    monkeypatch.chdir(tiny_project)
    for k, v in {"OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}",
                 "DVC_ROOT": str(tiny_project), "DVC_EXP_NAME": "tune-fails",
                 "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}.items():
        monkeypatch.setenv(k, v)
    code = run_stage("tune", functools.partial(stage.main, ["--params", "params.yaml"]))
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tune:")]
    assert len(err) == 1
    assert err[0].startswith("tune: error: 3 trials in a row failed, the last: trial 2 "
                             "(train.batch_size=")
    assert "fewer than one batch of train.batch_size=" in err[0]
    assert "lower train.batch_size" in err[0]
    assert not (tiny_project / "reports/tune/best_params.yaml").exists()
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(names) == 1 and names[0].startswith("pfcvr-tune-")       # the study is kept


def test_dotted_space_entry_is_named():
    """tune.space is the params tree, what `dvc exp run -S '+tune.space.train.batch_size=[200,300]'`
    writes; a dotted key (the form of older params.yaml files) is named with the tree form."""
    from pfcvr.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_params("params.yaml", overrides={"tune.space": {"train.batch_size": [200, 300]}})
    assert str(caught.value) == (
        "tune.space.train.batch_size: a dotted key; write tune.space as the params tree, "
        "`train: {batch_size: [low, high]}`, the form that "
        "`dvc exp run -S tune.space.train.batch_size=[low,high]` sets")
    ok = load_params("params.yaml", overrides={"tune.space": {"train": {"batch_size": [200, 300]}}})
    assert ok.tune.ranges["train.batch_size"] == [200.0, 300.0]
    assert ok.tune.ranges["train.mask_ratio"] == [0.3, 0.9]   # a mapping override merges


def test_unwritable_report_folder_stops_tune_before_any_trial(tiny_project, tmp_path, monkeypatch):
    from pfcvr.pipeline.tune import tune
    from pfcvr.runtime.storage import WriteError

    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    blocker = tmp_path / "reports"
    blocker.write_text("a file in the way")
    params = load_params(tiny_project / "params.yaml")
    with pytest.raises(WriteError, match=r"^output folder .*reports/tune cannot be created: .*"
                                         r"reports is a file, not a folder; move or delete it$"):
        tune(params, tiny_project / "params.yaml", tmp_path, prepared=tiny_project / "data/prepared",
             parts=tiny_project / "data/parts/parts.json", out=blocker / "tune",
             history_figure=tmp_path / "h.png", importance_figure=tmp_path / "i.png")
    assert not (tmp_path / "optuna.db").exists()
