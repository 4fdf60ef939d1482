"""Ablation tables: aggregate per-variant test metrics over seeds, compare each variant with the
reference variant (``full``, :data:`pfcvr.config.REFERENCE_VARIANT`), word the markdown and JSON.

Input: ``reports/metrics/<variant>.json`` written by the evaluate stage, shaped
``{checkpoint: {metric: {"mean", "std", "runs"}}, "seeds": [...]}`` with checkpoint ``best``
(selected on val, the primary number) or ``final``; ``runs[i]`` is the run of ``seeds[i]``.
The `report` stage's one call, which reads the files and assembles the report from these
pieces, is :func:`pfcvr.pipeline.report.ablation_report`.

The verdicts are paired (:mod:`pfcvr.report.paired`): the same seed gives every variant the same
initial weights, data order and augmentation stream, so each variant is compared with `full` seed
by seed,
by the mean paired difference and its two-sided 95 % t interval over the seeds both have; a
component *helps* when that R1 interval lies below 0, *hurts* when above 0, and *cannot be told
apart* otherwise. The minimal detectable R1 effect of the design (:func:`detectable_effect`) is
printed with them. The older unpaired band, 2 * sqrt(s_v^2 / n_v + s_ref^2 / n_ref), stays in the
JSON as ``within_noise`` for comparison; it ignores the pairing and so sees less.

One seed has no spread to estimate: with fewer than :data:`MIN_SEEDS` runs on either side there
is no noise band, no interval and no verdict; the delta is reported as a difference
(``within_noise`` null, ``single_seed`` true in the JSON, no std), never as "outside the seed
noise".
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pfcvr.config import REFERENCE_VARIANT as REFERENCE   # "full"
from pfcvr.metrics import METRIC_NAMES
from pfcvr.params_schema import RESERVED_VARIANTS
from pfcvr.report.paired import (ALPHA, HELPS, HURTS, NO_PAIR, SINGLE, UNCLEAR, PairedDifference,
                          compare_by_seed, design_mde, verdict)
from pfcvr.report.published import published_markdown
from pfcvr.report.verdicts import VERDICT_METRIC, paired_section, verdicts
from pfcvr.runtime.atomic import read_json

MIN_SEEDS = 2   # runs below which a std (and so a noise band) does not exist


def collect(variants: list[str], metrics_dir: str | Path, checkpoint: str = "best") -> dict:
    """``{variant: {metric: {"mean", "std", "runs", "seeds"}}}`` for one checkpoint kind.

    ``seeds[i]`` is the training seed of ``runs[i]``: the file's ``seeds`` list, or 0 .. n-1 for a
    file without one (the evaluate stage writes the runs in ``report.seeds`` order).
    Raises FileNotFoundError for a missing file and ValueError for a file without the checkpoint,
    without a metric, or whose seeds list does not match its runs.
    """
    table: dict[str, dict] = {}
    for variant in variants:
        path = Path(metrics_dir) / f"{variant}.json"
        data = read_json(path)
        if checkpoint not in data:
            raise ValueError(f"{path}: no '{checkpoint}' results (keys: {', '.join(data)})")
        missing = [m for m in METRIC_NAMES if m not in data[checkpoint]]
        if missing:
            raise ValueError(f"{path}: '{checkpoint}' lacks metrics {', '.join(missing)}")
        table[variant] = {}
        for m in METRIC_NAMES:
            cell = data[checkpoint][m]
            runs = [float(x) for x in cell["runs"]]
            seeds = [int(s) for s in data.get("seeds", range(len(runs)))]
            if len(seeds) != len(runs):
                raise ValueError(f"{path}: '{checkpoint}' {m} has {len(runs)} runs but "
                                 f"{len(seeds)} seeds ({seeds})")
            table[variant][m] = {"mean": float(cell["mean"]), "std": float(cell["std"]),
                                 "runs": runs, "seeds": seeds}
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
    ``reference`` (difference of the seed means; the unpaired band); ``noise`` and
    ``within_noise`` are None where :func:`noise_band` is."""
    if reference not in table:
        raise ValueError(f"the reference variant '{reference}' has no results")
    ref = table[reference]
    out = {}
    for variant, metrics in table.items():
        if variant == reference:
            continue
        out[variant] = {}
        for m in METRIC_NAMES:
            delta = metrics[m]["mean"] - ref[m]["mean"]
            band = noise_band(metrics[m], ref[m])
            out[variant][m] = {"delta": delta, "noise": band,
                               "within_noise": None if band is None else abs(delta) <= band,
                               "single_seed": band is None}
    return out


def paired_comparison(table: dict, reference: str = REFERENCE
                      ) -> dict[str, dict[str, PairedDifference]]:
    """``{variant: {metric: PairedDifference}}``: each variant minus ``reference`` seed by seed,
    with the 95 % t interval (:func:`pfcvr.report.paired.compare_by_seed`). Raises ValueError when
    ``reference`` has no results."""
    return compare_by_seed(table, reference, METRIC_NAMES)


def detectable_effects(paired: dict) -> dict[str, dict]:
    """``{metric: pfcvr.report.paired.design_mde(...)}``: the minimal detectable effect of the design
    per metric, from the paired differences of every variant (s_d pooled over the variants)."""
    return {m: design_mde([cells[m] for cells in paired.values()]) for m in METRIC_NAMES}


def _fmt(cell: dict) -> str:
    """``mean ± std``, or the mean alone for a single run (a std of 0 would claim no noise)."""
    if single_seed(cell):
        return f"{cell['mean']:.1f}"
    return f"{cell['mean']:.1f} ± {cell['std']:.1f}"


def _delta(cell: dict, pair: PairedDifference) -> str:
    """The difference of means, ``*`` when the paired interval excludes 0."""
    return f"{cell['delta']:+.1f}{' *' if verdict(pair) in (HELPS, HURTS) else ''}"


def diagnosis(table: dict, deltas: dict, oracle: dict[str, float],
              reference: str = REFERENCE, paired: dict | None = None,
              zero_shot: dict | None = None) -> list[str]:
    """Why effects do or do not show, judged against the data's attribute oracle
    (pfcvr.data.oracle, ``oracle``: the prepare stage's stats), the zero-shot backbone
    (``zero_shot``: its ``{metric: cell}``, optional) and the paired verdicts (``paired``:
    :func:`paired_comparison`, computed when None)."""
    if reference not in table:
        return []
    r1 = table[reference]["R1"]["mean"]
    lines = []
    glob, full = oracle.get("oracle_global_R1"), oracle.get("oracle_all_R1")
    if glob is not None and r1 < glob:
        lines.append(f"- `{reference}` reaches test R1 {r1:.1f}, below the attribute oracle that uses "
                     f"only type and colour ({glob:.1f}; all attributes: {full:.1f}). The model has "
                     "not yet learned even the global attributes, so a part-level component cannot "
                     "show its effect here: the benchmark is not too easy, the model and its "
                     "training are too small. More epochs alone do not lift it "
                     "(docs/results.md); the levers are a wider model (`model.tiny.*`), more "
                     "pretraining (`pretrain.*`) and more training identities "
                     "(`data.synthetic.n_ids`).")
    elif glob is not None and full is not None:
        share = (r1 - glob) / max(full - glob, 1e-9)
        lines.append(f"- `{reference}` reaches test R1 {r1:.1f}: {100 * share:.0f} % of the way from "
                     f"the type-and-colour oracle ({glob:.1f}) to the all-attributes oracle "
                     f"({full:.1f}), the room that part perception can win; "
                     f"{r1 / max(glob, 1e-9):.2f}x the type-and-colour oracle.")
    if zero_shot is not None:
        z = zero_shot["R1"]["mean"]
        lines.append(f"- The pretrained backbone alone (zero-shot) reaches test R1 {z:.1f}; "
                     f"fine-tuning `{reference}` adds {r1 - z:+.1f} points.")
    paired = paired_comparison(table, reference) if paired is None else paired
    words = {v: verdict(cells[VERDICT_METRIC]) for v, cells in paired.items()
             if verdict(cells[VERDICT_METRIC]) != NO_PAIR}    # not compared: said per variant
    if (any(d["R1"]["single_seed"] for d in deltas.values())
            or any(w == SINGLE for w in words.values())):
        lines.append("- With a single seed, no difference here can be told from seed noise: "
                     "train two or more seeds (`report.seeds`) before reading an effect into it.")
    elif words and all(w == UNCLEAR for w in words.values()):
        effect = design_mde([cells[VERDICT_METRIC] for cells in paired.values()])
        lines.append(f"- No variant differs from `{reference}` in R1 beyond the seed noise: every "
                     "paired 95 % interval includes 0. A true effect below the minimal detectable "
                     "effect "
                     f"({effect['value']:.1f} points at {100 * effect['power']:.0f} % power) would "
                     "most likely look like this too, so this is no evidence that the components "
                     "do nothing.")
    elif words:
        told = [f"`{v}` ({w})" for v, w in words.items() if w in (HELPS, HURTS)]
        rest = "; every other variant cannot be told apart" if len(told) < len(words) else ""
        lines.append(f"- Told apart from `{reference}` in R1 (paired 95 % interval excludes 0): "
                     f"{', '.join(told)}{rest}.")
    return lines


def zero_shot_row(backbone: str | None) -> str:
    """What the zero-shot row is: the backbone its metrics file names, with no fine-tuning."""
    return f"{backbone or 'pretrained'} backbone, no fine-tuning (one model)"


def ablation_markdown(table: dict, deltas: dict, descriptions: dict[str, str],
                      setup: list[str], final_table: dict | None = None,
                      findings: list[str] = (), paired: dict | None = None,
                      effects: dict | None = None, zero_shot: dict | None = None, *,
                      warnings: list[str] = (), zero_shot_backbone: str | None = None,
                      data_source: str | None = None) -> str:
    """The whole reports/ablation.md text (``paired`` / ``effects``: :func:`paired_comparison`
    and :func:`detectable_effects` of ``table``, computed when None; ``zero_shot``: the
    ``{metric: cell}`` of the zero_shot stage, shown as the table's first row, or None;
    ``warnings``: lines shown first, where the inputs disagree with the params;
    ``zero_shot_backbone`` / ``data_source``: what the zero-shot file and the metrics name)."""
    paired = paired_comparison(table) if paired is None else paired
    effects = detectable_effects(paired) if effects is None else effects
    head = ("| variant | what | " + " | ".join(METRIC_NAMES)
            + f" | ΔR1 vs {REFERENCE} | ΔmAP vs {REFERENCE} |")
    rule = "|---" * (len(METRIC_NAMES) + 4) + "|"
    rows = []
    if zero_shot:
        rows.append(f"| `zero_shot` | {zero_shot_row(zero_shot_backbone)} | "
                    + " | ".join(_fmt(zero_shot[m]) for m in METRIC_NAMES) + " | — | — |")
    for variant, metrics in table.items():
        d = deltas.get(variant)
        dr1 = "—" if d is None else _delta(d["R1"], paired[variant]["R1"])
        dmap = "—" if d is None else _delta(d["mAP"], paired[variant]["mAP"])
        rows.append(f"| `{variant}` | {descriptions.get(variant, '')} | "
                    + " | ".join(_fmt(metrics[m]) for m in METRIC_NAMES) + f" | {dr1} | {dmap} |")
    if any(single_seed(c) for cells in table.values() for c in cells.values()):
        how = ("A single seed per variant (the metrics hold one): each number is one run, in "
               "percent, so the seed noise is unknown and no delta is marked significant: a single "
               "seed can show a difference, never a significance. List two or more seeds (e.g. "
               "`report.seeds=[0, 1, 2]`) to measure it.")
    else:
        how = ("Mean ± standard deviation over seeds, in percent; Δ is the difference of the "
               f"means. `*` marks a delta to `{REFERENCE}` whose paired 95 % interval over "
               "seeds excludes 0 (next section).")
    parts = ["# PFCVR ablation study", "",
             "Text-to-image retrieval on the test split (identities never seen in training or model "
             "selection); the checkpoint of each run is the epoch with the best validation "
             f"Rank-1. {how}", ""]
    if warnings:
        parts += ["## Warning: the inputs differ from params.yaml", "",
                  "The numbers below are those of the files read; the setup says what they hold.",
                  "", *(f"- {w}" for w in warnings), ""]
    parts += ["## Setup", "", *setup, "",
             "## Results (best-on-val checkpoint)", "", head, rule, *rows, "",
             *paired_section(paired, effects),
             "## What each component does here", "", *verdicts(paired, descriptions), ""]
    if findings:
        parts += ["## Reading the numbers", "", *findings, ""]
    if final_table:
        parts += ["## Final-epoch checkpoint (for reference)", "",
                  "| variant | " + " | ".join(METRIC_NAMES) + " |",
                  "|---" * (len(METRIC_NAMES) + 1) + "|"]
        parts += [f"| `{v}` | " + " | ".join(_fmt(m[k]) for k in METRIC_NAMES) + " |"
                  for v, m in final_table.items()]
        parts.append("")
    if data_source in (None, "", "synthetic"):
        against = "they are **not** comparable with the synthetic benchmark above."
    else:
        against = (f"the numbers above (`{data_source}`) compare with them only for the same "
                   "dataset, backbone and training budget.")
    parts += ["## Published numbers (other data, for orientation only)", "",
              "These come from the PFCVR authors on real benchmarks with a pretrained CLIP; "
              + against, "", published_markdown()]
    return "\n".join(parts)


def compare_cells(table: dict) -> dict:
    """reports/compare.json, the DVC metrics file that ``make compare`` shows per experiment:
    ``{"test": {variant: "R1 / mAP"}}``, the best-checkpoint means over seeds in percent, one
    decimal. One short text cell per variant, so that the variants and the changed params of
    several experiments fit a 120-column terminal (``dvc exp show`` names the column
    ``test.<variant>``); the numbers themselves are in reports/ablation.json."""
    return {"test": {v: f"{cells['R1']['mean']:.1f} / {cells['mAP']['mean']:.1f}"
                     for v, cells in table.items()}}


def ablation_json(table: dict, deltas: dict, paired: dict | None = None,
                  effects: dict | None = None) -> dict[str, Any]:
    """DVC metrics. ``{variant: {metric: {"mean", "std", "runs", "single_seed",
    "delta_vs_full"?, "within_noise"?}}}`` (with a single run ``std`` and ``within_noise`` are
    null, unknown, not 0 and a verdict; ``within_noise``: the unpaired band), then
    ``paired``: ``{"reference", "confidence", "interval", "variants": {variant: {"verdict",
    "only_variant", "only_reference", "metrics": {metric: {"n", "seeds", "differences", "mean",
    "sd", "ci_low", "ci_high"}}}}}``, ``mde_R1`` (points, null with a single seed) and ``mde``
    (how it was computed, and the MDE of every metric under ``by_metric``).

    Raises ValueError when a variant has a reserved name (``params_schema.RESERVED_VARIANTS``: the
    top-level keys above and other stages' outputs; config validation refuses them first).
    """
    clash = [v for v in table if v in RESERVED_VARIANTS]
    if clash:
        raise ValueError(f"variant name(s) {clash} clash with the report's keys "
                         f"{RESERVED_VARIANTS}")
    paired = paired_comparison(table) if paired is None else paired
    effects = detectable_effects(paired) if effects is None else effects
    out: dict[str, Any] = {}
    for variant, metrics in table.items():
        out[variant] = {}
        for m, cell in metrics.items():
            entry = {k: cell[k] for k in ("mean", "std", "runs")}
            entry["single_seed"] = single_seed(cell)
            if entry["single_seed"]:
                entry["std"] = None
            if variant in deltas:
                entry["delta_vs_full"] = deltas[variant][m]["delta"]
                entry["within_noise"] = deltas[variant][m]["within_noise"]
            out[variant][m] = entry
    out["paired"] = {
        "reference": REFERENCE, "confidence": 1 - ALPHA, "verdict_metric": VERDICT_METRIC,
        "interval": "mean of variant-minus-reference differences over the seeds both ran, "
                    "two-sided Student t, n - 1 degrees of freedom",
        "variants": {v: {"verdict": verdict(cells[VERDICT_METRIC]),
                         "only_variant": cells[VERDICT_METRIC].only_variant,
                         "only_reference": cells[VERDICT_METRIC].only_reference,
                         "metrics": {m: p.as_dict() for m, p in cells.items()}}
                     for v, cells in paired.items()}}
    effect = effects[VERDICT_METRIC]
    out[f"mde_{VERDICT_METRIC}"] = effect["value"]
    out["mde"] = {"metric": VERDICT_METRIC, **effect, "sides": 2,
                  "method": "exact: noncentral t power of the paired t test (scipy.stats.nct); "
                            "approx: (t_{1-alpha/2,n-1} + t_{power,n-1}) * sd / sqrt(n)",
                  "sd_source": "paired differences to the reference, pooled over the variants",
                  "n_source": "smallest number of paired seeds among the variants",
                  "by_metric": {m: e["value"] for m, e in effects.items()}}
    return out
