"""Atomic file output: a reader never sees a half-written file or folder, and a killed writer's
temporaries are removed by the next writer of the same output.

Each writer writes to a temporary sibling and renames it into place (rename is atomic on POSIX
within one filesystem), so an interrupted stage leaves the previous complete output, or nothing.
A folder is swapped with ``renameat2(RENAME_EXCHANGE)`` where Linux offers it (one atomic step);
elsewhere by two renames (the old folder aside, the new one in), a window of microseconds.

Temporary names carry their owner: ``.<name>.<kind>-<host>-<pid>-<random>`` (kind ``tmp`` or
``old``; host: 8 hex digits of the host name's hash). A process that was killed (``kill -9``,
power loss) cannot clean up; the next :func:`atomic_path` / :func:`atomic_dir` of the same output
removes every temporary of that output whose owner ran on this host and is no longer alive
(:func:`pfcvr.runtime.process.pid_alive`). Live
writers' temporaries and those of other hosts (a shared disk) are left alone: a pid is only
meaningful on its own host. Several outputs that must change together: :mod:`pfcvr.runtime.output_set`.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

from pfcvr.runtime.process import pid_alive


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temporaries are created private (0600/0700); outputs get the usual umask-based modes.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------------------------
# Temporary names and stale temporaries
# ----------------------------------------------------------------------------------------------

def temp_name(path: str | Path, kind: str = "tmp") -> Path:
    """A fresh sibling name for ``path`` that says who owns it (see the module docstring)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _owner(path: Path, entry: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary sibling name of ``path``; None for any other name."""
    m = re.fullmatch(rf"\.{re.escape(path.name)}\.(?:tmp|old)-([0-9a-f]{{8}})-(\d+)-[0-9a-f]+", entry)
    return (m.group(1), int(m.group(2))) if m else None


def stale_temps(path: str | Path) -> list[Path]:
    """Temporaries of ``path`` left by dead processes of this host."""
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    out = []
    for entry in names:
        owner = _owner(path, entry)
        if owner is not None and owner[0] == HOST and not pid_alive(owner[1]):
            out.append(path.parent / entry)
    return sorted(out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete :func:`stale_temps` of ``path``; returns what was removed."""
    removed = stale_temps(path)
    for p in removed:
        _remove(p)
    return removed


def _new_temp(path: str | Path, create) -> Path:
    """A fresh private temporary beside ``path`` made by ``create(tmp)`` (stale ones removed
    first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_name(path)
    create(tmp)
    return tmp


def new_temp_file(path: str | Path) -> Path:
    """Create an empty private temporary file beside ``path`` (stale ones removed first)."""
    return _new_temp(path, lambda t: os.close(os.open(t, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                                                      0o600)))


def new_temp_dir(path: str | Path) -> Path:
    """Create an empty private temporary folder beside ``path`` (stale ones removed first)."""
    return _new_temp(path, lambda t: os.mkdir(t, 0o700))


# ----------------------------------------------------------------------------------------------
# Putting a finished temporary in place
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _renameat2():
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False         # old kernel or a filesystem without exchange: two renames instead
    raise OSError(err, os.strerror(err), str(b))


def place_file(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished temporary file onto ``path`` (atomic)."""
    if Path(tmp).exists():
        os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)


def place_dir(tmp: str | Path, path: str | Path) -> None:
    """Replace the folder ``path`` by the finished folder ``tmp`` and delete the old one."""
    tmp, path = Path(tmp), Path(path)
    os.chmod(tmp, _DIR_MODE)
    if path.exists() and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)     # now holds the previous output
        return
    old = None
    if path.exists():
        old = temp_name(path, "old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces ``path``, on error it is removed."""
    tmp = new_temp_file(path)
    try:
        yield tmp
        place_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces the folder ``path`` as a whole."""
    tmp = new_temp_dir(path)
    try:
        yield tmp
        place_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Small readers and writers
# ----------------------------------------------------------------------------------------------

def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file as UTF-8 (a byte-order mark, as Windows editors write, is accepted).

    Raises FileNotFoundError or ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
