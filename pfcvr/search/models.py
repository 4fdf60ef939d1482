"""The model side of `pfcvr search`: check a model folder, load it, fingerprint its weights."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pfcvr.data.cachekey import file_stamp
from pfcvr.model.io import CONFIG, TOKENIZER, WEIGHTS, load_model, resolve_model_folder
from pfcvr.runtime.output_set import OptionalCache
from pfcvr.search.errors import SearchError


def check_model_folder(folder: str | Path) -> Path:
    """The model folder to use, checked for completeness (else SearchError).

    ``folder`` is a model folder, or a variant / seed folder that :func:`pfcvr.model.io.
    resolve_model_folder` resolves (``models/full`` -> ``models/full/seed0/best``).
    """
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


def load_checked_model(folder: Path, device: str | torch.device = "cpu"):
    """Restore a folder that :func:`check_model_folder` returned, in eval mode.

    Raises SearchError when it cannot be loaded (corrupt weights, wrong config, ...).
    """
    try:
        model = load_model(folder, device=device)
    except Exception as err:  # corrupt weights, wrong config, missing tokenizer ...
        raise SearchError(f"model folder {folder} cannot be loaded: {err}") from None
    return model.eval()


def load_search_model(folder: str | Path, device: str | torch.device = "cpu"):
    """Check and restore a model folder for search (eval mode); SearchError when it cannot be."""
    return load_checked_model(check_model_folder(folder), device)


def _file_digest(path: Path, memo: OptionalCache) -> str:
    """SHA-256 of a file's bytes, memoised in ``memo`` by the file's path and stamp (inode, size,
    mtime, ctime: a rewrite with the old size and mtime is still noticed) so big weights hash
    once; a memo that cannot be written is a warning (:class:`OptionalCache`), not an error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    stamp = f"{path.resolve()}|{file_stamp(path)}"
    file = None
    if memo.folder is not None:
        file = memo.folder / f"digest-{hashlib.sha256(stamp.encode()).hexdigest()[:24]}.txt"
        if file.is_file():
            return file.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if file is not None:
        memo.write(file, lambda tmp: tmp.write_text(digest + "\n"))
    return digest


def model_fingerprint(folder: str | Path, memo: str | Path | OptionalCache | None = None) -> str:
    """Hash of a model folder's weights and config (the part of the cache key for the model).
    ``memo``: the cache folder (or its :class:`OptionalCache`) that remembers file digests."""
    folder = Path(folder)
    if not isinstance(memo, OptionalCache):
        memo = OptionalCache(memo, "search cache")
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        h.update(path.name.encode())
        h.update(_file_digest(path, memo).encode())
    return h.hexdigest()
