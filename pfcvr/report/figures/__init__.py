"""Matplotlib figures (PNG; `dvc plots show` HTML needs a CDN, these do not), one module per
subject.

Every function takes plain data, returns nothing, and writes one PNG atomically with
:func:`pfcvr.runtime.atomic.save_figure`. The Agg backend is forced here, before any figure
module draws: stages run headless. Import the module of the subject (``from
pfcvr.report.figures import data``), so a stage depends only on the figures it draws.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401

from pfcvr.runtime.atomic import save_figure  # noqa: E402,F401
