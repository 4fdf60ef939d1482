"""Matplotlib figures (PNG; `dvc plots show` HTML needs a CDN, these do not).

Every function takes plain data, returns nothing, and writes one PNG atomically with
:func:`pfcvr.io.save_figure`. The Agg backend is forced: stages run headless.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401

from pfcvr.io import save_figure  # noqa: E402,F401



def ablation_figure(paired: dict, path, mde: dict | None = None, metrics=("R1", "mAP"),
                    reference: str = "full") -> None:
    """Forest plot of each variant's paired difference to ``reference``, one panel per metric.

    ``paired``: ``{variant: {metric: {"n", "differences", "mean", "ci_low", "ci_high"}}}``
    (pfcvr.report.AblationReport.figure_data; points, variant minus reference seed by seed);
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


def train_history_figure(rows: list[dict], path, title: str = "training") -> None:
    """Per-epoch training curves: total loss, each computed loss term, and val Rank-1.

    ``rows``: history rows (``seed``, ``epoch``, ``loss``, ``sdm`` ... ``part``, ``val_R1``);
    one line per seed; a term that is None in every row (branch off) gets no panel.
    """
    from matplotlib.ticker import MaxNLocator

    terms = [k for k in ("loss", "sdm", "id", "mlm", "mim", "part", "val_R1")
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


PART_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def part_pairs_figure(items: list[dict], path, categories=None, title: str | None = None) -> None:
    """Part pairs: per image row, the image with its part boxes, then each part crop above the
    caption phrase assigned to that part (grey panel = no region).

    ``items``: ``[{image: uint8 [H, W, 3], title: str, regions: {category: [x0, y0, x1, y1] in
    0..1 or None}, phrases: {category: [str, ...]}}]`` (pfcvr.data.parts.figure_items).
    """
    import textwrap

    import numpy as np
    from matplotlib.patches import Rectangle

    from pfcvr.config import PART_CATEGORIES

    cats = list(categories or PART_CATEGORIES)
    rows, cols = max(len(items), 1), len(cats) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.75 * rows), squeeze=False)
    for r, item in enumerate(items):
        img = np.asarray(item["image"])
        h, w = img.shape[:2]
        ax = axes[r, 0]
        ax.imshow(img, interpolation="nearest")
        for k, cat in enumerate(cats):
            box = item["regions"].get(cat)
            if box is not None:
                x0, y0, x1, y1 = box
                ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h,
                                       fill=False, lw=1.3, color=PART_COLORS[k % len(PART_COLORS)]))
        ax.set_title(item.get("title", ""), fontsize=6.5)
        ax.axis("off")
        for k, cat in enumerate(cats):
            ax = axes[r, k + 1]
            box = item["regions"].get(cat)
            if box is None:
                ax.imshow(np.full((8, 8, 3), 0.85))
                ax.text(4, 4, "no region", ha="center", va="center", fontsize=7, color="0.35")
            else:
                x0, y0, x1, y1 = box
                c0, c1 = int(np.floor(x0 * w)), max(int(np.ceil(x1 * w)), int(np.floor(x0 * w)) + 1)
                r0, r1 = int(np.floor(y0 * h)), max(int(np.ceil(y1 * h)), int(np.floor(y0 * h)) + 1)
                ax.imshow(img[r0:r1, c0:c1], interpolation="nearest")
            color = PART_COLORS[k % len(PART_COLORS)]
            ax.set_title(cat, fontsize=8, color=color, fontweight="bold")
            phrases = item["phrases"].get(cat) or []
            text = " | ".join(f"\u201c{p}\u201d" for p in phrases[:2]) if phrases else "(no phrase)"
            ax.set_xlabel(textwrap.fill(text, 24), fontsize=6.5,
                          color="black" if phrases else "0.5")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_edgecolor(color)
    for ax in axes[len(items):].ravel():
        ax.axis("off")
    fig.suptitle(title or "Part pairs: part crop (region) above the caption phrase assigned to it",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def cmc_figure(curves: dict, path, title: str = "CMC curve") -> None:
    """CMC: Rank-k accuracy (%) against k, one line per label (mean over runs, band = min..max).

    ``curves``: ``{label: [[percent per rank] per run]}`` (or one run ``[percent per rank]``).
    """
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for label, runs in curves.items():
        arr = np.atleast_2d(np.asarray(runs, dtype=float))          # [runs, K]
        ks = np.arange(1, arr.shape[1] + 1)
        mean = arr.mean(0)
        r10 = f", R10 {mean[9]:.1f}" if len(mean) >= 10 else ""
        line, = ax.plot(ks, mean, marker="o", markersize=3, label=f"{label} (R1 {mean[0]:.1f}{r10})")
        if arr.shape[0] > 1:
            ax.fill_between(ks, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.15)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("rank k")
    ax.set_ylabel("queries with a correct image in the top k (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(1, None)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def topk_figure(items: list[dict], path, title: str = "Top-k retrieval") -> None:
    """Per row: the query text, the image it describes (blue), then its top-k gallery images
    framed green (right vehicle) or red (wrong vehicle) with their rank and score.

    ``items``: ``[{caption: str, target: uint8 [H, W, 3] or None, images: [uint8 [H, W, 3]],
    correct: [bool or None], scores: [float], label: str (optional row note)}]``; a ``None``
    in ``correct`` (no ground truth, e.g. `pfcvr search`) gets a grey frame.

    Optional ground-truth explanation (synthetic data, from
    :func:`pfcvr.engine.evaluate_variant.topk_figure_items`): ``n_facts`` (int, facts the caption
    states), ``n_matched`` ([int] per image, facts visible and true in it), ``explain`` ([[str]]
    per image: ``"✗ <attribute>: <stated>≠<true>"`` / ``"? <part> (not visible)"`` lines) and
    ``target_matched`` / ``target_explain`` for the described image. Each image then says
    ``matches m/n stated`` and its lines under the rank; the figure gets taller, its labels
    smaller, and a footnote reads the notation.
    """
    import textwrap

    k = max((len(it["images"]) for it in items), default=1)
    has_target = any(it.get("target") is not None for it in items)
    explained = any("explain" in it for it in items)
    ncol = 1 + int(has_target) + k
    if explained:   # room for "matches m/n stated" + up to 3 lines of ~32 characters per image
        n_lines = 2 + max((len(e) for it in items for e in
                           [*it.get("explain", []), it.get("target_explain", [])]), default=0)
        unit, row_h, label_size, wrap = 1.65, 1.75 + 0.13 * n_lines, 6.5, 38
        widths = [1.7] + [1.0] * (ncol - 1)
    else:
        unit, row_h, label_size, wrap = 1.25, 1.55, 7.5, 34
        widths = [2.1] + [1.0] * (ncol - 1)
    foot = 0.3 if explained else 0.0
    fig, axes = plt.subplots(len(items), ncol, squeeze=False,
                             figsize=(sum(widths) * unit, row_h * len(items) + 0.6 + foot),
                             gridspec_kw={"width_ratios": widths})

    def framed(ax, img, color, label):
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_edgecolor(color)
            s.set_linewidth(4)
        ax.set_xlabel(label, fontsize=label_size, color=color, linespacing=1.15)

    def why(it, matched, lines) -> str:
        if "explain" not in it or not it.get("n_facts"):
            return ""
        return "\n" + "\n".join([f"matches {matched}/{it['n_facts']} stated", *lines])

    for row, it in zip(axes, items):
        text_ax = row[0]
        text_ax.axis("off")
        note = f"\n({it['label']})" if it.get("label") else ""
        text_ax.text(0.0, 0.5, textwrap.fill(f"\u201c{it['caption']}\u201d", wrap) + note,
                     fontsize=8, va="center", ha="left", transform=text_ax.transAxes, wrap=True)
        col = 1
        if has_target:
            if it.get("target") is not None:
                framed(row[col], it["target"], "tab:blue", "described image"
                       + why(it, it.get("target_matched"), it.get("target_explain", [])))
            else:
                row[col].axis("off")
            col += 1
        for j in range(k):
            ax = row[col + j]
            if j >= len(it["images"]):
                ax.axis("off")
                continue
            ok = it["correct"][j]
            if ok is None:  # no ground truth (a free search query): neutral frame
                framed(ax, it["images"][j], "0.45", f"#{j + 1}  score {it['scores'][j]:.2f}")
            else:
                extra = why(it, it["n_matched"][j], it["explain"][j]) if "explain" in it else ""
                framed(ax, it["images"][j], "tab:green" if ok else "tab:red",
                       f"#{j + 1} {'right' if ok else 'wrong'} {it['scores'][j]:.2f}" + extra)
    fig.suptitle(title, fontsize=10)
    if explained:
        fig.text(0.5, 0.01, "matches m/n stated: of the n facts the caption states, m are visible "
                 "and true in that image;  \u2717 attribute: stated\u2260true (caption says \u2260 "
                 "image has);  ? part (not visible): the caption names a part that image does "
                 "not show", ha="center", va="bottom", fontsize=7, color="0.25")
    fig.tight_layout(rect=(0, foot / fig.get_figheight(), 1, 1))
    save_figure(fig, path)


def data_samples_figure(items: list[dict], path, title: str = "Data samples", ncols: int = 4) -> None:
    """A grid of dataset images, each with its part boxes (labelled by category) and a caption.

    ``items``: ``[{image: uint8 [H, W, 3], caption: str, label: str, parts: {category: [x0, y0,
    x1, y1] in 0..1}, grids: {category: 2-D 0/1 list} (optional)}]``
    (pfcvr.data.prepare.sample_items). Box colours follow ``PART_COLORS`` in ``PART_CATEGORIES``
    order; a grid (a part made of separate pieces, e.g. two wheels) is shaded inside its box.
    """
    import textwrap

    import numpy as np
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from pfcvr.config import PART_CATEGORIES

    colors = dict(zip(PART_CATEGORIES, PART_COLORS))
    ncols = max(1, min(ncols, len(items)))
    nrows = max(1, -(-len(items) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 4.0 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, it in zip(axes.flat, items):
        img = it["image"]
        h, w = img.shape[:2]
        ax.imshow(img, interpolation="bilinear")
        for cat, grid in (it.get("grids") or {}).items():
            g = np.asarray(grid, dtype=bool)
            overlay = np.zeros(g.shape + (4,))
            overlay[g] = to_rgba(colors.get(cat, "white"), 0.45)
            ax.imshow(overlay, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
        for cat, box in (it.get("parts") or {}).items():
            if box is None:
                continue
            x0, y0, x1, y1 = box
            c = colors.get(cat, "white")
            ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h,
                                   fill=False, edgecolor=c, linewidth=1.6))
            ax.text(x0 * w, y0 * h - 1, cat, color="white", fontsize=6.5, va="bottom",
                    bbox=dict(facecolor=c, edgecolor="none", pad=0.6, alpha=0.85))
        ax.set_title(it.get("label", ""), fontsize=8)
        ax.text(0.5, -0.03, "\n".join(textwrap.wrap(it.get("caption", ""), 46)[:6]),
                transform=ax.transAxes, ha="center", va="top", fontsize=7, wrap=True)
    handles = [Line2D([], [], color=colors[c], linewidth=3, label=c) for c in PART_CATEGORIES]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9,
               bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title, fontsize=11, y=1.03)
    fig.subplots_adjust(hspace=0.55, wspace=0.08, top=0.95)
    save_figure(fig, path)
