"""Figures of the Optuna study: objective per trial, parameter importance."""
from __future__ import annotations

from pfcvr.report.figures import plt, save_figure


def tune_history_figure(trials: list[dict], path) -> None:
    """Objective per trial (complete, pruned at its last report, failed) and the best so far.

    ``trials``: ``[{"number", "value", "state"}]`` in trial order.
    """
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    style = {"COMPLETE": ("tab:blue", "o"), "PRUNED": ("tab:orange", "x"), "FAIL": ("tab:red", "v")}
    best, best_x, best_y = None, [], []
    for t in trials:
        color, marker = style.get(t["state"], ("gray", "."))
        if t["value"] is not None:
            ax.scatter(t["number"], t["value"], color=color, marker=marker, zorder=3)
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = t["value"] if best is None else max(best, t["value"])
        if best is not None:
            best_x.append(t["number"])
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="black", linewidth=1, label="best so far")
    for state, (color, marker) in style.items():
        ax.scatter([], [], color=color, marker=marker, label=state.lower())
    ax.set_xlabel("trial")
    ax.set_ylabel("val Rank-1 (%)")
    ax.set_title("Optuna study: validation Rank-1 per trial")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def importance_figure(importance: dict[str, float], path) -> None:
    """Horizontal bars of fANOVA parameter importance (a note when there is too little data)."""
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * max(len(importance), 3) + 1.2))
    if importance:
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names], color="tab:green")
        ax.set_xlabel("importance (fANOVA, sums to 1)")
    else:
        ax.text(0.5, 0.5, "fewer than two complete trials:\nno importance estimate",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("Which tuned parameter mattered for val Rank-1")
    save_figure(fig, path)
