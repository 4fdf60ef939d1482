"""Markdown of the paired comparison with `full`: interval table, per-component verdicts, MDE.

The words of the report's "Paired differences" and "What each component does here" sections;
the arithmetic is :mod:`pfcvr.report.paired`. ``paired``: ``{variant: {metric:
PairedDifference}}`` (pfcvr.report.ablation.paired_comparison); ``effect``: one metric's
:func:`pfcvr.report.paired.design_mde`.
"""
from __future__ import annotations

from pfcvr.config import REFERENCE_VARIANT as REFERENCE   # "full"
from pfcvr.report.paired import (ALPHA, HELPS, HURTS, NO_PAIR, SINGLE, UNCLEAR, PairedDifference,
                                 verdict)

VERDICT_METRIC = "R1"   # the metric of the plain verdicts and of the headline MDE (`mde_R1`)


def _interval(pair: PairedDifference) -> str:
    if pair.n == 0:
        return "—"
    if pair.low is None:
        return f"{pair.mean:+.1f} (1 seed)"
    return f"{pair.mean:+.1f} [{pair.low:+.1f}, {pair.high:+.1f}]"


def _dropped(pair: PairedDifference, variant: str, reference: str = REFERENCE) -> str:
    """Which seeds the pairing left out and why ('' when none)."""
    notes = []
    if pair.only_variant:
        notes.append(f"seed {', '.join(map(str, pair.only_variant))} of `{variant}` dropped "
                     f"(no `{reference}` run with it)")
    if pair.only_reference:
        notes.append(f"seed {', '.join(map(str, pair.only_reference))} of `{reference}` dropped "
                     f"(no `{variant}` run with it)")
    return "; ".join(notes)


def verdicts(paired: dict, descriptions: dict[str, str], metric: str = VERDICT_METRIC
             ) -> list[str]:
    """Plain sentences from the paired ``metric`` interval: does what each variant removes or
    changes help, hurt, or cannot it be told apart from `full`?"""
    lines = []
    for variant, cells in paired.items():
        p = cells[metric]
        what = descriptions.get(variant, variant)
        word = verdict(p)
        if word == NO_PAIR:
            line = (f"- `{variant}` ({what}): no seed in common with `{REFERENCE}`, not compared "
                    f"({_dropped(p, variant)}).")
        elif word == SINGLE:
            line = (f"- `{variant}` ({what}): {metric} {p.mean:+.1f} against `{REFERENCE}`, from "
                    "a single seed: a difference, not a significance (one seed gives no "
                    "estimate of the seed noise; list two or more seeds in report.seeds).")
        else:
            why = {HELPS: f"the interval lies below 0: the variant is worse than `{REFERENCE}`",
                   HURTS: f"the interval lies above 0: the variant is better than `{REFERENCE}`",
                   UNCLEAR: "the interval includes 0"}[word]
            line = (f"- `{variant}` ({what}): **{word}** — {metric} {p.mean:+.1f} against "
                    f"`{REFERENCE}`, {100 * (1 - ALPHA):g} % CI [{p.low:+.1f}, {p.high:+.1f}] "
                    f"paired over {p.n} seeds; {why}.")
        dropped = _dropped(p, variant)
        if dropped and word != NO_PAIR:
            line += f" Pairing: {dropped}."
        lines.append(line)
    return lines


def mde_line(effect: dict, metric: str = VERDICT_METRIC) -> str:
    """The design's minimal detectable effect in one sentence (``effect``: design_mde)."""
    if effect["value"] is None:
        return (f"- Minimal detectable effect ({metric}): not defined: with a single seed there "
                "is no estimate of the spread of the paired differences.")
    n, q_alpha = effect["n_seeds"], 1 - effect["alpha"] / 2
    return (f"- Minimal detectable effect ({metric}): **{effect['value']:.1f} points**, the true "
            f"{metric} difference that the paired two-sided test at α = {effect['alpha']:g} finds "
            f"with {100 * effect['power']:.0f} % power over {n} seeds. It uses s_d = "
            f"{effect['sd']:.2f}, the standard deviation of the paired {metric} differences pooled "
            f"over the {effect['n_variants']} variants ({effect['sd_df']} degrees of freedom), and "
            f"the exact noncentral-t power; the approximation (t_{q_alpha:g},{n - 1} + "
            f"t_{effect['power']:.2f},{n - 1}) · s_d / √{n} gives {effect['approx']:.1f}.")


def paired_section(paired: dict, effects: dict) -> list[str]:
    """The markdown lines of the paired-difference table and the MDE."""
    ns = sorted({cells[VERDICT_METRIC].n for cells in paired.values()})
    span = f"{ns[0]}–{ns[-1]}" if len(ns) > 1 else "".join(map(str, ns))
    lines = [f"## Paired differences to `{REFERENCE}`", "",
             f"Each variant's seed k minus `{REFERENCE}`'s seed k (the same seed gives both the "
             "same initial weights where shapes allow, the same data order and augmentation "
             "stream), averaged over the seeds both ran" + (f" ({span} here)" if ns else "")
             + f", with the two-sided {100 * (1 - ALPHA):g} % Student t interval (n − 1 degrees "
             f"of freedom), in points. The verdict reads the {VERDICT_METRIC} interval: **helps** "
             "when it lies below 0, **hurts** when above 0, **cannot be told apart** when it "
             "includes 0.", "",
             f"| variant | paired seeds | Δ{VERDICT_METRIC} [95 % CI] | ΔmAP [95 % CI] | "
             f"verdict ({VERDICT_METRIC}) |",
             "|---|---|---|---|---|"]
    for variant, cells in paired.items():
        p = cells[VERDICT_METRIC]
        lines.append(f"| `{variant}` | {', '.join(map(str, p.seeds)) or '—'} | {_interval(p)} | "
                     f"{_interval(cells['mAP'])} | {verdict(p)} |")
    return lines + ["", mde_line(effects[VERDICT_METRIC]), ""]

