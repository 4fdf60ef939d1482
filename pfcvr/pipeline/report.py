"""The work of the DVC stage ``report``: read every variant's metrics, compare each with the
reference variant, assemble reports/ablation.md and reports/ablation.json (``stages/report.py``
only does the I/O around :func:`ablation_report`).

The tables, paired statistics and wording are :mod:`pfcvr.report.ablation`,
:mod:`pfcvr.report.paired` and :mod:`pfcvr.report.verdicts`; what the report states about its
setup (data, backbone, epochs, recipe, seeds, splits, pretraining) comes from the inputs it read,
and every disagreement with the params is a warning at its top (:mod:`pfcvr.report.provenance`).
This module reads the stage's inputs and puts them together.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from pfcvr.config import variant_description
from pfcvr.metrics import METRIC_NAMES
from pfcvr.paths import ZERO_SHOT
from pfcvr.report.ablation import (ablation_json, ablation_markdown, collect, compare,
                                   compare_cells, detectable_effects, diagnosis,
                                   paired_comparison)
from pfcvr.report.provenance import (disagreements, machine_environment, read_inputs,
                                     setup_lines)
from pfcvr.report.verdicts import VERDICT_METRIC
from pfcvr.runtime.output_set import require_whole


@dataclass(frozen=True)
class AblationReport:
    """The ablation study of every variant of ``report.variants``.

    table / final: ``{variant: {metric: {"mean", "std", "runs", "seeds"}}}`` of the best-on-val
    and the last-epoch checkpoints; deltas: :func:`compare` of ``table``; markdown:
    reports/ablation.md; document: reports/ablation.json (:func:`ablation_json`); paired:
    :func:`paired_comparison` of ``table``; effects: :func:`detectable_effects` of ``paired``;
    problems: where the inputs disagree with the params
    (:func:`pfcvr.report.provenance.disagreements`), also at the top of ``markdown``.
    """

    table: dict
    final: dict
    deltas: dict
    markdown: str
    document: dict
    paired: dict
    effects: dict
    problems: tuple[str, ...] = ()

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
    def compare_document(self) -> dict:
        """reports/compare.json (:func:`pfcvr.report.ablation.compare_cells` of ``table``)."""
        return compare_cells(self.table)

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
    report text. Its setup section states what the inputs hold; each disagreement with the
    params is one UserWarning and a line at the top of the report.

    Raises FileNotFoundError / ValueError naming a missing or incomplete metrics file (or one
    that holds another variant), IncompleteOutputs for a metrics file whose evaluate stage was
    killed while publishing, and ValueError when ``full`` has no results.
    """
    variants = list(params.report.variants)
    for v in variants:
        require_whole(Path(metrics_dir) / f"{v}.json", f"evaluate@{v}")
    descriptions = {v: variant_description(params, v) for v in variants}
    inputs = read_inputs(variants, metrics_dir, data_stats, pretrain_stats)
    table = collect(variants, metrics_dir, "best")
    final = collect(variants, metrics_dir, "final")
    deltas = compare(table)
    paired = paired_comparison(table)
    effects = detectable_effects(paired)
    zs_path = Path(metrics_dir) / f"{ZERO_SHOT}.json"
    zero_shot = collect([ZERO_SHOT], metrics_dir, "best")[ZERO_SHOT] if zs_path.is_file() else None
    problems = disagreements(inputs, params)
    for line in problems:
        warnings.warn(line, stacklevel=2)
    findings = diagnosis(table, deltas, inputs.data, paired=paired, zero_shot=zero_shot)
    md = ablation_markdown(table, deltas, descriptions, setup_lines(inputs), final, findings,
                           paired, effects, zero_shot, warnings=problems,
                           zero_shot_backbone=inputs.zero_shot_backbone,
                           data_source=inputs.common("data_source") or inputs.data.get("source"))
    document = ablation_json(table, deltas, paired, effects)
    document["environment"] = machine_environment()
    if zero_shot:
        document["zero_shot"] = {m: zero_shot[m]["mean"] for m in METRIC_NAMES}
    return AblationReport(table, final, deltas, md, document, paired, effects, tuple(problems))


def publish(report: AblationReport, markdown: str | Path, document: str | Path,
            compare: str | Path, figure: str | Path) -> None:
    """Write the report's outputs as one set (:class:`pfcvr.runtime.output_set.OutputSet`,
    primary ``document``): ``markdown`` (reports/ablation.md), ``compare`` (reports/compare.json),
    the figure (optional: one that cannot be drawn is a warning and a placeholder) and, last,
    ``document`` (reports/ablation.json, the DVC metrics)."""
    import json

    from pfcvr.report.figures.ablation import ablation_figure
    from pfcvr.runtime.output_set import OutputSet

    with OutputSet(document) as outs:
        outs.file(markdown).write_text(report.markdown)
        outs.file(compare).write_text(json.dumps(report.compare_document, indent=2) + "\n")
        outs.figure(figure, lambda path: ablation_figure(report.figure_data, path,
                                                         mde=report.mde_values), "ablation figure")
        outs.file(document).write_text(json.dumps(report.document, indent=2) + "\n")
