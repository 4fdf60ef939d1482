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
the few renames of step 3; outside it they always belong to one run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from pfcvr.runtime.atomic import (HOST, new_temp_dir, new_temp_file, place_dir, place_file,
                                  read_json, remove_stale_temps, write_json)
from pfcvr.runtime.process import pid_alive

Kind = Literal["dir", "file"]


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


def _at(journal: Path, rel: str) -> Path:
    """A path stored relative to the journal's folder, back as a normalised path."""
    return Path(os.path.normpath(journal.parent / rel))


def _place(kind: Kind, temp: Path, final: Path) -> None:
    (place_dir if kind == "dir" else place_file)(temp, final)


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
        if temp.exists():                 # not yet renamed when the writer stopped
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
            else:
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
