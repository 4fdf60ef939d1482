"""A query against an indexed gallery, and the whole `pfcvr search` run as one call.

:func:`check_query` is the one place that validates the query text and ``top_k``;
:func:`run_search` calls it before any model or gallery work, :func:`search` for callers that
already hold a model and an index.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pfcvr.engine.encode import encode_queries
from pfcvr.paths import SEARCH_CACHE
from pfcvr.runtime.device import DeviceError, resolve_device
from pfcvr.runtime.output_set import OptionalCache
from pfcvr.search.errors import SearchError
from pfcvr.search.gallery import load_gallery
from pfcvr.search.index import GalleryIndex, index_gallery
from pfcvr.search.models import check_model_folder, load_checked_model, model_fingerprint


@dataclass
class Hit:
    """One ranked gallery image: 1-based rank, path, cosine score, identity (manifest galleries)."""

    rank: int
    path: Path
    score: float
    id: int | None = None


@dataclass
class QueryTokens:
    """How much of a query the model reads: ``tokens`` (with start and end tokens, before the
    cut), ``used`` (at most ``context_length``), and ``kept_text``, the words that were read.
    Text past the cut does not change the ranking at all."""

    tokens: int
    used: int
    context_length: int
    kept_text: str

    @property
    def truncated(self) -> bool:
        return self.tokens > self.context_length

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "used": self.used, "context_length": self.context_length,
                "truncated": self.truncated, "kept_text": self.kept_text}

    def warning(self) -> str:
        """One line for a cut query (names the counts and where the cut falls)."""
        tail = " ".join(self.kept_text.split()[-6:])
        return (f"the query is {self.tokens} tokens long but the model reads {self.context_length} "
                f"(its context length): only {self.used} tokens are used, up to \"... {tail}\"; "
                "the rest does not change the ranking, so shorten the query to what matters most")


@dataclass
class SearchResult:
    """The ranked answer to one query plus how it was obtained (``index.cache_hit``) and how
    much of the query the model read (``tokens``)."""

    query: str
    hits: list[Hit]
    index: GalleryIndex
    model: Path
    grid: Path | None = None
    tokens: QueryTokens | None = None


def check_query(query: str, top_k: int) -> str:
    """The query with its whitespace collapsed; SearchError when it is empty, not valid UTF-8 or
    ``top_k < 1``."""
    text = " ".join(str(query).split())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:     # bytes the terminal could not decode (surrogate escapes)
        raise SearchError("the query is not valid UTF-8 text: set the terminal's encoding to "
                          "UTF-8 (e.g. LANG=C.UTF-8) or retype it") from None
    if not text:
        raise SearchError("the query is empty: describe the vehicle, e.g. \"white SUV with a black "
                          "roof rack\"")
    if top_k < 1:
        raise SearchError(f"--top-k {top_k}: must be at least 1")
    return text


def query_tokens(tokenizer, text: str) -> QueryTokens:
    """Token counts of ``text`` under the model's tokenizer (see :class:`QueryTokens`)."""
    total = tokenizer.count_tokens([text])[0]
    ctx = int(tokenizer.context_length)
    kept = tokenizer.kept_text(text) if total > ctx else text
    return QueryTokens(total, min(total, ctx), ctx, kept)


def rank(model, index: GalleryIndex, text: str, top_k: int,
         device: str | torch.device = "cpu") -> list[Hit]:
    """Top ``top_k`` images of ``index`` for a checked query ``text`` (see :func:`check_query`),
    by cosine of the L2-normalised global features."""
    q = encode_queries(model, [text], batch_size=1, device=device).features      # [1, D]
    scores = (q @ index.features.t())[0]                                         # [N]
    k = min(top_k, scores.numel())
    top, order = torch.topk(scores, k)
    return [Hit(r + 1, index.paths[int(j)], float(s),
                index.ids[int(j)] if index.ids is not None else None)
            for r, (s, j) in enumerate(zip(top.tolist(), order.tolist()))]


def search(model, index: GalleryIndex, query: str, top_k: int = 5,
           device: str | torch.device = "cpu") -> list[Hit]:
    """Top ``top_k`` gallery images for ``query`` (checked here) by cosine of the global features."""
    return rank(model, index, check_query(query, top_k), top_k, device)


def write_grid(query: str, hits: list[Hit], path: str | Path, size: int = 160) -> Path:
    """A one-row figure: the query text, then the hits with rank and score."""
    import numpy as np
    from PIL import Image

    from pfcvr.report.figures.evaluation import topk_figure   # matplotlib: only for a grid

    images = []
    for h in hits:
        with Image.open(h.path) as im:
            images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
    item = {"caption": query, "target": None, "images": images, "correct": [None] * len(hits),
            "scores": [h.score for h in hits]}
    topk_figure([item], path, title=f"pfcvr search: top {len(hits)} (cosine score)")
    return Path(path)


def run_search(model_dir: str | Path, gallery_path: str | Path, query: str, *, top_k: int = 5,
               grid: str | Path | None = None, cache_dir: str | Path | None = SEARCH_CACHE,
               split: str | None = None, batch_size: int = 64, device: str = "cpu",
               progress: bool = False) -> SearchResult:
    """Everything `pfcvr search` does, returned instead of printed (for tests and notebooks).

    Bad input (query, ``top_k``, ``batch_size``, device, model folder, gallery) raises
    SearchError before any image is encoded. ``cache_dir=None`` neither reads nor writes the
    embedding cache; a cache or a ``grid`` that cannot be written (full or read-only disk) is one
    UserWarning each, and the ranking is returned all the same. A query longer than the model's context length is cut by the tokenizer; a
    UserWarning says so with the token counts (also in ``SearchResult.tokens``).
    """
    text = check_query(query, top_k)
    if batch_size < 1:
        raise SearchError(f"--batch-size {batch_size}: must be at least 1")
    try:
        dev = resolve_device(device, key="--device")
    except DeviceError as err:
        raise SearchError(str(err)) from None
    folder = check_model_folder(model_dir)
    gallery = load_gallery(gallery_path, split)
    cache = OptionalCache(cache_dir, "search cache")   # one warning if it cannot be written
    model_key = model_fingerprint(folder, cache) if cache_dir is not None else ""
    model = load_checked_model(folder, dev)
    tokens = query_tokens(model.tokenizer, text)
    if tokens.truncated:           # said before the (slow) gallery encoding
        warnings.warn(tokens.warning(), stacklevel=2)
    index = index_gallery(model, gallery, model_key=model_key, cache_dir=cache_dir,
                          batch_size=batch_size, device=dev, progress=progress, cache=cache)
    hits = rank(model, index, text, top_k, dev)
    out = None
    if grid:                       # a figure of the answer: optional, the ranking stands alone
        try:
            out = write_grid(query, hits, grid)
        except Exception as err:
            if os.environ.get("PFCVR_DEBUG") == "1":
                raise
            warnings.warn(f"grid figure {grid} not written ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:300]}); the ranking is complete",
                          stacklevel=2)
    return SearchResult(text, hits, index, folder, out, tokens)
