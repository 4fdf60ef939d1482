"""A small real tmpfs for tests of full or read-only disks (root may mount one here)."""
from __future__ import annotations

import contextlib
import gc
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str = "size=1M") -> Iterator[Path]:
    """Mount a tmpfs with ``options`` on ``folder`` (created) for the block; skips the test where
    mounting is not permitted. Unmounts afterwards, lazily if a file is still held open."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield folder
    finally:
        gc.collect()    # a failed torch.save may hold its file until collected
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)   # detach; freed when closed
