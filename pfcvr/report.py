"""Ablation report: aggregate per-variant test metrics over seeds, compare each variant to `full`.

Input: ``reports/metrics/<variant>.json`` written by the evaluate stage, shaped
``{checkpoint: {metric: {"mean", "std", "runs"}}}`` with checkpoint ``best`` (selected on val, the
primary number) or ``final``. :func:`ablation_report` is the `report` stage's one call.
A delta counts as *inside the seed noise* when it is smaller than twice the standard error of the
difference of two means, 2 * sqrt(s_v^2 / n_v + s_ref^2 / n_ref) (about a 95 % interval).

One seed has no spread to estimate: with fewer than :data:`MIN_SEEDS` runs on either side there
is no noise band, the delta is reported as a difference without a verdict (``within_noise`` null,
``single_seed`` true in the JSON, no std), never as "outside the seed noise".
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfcvr.io import read_json
from pfcvr.published import published_markdown

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
REFERENCE = "full"
MIN_SEEDS = 2   # runs below which a std (and so a noise band) does not exist


def collect(variants: list[str], metrics_dir: str | Path, checkpoint: str = "best") -> dict:
    """``{variant: {metric: {"mean", "std", "runs"}}}`` for one checkpoint kind."""
    table: dict[str, dict] = {}
    for variant in variants:
        path = Path(metrics_dir) / f"{variant}.json"
        data = read_json(path)
        if checkpoint not in data:
            raise ValueError(f"{path}: no '{checkpoint}' results (keys: {', '.join(data)})")
        missing = [m for m in METRICS if m not in data[checkpoint]]
        if missing:
            raise ValueError(f"{path}: '{checkpoint}' lacks metrics {', '.join(missing)}")
        table[variant] = {m: {"mean": float(data[checkpoint][m]["mean"]),
                              "std": float(data[checkpoint][m]["std"]),
                              "runs": [float(x) for x in data[checkpoint][m]["runs"]]}
                          for m in METRICS}
    return table


def single_seed(cell: dict) -> bool:
    """True when ``cell`` ({"mean", "std", "runs"}) has fewer than MIN_SEEDS runs."""
    return len(cell["runs"]) < MIN_SEEDS


def noise_band(a: dict, b: dict) -> float | None:
    """Twice the standard error of the difference of the two seed means; None when either side
    has fewer than MIN_SEEDS runs (its std of 0 is no estimate of the seed noise)."""
    if single_seed(a) or single_seed(b):
        return None
    return 2.0 * math.sqrt(a["std"] ** 2 / len(a["runs"]) + b["std"] ** 2 / len(b["runs"]))


def compare(table: dict, reference: str = REFERENCE) -> dict:
    """``{variant: {metric: {"delta", "noise", "within_noise", "single_seed"}}}`` relative to
    ``reference``; ``noise`` and ``within_noise`` are None where :func:`noise_band` is."""
    if reference not in table:
        raise ValueError(f"the reference variant '{reference}' has no results")
    ref = table[reference]
    out = {}
    for variant, metrics in table.items():
        if variant == reference:
            continue
        out[variant] = {}
        for m in METRICS:
            delta = metrics[m]["mean"] - ref[m]["mean"]
            band = noise_band(metrics[m], ref[m])
            out[variant][m] = {"delta": delta, "noise": band,
                               "within_noise": None if band is None else abs(delta) <= band,
                               "single_seed": band is None}
    return out


def _fmt(cell: dict) -> str:
    """``mean ± std``, or the mean alone for a single run (a std of 0 would claim no noise)."""
    if single_seed(cell):
        return f"{cell['mean']:.1f}"
    return f"{cell['mean']:.1f} ± {cell['std']:.1f}"


def _delta(cell: dict) -> str:
    return f"{cell['delta']:+.1f}{' *' if cell['within_noise'] is False else ''}"


def verdicts(deltas: dict, descriptions: dict[str, str], metric: str = "R1") -> list[str]:
    """Plain sentences: what removing or changing each component did to ``metric``."""
    lines = []
    for variant, d in deltas.items():
        cell = d[metric]
        what = descriptions.get(variant, variant)
        if cell["within_noise"] is None:
            lines.append(f"- `{variant}` ({what}): {metric} {cell['delta']:+.1f} against `full`, "
                         "from a single seed: a difference, not a significance (one seed gives "
                         "no estimate of the seed noise; list two or more seeds in report.seeds).")
        elif cell["within_noise"]:
            lines.append(f"- `{variant}` ({what}): {metric} {cell['delta']:+.1f}, inside the seed "
                         f"noise (±{cell['noise']:.1f}); no measurable effect.")
        else:
            sign = "higher" if cell["delta"] > 0 else "lower"
            lines.append(f"- `{variant}` ({what}): {metric} {cell['delta']:+.1f} ({sign} than "
                         f"`full`, outside the seed noise ±{cell['noise']:.1f}).")
    return lines


def diagnosis(table: dict, deltas: dict, oracle: dict[str, float],
              reference: str = REFERENCE) -> list[str]:
    """Why effects do or do not show, judged against the data's attribute oracle (DESIGN.md)."""
    if reference not in table:
        return []
    r1 = table[reference]["R1"]["mean"]
    lines = []
    glob, full = oracle.get("oracle_global_R1"), oracle.get("oracle_all_R1")
    if glob is not None and r1 < glob:
        lines.append(f"- `{reference}` reaches test R1 {r1:.1f}, below the attribute oracle that uses "
                     f"only type and colour ({glob:.1f}; all attributes: {full:.1f}). The model has "
                     "not yet learned even the global attributes, so a part-level component cannot "
                     "show its effect here: the benchmark is not too easy, the training is too "
                     "short. Train longer (`train.epochs`) or larger (`model.tiny.*`) to measure it.")
    elif glob is not None and full is not None:
        share = (r1 - glob) / max(full - glob, 1e-9)
        lines.append(f"- `{reference}` reaches test R1 {r1:.1f}: {100 * share:.0f} % of the way from "
                     f"the type-and-colour oracle ({glob:.1f}) to the all-attributes oracle "
                     f"({full:.1f}), the room that part perception can win.")
    if any(d["R1"]["single_seed"] for d in deltas.values()):
        lines.append("- With a single seed, no difference here can be told from seed noise: "
                     "train two or more seeds (`report.seeds`) before reading an effect into it.")
    elif deltas and all(d["R1"]["within_noise"] for d in deltas.values()):
        lines.append("- No variant differs from `full` by more than the seed noise in R1.")
    return lines


def ablation_markdown(table: dict, deltas: dict, descriptions: dict[str, str],
                      setup: list[str], final_table: dict | None = None,
                      findings: list[str] = ()) -> str:
    """The whole reports/ablation.md text."""
    head = "| variant | what | " + " | ".join(METRICS) + " | ΔR1 vs full | ΔmAP vs full |"
    rule = "|---" * (len(METRICS) + 4) + "|"
    rows = []
    for variant, metrics in table.items():
        d = deltas.get(variant)
        dr1 = "—" if d is None else _delta(d["R1"])
        dmap = "—" if d is None else _delta(d["mAP"])
        rows.append(f"| `{variant}` | {descriptions.get(variant, '')} | "
                    + " | ".join(_fmt(metrics[m]) for m in METRICS) + f" | {dr1} | {dmap} |")
    if any(single_seed(c) for cells in table.values() for c in cells.values()):
        how = ("A single seed per variant (`report.seeds` lists one): each number is one run, in "
               "percent, so the seed noise is unknown and no delta is marked significant: a single "
               "seed can show a difference, never a significance. List two or more seeds (e.g. "
               "`report.seeds=[0, 1, 2]`) to measure it.")
    else:
        how = ("Mean ± standard deviation over seeds, in percent. `*` marks a delta to `full` "
               "outside the seed noise (|Δ| > 2·SE of the difference of means).")
    parts = ["# PFCVR ablation study", "",
             "Text-to-image retrieval on the test split (identities never seen in training or model "
             "selection); the checkpoint of each run is the epoch with the best validation "
             f"Rank-1. {how}", "",
             "## Setup", "", *setup, "",
             "## Results (best-on-val checkpoint)", "", head, rule, *rows, "",
             "## What each component does here", "", *verdicts(deltas, descriptions), ""]
    if findings:
        parts += ["## Reading the numbers", "", *findings, ""]
    if final_table:
        parts += ["## Final-epoch checkpoint (for reference)", "",
                  "| variant | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        parts += [f"| `{v}` | " + " | ".join(_fmt(m[k]) for k in METRICS) + " |"
                  for v, m in final_table.items()]
        parts.append("")
    parts += ["## Published numbers (other data, for orientation only)", "",
              "These come from the PFCVR authors on real benchmarks with a pretrained CLIP; they are "
              "**not** comparable with the synthetic benchmark above.", "", published_markdown()]
    return "\n".join(parts)


def ablation_json(table: dict, deltas: dict) -> dict[str, Any]:
    """DVC metrics: ``{variant: {metric: {"mean", "std", "runs", "single_seed",
    "delta_vs_full"?, "within_noise"?}}}``. With a single run ``std`` and ``within_noise`` are
    null (unknown), not 0 and a verdict."""
    out = {}
    for variant, metrics in table.items():
        out[variant] = {}
        for m, cell in metrics.items():
            entry = dict(cell)
            entry["single_seed"] = single_seed(cell)
            if entry["single_seed"]:
                entry["std"] = None
            if variant in deltas:
                entry["delta_vs_full"] = deltas[variant][m]["delta"]
                entry["within_noise"] = deltas[variant][m]["within_noise"]
            out[variant][m] = entry
    return out


def setup_lines(params, data_stats: dict) -> list[str]:
    """What the numbers were measured on: data, model, training recipe, machine, and from the
    prepare stage's stats (``data_stats``, may be empty) the split sizes and attribute oracle."""
    lines = [f"- data: `{params.data.source}`; model backbone `{params.model.backbone}` at "
             f"{params.model.image_size}x{params.model.image_size} px",
             f"- training: {params.train.epochs} epochs, batch {params.train.batch_size}, "
             f"lr {params.train.lr:g}, precision {params.train.precision}; "
             f"{len(params.report.seeds)} seed{'s' if len(params.report.seeds) > 1 else ''} "
             "per variant "
             f"({', '.join(map(str, params.report.seeds))})",
             f"- machine: {platform.machine()}, {platform.system()}, "
             f"Python {platform.python_version()}"]
    splits = data_stats.get("splits", {})
    if splits:
        desc = "; ".join(f"{s}: " + ", ".join(f"{v} {k}" for k, v in c.items()
                                              if isinstance(v, (int, float)))
                         for s, c in splits.items() if isinstance(c, dict))
        lines.append(f"- splits: {desc}")
    oracle = {k: v for k, v in data_stats.items() if k.startswith("oracle") and
              isinstance(v, (int, float))}
    if oracle:
        lines.append("- attribute oracle on test (DESIGN.md calibration): " +
                     ", ".join(f"{k} = {v:.1f}" for k, v in oracle.items()))
    return lines


@dataclass(frozen=True)
class AblationReport:
    """The ablation study of every variant of ``ablations``.

    table / final: ``{variant: {metric: {"mean", "std", "runs"}}}`` of the best-on-val and the
    last-epoch checkpoints; deltas: :func:`compare` of ``table``; markdown: reports/ablation.md;
    document: reports/ablation.json (:func:`ablation_json`).
    """

    table: dict
    final: dict
    deltas: dict
    markdown: str
    document: dict

    def mlflow_metrics(self) -> dict[str, float]:
        """``<variant>/<metric>`` = the best-checkpoint mean over seeds."""
        return {f"{v}/{m}": cells[m]["mean"] for v, cells in self.table.items() for m in METRICS}

    def results_section(self) -> str:
        """The markdown from the results table up to the per-component verdicts (for the log)."""
        return self.markdown.split("## What each component")[0].split(
            "## Results (best-on-val checkpoint)")[-1]


def ablation_report(params, metrics_dir: str | Path, data_stats: str | Path) -> AblationReport:
    """Read ``<metrics_dir>/<variant>.json`` for every variant of ``params.ablations`` and the
    prepare stage's ``data_stats`` JSON (optional: skipped when missing), compare every variant
    with ``full`` and write the report text.

    Raises FileNotFoundError / ValueError naming a missing or incomplete metrics file, and
    ValueError when ``full`` has no results.
    """
    from pfcvr.config import variant_description

    variants = list(params.ablations)
    descriptions = {v: variant_description(params, v) for v in variants}
    table = collect(variants, metrics_dir, "best")
    final = collect(variants, metrics_dir, "final")
    deltas = compare(table)
    stats = read_json(data_stats) if Path(data_stats).is_file() else {}
    md = ablation_markdown(table, deltas, descriptions, setup_lines(params, stats), final,
                           diagnosis(table, deltas, stats))
    return AblationReport(table, final, deltas, md, ablation_json(table, deltas))
