"""Training curves: fine-tuning per epoch and seed, pretraining per checkpoint."""
from __future__ import annotations

from pfcvr.report.figures import plt, save_figure


def train_history_figure(rows: list[dict], path, title: str = "training") -> None:
    """Per-epoch training curves: total loss, each computed loss term, and val Rank-1.

    ``rows``: history rows (``seed``, ``epoch``, ``loss``, ``sdm`` ... ``part``, ``val_R1``);
    one line per seed; a term that is None in every row (branch off) gets no panel.
    """
    from matplotlib.ticker import MaxNLocator

    from pfcvr.losses import TERMS     # torch: imported when a figure is drawn

    terms = [k for k in ("loss", *TERMS, "val_R1")
             if any(r.get(k) is not None for r in rows)]
    labels = {"loss": "weighted total loss", "val_R1": "val Rank-1 (%)"}
    ncol = min(4, max(1, len(terms)))
    nrow = -(-len(terms) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    seeds = sorted({r["seed"] for r in rows})
    for ax, key in zip(axes.flat, terms):
        for seed in seeds:
            pts = [(r["epoch"], r[key]) for r in rows if r["seed"] == seed and r.get(key) is not None]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o", markersize=3, label=f"seed {seed}")
        ax.set_title(labels.get(key, f"{key} loss (unweighted)"), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    if terms:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def pretrain_figure(history: list[dict], path, oracle_val_R1: float | None = None,
                    title: str = "pretrain: CLIP-style pretraining of the tiny backbone") -> None:
    """Pretraining curves: mean InfoNCE loss per checkpoint interval, and the zero-shot val
    Rank-1 of each checkpoint (``history`` rows ``step``, ``loss``, ``val_R1``), with the
    type+colour attribute oracle on val as a reference line when given."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [r["step"] for r in history]
    a.plot(steps, [r["loss"] for r in history], marker="o", markersize=3)
    a.set_title("contrastive loss (mean since last checkpoint)", fontsize=10)
    b.plot(steps, [r["val_R1"] for r in history], marker="o", markersize=3, label="zero-shot")
    if oracle_val_R1 is not None:
        b.axhline(oracle_val_R1, color="grey", ls="--", label="type+colour oracle")
        b.legend(fontsize=8)
    b.set_title("zero-shot val Rank-1 (%) per checkpoint", fontsize=10)
    for ax in (a, b):
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
