"""DVC stage `report`: the ablation table, deltas and figure; published to the MLflow parent run.

Reads reports/metrics/<variant>.json for every variant of `ablations`; writes reports/ablation.md,
reports/ablation.json (DVC metrics) and reports/figures/ablation.png. Always re-publishes to MLflow
(the stage is `always_changed`), so a DVC run-cache restore still shows up there.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

from pfcvr import viz
from pfcvr.config import load_params, variant_description
from pfcvr.io import read_json, write_json, write_text
from pfcvr.report import (METRICS, ablation_json, ablation_markdown, collect, compare,
                          diagnosis)
from pfcvr.tracking import stage_run

METRICS_DIR = Path("reports/metrics")
OUT_MD = Path("reports/ablation.md")
OUT_JSON = Path("reports/ablation.json")
OUT_FIG = Path("reports/figures/ablation.png")
DATA_STATS = Path("reports/data/stats.json")


def setup_lines(params, n_seeds: int) -> list[str]:
    """What the numbers were measured on, from the params and the data stats."""
    lines = [f"- data: `{params.data.source}`; model backbone `{params.model.backbone}` at "
             f"{params.model.image_size}x{params.model.image_size} px",
             f"- training: {params.train.epochs} epochs, batch {params.train.batch_size}, "
             f"lr {params.train.lr:g}, precision {params.train.precision}; "
             f"{n_seeds} seeds per variant ({', '.join(map(str, params.report.seeds))})",
             f"- machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}"]
    if DATA_STATS.is_file():
        stats = read_json(DATA_STATS)
        splits = stats.get("splits", {})
        if splits:
            desc = "; ".join(f"{s}: " + ", ".join(f"{v} {k}" for k, v in c.items()
                                                  if isinstance(v, (int, float)))
                             for s, c in splits.items() if isinstance(c, dict))
            lines.append(f"- splits: {desc}")
        oracle = {k: v for k, v in stats.items() if k.startswith("oracle") and
                  isinstance(v, (int, float))}
        if oracle:
            lines.append("- attribute oracle on test (DESIGN.md calibration): " +
                         ", ".join(f"{k} = {v:.1f}" for k, v in oracle.items()))
    return lines


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = load_params()
    variants = list(params.ablations)
    descriptions = {v: variant_description(params, v) for v in variants}
    with stage_run("report", params) as run:
        table = collect(variants, METRICS_DIR, "best")
        final = collect(variants, METRICS_DIR, "final")
        deltas = compare(table)
        oracle = read_json(DATA_STATS) if DATA_STATS.is_file() else {}
        md = ablation_markdown(table, deltas, descriptions,
                               setup_lines(params, len(params.report.seeds)), final,
                               diagnosis(table, deltas, oracle))
        write_text(OUT_MD, md)
        write_json(OUT_JSON, ablation_json(table, deltas))
        viz.ablation_figure(table, OUT_FIG)
        summary = {f"{v}/{m}": table[v][m]["mean"] for v in variants for m in METRICS}
        run.log_metrics(summary)
        for path in (OUT_MD, OUT_JSON, OUT_FIG):
            run.log_artifact(path)
        run.log_to_parent(metrics=summary, artifacts=[OUT_MD, OUT_JSON, OUT_FIG],
                          tags={"mlflow.note.content": md})
    print(md.split("## What each component")[0].split("## Results (best-on-val checkpoint)")[-1])


if __name__ == "__main__":
    main()
