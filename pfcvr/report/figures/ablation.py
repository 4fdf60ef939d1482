"""The ablation figure: each variant's paired difference to the reference variant."""
from __future__ import annotations

from pfcvr.config import REFERENCE_VARIANT
from pfcvr.report.figures import plt, save_figure


def ablation_figure(paired: dict, path, mde: dict | None = None, metrics=("R1", "mAP"),
                    reference: str = REFERENCE_VARIANT) -> None:
    """Forest plot of each variant's paired difference to ``reference``, one panel per metric.

    ``paired``: ``{variant: {metric: {"n", "differences", "mean", "ci_low", "ci_high"}}}``
    (pfcvr.pipeline.report.AblationReport.figure_data; points, variant minus reference seed by seed);
    ``mde``: ``{metric: minimal detectable effect or None}``, drawn as a shaded band ±MDE around
    0. The mean is the diamond, its 95 % t interval the error bar (blue: below 0, red: above 0,
    grey: includes 0), the single seeds' differences the open dots just below. Without an
    interval (one seed) only the differences are drawn and the title says so.
    """
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    mde = mde or {}
    variants = list(paired)
    y = np.arange(len(variants))[::-1]          # first variant on top
    ns = sorted({paired[v][metrics[0]]["n"] for v in variants}) or [0]
    fig, axes = plt.subplots(1, len(metrics), sharey=True, squeeze=False,
                             figsize=(4.2 * len(metrics) + 1.6, 0.5 * len(variants) + 2.2))
    for ax, metric in zip(axes[0], metrics):
        band = mde.get(metric)
        if band:
            ax.axvspan(-band, band, color="#fbe8c8", zorder=0)
        ax.axvline(0.0, color="black", linewidth=0.9, zorder=1)
        for yi, v in zip(y, variants):
            cell = paired[v][metric]
            if cell["mean"] is None:
                continue
            dots = cell["differences"]
            ax.scatter(dots, [yi - 0.22] * len(dots), s=14, facecolors="none",
                       edgecolors="0.35", linewidths=0.8, zorder=2)
            low, high = cell["ci_low"], cell["ci_high"]
            if low is None:
                ax.scatter([cell["mean"]], [yi], marker="D", s=30, color="0.3", zorder=3)
                continue
            color = "tab:blue" if high < 0 else "tab:red" if low > 0 else "0.3"
            ax.errorbar([cell["mean"]], [yi], xerr=[[cell["mean"] - low], [high - cell["mean"]]],
                        fmt="D", color=color, markersize=5, capsize=4, zorder=3)
        ax.set_xlabel(f"Δ{metric} vs {reference} (points)")
        ax.set_title(metric + (f"  (MDE {band:.1f})" if band else ""))
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(variants) - 0.5)
    axes[0][0].set_yticks(y, variants)
    handles = [Line2D([], [], marker="D", color="0.3", label="mean, 95 % t interval"),
               Line2D([], [], marker="o", linestyle="none", markerfacecolor="none",
                      markeredgecolor="0.35", label="one seed's difference")]
    if any(mde.get(m) for m in metrics):
        handles.append(Patch(color="#fbe8c8", label="±MDE (α 0.05 two-sided, 80 % power)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    if ns[-1] < 2:
        fig.suptitle(f"Ablations vs {reference}: one seed per variant, differences only "
                     "(no interval: seed noise unknown)", fontsize=10)
    else:
        fig.suptitle(f"Ablations: variant − {reference}, paired over {seeds} seeds "
                     "(blue: lower, red: higher, grey: cannot be told apart)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, path)
