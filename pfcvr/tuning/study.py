"""The Optuna study: search `tune.space` for the best validation Rank-1 (never test).

- Sampler TPE (trial k drawn with seed `tune.sampler_seed` + k, :func:`trial_sampler`), median
  pruner fed with each epoch's val Rank-1.
- Storage `sqlite:///<repo root>/optuna.db` (``OPTUNA_STORAGE`` overrides it, e.g. a PostgreSQL URL
  shared by several workers). The study name is derived from everything that decides a trial's
  result and is *not* searched (:func:`study_name`): the other params, the space, the tuning epochs,
  the data (images included), the backbone and the pfcvr code. So an interrupted study with the
  same setup resumes, and a changed setup (new data, edited code) starts a new study instead of
  reporting the old one's trials as if they were measured now.
- `tune.n_trials` counts finished (complete or pruned) trials over all workers and sessions:
  a worker starts a trial only while finished + running trials are fewer, deciding and creating
  it under a lock that every worker shares (pfcvr.tuning.storage.TrialSlots), so workers started
  together never finish more than `tune.n_trials`. A worker with nothing left to start waits for
  the other workers' running trials (one that fails frees its place, and the waiting worker takes
  it) and then summarises the whole study, so every worker's summary counts the same trials.
  `tune.timeout` bounds one worker's wall time, waiting included. A failing trial is recorded as failed and the study
  goes on, unless :data:`MAX_CONSECUTIVE_FAILURES` trials fail in a row: the same error again and
  again is a fault of the setup, not bad luck, so the study stops (kept, for a rerun after the fix)
  and :class:`TuneError` names the last trial's error. A study without any complete trial is a
  TuneError too: there is no best to report.
- Each trial trains one seed (`seed`): a difference between trials smaller than the seed noise is
  not meaningful; the report says so.

:func:`run_study` takes any training function (the tests pass a fake); the work of the DVC stage
`tune` (real training on the train/val splits, then the reports) is :func:`pfcvr.pipeline.tune.tune`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import optuna

from pfcvr.config import Params, get_dotted, parse_params, read_raw, set_dotted
from pfcvr.engine import fingerprint as F
from pfcvr.runtime.sqlite_store import redact_uri
from pfcvr.tuning.storage import TrialSlots, claim, fail_own, fail_stale, open_study

DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = optuna.trial.TrialState.RUNNING
POLL_S = 2.0     # how often a worker with nothing to start looks at the other workers' trials
# Failed trials in a row (in one worker) after which the study stops: one failure can be bad luck
# (a diverging point of the space), three with nothing complete in between are a setup fault.
MAX_CONSECUTIVE_FAILURES = 3


class TuneError(RuntimeError):
    """The study cannot give a result: trials keep failing, or none completed."""


def storage_url(root: Path) -> str:
    return os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{root / 'optuna.db'}"


def redact(url: str) -> str:
    """Hide a password in a database URL before it is printed or logged."""
    return redact_uri(url)


def study_name(params: Params, inputs: str = "") -> str:
    """``pfcvr-tune-<hash>`` of what decides a trial's result besides its point of the space: the
    params less the searched keys and less those that do not change training (logs, reports,
    other stages: ``pfcvr.engine.fingerprint.COSMETIC``), plus `tune.space` (its ranges by dotted
    name: a tree and the same ranges written as the dotted keys of older params.yaml files name
    one study), `tune.epochs` and ``inputs`` (data, backbone and code:
    ``pfcvr.engine.fingerprint.inputs_key``)."""
    ranges = params.tune.ranges
    digest = F.digest(F.params_key(params, exclude=tuple(ranges)), ranges, params.tune.epochs,
                      inputs)
    return f"pfcvr-tune-{digest[:10]}"


def suggest(trial: optuna.Trial, ranges: dict[str, list[float]], base: Params) -> dict[str, Any]:
    """Draw one point of the space (``ranges``: `TuneConfig.ranges`, ``{dotted name: [low,
    high]}``); integers stay integers. The Optuna params are named by the dotted names, which
    are ordinary `dvc exp run -S` keys for the drawn values."""
    point = {}
    for key, (low, high) in ranges.items():
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
              train_fn: Callable[..., Any], run=None, progress: bool | None = None,
              inputs: str = "") -> optuna.Study:
    """Run (or resume) the study and return it.

    ``params_path``: the params file ``params`` came from (each trial re-validates the raw file
    with its point of the space applied). ``root``: the repository root (default storage
    ``root/optuna.db``, scratch folders under ``root/.cache/tune``). ``train_fn(trial_params,
    out_dir, on_epoch)`` trains one model, calls ``on_epoch(row)`` after each epoch (row keys
    ``epoch``, ``loss``, ``val_R1``, ``val_mAP``; it raises ``optuna.TrialPruned`` to stop the
    trial) and returns its TrainResult (best val metrics in ``.best``). ``run``: the tune
    StageRun, which gets one child run per trial. ``inputs``: the key of the data, backbone and
    code (part of the study name, :func:`study_name`).

    Raises :class:`TuneError` (the study is kept in its storage) when
    :data:`MAX_CONSECUTIVE_FAILURES` trials of this call fail in a row, or when the study holds no
    complete trial at the end; the message names the last failed trial and its error.
    """
    raw = read_raw(params_path)
    cfg = params.tune
    # Optuna logs a failed trial as a warning with its traceback; each becomes one line here.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = storage_url(root)
    # Under a file lock, with heartbeats; trials of killed workers are failed, so counts add up.
    study = open_study(
        study_name(params, inputs), url, direction="maximize",
        heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period,
        sampler=trial_sampler(cfg.sampler_seed, 0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    say = (lambda text: print(text, flush=True)) if progress is not False else (lambda text: None)
    fail_stale(study, progress=progress is not False)
    done, running = _counts(study)
    say(f"study {study.study_name} at {redact(url)}: {done} finished trial(s), {running} "
        f"running, {max(cfg.n_trials - done - running, 0)} to start")
    if done >= cfg.n_trials:
        return study
    slots = TrialSlots(study, url)
    work = Path(tempfile.mkdtemp(prefix="tune-", dir=_scratch(root)))
    failures: list[str] = []   # this call's failed trials, as one line each
    streak = [0]               # failed trials in a row

    def objective(trial: optuna.Trial) -> float:
        claim(trial)
        slots.release()        # the trial exists and is counted: other workers may decide now
        point: dict[str, Any] = {}
        try:
            return run_trial(trial, point)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            where = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
            message = " ".join(str(err).split()) or "(no message)"
            failures.append(f"trial {trial.number} ({where}): {type(err).__name__}: {message}")
            say(f"failed: {failures[-1]}")
            raise

    def count_failures(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        streak[0] = streak[0] + 1 if trial.state == optuna.trial.TrialState.FAIL else 0

    def run_trial(trial: optuna.Trial, point: dict[str, Any]) -> float:
        point.update(suggest(trial, cfg.ranges, params))
        tp = trial_params(raw, point, cfg.epochs)
        child = run.child(f"trial {trial.number}", params={**point, "trial": trial.number},
                          tags={"optuna.study": study.study_name}, outcome=trial_outcome) if run \
            else contextlib.nullcontext()
        with child as trial_run:
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
                result = train_fn(tp, out, on_epoch)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            value = float(result.best["R1"]) if result.best else float("nan")
            if not math.isfinite(value):
                raise RuntimeError("the trial produced no validation Rank-1")
            if trial_run is not None:
                trial_run.log_metrics({"best_val_R1": value})
            return value

    deadline = time.monotonic() + cfg.timeout
    waiting = 0
    try:
        while streak[0] < MAX_CONSECUTIVE_FAILURES and time.monotonic() < deadline:
            slots.acquire()
            try:
                fail_stale(study, progress=progress is not False)
                done, running = _counts(study)
                if done >= cfg.n_trials:
                    break
                if done + running >= cfg.n_trials:   # the rest is running in other workers
                    if running != waiting:
                        say(f"[tune] waiting for {running} running trial(s) of other workers "
                            f"({done} of tune.n_trials={cfg.n_trials} finished)")
                        waiting = running
                    slots.release()
                    time.sleep(POLL_S)
                    continue
                # Creates one trial; the objective releases the lock once it is claimed.
                study.sampler = trial_sampler(cfg.sampler_seed, len(study.trials))
                study.optimize(objective, n_trials=1, catch=(Exception,),
                               callbacks=[count_failures])
                waiting = 0
            finally:
                slots.release()
    finally:
        fail_own(study)   # a trial that SIGTERM (SystemExit) ended is left RUNNING by Optuna
        shutil.rmtree(work, ignore_errors=True)
    kept = f"the study {study.study_name} is kept in {redact(url)}"
    if streak[0] >= MAX_CONSECUTIVE_FAILURES:
        raise TuneError(f"{streak[0]} trials in a row failed, the last: {failures[-1]}; fix the "
                        f"cause (tune.space or the train/model params) and rerun; {kept}")
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        last = f"; the last failure: {failures[-1]}" if failures else ""
        raise TuneError(f"no trial completed within tune.timeout={cfg.timeout:g} s{last}; "
                        f"raise tune.timeout or fix the failing trials and rerun; {kept}")
    return study


def trial_sampler(seed: int, number: int) -> optuna.samplers.TPESampler:
    """The sampler that draws trial ``number``: TPE seeded with ``seed + number``, so a study's
    draws are reproducible and two workers never draw the same random start point (one seed per
    worker would give each worker's first trial the same point); ``constant_liar`` keeps a
    worker's draw away from the points other workers are running."""
    import warnings

    with warnings.catch_warnings():   # constant_liar is "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed + number, constant_liar=True)


def _counts(study: optuna.Study) -> tuple[int, int]:
    """(finished: complete or pruned, running) trials of the whole study, all workers."""
    trials = study.get_trials(deepcopy=False, states=(*DONE_STATES, RUNNING))
    running = sum(t.state == RUNNING for t in trials)
    return len(trials) - running, running


def trial_outcome(err: BaseException | None) -> tuple[str | None, dict[str, str]]:
    """The MLflow status and tags of a trial's run (StageRun.child ``outcome``): a pruned trial
    ran as asked and ends FINISHED, not FAILED; tag ``optuna.state`` says COMPLETE, PRUNED or
    FAIL (a killed trial keeps the default KILLED status)."""
    if err is None:
        return "FINISHED", {"optuna.state": "COMPLETE"}
    if isinstance(err, optuna.TrialPruned):
        return "FINISHED", {"optuna.state": "PRUNED"}
    return None, {"optuna.state": "FAIL"}


def _scratch(root: Path) -> Path:
    path = root / ".cache" / "tune"
    path.mkdir(parents=True, exist_ok=True)
    return path


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Counts, best value/params and the command that applies them."""
    states = [t.state for t in study.trials]
    count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {"study": study.study_name, "n_trials": len(study.trials),
                           "n_complete": count.get("complete", 0), "n_pruned": count.get("pruned", 0),
                           "n_failed": count.get("fail", 0), "n_running": count.get("running", 0),
                           "objective": "val R1 (best epoch)"}
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


def best_markdown(summary: dict[str, Any]) -> str:
    """reports/tune/best.md: the study's counts, the best trial, its params, the command that
    applies them and the parameter importances (from :func:`summarize` + ``importance``)."""
    command = summary.get("command", "(no trial completed)")
    lines = ["# Tuning result", "",
             f"Study `{summary['study']}`: {summary['n_trials']} trials "
             f"({summary['n_complete']} complete, {summary['n_pruned']} pruned, "
             f"{summary['n_failed']} failed). Objective: {summary['objective']} on the val split.", ""]
    if "best_value" in summary:
        lines += [f"Best val R1: **{summary['best_value']:.2f}** (trial {summary['best_trial']})", "",
                  "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                  for k, v in summary["best_params"].items()]
        lines += ["", "Apply it:", "", "```", command, "```", ""]
    if "seed" in summary:   # one seed per trial: a difference, never a significance
        lines += [f"Each trial trained one seed (seed {summary['seed']}), so trials that differ "
                  "by less than the seed noise are not told apart by this study; confirm the best "
                  "params with several seeds (`report.seeds`) before relying on a small gain.", ""]
    if summary.get("importance"):
        n = summary.get("importance_trials")
        over = f" over {n} complete trials; rough with few trials" if n else ""
        lines += [f"Parameter importance (fANOVA{over}): " + ", ".join(
            f"`{k}` {v:.2f}" for k, v in summary["importance"].items()), ""]
    return "\n".join(lines)
