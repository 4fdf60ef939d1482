"""Keys over every input that changes what training computes: the training resume fingerprint
(:mod:`pfcvr.pipeline.train`) and the Optuna study name (:mod:`pfcvr.tuning.study`) are built from them.

A key must change whenever its result could change, and should not change otherwise. The inputs
of a training run, and how each enters the key:

- **params**: every value except the ones that only shape logs and reports (:data:`COSMETIC`);
- **data**: the bytes of ``manifest.json``, ``meta.json`` and ``parts.json``, plus every image
  file that the used splits list (:func:`images_key`): its content when the images are small
  together, else its size and modification time (see :data:`CONTENT_HASH_LIMIT`);
- **backbone**: for a local folder (the pretrain stage's, a CLIP), its files' bytes (their size
  and mtime above :data:`CONTENT_HASH_LIMIT`); for a hub id, the snapshot (commit) in the local
  Hugging Face cache;
- **code**: the source of the ``pfcvr`` package (:func:`code_key`), since DVC also re-runs a
  stage when its code changes: a checkpoint or trial of older code is not mixed with new code.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from pfcvr.config import flatten

# Keys that do not change what training computes: logs, reports, other stages' settings.
# train.seed_workers: how many seeds train at once (each seed's result is the same either way).
COSMETIC = ("ablations.", "report.", "tune.", "tracking.", "train.log_every",
            "train.seed_workers", "eval.topk_queries", "eval.part_fusion")

# Image bytes hashed up to this total size, else size + mtime_ns per file. Measured on the default
# synthetic data (912 train+val PNGs, 10.4 MB): content 17 ms, stat 3 ms (warm cache). A content
# key survives a rewrite of identical files (a re-run of prepare, a `dvc checkout`); at the size
# of a real dataset (a few GB) reading every byte at each stage start would cost tens of seconds
# per variant, while a stat key stays at milliseconds and still changes when a file is replaced
# (new mtime), unless it is copied with its old mtime *and* the same size (`cp -p`, `rsync -a`).
CONTENT_HASH_LIMIT = 256 * 2**20
# The pretrain stage's record in its model folder (steps, timings): loading never reads it, and
# its timings differ between two runs that give the same weights.
RUN_RECORD = "stats.json"


def digest(*parts: object) -> str:
    """sha256 hex of the JSON of ``parts`` (sorted keys; non-JSON values as str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def params_key(params, exclude: Iterable[str] = ()) -> str:
    """Digest of the flattened params less :data:`COSMETIC` and the dotted keys ``exclude``."""
    skip = tuple(COSMETIC) + tuple(exclude)
    return digest({k: v for k, v in flatten(params).items() if not k.startswith(skip)})


def files_key(files: Iterable[str | Path]) -> str:
    """Digest of the bytes of ``files`` (a missing file counts as missing, not as empty)."""
    h = hashlib.sha256()
    for path in map(Path, files):
        h.update(f"{path.name}\0".encode())
        h.update(path.read_bytes() if path.is_file() else b"\0missing\0")
    return h.hexdigest()


def images_key(root: Path, rel_paths: Iterable[str]) -> str:
    """Digest of the image files ``root/<rel>`` (sorted, duplicates once): their bytes when they
    total at most :data:`CONTENT_HASH_LIMIT`, else (path, size, mtime_ns) of each. The key names
    its kind, so crossing the limit changes it too."""
    stats = []
    for rel in sorted(set(rel_paths)):
        try:
            st = (root / rel).stat()
            stats.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((rel, -1, -1))   # training names a missing image; the key just differs
    total = sum(max(size, 0) for _, size, _ in stats)
    if total > CONTENT_HASH_LIMIT:
        return "stat:" + digest(stats)
    h = hashlib.sha256()
    for rel, size, _ in stats:
        h.update(f"{rel}\0{size}\0".encode())
        if size >= 0:
            h.update((root / rel).read_bytes())
    return "content:" + h.hexdigest()


def data_key(prepared: Path, parts: Path, splits: Iterable) -> str:
    """Digest of the prepared data that training reads: manifest, meta, parts and the images of
    ``splits`` (``SplitData`` objects of ``pfcvr.data.dataset.load_split``)."""
    splits = list(splits)
    images = [images_key(s.images_root, [r["file_path"] for r in s.records]) for s in splits]
    return digest(files_key([prepared / "manifest.json", prepared / "meta.json", parts]),
                  [s.split for s in splits], images)


def backbone_key(backbone: str) -> str:
    """What ``model.backbone`` loads: "" for ``tiny`` (built from params), the files of a local
    folder (as :func:`images_key`: their bytes up to CONTENT_HASH_LIMIT, else path, size and
    mtime_ns), or the cached snapshot of a hub id (its commit folder; "" when not cached, where
    the download of the hub's current revision decides)."""
    from pfcvr.model.backbone import PRETRAINED
    from pfcvr.paths import PRETRAINED as pretrained_folder

    if backbone == "tiny":
        return ""
    if backbone == PRETRAINED:     # the pretrain stage's folder (missing: building the model says so)
        backbone = str(pretrained_folder)
    folder = Path(backbone).expanduser()
    if folder.is_dir():
        # Their bytes up to CONTENT_HASH_LIMIT, as for images: the same backbone on another
        # machine (`dvc pull`, a second clone) has other mtimes and must give the same key, or
        # tune workers there would open a study of their own.
        return images_key(folder, [str(p.relative_to(folder)) for p in folder.rglob("*")
                                   if p.is_file() and p.name != RUN_RECORD])
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(backbone, "config.json")
    except Exception:  # an id the hub client rejects: from_pretrained will name the problem
        return ""
    return str(Path(cached).parent.name) if isinstance(cached, str) else ""


def code_key() -> str:
    """Digest of every ``*.py`` of the installed ``pfcvr`` package (path and bytes)."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(f"{path.relative_to(package)}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def inputs_key(params, prepared: str | Path, parts: str | Path, splits: Iterable) -> str:
    """Digest of what decides training besides the params: the data that ``splits`` read
    (manifest, meta, parts, image files), the backbone's files and the pfcvr code."""
    return digest(data_key(Path(prepared), Path(parts), splits),
                  backbone_key(params.model.backbone), code_key())
