"""Disk checks run before any work, and write failures worded as one line naming the file.

- :func:`check_writable`: an output folder that cannot be created or written is reported before
  training, not after it;
- :func:`check_free_space`: room for what a stage is about to write (e.g. training checkpoints);
- :func:`write_errors`: a failed write (disk full, read-only disk, ...) becomes an OSError that
  names the file and what to do. ``torch.save`` reports a full disk as a bare RuntimeError
  ("basic_ios::clear: iostream error" or "unexpected pos ..."), safetensors as its own error
  type; both are recognised by the free space left afterwards, not by their wording.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class DiskSpaceError(OSError):
    """Not enough free disk space for a write (errno ENOSPC)."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return self.strerror


class WriteError(OSError):
    """A file or folder could not be written (other than a full disk)."""

    def __str__(self) -> str:
        return self.strerror if self.strerror else super().__str__()


def human(n: float) -> str:
    """Bytes as ``"512 B"``, ``"3.4 MB"``, ``"1.2 GB"`` (powers of 1000, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def existing_ancestor(path: str | Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent folder."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    """Free bytes (for this user) on the filesystem that holds, or would hold, ``path``."""
    return shutil.disk_usage(existing_ancestor(path)).free


def check_writable(folders: Iterable[str | Path]) -> None:
    """Raise :class:`WriteError` naming the first folder of ``folders`` that cannot be created
    or written. Probes by creating (and removing) a temporary file in the folder, or in its
    nearest existing parent when it does not exist yet; creates nothing that stays, and works
    for root too (permission bits do not stop root; a read-only disk or a file in the way does).
    """
    for folder in map(Path, folders):
        base = existing_ancestor(folder)
        where = "" if base == folder.absolute() else f" (its existing parent {base})"
        if not base.is_dir():
            raise WriteError(errno.ENOTDIR, f"output folder {folder} cannot be created: {base} is "
                             "a file, not a folder; move or delete it")
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=base)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise WriteError(err.errno or errno.EACCES,
                             f"output folder {folder} is not writable{where}: {err.strerror or err}"
                             "; fix its permissions or mount, or free it") from None


def check_free_space(folder: str | Path, needed: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` when the disk of ``folder`` has fewer than ``needed`` bytes
    free; ``what`` says what they are for (e.g. "training checkpoints")."""
    free = free_bytes(folder)
    if free < needed:
        raise DiskSpaceError(f"not enough disk space in {folder} for {what}: about {human(needed)} "
                             f"needed, {human(free)} free; free space on that disk (or make the "
                             "folder a link to a larger one) and rerun")


def is_disk_full(err: BaseException, path: Path, size: int | None = None) -> bool:
    """Whether ``err``, raised while writing ``path`` (``size``: bytes expected), means a full
    disk: its errno or wording, or, for torch's bare RuntimeError, the space left."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return True
    if "No space left on device" in str(err) or "os error 28" in str(err):
        return True
    try:  # torch's bare RuntimeError: judge by what is left on the disk
        return free_bytes(path.parent) < max(size or 0, 1 << 20)
    except OSError:
        return False


@contextlib.contextmanager
def write_errors(path: str | Path, what: str, size: int | None = None,
                 advice: str = "") -> Iterator[None]:
    """Turn a failure of the write of ``path`` inside the block into one line naming it.

    ``what``: what is written ("the training checkpoint"); ``size``: its expected bytes (helps to
    recognise a full disk behind an unspecific error); ``advice``: appended to the message (e.g.
    how a rerun resumes). Raises :class:`DiskSpaceError` for a full disk, :class:`WriteError` for
    other OSError / RuntimeError / SafetensorError failures; anything else passes unchanged.
    """
    path = Path(path)
    try:
        yield
    except Exception as err:
        # torch raises RuntimeError, safetensors its own SafetensorError (an Exception)
        writer_error = isinstance(err, (OSError, RuntimeError)) or \
            type(err).__name__ == "SafetensorError"
        if isinstance(err, (DiskSpaceError, WriteError)) or not writer_error:
            raise
        tail = f"; {advice}" if advice else ""
        if is_disk_full(err, path, size):
            need = f" (about {human(size)} needed," if size else " ("
            raise DiskSpaceError(f"disk full while writing {what} {path}{need} "
                                 f"{human(free_bytes(path.parent))} free): free space on that disk"
                                 f" (or make the folder a link to a larger one), then rerun"
                                 f"{tail}") from None
        detail = " ".join(str(err).split()) or type(err).__name__
        raise WriteError(getattr(err, "errno", None) or errno.EIO,
                         f"cannot write {what} {path}: {detail}; check that disk (permissions, "
                         f"mount, health) and rerun{tail}") from None
