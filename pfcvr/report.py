"""Ablation report: aggregate per-variant test metrics over seeds, compare each variant to `full`.

Input: ``reports/metrics/<variant>.json`` written by the evaluate stage, shaped
``{checkpoint: {metric: {"mean", "std", "runs"}}, "seeds": [...]}`` with checkpoint ``best``
(selected on val, the primary number) or ``final``; ``runs[i]`` is the run of ``seeds[i]``.
:func:`ablation_report` is the `report` stage's one call.

The verdicts are paired (:mod:`pfcvr.paired`): the same seed gives every variant the same initial
weights, data order and augmentation stream, so each variant is compared with `full` seed by seed,
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
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfcvr.io import read_json
from pfcvr.paths import ZERO_SHOT
from pfcvr.paired import (ALPHA, HELPS, HURTS, NO_PAIR, SINGLE, UNCLEAR, PairedDifference,
                          compare_by_seed, design_mde, verdict)
from pfcvr.paired_text import REFERENCE, VERDICT_METRIC, paired_section, verdicts
from pfcvr.published import published_markdown

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
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
        missing = [m for m in METRICS if m not in data[checkpoint]]
        if missing:
            raise ValueError(f"{path}: '{checkpoint}' lacks metrics {', '.join(missing)}")
        table[variant] = {}
        for m in METRICS:
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
        for m in METRICS:
            delta = metrics[m]["mean"] - ref[m]["mean"]
            band = noise_band(metrics[m], ref[m])
            out[variant][m] = {"delta": delta, "noise": band,
                               "within_noise": None if band is None else abs(delta) <= band,
                               "single_seed": band is None}
    return out


def paired_comparison(table: dict, reference: str = REFERENCE
                      ) -> dict[str, dict[str, PairedDifference]]:
    """``{variant: {metric: PairedDifference}}``: each variant minus ``reference`` seed by seed,
    with the 95 % t interval (:func:`pfcvr.paired.compare_by_seed`). Raises ValueError when
    ``reference`` has no results."""
    return compare_by_seed(table, reference, METRICS)


def detectable_effects(paired: dict) -> dict[str, dict]:
    """``{metric: pfcvr.paired.design_mde(...)}``: the minimal detectable effect of the design
    per metric, from the paired differences of every variant (s_d pooled over the variants)."""
    return {m: design_mde([cells[m] for cells in paired.values()]) for m in METRICS}


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
    """Why effects do or do not show, judged against the data's attribute oracle (DESIGN.md),
    the zero-shot backbone (``zero_shot``: its ``{metric: cell}``, optional) and the paired
    verdicts (``paired``: :func:`paired_comparison`, computed when None)."""
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
                     "training are too small. More epochs alone do not lift it (README, 'Results "
                     "of the default run'); the levers are a wider model (`model.tiny.*`), more "
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
        lines.append("- No variant differs from `full` in R1 beyond the seed noise: every paired "
                     "95 % interval includes 0. A true effect below the minimal detectable effect "
                     f"({effect['value']:.1f} points at {100 * effect['power']:.0f} % power) would "
                     "most likely look like this too, so this is no evidence that the components "
                     "do nothing.")
    elif words:
        told = [f"`{v}` ({w})" for v, w in words.items() if w in (HELPS, HURTS)]
        rest = "; every other variant cannot be told apart" if len(told) < len(words) else ""
        lines.append(f"- Told apart from `full` in R1 (paired 95 % interval excludes 0): "
                     f"{', '.join(told)}{rest}.")
    return lines


ZERO_SHOT_ROW = "pretrained backbone, no fine-tuning (one model)"


def ablation_markdown(table: dict, deltas: dict, descriptions: dict[str, str],
                      setup: list[str], final_table: dict | None = None,
                      findings: list[str] = (), paired: dict | None = None,
                      effects: dict | None = None, zero_shot: dict | None = None) -> str:
    """The whole reports/ablation.md text (``paired`` / ``effects``: :func:`paired_comparison`
    and :func:`detectable_effects` of ``table``, computed when None; ``zero_shot``: the
    ``{metric: cell}`` of the zero_shot stage, shown as the table's first row, or None)."""
    paired = paired_comparison(table) if paired is None else paired
    effects = detectable_effects(paired) if effects is None else effects
    head = "| variant | what | " + " | ".join(METRICS) + " | ΔR1 vs full | ΔmAP vs full |"
    rule = "|---" * (len(METRICS) + 4) + "|"
    rows = []
    if zero_shot:
        rows.append(f"| `zero_shot` | {ZERO_SHOT_ROW} | "
                    + " | ".join(_fmt(zero_shot[m]) for m in METRICS) + " | — | — |")
    for variant, metrics in table.items():
        d = deltas.get(variant)
        dr1 = "—" if d is None else _delta(d["R1"], paired[variant]["R1"])
        dmap = "—" if d is None else _delta(d["mAP"], paired[variant]["mAP"])
        rows.append(f"| `{variant}` | {descriptions.get(variant, '')} | "
                    + " | ".join(_fmt(metrics[m]) for m in METRICS) + f" | {dr1} | {dmap} |")
    if any(single_seed(c) for cells in table.values() for c in cells.values()):
        how = ("A single seed per variant (`report.seeds` lists one): each number is one run, in "
               "percent, so the seed noise is unknown and no delta is marked significant: a single "
               "seed can show a difference, never a significance. List two or more seeds (e.g. "
               "`report.seeds=[0, 1, 2]`) to measure it.")
    else:
        how = ("Mean ± standard deviation over seeds, in percent; Δ is the difference of the "
               "means. `*` marks a delta to `full` whose paired 95 % interval over seeds excludes "
               "0 (next section).")
    parts = ["# PFCVR ablation study", "",
             "Text-to-image retrieval on the test split (identities never seen in training or model "
             "selection); the checkpoint of each run is the epoch with the best validation "
             f"Rank-1. {how}", "",
             "## Setup", "", *setup, "",
             "## Results (best-on-val checkpoint)", "", head, rule, *rows, "",
             *paired_section(paired, effects),
             "## What each component does here", "", *verdicts(paired, descriptions), ""]
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


RESERVED = ("paired", f"mde_{VERDICT_METRIC}", "mde", "zero_shot")   # top-level JSON keys next to the variants


def ablation_json(table: dict, deltas: dict, paired: dict | None = None,
                  effects: dict | None = None) -> dict[str, Any]:
    """DVC metrics. ``{variant: {metric: {"mean", "std", "runs", "single_seed",
    "delta_vs_full"?, "within_noise"?}}}`` (with a single run ``std`` and ``within_noise`` are
    null, unknown, not 0 and a verdict; ``within_noise``: the unpaired band), then
    ``paired``: ``{"reference", "confidence", "interval", "variants": {variant: {"verdict",
    "only_variant", "only_reference", "metrics": {metric: {"n", "seeds", "differences", "mean",
    "sd", "ci_low", "ci_high"}}}}}``, ``mde_R1`` (points, null with a single seed) and ``mde``
    (how it was computed, and the MDE of every metric under ``by_metric``).

    Raises ValueError when a variant is named like one of the top-level keys (RESERVED).
    """
    clash = [v for v in table if v in RESERVED]
    if clash:
        raise ValueError(f"variant name(s) {clash} clash with the report's keys {RESERVED}")
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


def pretrain_lines(stats: dict) -> list[str]:
    """The pretraining corpus and run, from the pretrain stage's stats (empty: no lines)."""
    if not stats:
        return []
    shared = stats.get("shared_full_attribute_sets_with_benchmark")
    disjoint = (f"{shared} full attribute sets shared with the benchmark's identities"
                if stats.get("identity_disjoint_check") == "checked"
                else "identity overlap with the benchmark not checkable (no attribute annotations)")
    return [f"- pretraining (`model.backbone: pretrained`): {stats['n_images']} corpus images of "
            f"{stats['n_ids']} vehicles with coarse alt-text captions ({disjoint}); "
            f"{stats['steps']} steps of batch {stats['batch_size']} in {stats['seconds']:.0f} s; "
            f"zero-shot val R1 {stats['final_val_R1']:.1f}"]


@dataclass(frozen=True)
class AblationReport:
    """The ablation study of every variant of ``report.variants``.

    table / final: ``{variant: {metric: {"mean", "std", "runs", "seeds"}}}`` of the best-on-val
    and the last-epoch checkpoints; deltas: :func:`compare` of ``table``; markdown:
    reports/ablation.md; document: reports/ablation.json (:func:`ablation_json`); paired:
    :func:`paired_comparison` of ``table``; effects: :func:`detectable_effects` of ``paired``.
    """

    table: dict
    final: dict
    deltas: dict
    markdown: str
    document: dict
    paired: dict
    effects: dict

    def mlflow_metrics(self) -> dict[str, float]:
        """``<variant>/<metric>`` = the best-checkpoint mean over seeds; ``<variant>/paired_dR1``
        = the mean paired R1 difference to `full`; ``mde_R1`` when defined."""
        out = {f"{v}/{m}": cells[m]["mean"] for v, cells in self.table.items() for m in METRICS}
        out.update({f"{v}/paired_d{VERDICT_METRIC}": cells[VERDICT_METRIC].mean
                    for v, cells in self.paired.items() if cells[VERDICT_METRIC].mean is not None})
        if self.effects[VERDICT_METRIC]["value"] is not None:
            out[f"mde_{VERDICT_METRIC}"] = self.effects[VERDICT_METRIC]["value"]
        return out

    @property
    def figure_data(self) -> dict:
        """``{variant: {metric: {"n", "seeds", "differences", "mean", "sd", "ci_low",
        "ci_high"}}}`` for :func:`pfcvr.viz.ablation_figure`."""
        return {v: {m: p.as_dict() for m, p in cells.items()} for v, cells in self.paired.items()}

    @property
    def mde_values(self) -> dict[str, float | None]:
        """``{metric: minimal detectable effect}`` (None with a single seed)."""
        return {m: e["value"] for m, e in self.effects.items()}

    def results_section(self) -> str:
        """The markdown of the results table, the paired differences with the minimal
        detectable effect, and the per-component verdicts (for the log)."""
        body = self.markdown.split("## Results (best-on-val checkpoint)")[-1]
        return body.split("## Reading the numbers")[0].split("## Final-epoch")[0].split(
            "## Published numbers")[0]


def ablation_report(params, metrics_dir: str | Path, data_stats: str | Path,
                    pretrain_stats: str | Path | None = None) -> AblationReport:
    """Read ``<metrics_dir>/<variant>.json`` for every variant of ``params.report.variants``, the
    prepare stage's ``data_stats`` JSON, the zero_shot stage's ``<metrics_dir>/zero_shot.json``
    and the pretrain stage's ``pretrain_stats`` JSON (each optional: skipped when missing),
    compare every variant with ``full`` and write the report text.

    Raises FileNotFoundError / ValueError naming a missing or incomplete metrics file, and
    ValueError when ``full`` has no results.
    """
    from pfcvr.config import variant_description

    variants = list(params.report.variants)
    descriptions = {v: variant_description(params, v) for v in variants}
    table = collect(variants, metrics_dir, "best")
    final = collect(variants, metrics_dir, "final")
    deltas = compare(table)
    paired = paired_comparison(table)
    effects = detectable_effects(paired)
    stats = read_json(data_stats) if Path(data_stats).is_file() else {}
    zs_path = Path(metrics_dir) / f"{ZERO_SHOT}.json"
    zero_shot = collect([ZERO_SHOT], metrics_dir, "best")[ZERO_SHOT] if zs_path.is_file() else None
    pre = read_json(pretrain_stats) if pretrain_stats and Path(pretrain_stats).is_file() else {}
    setup = setup_lines(params, stats) + pretrain_lines(pre)
    findings = diagnosis(table, deltas, stats, paired=paired, zero_shot=zero_shot)
    md = ablation_markdown(table, deltas, descriptions, setup, final, findings, paired, effects,
                           zero_shot)
    document = ablation_json(table, deltas, paired, effects)
    if zero_shot:
        document["zero_shot"] = {m: zero_shot[m]["mean"] for m in METRICS}
    return AblationReport(table, final, deltas, md, document, paired, effects)
