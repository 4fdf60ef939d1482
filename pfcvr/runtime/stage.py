"""How a stage ends on an error a person can act on: one line, no traceback, exit code 1.

    if __name__ == "__main__":
        sys.exit(run_stage("train", main))

The errors that the project words for people (:class:`pfcvr.config.ConfigError` naming a key,
a disk or device problem naming the file or setting, ...) end as one line
``<stage>: error: <message>`` on stderr. Which errors: every exception class defined in the
``pfcvr`` package, ValueError and OSError (bad input, files), and a GPU out of memory. Anything
else is a bug: its traceback is kept. ``PFCVR_DEBUG=1`` keeps every traceback.

Warnings (something skipped, an input that disagrees with the params, ...) print as one line
each while the stage runs: ``<stage>: warning: <message>``.

Under torchrun every rank runs the stage: an error found before the ranks join (params, world
size) is the same on all of them and only rank 0 prints it; other errors print on every rank
that meets them, prefixed with the rank.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Callable

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def is_user_error(err: BaseException) -> bool:
    """True for errors whose message tells a person what to do (see the module docstring)."""
    if type(err).__module__.split(".")[0] == "pfcvr" or isinstance(err, (ValueError, OSError)):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(err, getattr(torch, "OutOfMemoryError", ()))


def one_line(stage: str, err: BaseException) -> str:
    """``<stage>: error: <message>`` with the message on one line (a GPU out of memory gets
    what to lower)."""
    message = " ".join(str(err).split()) or type(err).__name__
    if type(err).__name__ == "OutOfMemoryError":
        message = ("out of GPU memory; lower train.batch_size (training) or eval.batch_size "
                   f"(evaluation), or use train.precision bf16 ({message[:160]})")
    return f"{stage}: error: {message}"


def warning_line(stage: str, message: Warning | str, category: type[Warning]) -> str:
    """``<stage>: warning: <message>`` on one line (the category named unless UserWarning)."""
    kind = "" if category is UserWarning else f"{category.__name__}: "
    return f"{stage}: warning: {kind}{' '.join(str(message).split())}\n"


def run_stage(stage: str, main: Callable[[], Any],
              cleanup: Callable[[], None] | None = None) -> int:
    """Run ``main()``; return its exit code (0 unless it returns an int), or print one line and
    return 1 for a user error, 130 for Ctrl-C. ``cleanup`` runs in every case (e.g. leaving
    torchrun's process group)."""
    from pfcvr.config import ConfigError

    rank = os.environ.get("RANK", "0")
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: warning_line(stage, message,
                                                                              category)
    try:
        result = main()
        return result if isinstance(result, int) else 0   # a main may return its exit code
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if os.environ.get("PFCVR_DEBUG") == "1" or not is_user_error(err):
            raise
        if rank in ("", "0"):
            print(one_line(stage, err), file=sys.stderr, flush=True)
        elif not isinstance(err, ConfigError):  # a ConfigError is the same on every rank
            print(f"[rank {rank}] {one_line(stage, err)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    finally:
        warnings.formatwarning = previous
        if cleanup is not None:
            cleanup()
