"""``python -m pfcvr.tracking [--settle] [--ui-urls URL]`` (`make ui` runs it)."""
from __future__ import annotations

import argparse
import sys

from pfcvr.runtime.sqlite_store import TrackingError, redact_uri
from pfcvr.tracking.client import dvc_experiment, experiment_name, tracking_uri
from pfcvr.tracking.runs import settle_experiment, ui_urls


def main(argv: list[str] | None = None) -> int:
    """``python -m pfcvr.tracking [--settle] [--ui-urls URL]``: where runs go; close stale runs
    and settle the parents; the UI pages to open (``make ui``)."""
    ap = argparse.ArgumentParser(prog="python -m pfcvr.tracking", description=main.__doc__)
    ap.add_argument("--settle", action="store_true")
    ap.add_argument("--ui-urls", metavar="URL", help="base URL of the MLflow UI")
    args = ap.parse_args(argv)
    try:
        if args.ui_urls:
            urls = ui_urls(args.ui_urls)
            print(f"MLflow UI: {args.ui_urls}\n  ablation runs (R1, mAP, mINP columns):\n    "
                  f"{urls['runs']}")
            if urls["compare"]:
                print(f"  compare the variants of DVC experiment {urls['experiment']} "
                      f"({', '.join(urls['variants'])}):\n    {urls['compare']}")
            else:
                print("  no finished evaluate@ run yet: run `make repro` (or `dvc repro`)")
            return 0
        print(f"tracking URI: {redact_uri(tracking_uri())}\nexperiment:   "
              f"{experiment_name()}\n"
              f"parent run:   {dvc_experiment()}")
        if args.settle:
            for exp, status in settle_experiment().items():
                print(f"parent run {exp}: {status}")
    except TrackingError as err:
        print(f"TrackingError: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
