"""Retrieval metrics speed and memory vs the bare similarity matmul.

    .venv/bin/python benchmarks/metrics_speed.py [--n 20000] [--dim 512] [--ids 2000] [--chunk 1024]
                                                 [--device cpu|cuda]

Random L2-normalised features, N queries x N gallery images, ``--ids`` identities (so about N/ids
positives per query). Prints the time of the bare matmul, of ``retrieval_metrics`` on the
precomputed similarity, and of the memory-bounded path that builds the similarity chunk by chunk,
their ratios, and the peak memory above the baseline of each step (CPU: resident set sampled every
5 ms; CUDA: the allocator's peak). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import psutil
import torch

from pfcvr.engine.ranking import feature_similarity_rows, rank_statistics_chunked, retrieval_metrics


class PeakRSS:
    """Peak resident set size above the value at entry, sampled by a thread."""

    def __init__(self, every: float = 0.005):
        self.proc, self.every, self.peak = psutil.Process(), every, 0

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss - self.base)


class PeakCUDA:
    """Peak CUDA allocator memory above the allocation at entry."""

    def __enter__(self):
        torch.cuda.synchronize()
        self.base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated() - self.base


def timed(fn, repeat: int, device: str):
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up (kernels, allocator, thread pools)
    sync()
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--ids", type=int, default=2_000)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    dev = args.device
    Peak = PeakCUDA if dev == "cuda" else PeakRSS

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(args.n, args.dim, generator=g), dim=1).to(dev)
    gal = torch.nn.functional.normalize(torch.randn(args.n, args.dim, generator=g), dim=1).to(dev)
    rng = np.random.default_rng(0)
    gids = np.arange(args.n) % args.ids
    qids = rng.choice(gids, size=args.n)
    mb = 1 / 2 ** 20

    sim = None
    with Peak() as m_mm:
        t_mm, sim = timed(lambda: q @ gal.t(), args.repeat, dev)
    with Peak() as m_met:
        t_met, res = timed(lambda: retrieval_metrics(sim, qids, gids, chunk_size=args.chunk),
                           args.repeat, dev)
    del sim
    rows = feature_similarity_rows(q, gal)
    with Peak() as m_feat:
        t_feat, stats = timed(lambda: rank_statistics_chunked(rows, args.n, args.n, qids, gids,
                                                              chunk_size=args.chunk), args.repeat, dev)
    chunk_bytes = args.chunk * args.n * 4
    where = torch.cuda.get_device_name() if dev == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"similarity {args.n} x {args.n}, dim {args.dim}, {args.ids} ids, chunk {args.chunk}, "
          f"{where}, float32")
    print(f"bare matmul                    {t_mm:7.2f} s   peak +{m_mm.peak * mb:7.0f} MiB "
          f"(the matrix itself: {args.n * args.n * 4 * mb:.0f} MiB)")
    print(f"metrics on the matrix          {t_met:7.2f} s   peak +{m_met.peak * mb:7.0f} MiB   "
          f"ratio to matmul {t_met / t_mm:.2f}")
    print(f"matmul + metrics, chunked      {t_feat:7.2f} s   peak +{m_feat.peak * mb:7.0f} MiB   "
          f"ratio to matmul {t_feat / t_mm:.2f}")
    print(f"one float32 similarity chunk: {chunk_bytes * mb:.0f} MiB")
    print("metrics:", {k: round(v, 3) for k, v in res.items()})
    assert stats.metrics() == res  # same numbers on both paths (sanity, not a test)


if __name__ == "__main__":
    main()
