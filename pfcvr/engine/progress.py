"""Training progress on stderr: a tqdm bar on a terminal, plain log lines otherwise (CI, DVC)."""
from __future__ import annotations

import sys
from typing import Any


class Progress:
    """tqdm bar when stderr is a terminal, else a plain line every ``log_every`` steps/epoch.

    ``mode``: None = decide from the terminal, True = bar, False = silent, ``"lines"`` = plain
    lines even on a terminal (processes that share one stderr, e.g. seeds trained in parallel by
    ``pfcvr.pipeline.train``). ``enabled=False`` (every DDP rank but 0) prints nothing. Lines start
    with ``[<label>]``.
    """

    def __init__(self, mode: bool | str | None, label: str, log_every: int,
                 enabled: bool = True):
        self.enabled = enabled and mode is not False
        self.tty = self.enabled and (mode is True or (mode is None and sys.stderr.isatty()))
        self.label, self.log_every, self.bar = label, log_every, None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=f"{self.label} epoch {epoch}/{epochs}",
                            leave=False, dynamic_ncols=True, file=sys.stderr)
        self.epoch, self.epochs, self.steps = epoch, epochs, steps

    def step(self, i: int, loss: float | None, samples_per_s: float, lr: float) -> None:
        """After step ``i`` (1-based) of the epoch; ``loss`` is the mean over ranks of the latest
        loss read on the host (the previous step's when the trainer reads it late; None before
        the first, shown as ``-``)."""
        shown = "-" if loss is None else f"{loss:.4f}"
        if self.bar is not None:
            self.bar.set_postfix(loss=shown, sps=f"{samples_per_s:.1f}", refresh=False)
            self.bar.update(1)
        elif self.enabled and self.log_every and (i % self.log_every == 0):
            self.line(f"epoch {self.epoch}/{self.epochs} step {i}/{self.steps} loss {shown} "
                      f"lr {lr:.3g} {samples_per_s:.1f} samples/s")

    def end_epoch(self, row: dict[str, Any]) -> None:
        """One summary line per epoch from its history row (``loss``, ``val_R1`` ...)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            val = "" if row.get("val_R1") is None else f" val R1 {row['val_R1']:.2f} mAP {row['val_mAP']:.2f}"
            self.line(f"epoch {row['epoch']}/{self.epochs} loss {row['loss']:.4f}{val} "
                      f"{row['samples_per_s']:.1f} samples/s {row['seconds']:.1f}s")

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"[{self.label}] {text}", file=sys.stderr, flush=True)
