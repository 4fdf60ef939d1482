"""Headless Chromium with the network cut off, for the tests of pages that must work offline.

Every host name resolves to "not found" (``--host-resolver-rules``), so a page that still loads a
script from a CDN fails here even on a machine that is online; 127.0.0.1 (a local server under
test) stays reachable. Shares the binary lookup and base flags with tests/support/uicheck.py.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.uicheck import CHROMIUM_FLAGS, chromium_binary

OFFLINE_FLAGS = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def require_chromium() -> str:
    """The Chromium binary; skips the test without one, except under CI (CI=true), where it fails."""
    try:
        return chromium_binary()
    except RuntimeError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Chromium is not installed (make browser)")


def _run(url: str, *args: str, window: str, budget_ms: int) -> str:
    with tempfile.TemporaryDirectory(prefix="pfcvr-chromium-") as profile:
        cmd = [chromium_binary(), *CHROMIUM_FLAGS, *OFFLINE_FLAGS, f"--user-data-dir={profile}",
               f"--window-size={window}", f"--virtual-time-budget={budget_ms}", *args, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"chromium failed on {url}: {out.stderr[-1000:]}"
    return out.stdout


def screenshot(url: str, path: Path, window: str = "900,800", budget_ms: int = 10000) -> Path:
    """PNG of the page after its scripts ran (``budget_ms`` of virtual time)."""
    _run(url, f"--screenshot={path}", window=window, budget_ms=budget_ms)
    assert path.stat().st_size > 0
    return path


def dom(url: str, budget_ms: int = 10000) -> str:
    """The page's DOM after its scripts ran."""
    return _run(url, "--dump-dom", window="1400,1000", budget_ms=budget_ms)


def colour_pixels(path: Path, hex_colour: str, box: tuple[int, int, int, int] | None = None,
                  tol: float = 80.0) -> int:
    """Number of pixels within RGB distance ``tol`` of ``hex_colour`` (``#rrggbb``) in ``box``
    (left, top, right, bottom; default the whole image). 80 takes in the anti-aliased edges of
    thin marks and stays far from white, grey and black."""
    img = Image.open(path).convert("RGB")
    if box is not None:
        img = img.crop(box)
    px = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)
    return int((np.linalg.norm(px - target, axis=-1) < tol).sum())
