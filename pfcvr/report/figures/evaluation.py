"""Figures of a test evaluation: the CMC curve and the top-k retrieved images per query."""
from __future__ import annotations

from pfcvr.report.figures import plt, save_figure


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
    :func:`pfcvr.report.explain.topk_figure_items`): ``n_facts`` (int, facts the caption
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
