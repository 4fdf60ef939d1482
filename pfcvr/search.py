"""`pfcvr search`: rank a gallery of vehicle images against a witness description.

    pfcvr search --model models/full/seed0/best --gallery data/prepared/images "white SUV ..."
    python -m pfcvr.search --model ... --gallery data/prepared/manifest.json --split test "..."

The gallery is a folder (searched recursively for images) or a manifest JSON (the project's
canonical ``data/prepared/manifest.json`` format; image paths relative to the images root of the
``meta.json`` beside it). Gallery embeddings are cached in ``<cache-dir>/gallery-<key>.pt``; the
key hashes the model weights and config, the preprocessing, and every gallery file's path, size and
modification time, so a second query against an unchanged gallery only encodes the text. Images
that cannot be read are skipped and counted (a warning names the first ones).
"""
from __future__ import annotations

import hashlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
DEFAULT_CACHE_DIR = Path(".cache/pfcvr")
CACHE_VERSION = 1          # bump when the cached content or the preprocessing changes


class SearchError(ValueError):
    """Bad input to the search (model folder, gallery, query); the CLI prints it on one line."""


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def check_model_folder(folder: str | Path) -> Path:
    """The model folder to use, checked for completeness (else SearchError).

    ``folder`` is a model folder, or a variant / seed folder that :func:`pfcvr.model.io.
    resolve_model_folder` resolves (``models/full`` -> ``models/full/seed0/best``).
    """
    from pfcvr.model.io import CONFIG, TOKENIZER, WEIGHTS, resolve_model_folder

    folder = Path(folder)
    if not folder.exists():
        raise SearchError(f"model folder {folder} does not exist (train one with `dvc repro`, "
                          "then pass e.g. --model models/full)")
    if not folder.is_dir():
        raise SearchError(f"model path {folder} is not a folder")
    try:
        resolved = resolve_model_folder(folder)
    except FileNotFoundError as err:
        raise SearchError(f"model folder {folder} is incomplete: {err}") from None
    missing = [name for name in (CONFIG, WEIGHTS) if not (resolved / name).is_file()]
    if not (resolved / TOKENIZER).is_dir():
        missing.append(f"{TOKENIZER}/")
    if missing:
        raise SearchError(f"model folder {resolved} is incomplete: missing {', '.join(missing)} "
                          "(complete model folders are written by the train stage)")
    return resolved


def load_search_model(folder: str | Path, device: str | torch.device = "cpu"):
    """Restore a model folder for search (eval mode) with a clear error when it cannot be."""
    folder = check_model_folder(folder)
    from pfcvr.model.io import load_model

    try:
        model = load_model(folder, device=device)
    except SearchError:
        raise
    except Exception as err:  # corrupt weights, wrong config, missing tokenizer ...
        raise SearchError(f"model folder {folder} cannot be loaded: {err}") from None
    return model.eval()


def _file_digest(path: Path, memo_dir: Path | None) -> str:
    """SHA-256 of a file's bytes, memoised by (path, size, mtime) so big weights hash once."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = None
    if memo_dir is not None:
        memo = memo_dir / f"digest-{hashlib.sha256(stamp.encode()).hexdigest()[:24]}.txt"
        if memo.is_file():
            return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo is not None:
        from pfcvr.io import write_text

        write_text(memo, digest + "\n")
    return digest


def model_fingerprint(folder: str | Path, memo_dir: Path | None = None) -> str:
    """Hash of a model folder's weights and config (the part of the cache key for the model)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        h.update(path.name.encode())
        h.update(_file_digest(path, memo_dir).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Gallery
# ----------------------------------------------------------------------------------------------

@dataclass
class Gallery:
    """Candidate images: paths, optional identity ids (manifest galleries), where they came from."""

    paths: list[Path]
    ids: list[int] | None
    source: str


def _manifest_gallery(path: Path, split: str | None) -> Gallery:
    from pfcvr.data.dataset import images_root
    from pfcvr.io import read_json

    try:
        records = read_json(path)
    except (ValueError, OSError) as err:
        raise SearchError(f"gallery manifest {err}") from None
    if not isinstance(records, list):
        raise SearchError(f"gallery manifest {path}: must be a JSON list of records")
    meta_file = path.parent / "meta.json"
    try:
        meta = read_json(meta_file) if meta_file.is_file() else {}
    except ValueError as err:
        raise SearchError(str(err)) from None
    root = images_root(path.parent, meta)
    paths, ids = [], []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("file_path"), str):
            raise SearchError(f"gallery manifest {path}: record {i} has no string file_path")
        if split is not None and rec.get("split") != split:
            continue
        paths.append(root / rec["file_path"])
        ids.append(int(rec["id"]) if isinstance(rec.get("id"), int) else -1)
    if not paths:
        where = f" of split {split!r}" if split else ""
        raise SearchError(f"gallery manifest {path} has no records{where}")
    return Gallery(paths, ids, str(path))


def load_gallery(path: str | Path, split: str | None = None) -> Gallery:
    """A folder of images (recursive, sorted) or a manifest JSON (optionally one split)."""
    path = Path(path)
    if not path.exists():
        raise SearchError(f"gallery {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise SearchError(f"gallery {path}: expected a folder of images or a manifest .json")
        return _manifest_gallery(path, split)
    if split is not None:
        raise SearchError("--split only applies to a manifest gallery, not to a folder")
    paths = sorted(p for p in path.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not paths:
        raise SearchError(f"gallery folder {path} contains no images "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    return Gallery(paths, None, str(path))


def gallery_fingerprint(gallery: Gallery) -> str:
    """Hash of the gallery's file list with each file's size and modification time."""
    h = hashlib.sha256()
    for p in gallery.paths:
        try:
            st = p.stat()
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{p.resolve()}|{stamp}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Index (gallery embeddings, cached)
# ----------------------------------------------------------------------------------------------

@dataclass
class GalleryIndex:
    """Encoded gallery. features: float [N, D] L2-normalised; paths/ids: the N kept images;
    skipped: [(path, reason)] of unreadable images; encoded: images encoded by this call
    (0 when the cache was hit)."""

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
    import numpy as np

    from pfcvr.data.dataset import ImageStore, normalize

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


def index_gallery(model, gallery: Gallery, *, model_key: str = "", cache_dir: str | Path | None =
                  DEFAULT_CACHE_DIR, batch_size: int = 64, device: str | torch.device = "cpu",
                  progress: bool = False) -> GalleryIndex:
    """Encode the gallery, or read it from the cache (``cache_dir=None`` disables the cache).

    ``model_key``: the model fingerprint (:func:`model_fingerprint`); an empty key disables the
    cache since a stale model could otherwise be matched.
    """
    from pfcvr.engine.evaluate import EvaluationError, encode_image_batches
    from pfcvr.io import atomic_path

    size = int(model.image_size)
    cache_file = None
    if cache_dir is not None and model_key:
        key = hashlib.sha256(f"v{CACHE_VERSION}|{model_key}|{size}|"
                             f"{gallery_fingerprint(gallery)}".encode()).hexdigest()[:32]
        cache_file = Path(cache_dir) / f"gallery-{key}.pt"
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
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            torch.save({"features": feats, "paths": [str(p) for p in paths], "ids": ids,
                        "skipped": [list(s) for s in skipped]}, tmp)
    return GalleryIndex(feats, paths, ids, skipped, cache_file, False, len(kept))


# ----------------------------------------------------------------------------------------------
# Query
# ----------------------------------------------------------------------------------------------

@dataclass
class Hit:
    rank: int
    path: Path
    score: float
    id: int | None = None


@dataclass
class SearchResult:
    """The ranked answer to one query plus how it was obtained (``index.cache_hit``)."""

    query: str
    hits: list[Hit]
    index: GalleryIndex
    model: Path
    grid: Path | None = None


def search(model, index: GalleryIndex, query: str, top_k: int = 5,
           device: str | torch.device = "cpu") -> list[Hit]:
    """Top ``top_k`` gallery images for ``query`` by cosine of the global features."""
    from pfcvr.engine.evaluate import encode_queries

    text = " ".join(str(query).split())
    if not text:
        raise SearchError("the query is empty: describe the vehicle, e.g. \"white SUV with a black "
                          "roof rack\"")
    if top_k < 1:
        raise SearchError(f"--top-k {top_k}: must be at least 1")
    q = encode_queries(model, [text], batch_size=1, device=device).features      # [1, D]
    scores = (q @ index.features.t())[0]                                         # [N]
    k = min(top_k, scores.numel())
    top, order = torch.topk(scores, k)
    return [Hit(r + 1, index.paths[int(j)], float(s),
                index.ids[int(j)] if index.ids is not None else None)
            for r, (s, j) in enumerate(zip(top.tolist(), order.tolist()))]


def write_grid(query: str, hits: list[Hit], path: str | Path, size: int = 160) -> Path:
    """A one-row figure: the query text, then the hits with rank and score."""
    import numpy as np
    from PIL import Image

    from pfcvr import viz

    images = []
    for h in hits:
        with Image.open(h.path) as im:
            images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
    item = {"caption": query, "target": None, "images": images, "correct": [None] * len(hits),
            "scores": [h.score for h in hits]}
    viz.topk_figure([item], path, title=f"pfcvr search: top {len(hits)} (cosine score)")
    return Path(path)


def run_search(model_dir: str | Path, gallery_path: str | Path, query: str, *, top_k: int = 5,
               grid: str | Path | None = None, cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
               split: str | None = None, batch_size: int = 64, device: str = "cpu",
               progress: bool = False) -> SearchResult:
    """Everything `pfcvr search` does, returned instead of printed (for tests and notebooks)."""
    from pfcvr.engine.evaluate import resolve_device

    if not " ".join(str(query).split()):
        raise SearchError("the query is empty: describe the vehicle, e.g. \"white SUV with a black "
                          "roof rack\"")
    if top_k < 1:
        raise SearchError(f"--top-k {top_k}: must be at least 1")
    if batch_size < 1:
        raise SearchError(f"--batch-size {batch_size}: must be at least 1")
    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise SearchError(str(err)) from None
    folder = check_model_folder(model_dir)
    gallery = load_gallery(gallery_path, split)
    memo = Path(cache_dir) if cache_dir is not None else None
    model_key = model_fingerprint(folder, memo) if memo is not None else ""
    model = load_search_model(folder, dev)
    index = index_gallery(model, gallery, model_key=model_key, cache_dir=cache_dir,
                          batch_size=batch_size, device=dev, progress=progress)
    hits = search(model, index, query, top_k, dev)
    out = write_grid(query, hits, grid) if grid else None
    return SearchResult(" ".join(query.split()), hits, index, folder, out)


def format_result(result: SearchResult, gallery: str) -> str:
    """The text the CLI prints."""
    idx = result.index
    lines = [f"query:   \"{result.query}\"", f"model:   {result.model}",
             f"gallery: {gallery} ({len(idx.paths)} images"
             + (f", {len(idx.skipped)} unreadable skipped" if idx.skipped else "")
             + ("; embeddings from cache" if idx.cache_hit else
                f"; {idx.encoded} images encoded" + (", cached" if idx.cache_file else "")) + ")",
             f"{'rank':>4}  {'score':>7}  image"]
    for h in result.hits:
        note = f"  (id {h.id})" if h.id is not None and h.id >= 0 else ""
        lines.append(f"{h.rank:>4}  {h.score:7.4f}  {h.path}{note}")
    if result.grid:
        lines.append(f"grid:    {result.grid}")
    return "\n".join(lines)


def add_arguments(ap) -> None:
    """The `search` options (shared by `pfcvr search` and `python -m pfcvr.search`)."""
    ap.add_argument("query", nargs="+", help="the witness description (quote it, or give words)")
    ap.add_argument("--model", required=True,
                    help="a trained model folder, e.g. models/full/seed0/best")
    ap.add_argument("--gallery", required=True,
                    help="a folder of images (recursive) or a manifest .json")
    ap.add_argument("--split", choices=("train", "val", "test"), default=None,
                    help="with a manifest gallery: only this split's images")
    ap.add_argument("--top-k", type=int, default=5, help="how many images to list (default 5)")
    ap.add_argument("--grid", default=None, help="write a PNG of the query and its top-k images")
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                    help="gallery embedding cache folder (default .cache/pfcvr)")
    ap.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    ap.add_argument("--batch-size", type=int, default=64, help="images encoded at once")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    ap.add_argument("--progress", action="store_true", help="progress bar while encoding")


def run_cli(args) -> int:
    """Execute parsed `search` arguments; prints the result; returns the exit code."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_search(args.model, args.gallery, " ".join(args.query), top_k=args.top_k,
                            grid=args.grid, cache_dir=None if args.no_cache else args.cache_dir,
                            split=args.split, batch_size=args.batch_size, device=args.device,
                            progress=args.progress)
    for w in caught:  # library warnings (skipped images, rebuilt cache) as one line each
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    print(format_result(result, args.gallery))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pfcvr.search ...` (same as `pfcvr search ...`)."""
    from pfcvr.cli import main as cli_main

    return cli_main(["search", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
