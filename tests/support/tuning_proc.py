"""A tune worker for the tuning tests: `python -m tests.support.tuning_proc PARAMS ROOT [options]`.

Runs (or resumes) pfcvr.tuning.study.run_study on the params file PARAMS with storage and scratch under
ROOT (OPTUNA_STORAGE from the environment, if set) and a fake training: val R1 from the mask
ratio, no model. ``--sleep S``: the first trial of this process prints ``training`` and sleeps S
seconds, so that a test can signal it there. ``--trial-s S``: every trial takes S seconds.
``--ready FILE`` / ``--go FILE``: write FILE when imported, then wait for the go file, so that
a test starts several workers at the same instant. ``--tracked``: inside stage_run("tune"), as
the stage runs it (SIGTERM then ends the run KILLED). Prints the study's summary as JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

from pfcvr.config import load_params
from pfcvr.tuning.study import run_study, summarize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("params")
    ap.add_argument("root")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--trial-s", type=float, default=0.0)
    ap.add_argument("--ready")
    ap.add_argument("--go")
    ap.add_argument("--tracked", action="store_true")
    args = ap.parse_args()
    calls = []

    def train_fn(tp, out_dir, on_epoch):
        calls.append(1)
        if args.sleep and len(calls) == 1:
            print("training", flush=True)
            time.sleep(args.sleep)
        time.sleep(args.trial_s)
        r1 = 50 - 100 * (tp.train.mask_ratio - 0.6) ** 2
        on_epoch({"epoch": 1, "val_R1": r1, "val_mAP": r1 / 2, "loss": 1.0})
        return SimpleNamespace(best={"R1": r1})

    params = load_params(args.params)
    if args.ready:
        Path(args.ready).write_text("ready")
        while not Path(args.go).exists():
            time.sleep(0.005)
    tracker = contextlib.nullcontext(None)
    if args.tracked:
        from pfcvr.tracking import stage_run
        tracker = stage_run("tune", params, required=True)
    with tracker as run:
        study = run_study(params, args.params, Path(args.root), train_fn=train_fn, run=run)
    print(json.dumps(summarize(study)), flush=True)


if __name__ == "__main__":
    main()
