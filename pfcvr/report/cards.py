"""Plain-text reports written next to models and metrics: model cards (markdown) and the TSV
tables that DVC plots read. One module, so the train and evaluate cards share their format.
"""
from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Training: history TSV, per-variant summary, model card (owned by the train-side helper)
# ---------------------------------------------------------------------------------------------

import statistics

from pfcvr.config import flatten
from pfcvr.losses import TERMS

# Columns of reports/train/<variant>/history.tsv, one row per (seed, epoch); DVC plots and the
# tests read them by name. A loss term whose branch is off is an empty cell.
HISTORY_COLUMNS = ("seed", "epoch", "step", "loss", *TERMS, "lr", "val_R1", "val_mAP",
                   "samples_per_s", "seconds")


def history_tsv(rows: list[dict], columns: tuple[str, ...] = HISTORY_COLUMNS) -> str:
    """A history as TSV text: a header of ``columns``, then one line per row.

    ``rows``: history rows, by default the Trainer's (keys of HISTORY_COLUMNS; the pretrain stage
    passes its own columns); missing keys and None are empty cells; floats are written with 6
    significant digits.
    """
    def cell(v) -> str:
        if v is None:
            return ""
        return f"{v:.6g}" if isinstance(v, float) else str(v)
    lines = ["\t".join(columns)]
    lines += ["\t".join(cell(r.get(c)) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def mean_std(cell: dict, digits: int = 2) -> str:
    """``"mean ± std"`` of a ``{"mean", "std", "runs"}`` cell over seeds; the mean alone with
    ``(1 seed)`` for a single run, whose std of 0 is no measure of the seed noise."""
    if len(cell.get("runs", ())) < 2:
        return f"{cell['mean']:.{digits}f} (1 seed)"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def _mean(xs: list[float]) -> float:
    return float(statistics.fmean(xs)) if xs else float("nan")


def train_summary(variant: str, results: list[dict]) -> dict:
    """Val metrics per seed and averaged over seeds, and training times (seconds).

    ``results``: one dict per seed as ``TrainResult.to_dict()`` gives it (``seed``, ``best``
    (None without a val split), ``final``, ``seconds``, ``history``). Means over an empty list are
    NaN. Keys: variant, seeds, best_val_R1_mean, best_val_mAP_mean, final_val_R1_mean,
    final_loss_mean, train_seconds_total, samples_per_s_mean, train_seconds_per_seed and
    ``seed<k>/best_val_R1`` / ``seed<k>/best_epoch`` per seed with a best epoch.
    """
    best = [r["best"] for r in results if r.get("best")]
    final = [r["final"] for r in results]
    out = {"variant": variant, "seeds": [r["seed"] for r in results],
           "best_val_R1_mean": _mean([b["R1"] for b in best]),
           "best_val_mAP_mean": _mean([b["mAP"] for b in best]),
           "final_val_R1_mean": _mean([f["val_R1"] for f in final if f.get("val_R1") is not None]),
           "final_loss_mean": _mean([f["loss"] for f in final]),
           "train_seconds_total": float(sum(r["seconds"] for r in results)),
           "samples_per_s_mean": _mean([row["samples_per_s"] for r in results
                                        for row in r["history"]])}
    out["train_seconds_per_seed"] = out["train_seconds_total"] / max(len(results), 1)
    for r in results:
        if r.get("best"):
            out[f"seed{r['seed']}/best_val_R1"] = r["best"]["R1"]
            out[f"seed{r['seed']}/best_epoch"] = r["best"]["epoch"]
    return out


def train_model_card(variant: str, description: str, params, base, summary: dict,
                     results: list[dict]) -> str:
    """models/<variant>/MODEL_CARD.md: what was trained, how it differs from base, val metrics.

    ``params``: the variant's merged params; ``base``: the params without a variant (the diff
    lists the ``model.*`` / ``train.*`` keys that differ); ``summary``: ``train_summary(...)``;
    ``results``: the seeds' result dicts. Returns markdown text.
    """
    cur, ref = flatten(params), flatten(base)
    diff = [(k, ref.get(k), v) for k, v in cur.items()
            if k.startswith(("model.", "train.")) and ref.get(k) != v]
    t = params.train
    lines = [f"# Model card: `{variant}`", "", description, "",
             f"- backbone: `{params.model.backbone}`, input {params.model.image_size} px",
             f"- {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g}, precision {t.precision}, "
             f"seeds {summary['seeds']}",
             "- loss weights: " + ", ".join(f"{k} {getattr(t.weights, k):g}" for k in TERMS),
             "- selection: best val Rank-1 (the test split is not read by training)", "",
             "## Params that differ from the base configuration", ""]
    lines += ([f"| parameter | base | `{variant}` |", "|---|---|---|"] +
              [f"| `{k}` | {a} | {b} |" for k, a, b in diff]) if diff else ["(none)"]
    lines += ["", "## Validation metrics", "", "| seed | best epoch | best val R1 | best val mAP |"
              " final val R1 | train time (s) |", "|---|---|---|---|---|---|"]
    for r in results:
        b, f = r.get("best") or {}, r["final"]
        lines.append(f"| {r['seed']} | {b.get('epoch', '-')} | {b.get('R1', float('nan')):.2f} | "
                     f"{b.get('mAP', float('nan')):.2f} | {f.get('val_R1') or float('nan'):.2f} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", f"Mean best val R1 {summary['best_val_R1_mean']:.2f}, mean best val mAP "
              f"{summary['best_val_mAP_mean']:.2f}; total training time "
              f"{summary['train_seconds_total']:.1f} s.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Evaluation: CMC TSV, evaluation model card (owned by the evaluate-side helper)
# ---------------------------------------------------------------------------------------------

def cmc_table(curves: dict[str, list[list[float]]]) -> str:
    """reports/eval/<variant>/cmc.tsv (a DVC plot): ``rank`` then one column per label.

    ``curves``: ``{label: [[percent at rank 1..K] per run]}``; each column is the mean over runs,
    4 decimals; rows stop at the shortest curve. Returns TSV text ending in a newline.
    """
    import numpy as np  # the same float64 mean as the figures, so the two always agree

    labels = list(curves)
    means = {k: np.asarray(v, dtype=np.float64).reshape(len(v), -1).mean(0)
             for k, v in curves.items()}
    n = min(len(m) for m in means.values())
    lines = ["\t".join(["rank", *labels])]
    lines += ["\t".join([str(r + 1), *(f"{means[k][r]:.4f}" for k in labels)]) for r in range(n)]
    return "\n".join(lines) + "\n"


def _fusion_note(info: dict) -> str:
    if info.get("part_fusion_note"):          # asked for, skipped by the part-context rule
        return f"; {info['part_fusion_note']}"
    if info.get("part_fusion"):
        return f"; `*_part_fusion` adds {info['part_fusion']} x mean part-query cosine"
    return ""


def evaluation_card(variant: str, description: str, summary: dict[str, dict[str, dict]],
                    models: dict[str, dict], info: dict) -> str:
    """reports/eval/<variant>/model_card.md: what was evaluated, how, the test numbers.

    ``summary``: ``{checkpoint: {metric: {"mean", "std", "runs"}}}`` (columns in the order of
    the first checkpoint's metrics); ``models``: ``{label: {"folder", "extra"}}`` (extra = what
    training saved with the model); ``info``: the metrics JSON's protocol keys (split, seeds,
    n_queries, n_gallery, part_fusion, part_fusion_note?). Returns markdown text.
    """
    names = list(next(iter(summary.values()), {}))
    lines = [f"# Model card: `{variant}`", "", description, "",
             "## Test retrieval (text to image, IRRA/PFCVR protocol)", "",
             f"- split: {info.get('split', 'test')}; {info.get('n_queries', '?')} caption queries "
             f"against {info.get('n_gallery', '?')} gallery images; every image of the query's "
             "identity is relevant",
             f"- seeds: {', '.join(map(str, info.get('seeds', [])))}; `best` = checkpoint selected "
             "on val Rank-1 (the primary number), `final` = last epoch",
             "- scoring: cosine of global features" + _fusion_note(info), "",
             "| checkpoint | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for kind, res in summary.items():
        cells = [mean_std(res[m]) for m in names]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "## Models", ""]
    for label, m in models.items():
        extra = m.get("extra") or {}
        shown = {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))}
        notes = ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "no training metadata"
        lines.append(f"- `{label}`: {m['folder']} ({notes})")
    return "\n".join(lines) + "\n"
