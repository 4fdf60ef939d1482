"""Ranking a text-to-image similarity into the ranks the metrics need (:mod:`pfcvr.metrics`):
chunked, memory-bounded, with torch on the similarity's device.

AP, INP and Rank-k only need the 1-based ranks ``r_1 < ... < r_n`` of the ``n`` positives of a
query, so the full gallery is never sorted. Queries are processed in chunks of ``chunk_size``
rows; for a chunk ``S`` [c, G] the positive scores are gathered and sorted ([c, P], P = the largest number of
positives of a query, usually a handful); then, for every score, the number of its row's positive
scores it reaches (P compare passes for small P on CPU, one ``searchsorted`` otherwise) and a
per-row histogram of those numbers give, for every positive, how many gallery items score at
least as high. Work is O(c * G * min(P, log P)) and memory O(c * G) per chunk.

Ties. A negative whose score *equals* a positive's score is ranked before it (pessimistic). Tied
positives among themselves take consecutive ranks. So a collapsed model (all scores equal) gets the
worst possible metrics rather than perfect ones; with float features exact ties practically never
happen and the result equals any sort-based implementation.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from pfcvr.metrics import MetricsError, RankStats

# Automatic chunking (chunk_size=None): at most this many similarity entries per chunk
# (64 MB of float32 similarity plus about 160 MB of counting buffers), whatever the gallery size.
AUTO_CHUNK_ELEMENTS = 1 << 24
# Up to this many positives per query, ranks are counted by compare passes, above by searchsorted.
COMPARE_MAX_POSITIVES = 16


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(x)
    else:
        raise MetricsError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()  # searchsorted has no half kernels on CPU
    elif not t.is_floating_point():
        t = t.double()  # integer scores: exact in float64, and -inf padding needs a float
    return t


def _encode_ids(query_ids, gallery_ids) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary (int or str) ids to contiguous int64 codes shared by queries and gallery."""
    def to_np(ids, name):
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise MetricsError(f"{name} must be 1-D, got shape {arr.shape}")
        return arr

    q, g = to_np(query_ids, "query_ids"), to_np(gallery_ids, "gallery_ids")
    try:
        _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    except TypeError as err:
        raise MetricsError(f"query_ids and gallery_ids must be of one comparable type: {err}") from None
    codes = codes.reshape(-1).astype(np.int64)
    return codes[: len(q)], codes[len(q):]


class _PositiveIndex:
    """For each query: the gallery indices of its positives, padded to P = max positives."""

    def __init__(self, q_codes: np.ndarray, g_codes: np.ndarray):
        n_codes = int(max(q_codes.max(initial=-1), g_codes.max(initial=-1))) + 1
        counts = np.bincount(g_codes, minlength=n_codes)
        self.order = np.argsort(g_codes, kind="stable")     # gallery grouped by id
        self.starts = np.cumsum(counts) - counts
        self.n_pos = counts[q_codes]
        self.q_codes = q_codes
        missing = int((self.n_pos == 0).sum())
        if missing:
            raise MetricsError(
                f"{missing} of {len(q_codes)} queries have no relevant gallery item (no gallery "
                "image with the query's id); every query needs at least one positive")
        self.width = int(self.n_pos.max()) if len(q_codes) else 0

    def chunk(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Padded positive gallery indices [c, P] and their validity mask [c, P]."""
        n = self.n_pos[lo:hi]
        start = self.starts[self.q_codes[lo:hi]]
        offs = np.arange(self.width)[None, :]
        valid = offs < n[:, None]
        # Pad by repeating the query's first positive; masked out below.
        idx = self.order[start[:, None] + np.where(valid, offs, 0)]
        return idx, valid


class _Workspace:
    """Reusable chunk-sized buffers: fresh 100 MB allocations per chunk cost page faults."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: torch.dtype, device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.device != torch.device(device) or \
                buf.shape[0] < shape[0] or buf.shape[1] != shape[1]:
            buf = torch.empty(shape, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[: shape[0]]


def _reached_cpu(sim: torch.Tensor, asc: torch.Tensor, ws: _Workspace) -> torch.Tensor:
    """CPU histogram input: long [c, G], number of row positives each score reaches."""
    c, width = asc.shape
    if width <= COMPARE_MAX_POSITIVES:
        # Few positives: P compare-and-add passes in uint8 beat the per-element binary search of
        # torch.searchsorted (about 2x on CPU for P = 10).
        acc = ws.get("acc", tuple(sim.shape), torch.uint8, sim.device)
        hit = ws.get("hit", tuple(sim.shape), torch.bool, sim.device)
        acc.zero_()
        for j in range(width):
            torch.ge(sim, asc[:, j:j + 1], out=hit)
            acc.add_(hit.view(torch.uint8))
        index = ws.get("index", tuple(sim.shape), torch.int64, sim.device)
        return index.copy_(acc)
    return torch.searchsorted(asc, sim.contiguous(), right=True)


def _chunk_stats(sim: torch.Tensor, pos_idx: torch.Tensor, valid: torch.Tensor,
                 ws: _Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranks of the positives of one chunk of queries.

    sim: float [c, G]; pos_idx: long [c, P]; valid: bool [c, P].
    Returns first_rank long [c], ap float64 [c], inp float64 [c].
    """
    c, width = pos_idx.shape
    ws = ws or _Workspace()
    lo_hi = torch.aminmax(sim)
    if not (torch.isfinite(lo_hi.min) and torch.isfinite(lo_hi.max)):
        raise MetricsError("similarity contains NaN or infinite values")
    neg_inf = torch.tensor(float("-inf"), dtype=sim.dtype, device=sim.device)
    pos = torch.where(valid, sim.gather(1, pos_idx), neg_inf)
    asc, _ = torch.sort(pos, dim=1)                       # [c, P]; pads (-inf) first
    asc = asc.contiguous()
    # hist[q, m] = number of gallery items of row q that reach exactly m of the row's sorted
    # positive scores (b = #{j: asc[q, j] <= s}); sim >= asc[q, j]  <=>  b > j.
    if sim.device.type == "cpu":
        # scatter_add runs in parallel over rows; CPU bincount is single-threaded.
        index = _reached_cpu(sim, asc, ws)
        ones = torch.ones((1, 1), dtype=torch.int64).expand(c, sim.shape[1])
        hist = torch.zeros((c, width + 1), dtype=torch.int64).scatter_add_(1, index, ones)
    else:
        # GPU: one binary search per score, then one bincount for the whole chunk with row q's
        # bins shifted by q * (P + 1).
        idx_dtype = torch.int32 if c * (width + 1) < 2 ** 31 else torch.int64
        b = torch.searchsorted(asc, sim.contiguous(), right=True, out_int32=True).to(idx_dtype)
        b += torch.arange(c, device=sim.device, dtype=idx_dtype)[:, None] * (width + 1)
        hist = torch.bincount(b.reshape(-1), minlength=c * (width + 1)).view(c, width + 1)
    # ge_all[j] = #gallery items scoring >= asc[j] = sum of hist[j+1:]
    ge_all = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    # ge_pos[j] = #positives scoring >= asc[j] (pads are -inf, always below real positives)
    ge_pos = width - torch.searchsorted(asc, asc, right=False)
    desc_index = width - torch.arange(width, device=sim.device)          # i = P - j, 1-based
    rank = (ge_all - ge_pos + desc_index).to(torch.float64)              # [c, P]
    n = valid.sum(1).to(torch.float64)
    # After the ascending sort the real positives occupy the last n columns.
    validf = (desc_index[None, :] <= n[:, None]).to(torch.float64)
    ap = (validf * desc_index.to(torch.float64) / rank).sum(1) / n
    first_rank = rank[:, -1].to(torch.int64)                             # highest positive
    last_col = (width - n).to(torch.int64)                               # lowest real positive
    inp = n / rank.gather(1, last_col[:, None]).squeeze(1)
    return first_rank, ap, inp


def _auto_chunk(n_gallery: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, AUTO_CHUNK_ELEMENTS // max(1, n_gallery))
    if int(chunk_size) < 1:
        raise MetricsError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def rank_statistics_chunked(similarity_rows: Callable[[int, int], torch.Tensor], n_queries: int,
                            n_gallery: int, query_ids, gallery_ids, chunk_size: int | None = None
                            ) -> RankStats:
    """Rank statistics where ``similarity_rows(lo, hi)`` returns the rows [hi-lo, G] on demand.

    This is the memory-bounded path: only one chunk of the similarity exists at a time.
    """
    q_codes, g_codes = _encode_ids(query_ids, gallery_ids)
    if len(q_codes) != n_queries or len(g_codes) != n_gallery:
        raise MetricsError(f"similarity is {n_queries} x {n_gallery} but there are "
                           f"{len(q_codes)} query ids and {len(g_codes)} gallery ids")
    if n_queries == 0 or n_gallery == 0:
        raise MetricsError(f"nothing to rank: {n_queries} queries, {n_gallery} gallery items")
    index = _PositiveIndex(q_codes, g_codes)
    step = _auto_chunk(n_gallery, chunk_size)
    ws = _Workspace()
    first, ap, inp = [], [], []
    with torch.no_grad():
        for lo in range(0, n_queries, step):
            hi = min(lo + step, n_queries)
            sim = similarity_rows(lo, hi)
            if tuple(sim.shape) != (hi - lo, n_gallery):
                raise MetricsError(f"similarity rows {lo}:{hi} have shape {tuple(sim.shape)}, "
                                   f"expected {(hi - lo, n_gallery)}")
            idx, valid = index.chunk(lo, hi)
            f, a, i = _chunk_stats(sim, torch.from_numpy(idx).to(sim.device),
                                   torch.from_numpy(valid).to(sim.device), ws)
            first.append(f.cpu())
            ap.append(a.cpu())
            inp.append(i.cpu())
    return RankStats(torch.cat(first).numpy(), torch.cat(ap).numpy(), torch.cat(inp).numpy(),
                     index.n_pos.astype(np.int64))


def rank_statistics(similarity, query_ids, gallery_ids, chunk_size: int | None = None) -> RankStats:
    """Per-query rank statistics of a full similarity matrix [Nq, Ng] (torch or numpy)."""
    sim = _as_tensor(similarity, "similarity")
    if sim.ndim != 2:
        raise MetricsError(f"similarity must be 2-D (queries x gallery), got shape {tuple(sim.shape)}")

    def rows(lo, hi):
        part = sim[lo:hi]
        return part.float() if part.dtype in (torch.float16, torch.bfloat16) else part

    return rank_statistics_chunked(rows, sim.shape[0], sim.shape[1], query_ids, gallery_ids,
                                   chunk_size)


def feature_similarity_rows(query_features: torch.Tensor, gallery_features: torch.Tensor
                            ) -> Callable[[int, int], torch.Tensor]:
    """Row provider for :func:`rank_statistics_chunked`: (q [Nq, D], g [Ng, D]) -> q[lo:hi] @ g.T.

    The features are used as given (normalise them first for cosine similarity).
    """
    gt = gallery_features.t()
    return lambda lo, hi: query_features[lo:hi] @ gt


def retrieval_metrics(similarity, query_ids, gallery_ids, ks: Iterable[int] = (1, 5, 10),
                      chunk_size: int | None = None) -> dict[str, float]:
    """Text-to-image Rank-k, mAP and mINP in percent.

    similarity: torch tensor or numpy array [Nq, Ng] (higher = more similar).
    query_ids: [Nq], gallery_ids: [Ng] identity labels (ints or strings).
    ks: the Rank-k cut-offs reported as ``R<k>``.
    chunk_size: queries ranked at once (bounds memory); None = automatic
        (about ``AUTO_CHUNK_ELEMENTS`` similarity entries per chunk).
    Returns ``{"R1", "R5", "R10", "mAP", "mINP"}`` as floats in [0, 100].
    Raises MetricsError naming how many queries have no relevant gallery item.
    """
    return rank_statistics(similarity, query_ids, gallery_ids, chunk_size).metrics(tuple(ks))


def cmc_curve(similarity, query_ids, gallery_ids, max_rank: int = 20,
              chunk_size: int | None = None) -> np.ndarray:
    """CMC curve in percent: float64 [max_rank], entry k-1 = Rank-k accuracy."""
    if int(max_rank) < 1:
        raise MetricsError(f"max_rank must be >= 1, got {max_rank}")
    return rank_statistics(similarity, query_ids, gallery_ids, chunk_size).cmc(int(max_rank))
