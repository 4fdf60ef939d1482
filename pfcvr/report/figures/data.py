"""Figures of the data: sample images with their part boxes, part crops with their phrases."""
from __future__ import annotations

from pfcvr.report.figures import plt, save_figure


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

    from pfcvr.data.categories import PART_CATEGORIES

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


def data_samples_figure(items: list[dict], path, title: str = "Data samples", ncols: int = 4) -> None:
    """A grid of dataset images, each with its part boxes (labelled by category) and a caption.

    ``items``: ``[{image: uint8 [H, W, 3], caption: str, label: str, parts: {category: [x0, y0,
    x1, y1] in 0..1}, grids: {category: 2-D 0/1 list} (optional)}]``
    (pfcvr.pipeline.prepare.sample_items). Box colours follow ``PART_COLORS`` in ``PART_CATEGORIES``
    order; a grid (a part made of separate pieces, e.g. two wheels) is shaded inside its box.
    """
    import textwrap

    import numpy as np
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from pfcvr.data.categories import PART_CATEGORIES

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
