"""Several outputs of one stage made visible together (data + stats + figure), crash-consistent.

A filesystem renames one path atomically; it has no transaction over several paths. So a stage
that writes ``data/prepared``, ``reports/data/stats.json`` and a figure does this:

1. every output is written completely to a temporary sibling (all the work, figure included);
2. a journal ``.<primary>.outputs.json`` beside the primary output lists the renames to do
   (written atomically: it exists only once every temporary is complete);
3. the temporaries are renamed into place in the order they were registered (the stats last);
4. the journal is deleted.

A run killed during step 3 leaves the journal. The next :class:`OutputSet` of the same primary
output (the stage's next run) first finishes those renames, so the set is whole again before any
new work; a reader can tell a set in that state by :func:`pending_outputs` (the parts stage
refuses such a ``data/prepared``). The window in which the visible files come from two runs is
the few renames of step 3; outside it they always belong to one run. Readers call
:func:`require_whole` on the sets they read.

An optional output (a figure, :meth:`OutputSet.figure`) never costs the others: when it cannot be
drawn, one warning names it and why, and the set publishes a placeholder image in its place (or,
when not even that can be written, removes the previous run's file), so the set still holds one
run only. An optional cache (an optimisation: embeddings, detections, digests) is written
through :class:`OptionalCache`: its first failed write is one warning, and the work goes on.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

from pfcvr.runtime.atomic import (HOST, atomic_path, new_temp_dir, new_temp_file, place_dir,
                                  place_file, read_json, write_json)
from pfcvr.runtime.process import pid_alive
from pfcvr.runtime.storage import is_disk_full

Kind = Literal["dir", "file", "remove"]   # remove: the output is dropped from the set


def journal_path(primary: str | Path) -> Path:
    """Where the journal of the output set whose first output is ``primary`` lives."""
    primary = Path(primary)
    return primary.with_name(f".{primary.name}.outputs.json")


def pending_outputs(primary: str | Path) -> list[Path]:
    """The outputs of an interrupted publication of ``primary``'s set ([] when consistent)."""
    journal = journal_path(primary)
    if not journal.is_file():
        return []
    try:
        doc = read_json(journal)
        return [_at(journal, e["path"]) for e in doc["outputs"]]
    except (ValueError, KeyError, TypeError):
        return [Path(primary)]


class IncompleteOutputs(ValueError):
    """A stage's output set read while (or after being killed while) it was published."""


def require_whole(primary: str | Path, stage: str) -> None:
    """Raise :class:`IncompleteOutputs` (one line: which outputs, what to run) when the output
    set whose first output is ``primary`` was left half-published by a killed ``stage``."""
    pending = pending_outputs(primary)
    if pending:
        raise IncompleteOutputs(f"{primary}: the {stage} stage was interrupted while publishing "
                                f"its outputs ({', '.join(map(str, pending))} may come from "
                                f"different runs); rerun it: dvc repro {stage}")


def _at(journal: Path, rel: str) -> Path:
    """A path stored relative to the journal's folder, back as a normalised path."""
    return Path(os.path.normpath(journal.parent / rel))


def _place(kind: Kind, temp: Path, final: Path) -> None:
    if kind == "remove":
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final, ignore_errors=True)
        else:
            final.unlink(missing_ok=True)
        return
    (place_dir if kind == "dir" else place_file)(temp, final)


def placeholder_png(path: str | Path, text: str) -> None:
    """A small PNG that says, in words, why the figure it stands for was not drawn (drawn with
    Pillow: the figure's own library may be what failed)."""
    import textwrap

    from PIL import Image, ImageDraw

    lines = textwrap.wrap(text, 90)[:8]
    img = Image.new("RGB", (640, 24 + 14 * len(lines)), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((10, 10 + 14 * i), line, fill="black")
    img.save(path, format="PNG")


def recover(primary: str | Path) -> list[Path]:
    """Finish an interrupted publication of ``primary``'s set (see the module docstring).

    Returns the outputs renamed now. A journal whose writer still runs on this host, or that was
    written on another host, is left alone (that run may still be publishing).
    """
    journal = journal_path(primary)
    if not journal.is_file():
        return []
    try:
        doc = read_json(journal)
        host, pid, entries = doc["host"], int(doc["pid"]), doc["outputs"]
    except (ValueError, KeyError, TypeError):
        journal.unlink(missing_ok=True)   # written atomically: unreadable means not ours
        return []
    if host != HOST or (pid != os.getpid() and pid_alive(pid)):
        return []
    done = []
    for e in entries:
        temp, final = _at(journal, e["temp"]), _at(journal, e["path"])
        if temp.exists() or e["kind"] == "remove":   # not yet done when the writer stopped
            _place(e["kind"], temp, final)
            done.append(final)
    journal.unlink(missing_ok=True)
    return done


class OutputSet:
    """Temporaries for a stage's outputs; :meth:`commit` publishes them together.

    Use as a context manager: on a clean exit the set is committed, on an exception every
    temporary is removed and the previous outputs stay as they were::

        with OutputSet(out_dir) as outs:
            data, fig, stats = outs.dir(out_dir), outs.file(fig_path), outs.file(stats_path)
            ...                                   # write everything into the temporaries
    """

    def __init__(self, primary: str | Path):
        self.primary = Path(primary)
        self.journal = journal_path(self.primary)
        self.entries: list[tuple[Kind, Path, Path]] = []     # (kind, temp, final)

    def __enter__(self) -> "OutputSet":
        self.primary.parent.mkdir(parents=True, exist_ok=True)
        recover(self.primary)
        return self

    def _add(self, kind: Kind, final: str | Path) -> Path:
        final = Path(final)
        temp = new_temp_dir(final) if kind == "dir" else new_temp_file(final)
        self.entries.append((kind, temp, final))
        return temp

    def dir(self, final: str | Path) -> Path:
        """An empty temporary folder that will replace the folder ``final``."""
        return self._add("dir", final)

    def file(self, final: str | Path) -> Path:
        """A temporary file path that will replace ``final``."""
        return self._add("file", final)

    def figure(self, final: str | Path, draw: Callable[[Path], Any], what: str = "figure"
               ) -> bool:
        """An optional output: ``draw(temp)`` writes the figure that will replace ``final``
        (registered now, or earlier with :meth:`file`).

        When ``draw`` raises (``PFCVR_DEBUG=1`` lets it), one warning names ``what``, ``final``
        and the error, and a placeholder PNG saying why takes the figure's place (when even that
        cannot be written, the previous ``final`` is removed with the set): the other outputs
        are published all the same. Returns whether the figure was drawn.
        """
        final = Path(final)
        temp = next((t for k, t, f in self.entries if f == final and k == "file"), None) \
            or self.file(final)                # registered earlier with file(), or now
        try:
            draw(temp)
            return True
        except Exception as err:
            if os.environ.get("PFCVR_DEBUG") == "1":
                raise
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            warnings.warn(f"{what} {final} not drawn ({reason}); a placeholder says so, the "
                          "other outputs are complete", stacklevel=2)
            try:
                placeholder_png(temp, f"{what} not drawn: {reason}")
            except Exception:       # e.g. the disk is full: publish the set without it
                self.entries = [("remove", t, f) if t == temp else (k, t, f)
                                for k, t, f in self.entries]
                temp.unlink(missing_ok=True)
            return False

    def commit(self) -> None:
        """Rename every temporary into place, in registration order, under the journal."""
        rel = lambda p: os.path.relpath(p, self.journal.parent)  # noqa: E731 (the repo may move)
        write_json(self.journal, {"host": HOST, "pid": os.getpid(), "outputs": [
            {"kind": k, "temp": rel(t), "path": rel(f)} for k, t, f in self.entries]})
        for kind, temp, final in self.entries:
            _place(kind, temp, final)
        self.journal.unlink(missing_ok=True)
        self.entries = []

    def discard(self) -> None:
        """Remove every temporary (nothing is published)."""
        for kind, temp, _ in self.entries:
            if kind == "dir":
                shutil.rmtree(temp, ignore_errors=True)
            elif kind == "file":
                temp.unlink(missing_ok=True)
        self.entries = []

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.discard()
            return False
        try:
            self.commit()
        except BaseException:
            # Once the journal exists the temporaries are the set's new content: the next run
            # finishes the renames. Before that, nothing was published: drop them.
            if not self.journal.is_file():
                self.discard()
            raise
        return False


class OptionalCache:
    """Writes to a cache folder that only saves time (``what`` names it in the warning).

    :meth:`write` writes a file atomically; the first write that fails (full or read-only disk,
    permissions, ...) is one warning naming the folder and the error, and every later write is
    skipped, so the caller returns its result as it would without a cache. ``PFCVR_DEBUG=1``
    raises instead. ``folder`` None: every write is skipped silently (no cache asked for).
    """

    def __init__(self, folder: str | Path | None, what: str = "cache"):
        self.folder = Path(folder) if folder is not None else None
        self.what = what
        self.failed: str | None = None          # the first error, once a write failed

    @property
    def enabled(self) -> bool:
        return self.folder is not None and self.failed is None

    def write(self, path: str | Path, write: Callable[[Path], Any]) -> bool:
        """``write(temp)`` fills a temporary that then replaces ``path``; returns whether the
        file was written."""
        if not self.enabled:
            return False
        try:
            with atomic_path(path) as temp:
                write(temp)
            return True
        except Exception as err:   # torch.save reports a full disk as a bare RuntimeError
            if os.environ.get("PFCVR_DEBUG") == "1":
                raise
            self.failed = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            if is_disk_full(err, Path(path)):    # torch words a full disk as "unexpected pos"
                self.failed = f"disk full: {self.failed}"
            warnings.warn(f"{self.what} {self.folder} cannot be written ({self.failed}); going on "
                          "without it: the result is the same, only the next run does the work "
                          "again", stacklevel=2)
            return False
