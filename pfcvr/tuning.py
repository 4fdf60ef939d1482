"""The Optuna study: search `tune.space` for the best validation Rank-1 (never test).

- Sampler TPE (seeded by `tune.sampler_seed`), median pruner fed with each epoch's val Rank-1.
- Storage `sqlite:///<repo root>/optuna.db` (``OPTUNA_STORAGE`` overrides it, e.g. a PostgreSQL URL
  shared by several workers). The study name is derived from everything that is *not* searched, so
  an interrupted study with the same setup resumes, and a changed setup starts a new study.
- `tune.n_trials` counts finished (complete or pruned) trials over all workers and sessions;
  `tune.timeout` bounds one worker's wall time. A failing trial is recorded as failed and the study
  goes on.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import optuna

from pfcvr.config import Params, get_dotted, parse_params, read_raw, set_dotted, to_dict

DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def storage_url(root: Path) -> str:
    return os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{root / 'optuna.db'}"


def redact(url: str) -> str:
    """Hide a password in a database URL before it is printed or logged."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def study_name(params: Params) -> str:
    """``pfcvr-tune-<hash>`` of the fixed setup: all params except the searched keys and `tune`."""
    fixed = to_dict(params)
    for key in ("ablations", "tune", "report", "tracking"):
        fixed.pop(key, None)
    fixed["space"] = params.tune.space
    fixed["epochs"] = params.tune.epochs
    digest = hashlib.sha1(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()
    return f"pfcvr-tune-{digest[:10]}"


def suggest(trial: optuna.Trial, space: dict[str, list[float]], base: Params) -> dict[str, Any]:
    """Draw one point of the space; integers stay integers."""
    point = {}
    for key, (low, high) in space.items():
        if isinstance(get_dotted(base, key), int):
            point[key] = trial.suggest_int(key, int(low), int(high))
        else:
            point[key] = trial.suggest_float(key, float(low), float(high))
    return point


def trial_params(raw: dict, point: dict[str, Any], epochs: int) -> Params:
    """The base params with a point of the space and the tuning epochs applied (validated)."""
    merged = json.loads(json.dumps(raw))
    for key, value in point.items():
        set_dotted(merged, key, value)
    set_dotted(merged, "train.epochs", epochs)
    return parse_params(merged)


def exp_run_command(best: dict[str, Any]) -> str:
    """The `dvc exp run -S ...` line that applies ``best``."""
    args = " ".join(f"-S {shlex.quote(f'{k}={_fmt(v)}')}" for k, v in best.items())
    return f"dvc exp run {args}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_study(params: Params, params_path: str | Path, root: Path, *,
              train_fn: Callable[..., Any], run=None, progress: bool | None = None) -> optuna.Study:
    """Run (or resume) the study. ``train_fn(trial_params, out_dir, on_epoch, trial_run)`` trains
    one model and returns its TrainResult (best val metrics in ``.best``)."""
    raw = read_raw(params_path)
    cfg = params.tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(params), storage=storage_url(root), direction="maximize",
        load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    already = sum(t.state in DONE_STATES for t in study.trials)
    remaining = max(cfg.n_trials - already, 0)
    if progress is not False:
        print(f"study {study.study_name} at {redact(storage_url(root))}: {already} finished "
              f"trial(s), {remaining} to go", flush=True)
    if remaining == 0:
        return study
    work = Path(tempfile.mkdtemp(prefix="tune-", dir=_scratch(root)))

    def objective(trial: optuna.Trial) -> float:
        point = suggest(trial, cfg.space, params)
        tp = trial_params(raw, point, cfg.epochs)
        child = run.child(f"trial {trial.number}", params={**point, "trial": trial.number},
                          tags={"optuna.study": study.study_name}) if run else None
        with (child if child is not None else _null()) as trial_run:
            def on_epoch(row: dict) -> None:
                r1 = row.get("val_R1")
                if r1 is None:
                    return
                trial.report(float(r1), row["epoch"])
                if trial_run is not None:
                    trial_run.log_metrics({"val_R1": r1, "val_mAP": row.get("val_mAP") or 0.0,
                                           "loss": row["loss"]}, step=row["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"val R1 {r1:.1f} at epoch {row['epoch']}")

            out = work / f"trial_{trial.number}"
            try:
                result = train_fn(tp, out, on_epoch, trial_run)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            value = float(result.best["R1"]) if result.best else float("nan")
            if not math.isfinite(value):
                raise RuntimeError("the trial produced no validation Rank-1")
            if trial_run is not None:
                trial_run.log_metrics({"best_val_R1": value})
            return value

    try:
        study.optimize(objective, timeout=cfg.timeout, catch=(Exception,),
                       callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=DONE_STATES)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return study


def _scratch(root: Path) -> Path:
    path = root / ".cache" / "tune"
    path.mkdir(parents=True, exist_ok=True)
    return path


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Counts, best value/params and the command that applies them."""
    states = [t.state for t in study.trials]
    count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {"study": study.study_name, "n_trials": len(study.trials),
                           "n_complete": count.get("complete", 0), "n_pruned": count.get("pruned", 0),
                           "n_failed": count.get("fail", 0), "objective": "val R1 (best epoch)"}
    if complete:
        best = study.best_trial
        out.update({"best_value": best.value, "best_trial": best.number,
                    "best_params": dict(best.params), "command": exp_run_command(best.params)})
    return out


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA parameter importances; empty when fewer than two trials completed."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):
        return {}
