"""DVC stage `prepare`: the synthetic benchmark or a real dataset -> the canonical manifest.

Writes data/prepared/{manifest.json, meta.json, images/}, reports/data/stats.json (DVC metrics)
and reports/figures/data_samples.png as one set (all written first, then renamed into place
together: pfcvr.runtime.output_set); logs params, stats (as metrics), the stats file and the figure to
the nested MLflow run `prepare`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pfcvr import paths
from pfcvr.config import ConfigError, flatten, load_params
from pfcvr.data.manifest import DataError
from pfcvr.pipeline.prepare import prepare, summary
from pfcvr.runtime.stage import one_line, run_stage
from pfcvr.tracking import stage_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(paths.PARAMS))
    ap.add_argument("--out", default=str(paths.PREPARED))
    ap.add_argument("--stats", default=str(paths.DATA_STATS))
    ap.add_argument("--figure", default=str(paths.DATA_FIGURE))
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        with stage_run("prepare", params) as run:
            t0 = time.perf_counter()
            stats = prepare(params, args.out, args.stats, args.figure, args.workers, progress=True)
            seconds = time.perf_counter() - t0
            run.log_metrics({**flatten(stats), "seconds": seconds})   # numbers only are kept
            run.log_artifact(args.stats, "data")
            run.log_artifact(args.figure, "figures")
            run.log_artifact(Path(args.out) / "meta.json", "data")
    except (ConfigError, DataError, OSError, ValueError) as err:   # bad input, files, full disk
        print(one_line("prepare", err), file=sys.stderr)   # one line, whatever the message
        return 1
    print(f"prepare: {summary(stats, seconds)}")
    return 0


if __name__ == "__main__":   # errors main does not word itself (e.g. the store) end as one line
    sys.exit(run_stage("prepare", main))
