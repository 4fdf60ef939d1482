"""The work of the DVC stage ``report``: read every variant's metrics, compare each with the
reference variant, assemble reports/ablation.md and reports/ablation.json (``stages/report.py``
only does the I/O around :func:`ablation_report`).

The tables, paired statistics and wording are :mod:`pfcvr.report.ablation`,
:mod:`pfcvr.report.paired` and :mod:`pfcvr.report.verdicts`; this module reads the stage's inputs
(the metrics files, the prepare and pretrain stats, the params) and puts them together.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from pfcvr.config import variant_description
from pfcvr.metrics import METRIC_NAMES
from pfcvr.paths import ZERO_SHOT
from pfcvr.report.ablation import (ablation_json, ablation_markdown, collect, compare,
                                   detectable_effects, diagnosis, paired_comparison)
from pfcvr.report.verdicts import VERDICT_METRIC
from pfcvr.runtime.atomic import read_json


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
        lines.append("- attribute oracle on test (calibration: docs/data.md): " +
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
        out = {f"{v}/{m}": cells[m]["mean"] for v, cells in self.table.items()
               for m in METRIC_NAMES}
        out.update({f"{v}/paired_d{VERDICT_METRIC}": cells[VERDICT_METRIC].mean
                    for v, cells in self.paired.items() if cells[VERDICT_METRIC].mean is not None})
        if self.effects[VERDICT_METRIC]["value"] is not None:
            out[f"mde_{VERDICT_METRIC}"] = self.effects[VERDICT_METRIC]["value"]
        return out

    @property
    def figure_data(self) -> dict:
        """``{variant: {metric: {"n", "seeds", "differences", "mean", "sd", "ci_low",
        "ci_high"}}}`` for :func:`pfcvr.report.figures.ablation.ablation_figure`."""
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
    compare every variant with ``full`` (:data:`pfcvr.config.REFERENCE_VARIANT`) and write the
    report text.

    Raises FileNotFoundError / ValueError naming a missing or incomplete metrics file, and
    ValueError when ``full`` has no results.
    """
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
        document["zero_shot"] = {m: zero_shot[m]["mean"] for m in METRIC_NAMES}
    return AblationReport(table, final, deltas, md, document, paired, effects)
