"""The gallery index of `pfcvr search`: image embeddings, encoded once and cached on disk.

The cache file ``<cache_dir>/gallery-<key>.pt`` is keyed by everything the embeddings depend on
(:func:`cache_key`): the model (weights and config), the input size, the gallery (every file's
path and stamp: inode, size, mtime, ctime), the image-encoding code (decoding, resizing,
normalisation, the model's image tower, the batching), the torch and Pillow versions and the
device type. So a second query against an unchanged gallery only encodes its text, and a change
of any input encodes the gallery again. The batch size is not in the key: every image is decoded
and resized alone to the same square, so batching changes nothing but float rounding.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pfcvr.data.cachekey import source_digest, versions
from pfcvr.data.dataset import ImageStore, normalize
from pfcvr.engine.encode import EvaluationError, encode_image_batches
from pfcvr.paths import SEARCH_CACHE
from pfcvr.runtime.output_set import OptionalCache
from pfcvr.search.errors import SearchError
from pfcvr.search.gallery import Gallery, gallery_fingerprint

CACHE_VERSION = 2          # the cached content's format (code changes are in the key anyway)
# The code that turns a gallery file into an embedding (relative to the pfcvr package).
ENCODER_SOURCES = ("model", "data/dataset.py", "engine/encode.py", "search/index.py",
                   "config.py", "params_schema.py", "losses.py")
LIBRARIES = ("torch", "pillow", "numpy")


@dataclass
class GalleryIndex:
    """Encoded gallery. features: float [N, D] L2-normalised; paths/ids: the N kept images;
    skipped: [(path, reason)] of unreadable images; cache_file: where the embeddings are cached
    (None: not cached); encoded: images encoded by this call (0 when the cache was hit)."""

    features: torch.Tensor
    paths: list[Path]
    ids: list[int] | None
    skipped: list[tuple[str, str]]
    cache_file: Path | None
    cache_hit: bool
    encoded: int


def _decode_batches(paths: Sequence[Path], size: int, batch_size: int, skipped: list, kept: list):
    """Yield ``{"images": float [B, 3, S, S]}`` (CLIP-normalised, squashed to S x S, as the
    training data); unreadable files go to ``skipped``, the indices of readable ones to ``kept``."""
    store = ImageStore(list(paths), size, cache=False)
    batch: list[np.ndarray] = []
    for i in range(len(paths)):
        try:
            arr = store.decode(i)
        except (OSError, ValueError) as err:
            skipped.append((str(paths[i]), str(err).split("\n")[0]))
            continue
        kept.append(i)
        batch.append(arr)
        if len(batch) == batch_size:
            yield {"images": normalize(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2))}
            batch = []
    if batch:
        yield {"images": normalize(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2))}


def _warn_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        first = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        warnings.warn(f"skipped {len(skipped)} unreadable gallery image(s): {first}"
                      + (" ..." if len(skipped) > 3 else ""), stacklevel=3)


def cache_key(model_key: str, size: int, gallery: Gallery, device: str | torch.device) -> str:
    """The gallery cache key: model, input size, gallery files, encoder code, libraries, device
    type (see the module docstring)."""
    parts = {"version": CACHE_VERSION, "model": model_key, "size": int(size),
             "gallery": gallery_fingerprint(gallery), "code": source_digest(ENCODER_SOURCES),
             "libraries": versions(*LIBRARIES), "device": torch.device(device).type}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def index_gallery(model, gallery: Gallery, *, model_key: str = "", cache_dir: str | Path | None =
                  SEARCH_CACHE, batch_size: int = 64, device: str | torch.device = "cpu",
                  progress: bool = False, cache: OptionalCache | None = None) -> GalleryIndex:
    """Encode the gallery, or read it from the cache (``cache_dir=None`` disables the cache).

    ``model_key``: the model fingerprint (:func:`model_fingerprint`); an empty key disables the
    cache since a stale model could otherwise be matched. The cache only saves time: one that
    cannot be written (full or read-only disk) is one warning and the index is returned all the
    same (``cache``: the run's :class:`OptionalCache` of ``cache_dir``, so that a search warns
    once; made here when None).
    """
    size = int(model.image_size)
    cache_file = None
    if cache is None:
        cache = OptionalCache(cache_dir, "search cache")
    if cache_dir is not None and model_key:
        cache_file = Path(cache_dir) / f"gallery-{cache_key(model_key, size, gallery, device)}.pt"
        if cache_file.is_file():
            try:
                data = torch.load(cache_file, map_location="cpu", weights_only=True)
                index = GalleryIndex(data["features"], [Path(p) for p in data["paths"]],
                                     data["ids"], [tuple(s) for s in data["skipped"]], cache_file,
                                     True, 0)
                _warn_skipped(index.skipped)
                return index
            except Exception as err:  # a corrupt cache is rebuilt, not fatal
                warnings.warn(f"gallery cache {cache_file} unreadable ({err}); re-encoding")
    skipped: list[tuple[str, str]] = []
    kept: list[int] = []
    batches = _decode_batches(gallery.paths, size, batch_size, skipped, kept)
    total = -(-len(gallery.paths) // batch_size)
    try:
        feats, _ = encode_image_batches(model, batches, device, total=total, progress=progress)
    except EvaluationError:
        if kept:
            raise
        raise SearchError(f"gallery {gallery.source}: none of its {len(gallery.paths)} images "
                          f"could be read (first: {skipped[0][0]}: {skipped[0][1]})") from None
    _warn_skipped(skipped)
    paths = [gallery.paths[i] for i in kept]
    ids = [gallery.ids[i] for i in kept] if gallery.ids is not None else None
    if cache_file is not None and not cache.write(cache_file, lambda tmp: torch.save(
            {"features": feats, "paths": [str(p) for p in paths], "ids": ids,
             "skipped": [list(s) for s in skipped]}, tmp)):
        cache_file = None                    # not cached (warned once): the answer stands
    return GalleryIndex(feats, paths, ids, skipped, cache_file, False, len(kept))
