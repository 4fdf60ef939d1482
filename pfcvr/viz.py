"""Matplotlib figures (PNG; `dvc plots show` HTML needs a CDN, these do not).

Every function takes plain data, returns nothing, and writes one PNG atomically with
:func:`pfcvr.io.save_figure`. The Agg backend is forced: stages run headless.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401

from pfcvr.io import save_figure  # noqa: E402,F401

