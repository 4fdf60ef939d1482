"""Optuna study mechanics on a real sqlite storage: resume, pruning, failures, the command line."""
from types import SimpleNamespace

import optuna
import pytest
import yaml

from pfcvr.config import load_params, read_raw, set_dotted
from pfcvr.tuning import exp_run_command, redact, run_study, study_name, summarize, trial_params


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

    def train_fn(tp, out_dir, on_epoch, trial_run):
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
