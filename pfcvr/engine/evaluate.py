"""Retrieval evaluation: encode a split's gallery and queries in batches, rank chunk by chunk.

Protocol (method document §6): queries = every caption of the split, gallery = every image of the
split once, relevant = same identity. Scores are cosines of the L2-normalised global features
(as published). With ``part_fusion = w > 0`` the score becomes

    cos(t, v) + w * mean_{k present in the gallery image} cos(q_k(caption), p_k(image))

with ``q_k`` the caption's part queries and ``p_k`` the image's part features. Both terms are dot
products, so the fused score is one matmul of concatenated features
``[t, w * q_1..q_6] . [v, p_1..p_6 * present_k / n_present]`` and ranks through the same
memory-bounded chunked path as the global score. Only meaningful when the part queries are built
from the caption alone (``model.part_context: caption``); the image-context variant needs the
image to form a query, which retrieval cannot do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pfcvr.metrics import RankStats, feature_similarity_rows, rank_statistics_chunked

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
FUSED_PREFIX = "fused_"          # metric keys of the part-fusion ranking: fused_R1, ...
CMC_MAX_RANK = 20


class EvaluationError(ValueError):
    """The model or the data cannot be evaluated as asked (e.g. part fusion on an image-context
    model)."""


@dataclass
class GalleryFeatures:
    """Encoded gallery. features: float [N, D] L2-normalised (CPU); ids: long [N];
    part_features: float [N, 6, D] L2-normalised or None; part_present: bool [N, 6] or None."""

    features: torch.Tensor
    ids: torch.Tensor
    part_features: torch.Tensor | None = None
    part_present: torch.Tensor | None = None


@dataclass
class QueryFeatures:
    """Encoded captions. features: float [Q, D] L2-normalised (CPU); part_queries: float
    [Q, 6, D] L2-normalised or None."""

    features: torch.Tensor
    part_queries: torch.Tensor | None = None


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"device {name!r} asked for but no CUDA GPU is visible")
    return torch.device(name)


def model_part_context(model) -> str | None:
    """The model's ``part_context`` (caption | image) when it exposes it."""
    for holder in (model, getattr(model, "cfg", None), getattr(model, "config", None),
                   getattr(model, "model_cfg", None)):
        value = getattr(holder, "part_context", None) if holder is not None else None
        if isinstance(value, str):
            return value
    return None


def check_part_fusion(model, weight: float) -> None:
    """Raise when ``eval.part_fusion > 0`` cannot be applied to ``model``."""
    if weight < 0:
        raise EvaluationError(f"eval.part_fusion={weight}: must be >= 0")
    if weight == 0:
        return
    context = model_part_context(model)
    if context != "caption":
        raise EvaluationError(
            f"eval.part_fusion={weight} needs a model trained with model.part_context: caption "
            f"(this model has part_context: {context}); part queries built from the image "
            "cannot be formed from a caption alone. Set eval.part_fusion: 0 for this variant.")
    for name in ("text_part_queries", "image_part_features"):
        if not callable(getattr(model, name, None)):
            raise EvaluationError(f"eval.part_fusion={weight}: the model has no {name}()")


def applicable_fusion(model, weight: float) -> tuple[float, str | None]:
    """The part-fusion weight to use for ``model`` in a batch evaluation, and why it was dropped.

    An image-context model cannot form part queries from a caption: its fused score is not
    computed (weight 0) and the returned note says so, instead of failing a whole ablation run.
    """
    context = model_part_context(model)
    if weight > 0 and context != "caption":
        return 0.0, f"eval.part_fusion={weight} not applied: model part_context is {context}"
    return weight, None


class _EvalMode:
    """``model.eval()`` + no_grad for the block; the previous train/eval mode is restored."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()
        return self

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def encode_image_batches(model, batches: Iterable[dict], device, *, parts: bool = False,
                         total: int | None = None, progress: bool = False, desc: str = "gallery"
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode batches ``{images float [B,3,H,W], part_masks bool [B,6,G*G]?}``.

    Returns global features float [N, D] and (``parts``) part features float [N, 6, D], both
    L2-normalised, on the CPU.
    """
    device = resolve_device(device)
    feats, part_feats = [], []
    with _EvalMode(model):
        for batch in _progress(batches, total or 0, desc, progress):
            images = batch["images"].to(device, non_blocking=True)
            feats.append(F.normalize(model.encode_image(images).float(), dim=-1).cpu())
            if parts:
                masks = batch["part_masks"].to(device, non_blocking=True)
                pf = model.image_part_features(images, masks).float()
                part_feats.append(F.normalize(pf, dim=-1).cpu())
    if not feats:
        raise EvaluationError(f"{desc}: no images to encode")
    return torch.cat(feats), (torch.cat(part_feats) if parts else None)


def encode_gallery(model, image_dataset, batch_size: int, device, progress: bool = False,
                   *, parts: bool = False, num_workers: int = 0) -> GalleryFeatures:
    """Encode every image of a ``pfcvr.data.dataset.ImageDataset`` (no flip), in order."""
    from torch.utils.data import DataLoader

    from pfcvr.data.dataset import collate

    loader = DataLoader(image_dataset, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate)
    feats, part_feats = encode_image_batches(model, loader, device, parts=parts,
                                             total=len(loader), progress=progress)
    present = image_dataset.present.clone() if parts else None
    return GalleryFeatures(feats, image_dataset.pids.clone(), part_feats, present)


def encode_queries(model, captions: Sequence[str], batch_size: int, device, *,
                   parts: bool = False, progress: bool = False) -> QueryFeatures:
    """Tokenise (``model.tokenizer``) and encode captions in batches: QueryFeatures."""
    if len(captions) == 0:
        raise EvaluationError("no queries to encode")
    device = resolve_device(device)
    tok = model.tokenizer
    feats, part_q = [], []
    starts = range(0, len(captions), batch_size)
    with _EvalMode(model):
        for lo in _progress(starts, len(starts), "queries", progress):
            ids = tok(list(captions[lo:lo + batch_size])).to(device)
            feats.append(F.normalize(model.encode_text(ids).float(), dim=-1).cpu())
            if parts:
                part_q.append(F.normalize(model.text_part_queries(ids).float(), dim=-1).cpu())
    return QueryFeatures(torch.cat(feats), torch.cat(part_q) if parts else None)


def fused_features(queries: QueryFeatures, gallery: GalleryFeatures, weight: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated features whose dot product is the fused score (module doc).

    Returns query float [Q, D + 6D] and gallery float [N, D + 6D].
    """
    if queries.part_queries is None or gallery.part_features is None:
        raise EvaluationError("part fusion needs part queries and part features (parts=True)")
    present = gallery.part_present.float()                               # [N, 6]
    share = present / present.sum(1, keepdim=True).clamp_min(1.0)       # mean over present parts
    g_parts = (gallery.part_features * share[:, :, None]).flatten(1)     # [N, 6D]
    q_parts = (weight * queries.part_queries).flatten(1)                 # [Q, 6D]
    return (torch.cat([queries.features, q_parts], 1),
            torch.cat([gallery.features, g_parts], 1))


def _pick_queries(n_queries: int, n: int) -> list[int]:
    """``n`` query indices spread evenly over the split (deterministic; usually distinct ids)."""
    n = min(n, n_queries)
    return sorted({int(round(x)) for x in np.linspace(0, n_queries - 1, n)}) if n else []


def _topk(q: torch.Tensor, g: torch.Tensor, rows: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    scores, index = torch.topk(q[rows] @ g.t(), min(k, g.shape[0]), dim=1)
    return index.numpy(), scores.numpy()


def evaluate_retrieval(model, split_data, *, batch_size: int, chunk_size: int | None, device,
                       part_fusion: float = 0.0, progress: bool = False, details: bool = False,
                       topk_queries: int = 0, topk: int = 5, gallery_dataset=None
                       ) -> dict:
    """Text-to-image metrics of ``model`` on one split (``pfcvr.data.dataset.SplitData``).

    Returns plain floats ``{"R1", "R5", "R10", "mAP", "mINP", "n_queries", "n_gallery"}`` (percent)
    and, with ``part_fusion > 0``, the same five metrics prefixed ``fused_``. ``details=True``
    adds what the figures need: ``cmc`` (list of percent, ranks 1..20; ``fused_cmc`` likewise) and
    ``topk`` (``topk_queries`` queries: ``{query, caption, pid, image_index, gallery: [index],
    scores: [float], correct: [bool]}`` for the top ``topk`` gallery images).
    ``gallery_dataset``: an existing ImageDataset of the split to reuse (else one is built).
    The model's train/eval mode is restored afterwards.
    """
    from pfcvr.data.dataset import ImageDataset

    check_part_fusion(model, part_fusion)
    parts = part_fusion > 0
    if gallery_dataset is None:
        gallery_dataset = ImageDataset(split_data, model.image_size, model.image_size // model.grid_size)
    gallery = encode_gallery(model, gallery_dataset, batch_size, device, progress, parts=parts)
    captions, qids, q_image = split_data.captions()
    queries = encode_queries(model, captions, batch_size, device, parts=parts, progress=progress)
    gids = gallery.ids.numpy()
    dev = resolve_device(device)

    def rank(q: torch.Tensor, g: torch.Tensor) -> RankStats:
        # Ranked on the evaluation device: the chunked similarity is the costly part on a GPU.
        return rank_statistics_chunked(feature_similarity_rows(q.to(dev), g.to(dev)), q.shape[0],
                                       g.shape[0], qids.numpy(), gids, chunk_size)

    stats = rank(queries.features, gallery.features)
    out: dict = {**stats.metrics(), "n_queries": float(len(captions)),
                 "n_gallery": float(len(gids))}
    fused = None
    if parts:
        fq, fg = fused_features(queries, gallery, part_fusion)
        fused = rank(fq, fg)
        out.update({FUSED_PREFIX + k: v for k, v in fused.metrics().items()})
    if not details:
        return out
    max_rank = min(CMC_MAX_RANK, len(gids))
    out["cmc"] = stats.cmc(max_rank).tolist()
    if fused is not None:
        out[FUSED_PREFIX + "cmc"] = fused.cmc(max_rank).tolist()
    rows = _pick_queries(len(captions), topk_queries)
    index, scores = _topk(queries.features, gallery.features, rows, topk)
    out["topk"] = [{"query": r, "caption": captions[r], "pid": int(qids[r]),
                    "image_index": int(q_image[r]), "gallery": index[i].tolist(),
                    "scores": [float(s) for s in scores[i]],
                    "correct": [bool(gids[j] == int(qids[r])) for j in index[i]]}
                   for i, r in enumerate(rows)]
    return out


# ----------------------------------------------------------------------------------------------
# Aggregation over seeds (the evaluate stage's outputs)
# ----------------------------------------------------------------------------------------------

def summarize_runs(runs: Sequence[dict], metrics: Sequence[str] = METRICS, prefix: str = ""
                   ) -> dict[str, dict]:
    """``{metric: {"mean", "std", "runs"}}`` over per-seed results (``std``: sample standard
    deviation, ddof 1; 0 for a single seed). ``prefix`` selects e.g. the ``fused_`` keys."""
    out = {}
    for m in metrics:
        values = [float(r[prefix + m]) for r in runs]
        arr = np.asarray(values, dtype=np.float64)
        out[m] = {"mean": float(arr.mean()) if len(arr) else float("nan"),
                  "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
                  "runs": values}
    return out


def cmc_table(curves: dict[str, Sequence[Sequence[float]]]) -> str:
    """TSV for DVC plots: ``rank`` then one column per label (mean over runs, percent)."""
    labels = list(curves)
    means = {k: np.asarray(v, dtype=np.float64).reshape(len(v), -1).mean(0) for k, v in curves.items()}
    n = min(len(m) for m in means.values())
    lines = ["\t".join(["rank", *labels])]
    lines += ["\t".join([str(r + 1), *(f"{means[k][r]:.4f}" for k in labels)]) for r in range(n)]
    return "\n".join(lines) + "\n"


def model_card(variant: str, description: str, summary: dict[str, dict[str, dict]],
               models: dict[str, dict], info: dict) -> str:
    """A markdown model card: what was evaluated, how, the test numbers per checkpoint kind.

    ``summary``: ``{kind: {metric: {"mean", "std", "runs"}}}``; ``models``: ``{label:
    {"folder", "extra"}}`` (extra = what training saved with the model); ``info``: protocol notes.
    """
    lines = [f"# Model card: `{variant}`", "", description, "",
             "## Test retrieval (text to image, IRRA/PFCVR protocol)", "",
             f"- split: {info.get('split', 'test')}; {info.get('n_queries', '?')} caption queries "
             f"against {info.get('n_gallery', '?')} gallery images; every image of the query's "
             "identity is relevant",
             f"- seeds: {', '.join(map(str, info.get('seeds', [])))}; `best` = checkpoint selected "
             "on val Rank-1 (the primary number), `final` = last epoch",
             f"- scoring: cosine of global features"
             + (f"; `*_part_fusion` adds {info['part_fusion']} x mean part-query cosine"
                if info.get("part_fusion") else ""), "",
             "| checkpoint | " + " | ".join(METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for kind, res in summary.items():
        cells = [f"{res[m]['mean']:.2f} ± {res[m]['std']:.2f}" for m in METRICS]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "## Models", ""]
    for label, m in models.items():
        extra = m.get("extra") or {}
        shown = {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))}
        notes = ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "no training metadata"
        lines.append(f"- `{label}`: {m['folder']} ({notes})")
    return "\n".join(lines) + "\n"


def topk_figure_items(topk: list[dict], split_data, size: int = 128) -> list[dict]:
    """Items for :func:`pfcvr.viz.topk_figure` from ``evaluate_retrieval(details=True)["topk"]``:
    the query text, the image it describes, its ranked gallery images (uint8 [size, size, 3])."""
    from PIL import Image

    paths = split_data.paths

    def load(i: int) -> np.ndarray:
        with Image.open(paths[i]) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))

    return [{"caption": t["caption"], "target": load(t["image_index"]),
             "images": [load(j) for j in t["gallery"]], "correct": t["correct"],
             "scores": t["scores"], "label": f"vehicle id {t['pid']}"} for t in topk]
