"""Retrieval evaluation of one model on one split: encode the gallery and the captions in
batches, rank chunk by chunk, return a :class:`RetrievalResult`.

Protocol (docs/method.md §6): queries = every caption of the split, gallery = every image of the
split once, relevant = same identity. Scores are cosines of the L2-normalised global features
(as published). With ``part_fusion = w > 0`` the score becomes

    cos(t, v) + w * mean_{k present in the gallery image} cos(q_k(caption), p_k(image))

with ``q_k`` the caption's part queries and ``p_k`` the image's part features. Both terms are dot
products, so the fused score is one matmul of concatenated features
``[t, w * q_1..q_6] . [v, p_1..p_6 * present_k / n_present]`` and ranks through the same
memory-bounded chunked path as the global score.

Part-context rule (the only one; :func:`applicable_fusion`): part fusion needs part queries formed
from the caption alone, i.e. ``model.part_context == "caption"``. A model whose part queries
depend on the gallery image (``image``) cannot form them at retrieval time: its fused score is
skipped, a warning is issued and the result carries the reason (``part_fusion_note``); the
global metrics are still computed, so an ablation such as ``image_context`` always evaluates.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from pfcvr.engine.encode import (EvaluationError, GalleryFeatures, QueryFeatures,
                                 encode_gallery, encode_queries, fused_features)
from pfcvr.engine.ranking import feature_similarity_rows, rank_statistics_chunked
from pfcvr.metrics import METRIC_NAMES, RankStats
from pfcvr.runtime.device import resolve_device

__all__ = ["CMC_MAX_RANK", "FUSED_PREFIX", "EvaluationError", "Ranking",
           "RetrievalResult", "TopkItem", "applicable_fusion", "evaluate_retrieval"]

FUSED_PREFIX = "fused_"          # flat keys of the part-fusion ranking: fused_R1, ...
CMC_MAX_RANK = 20


def applicable_fusion(model, weight: float) -> tuple[float, str | None]:
    """The part-fusion weight to apply to ``model``, and why it was dropped (None if it was not).

    Asks the model one question, ``model.part_context``: only ``caption`` allows part fusion
    (module doc). ``weight`` is ``eval.part_fusion``. Raises EvaluationError for ``weight < 0``.
    """
    if weight < 0:
        raise EvaluationError(f"eval.part_fusion={weight}: must be >= 0")
    if weight == 0:
        return 0.0, None
    context = getattr(model, "part_context", None)
    if context == "caption":
        return float(weight), None
    return 0.0, (f"eval.part_fusion={weight} not applied: model part_context is {context}; "
                 "part queries built from the gallery image cannot be formed from a caption "
                 "alone (part fusion needs a model with part_context: caption), so only the "
                 "global score is reported")


@dataclass(frozen=True)
class Ranking:
    """Text-to-image metrics of one scoring of every caption against the gallery, in percent.

    values: ``{name: percent}`` for each name of :data:`pfcvr.metrics.METRIC_NAMES`, also read
    as attributes (``ranking.R1``): R1, R5, R10, the share of queries with a relevant image among
    the top 1 / 5 / 10; mAP, the mean over queries of the average precision over the whole
    gallery; mINP, the mean inverse negative penalty (IRRA), relevant count / rank of the last
    relevant. cmc: Rank-k accuracy for k = 1 .. min(20, gallery size); ``cmc[0] == R1``.
    """

    values: dict[str, float]
    cmc: list[float]

    @classmethod
    def from_stats(cls, stats: RankStats, max_rank: int) -> "Ranking":
        return cls(stats.metrics(), stats.cmc(max_rank).tolist())

    def __getattr__(self, name: str) -> float:
        # only called for names that are not fields: the metric names
        if name in METRIC_NAMES and "values" in self.__dict__:
            return self.__dict__["values"][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def metrics(self) -> dict[str, float]:
        """``{"R1", "R5", "R10", "mAP", "mINP"}`` (METRIC_NAMES order) as plain floats."""
        return {m: float(self.values[m]) for m in METRIC_NAMES}


@dataclass(frozen=True)
class TopkItem:
    """One query's top-ranked gallery images (by the global score), for the top-k figure.

    query: index of the caption among the split's captions; caption: its text; pid: its
    identity; image_index: the gallery index of the image it describes; gallery: gallery indices
    in rank order; scores: their cosines; correct: whether each has the query's identity.
    """

    query: int
    caption: str
    pid: int
    image_index: int
    gallery: list[int]
    scores: list[float]
    correct: list[bool]


@dataclass(frozen=True)
class RetrievalResult(Ranking):
    """What :func:`evaluate_retrieval` measures: the global-score :class:`Ranking` (values R1,
    R5, R10, mAP, mINP, also as attributes, and cmc; percent) and

    n_queries: number of captions; n_gallery: number of gallery images;
    part_fusion: the fusion weight applied (0: global score only);
    fused: the ranking by the fused score when ``part_fusion > 0``, else None;
    part_fusion_note: why a requested fusion was not applied (part-context rule), else None;
    topk: the ``topk_queries`` queries asked for, with their top gallery images.
    """

    n_queries: int = 0
    n_gallery: int = 0
    part_fusion: float = 0.0
    fused: Ranking | None = None
    part_fusion_note: str | None = None
    topk: list[TopkItem] = field(default_factory=list)

    def scalars(self) -> dict[str, float]:
        """Flat floats for logging and model selection: the five metrics, ``n_queries``,
        ``n_gallery`` and, with a fused ranking, ``fused_R1`` ... ``fused_mINP``."""
        out = {**self.metrics(), "n_queries": float(self.n_queries),
               "n_gallery": float(self.n_gallery)}
        if self.fused is not None:
            out.update({FUSED_PREFIX + k: v for k, v in self.fused.metrics().items()})
        return out


def _pick_queries(n_queries: int, n: int) -> list[int]:
    """``n`` query indices spread evenly over the split (deterministic; usually distinct ids)."""
    n = min(n, n_queries)
    return sorted({int(round(x)) for x in np.linspace(0, n_queries - 1, n)}) if n else []


def _topk_items(queries: QueryFeatures, gallery: GalleryFeatures, captions, qids, q_image,
                n_queries: int, k: int) -> list[TopkItem]:
    rows = _pick_queries(len(captions), n_queries)
    if not rows:
        return []
    scores, index = torch.topk(queries.features[rows] @ gallery.features.t(),
                               min(k, gallery.features.shape[0]), dim=1)
    gids = gallery.ids.numpy()
    return [TopkItem(query=r, caption=captions[r], pid=int(qids[r]), image_index=int(q_image[r]),
                     gallery=index[i].tolist(), scores=[float(s) for s in scores[i]],
                     correct=[bool(gids[j] == int(qids[r])) for j in index[i]])
            for i, r in enumerate(rows)]


def evaluate_retrieval(model, split_data, *, batch_size: int, chunk_size: int | None,
                       device: str | torch.device, part_fusion: float = 0.0,
                       progress: bool = False, topk_queries: int = 0, topk: int = 5,
                       gallery_dataset=None) -> RetrievalResult:
    """Text-to-image metrics of ``model`` on one split (``pfcvr.data.dataset.SplitData``).

    ``batch_size``: images / captions encoded at once; ``chunk_size``: queries ranked at once
    (None: automatic, memory-bounded); ``device``: auto | cpu | cuda or a torch.device.
    ``part_fusion``: weight of the part score (module doc); skipped with a warning and a
    ``part_fusion_note`` for a model whose part queries need the image. ``topk_queries``
    queries (spread over the split) get their ``topk`` best gallery images in ``result.topk``.
    ``gallery_dataset``: an existing ImageDataset of the split to reuse (else one is built).
    The model's train/eval mode is restored afterwards.
    Raises EvaluationError (negative weight, empty split), DeviceError (device not present).
    """
    from pfcvr.data.dataset import ImageDataset

    weight, note = applicable_fusion(model, part_fusion)
    if note:
        warnings.warn(note, stacklevel=2)
    parts = weight > 0
    if gallery_dataset is None:
        gallery_dataset = ImageDataset(split_data, model.image_size,
                                       model.image_size // model.grid_size)
    gallery = encode_gallery(model, gallery_dataset, batch_size, device, progress, parts=parts)
    captions, qids, q_image = split_data.captions()
    queries = encode_queries(model, captions, batch_size, device, parts=parts, progress=progress)
    gids = gallery.ids.numpy()
    dev = resolve_device(device, key="device")
    max_rank = min(CMC_MAX_RANK, len(gids))

    def rank(q: torch.Tensor, g: torch.Tensor) -> Ranking:
        # Ranked on the evaluation device: the chunked similarity is the costly part on a GPU.
        stats = rank_statistics_chunked(feature_similarity_rows(q.to(dev), g.to(dev)),
                                        q.shape[0], g.shape[0], qids.numpy(), gids, chunk_size)
        return Ranking.from_stats(stats, max_rank)

    plain = rank(queries.features, gallery.features)
    fused = rank(*fused_features(queries, gallery, weight)) if parts else None
    return RetrievalResult(
        plain.metrics(), plain.cmc, n_queries=len(captions), n_gallery=len(gids),
        part_fusion=weight, fused=fused, part_fusion_note=note,
        topk=_topk_items(queries, gallery, captions, qids, q_image, topk_queries, topk))
