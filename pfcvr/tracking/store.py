"""MLflow's own side of the store file: building an empty store, its artifacts folder beside it,
and artifact locations that follow a moved store (the generic lock / create / check of a sqlite
store is :mod:`pfcvr.runtime.sqlite_store`).

- :func:`build_store` writes a complete, empty MLflow store (artifacts go to ``mlartifacts/``
  beside it); :func:`pfcvr.runtime.sqlite_store.ensure_store` calls it on a temporary name.
- :func:`repair_artifact_locations`: a store moved (or copied) to another folder keeps writing
  artifacts beside itself, not into the old folder.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

from pfcvr.runtime import sqlite_store

ARTIFACTS = "mlartifacts"      # artifacts live in <store folder>/mlartifacts


def build_store(path: Path) -> None:
    """A complete, empty MLflow store at ``path`` (artifacts go to mlartifacts/ beside it)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path}"
    store = SqlAlchemyStore(uri, (path.parent / ARTIFACTS).as_uri())
    store.engine.dispose()          # no connection may outlive the rename
    getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)


def reconnect(uri: str) -> None:
    """Drop this process's pooled connections to ``uri`` (they point at a replaced file)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).get(uri)
    if engine is not None:
        engine.dispose()


def _local(location: str) -> tuple[str, Path] | None:
    """(scheme prefix, path) of a local artifact location, else None."""
    if location.startswith("file:"):
        return "file://", Path(unquote(urlparse(location).path))
    if location.startswith("/"):
        return "", Path(location)
    return None


def _moved(location: str, home: Path) -> str | None:
    """``location`` re-rooted at ``home`` when it points into another folder's mlartifacts/."""
    local = _local(location)
    if local is None:
        return None
    scheme, path = local
    parts = path.parts
    if ARTIFACTS not in parts:
        return None
    cut = len(parts) - 1 - parts[::-1].index(ARTIFACTS)
    old_home = Path(*parts[:cut + 1])
    if old_home == home:
        return None
    new = home.joinpath(*parts[cut + 1:])
    return new.as_uri() if scheme else str(new)


def repair_artifact_locations(db: Path) -> str | None:
    """Point artifact locations that lie in another folder's ``mlartifacts/`` at the one beside
    ``db``; call under :func:`store_lock`. Returns a one-line note of what changed, or None.

    MLflow stores an experiment's artifact location (and each run's artifact URI) as an absolute
    path when it is created, so a moved project would write into the old folder, re-creating it
    silently. Locations elsewhere (another name, a server, a bucket) are left alone.
    """
    home = db.parent / ARTIFACTS
    con = sqlite3.connect(str(db), timeout=sqlite_store.BUSY_WAIT_S)
    try:
        exps = [(i, loc, _moved(loc or "", home)) for i, loc in
                con.execute("SELECT experiment_id, artifact_location FROM experiments")]
        exps = [(i, loc, new) for i, loc, new in exps if new]
        if not exps:
            return None
        n_runs = 0
        with con:   # one transaction: all of it or nothing
            for exp_id, _, new in exps:
                con.execute("UPDATE experiments SET artifact_location=? WHERE experiment_id=?",
                            (new, exp_id))
                for run_id, uri in con.execute(
                        "SELECT run_uuid, artifact_uri FROM runs WHERE experiment_id=?",
                        (exp_id,)).fetchall():
                    moved = _moved(uri or "", home)
                    if moved:
                        con.execute("UPDATE runs SET artifact_uri=? WHERE run_uuid=?",
                                    (moved, run_id))
                        n_runs += 1
    finally:
        con.close()
    old = exps[0][1]
    return (f"tracking store {db} was moved: {len(exps)} experiment(s) and {n_runs} run(s) "
            f"pointed at {old}; they now use {home}")
