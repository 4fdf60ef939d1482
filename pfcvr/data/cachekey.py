"""Building blocks of cache keys: what a cached result was computed with.

A cache may be reused only when every input of the result is the same. Besides the data and the
settings, that is the code that computed it and the libraries it ran on; this module names them:

- :func:`source_digest`: the bytes of the project source files that compute the result;
- :func:`versions`: the versions of the libraries it ran on (a new transformers can change a
  processor or a post-processing step without any change here);
- :func:`file_stamp`: a file's identity without reading it: inode, size, modification and
  change time. ``ctime`` is set by the kernel on every write, rename or chmod and cannot be set
  back by ``touch``, ``cp -p`` or ``rsync -t``, so a file rewritten with its old size and mtime
  still gets a new stamp (a copy or a ``dvc checkout`` does too, which only costs a recompute).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Iterable

PACKAGE = Path(__file__).resolve().parents[1]       # the pfcvr package folder


def source_digest(paths: Iterable[str | Path]) -> str:
    """sha256 of the named files (folders: every ``*.py`` below them), with their names.

    Relative paths are relative to the ``pfcvr`` package folder.
    """
    h = hashlib.sha256()
    for entry in paths:
        path = Path(entry)
        path = path if path.is_absolute() else PACKAGE / path
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f"{f.name}\0".encode())
            h.update(f.read_bytes() if f.is_file() else b"\0missing\0")
    return h.hexdigest()


def versions(*distributions: str) -> dict[str, str]:
    """``{distribution: version}`` of installed packages ("" when not installed)."""
    out = {}
    for name in distributions:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = ""
    return out


def file_stamp(path: str | Path) -> str:
    """``inode|size|mtime_ns|ctime_ns`` of a file, or ``missing`` (see the module docstring)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
