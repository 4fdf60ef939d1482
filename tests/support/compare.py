"""The command `make compare` runs (docs/experiments.md), as an argument list for a test."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compare_command(dvc: str | Path) -> list[str]:
    """The `dvc exp show ...` line of the Makefile's `compare` target, with make's variables
    expanded (``make -n``), running ``dvc``."""
    out = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), "compare"], capture_output=True,
                         text=True, check=True).stdout
    line = next(line for line in out.splitlines() if " exp show " in line)
    args = shlex.split(line)
    return [str(dvc), *args[1:]]
