"""DVC stage `prepare`: the synthetic benchmark or a real dataset -> the canonical manifest.

Writes data/prepared/{manifest.json, meta.json, images/} (atomically, as a whole),
reports/data/stats.json (DVC metrics) and reports/figures/data_samples.png; logs params, stats
(as metrics), the stats file and the figure to the nested MLflow run `prepare`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pfcvr.config import ConfigError, flatten, load_params
from pfcvr.data.manifest import DataError
from pfcvr.data.prepare import FIGURE, PREPARED, STATS, prepare
from pfcvr.tracking import stage_run


def _progress(done: int, total: int, _last=[0.0]) -> None:
    now = time.monotonic()
    if done == total or now - _last[0] > 5:
        _last[0] = now
        print(f"prepare: rendered {done}/{total} images", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=str(PREPARED))
    ap.add_argument("--stats", default=str(STATS))
    ap.add_argument("--figure", default=str(FIGURE))
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        with stage_run("prepare", params) as run:
            t0 = time.perf_counter()
            stats = prepare(params, args.out, args.stats, args.figure, args.workers, _progress)
            seconds = time.perf_counter() - t0
            metrics = {k: v for k, v in flatten(stats).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            run.log_metrics({**metrics, "seconds": seconds})
            run.log_artifact(args.stats, "data")
            run.log_artifact(args.figure, "figures")
            run.log_artifact(Path(args.out) / "meta.json", "data")
    except (ConfigError, DataError, FileNotFoundError, ValueError) as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 1
    t = stats["total"]
    oracle = (f"; oracle test R1 global-only {stats['oracle_global_R1']:.1f}, "
              f"all attributes {stats['oracle_all_R1']:.1f}" if "oracle_all_R1" in stats else "")
    print(f"prepare: {stats['source']}: {t['ids']} ids, {t['images']} images, {t['captions']} captions "
          f"in {seconds:.1f}s (skipped {stats['skipped']['total']}){oracle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
