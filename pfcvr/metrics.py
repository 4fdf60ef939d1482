"""Text-to-image retrieval metrics: Rank-k (CMC), mAP and mINP, IRRA/PFCVR protocol, and their
names (:data:`METRIC_NAMES`, the one place they are written).

Protocol (docs/method.md §6): every caption is a query, every gallery image appears once, every
gallery image with the query's identity is relevant, no camera filtering. Image-to-text metrics are
the same call on the transposed similarity with the id roles swapped.

Definitions, from the 1-based ranks ``r_1 < ... < r_n`` of the ``n`` positives of a query:

    Rank-k: r_1 <= k          AP = (1/n) * sum_i i / r_i          INP = n / r_n

(:meth:`RankStats.metrics`; mAP and mINP are their means over the queries, in percent). Ranking a
similarity matrix into those ranks, chunk by chunk with torch, is :mod:`pfcvr.engine.ranking`
(``retrieval_metrics`` there is the one call from scores to metrics). This module loads no torch:
the report and the MLflow views read the names from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

# The five retrieval metrics, in the order every table, metrics file and MLflow run lists them:
# the one place their names are written. A new metric is added here and computed in
# RankStats.metrics (tests/test_metrics.py checks the two agree).
METRIC_NAMES = ("R1", "R5", "R10", "mAP", "mINP")


class MetricsError(ValueError):
    """Bad input to the retrieval metrics (shapes, non-finite scores, queries without positives)."""


@dataclass
class RankStats:
    """Per-query results of ranking: everything the metrics and the CMC curve need.

    first_rank: int64 [Nq], 1-based rank of the best-ranked positive.
    ap:         float64 [Nq], average precision over the whole gallery.
    inp:        float64 [Nq], inverse negative penalty n / rank of the last positive.
    n_pos:      int64 [Nq], number of relevant gallery items.
    """

    first_rank: np.ndarray
    ap: np.ndarray
    inp: np.ndarray
    n_pos: np.ndarray

    def metrics(self, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """``{"R1", "R5", "R10", "mAP", "mINP"}`` (:data:`METRIC_NAMES`, Rank-k for each k of
        ``ks``) in percent (plain floats)."""
        out = {f"R{int(k)}": float(100.0 * np.mean(self.first_rank <= int(k))) for k in ks}
        out["mAP"] = float(100.0 * self.ap.mean())
        out["mINP"] = float(100.0 * self.inp.mean())
        return out

    def cmc(self, max_rank: int = 20) -> np.ndarray:
        """CMC curve in percent: float64 [max_rank], entry k-1 = Rank-k."""
        hist = np.bincount(np.minimum(self.first_rank, max_rank + 1), minlength=max_rank + 2)
        return 100.0 * np.cumsum(hist[1:max_rank + 1]) / max(1, len(self.first_rank))


def summarize_runs(runs: Sequence[Mapping[str, float]], metrics: Sequence[str] = METRIC_NAMES,
                   prefix: str = "") -> dict[str, dict]:
    """``{metric: {"mean", "std", "runs"}}`` over per-seed flat results (``std``: sample standard
    deviation, ddof 1; 0 for a single seed, which is no noise estimate: the metrics document's
    ``single_seed`` says so and the cards show no ±). ``prefix`` selects e.g. the ``fused_`` keys."""
    out = {}
    for m in metrics:
        values = [float(r[prefix + m]) for r in runs]
        arr = np.asarray(values, dtype=np.float64)
        out[m] = {"mean": float(arr.mean()) if len(arr) else float("nan"),
                  "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
                  "runs": values}
    return out
