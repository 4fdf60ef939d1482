"""A stage-like process for the tracking tests: `python -m tests.support.tracking_proc NAME [options]`.

Imports pfcvr.tracking, writes ``--ready`` (so a test can start several at the same instant), waits
for the ``--go`` file, opens ``stage_run(NAME)`` (tracking required unless ``--optional``), logs a
metric, optionally opens a child run (``--child``, like a tune trial), prints ``inside`` and sleeps
``--sleep`` seconds inside the run, so that a test can signal it there. The store and experiment
come from the environment, as in a stage.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from pfcvr.tracking import stage_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--ready")
    ap.add_argument("--go")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--optional", action="store_true")
    args = ap.parse_args()
    if args.ready:
        Path(args.ready).write_text("ready")
    if args.go:
        deadline = time.monotonic() + 120
        while not Path(args.go).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
    with stage_run(args.name, required=not args.optional) as run:
        run.log_metrics({"x": 1.0})
        inner = run.child("trial 0") if args.child else contextlib.nullcontext(run)
        with inner as trial:
            trial.log_metrics({"y": 2.0})
            print("inside", flush=True)
            time.sleep(args.sleep)
    print("work done", flush=True)


if __name__ == "__main__":
    main()
