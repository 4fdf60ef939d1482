"""Is the process that wrote something still alive? The one place that answers it.

Two kinds of writer record themselves, and each is asked the question its record allows:

- a temporary file or folder of :mod:`pfcvr.runtime.atomic` carries ``<host>-<pid>`` in its name;
  :func:`pid_alive` says whether that pid exists on this host (the caller compares the host). A
  zombie counts as alive: its temporaries are removed once its parent has reaped it;
- an MLflow run (:mod:`pfcvr.tracking`) or an Optuna trial (:mod:`pfcvr.tuning.storage`) carries
  the token of :func:`owner_token` (host, boot id, pid, start time); :func:`owner_state` tells a
  live owner from a dead one, a reused pid (another start time), a reboot (another boot id), a
  zombie (exited: dead) and another machine (``"elsewhere"``: cannot tell).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # EPERM: it exists but belongs to another user
        return True
    return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "-"


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (Linux), else []."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_ticks(pid: int) -> str:
    """The process start time in clock ticks since boot, so that a reused pid is told apart."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else "-"


def owner_token(pid: int | None = None) -> str:
    """``host|boot id|pid|start ticks`` of this process: stored as a tag on each run it opens."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}|{_boot_id()}|{pid}|{_start_ticks(pid)}"


def owner_state(token: str | None) -> str:
    """``"alive"``, ``"dead"``, ``"elsewhere"`` (another machine: cannot tell) or ``"unknown"``
    (no or bad token: a run opened by an older version)."""
    try:
        host, boot, pid_text, ticks = (token or "").split("|")
        pid = int(pid_text)
    except ValueError:
        return "unknown"
    if host != socket.gethostname():
        return "elsewhere"
    if boot != _boot_id():
        return "dead"            # the machine rebooted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass                     # another user's process: it exists
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return "dead"            # a zombie: exited, not yet reaped by its parent
    return "alive" if ticks == "-" or _start_ticks(pid) == ticks else "dead"
