"""`make tune-ui`: Optuna's own dashboard (the `optuna-dashboard` package) over the tuning storage.

The storage is the one the `tune` stage writes (:func:`pfcvr.tuning.study.storage_url`:
``sqlite:///<repo root>/optuna.db``, or ``OPTUNA_STORAGE``). The dashboard is a local web server
whose JavaScript ships inside the Python package, so it works offline; it binds 127.0.0.1 by default.

Run as ``python -m pfcvr.tuning.dashboard [HOST] [PORT]`` from the repository root: prints the URL
and the studies (name, number of trials) and then replaces itself by ``optuna-dashboard`` (so Ctrl-C and a
signal to the process stop the server itself). Exits 1 without starting anything when the default
SQLite file does not exist yet (no study has run), instead of creating an empty database.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import optuna

from pfcvr.tuning.study import redact, storage_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other back ends or in-memory)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix):] in ("", ":memory:"):
        return None
    return Path(url[len(prefix):])


def studies(url: str) -> list[tuple[str, int]]:
    """(study name, number of trials) for each study in the storage, by name."""
    summaries = optuna.study.get_all_study_summaries(url, include_best_trial=False)
    return sorted((s.study_name, s.n_trials) for s in summaries)


def dashboard_command(url: str, host: str, port: int) -> list[str]:
    """The ``optuna-dashboard`` command line (the venv's executable when there is one)."""
    exe = Path(sys.executable).with_name("optuna-dashboard")
    binary = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    if binary is None:
        raise FileNotFoundError("optuna-dashboard is not installed (pip install -r requirements.txt)")
    return [binary, url, "--host", host, "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    host = args[0] if args else DEFAULT_HOST
    if len(args) > 1 and not (args[1].isdigit() and 0 < int(args[1]) < 65536):
        print(f"tune-ui: error: port {args[1]!r} (TUNE_PORT): must be a number in 1..65535",
              file=sys.stderr)
        return 1
    port = int(args[1]) if len(args) > 1 else DEFAULT_PORT
    url = storage_url(Path.cwd())
    db = sqlite_file(url)
    if db is not None and not db.exists():
        print(f"no Optuna storage at {redact(url)} yet: run the tune stage first "
              f"(`dvc repro tune`), or set OPTUNA_STORAGE", file=sys.stderr)
        return 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        found = studies(url)
    except Exception as err:      # corrupt file, missing DB driver, unreachable server, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"tune-ui: error: cannot read the Optuna storage {redact(url)} ({reason}); "
              "check OPTUNA_STORAGE, or move a damaged file away and rerun the tune stage",
              file=sys.stderr)
        return 1
    print(f"Optuna dashboard: http://{host}:{port}  (storage {redact(url)}; Ctrl-C to stop)")
    for name, n_trials in found:
        print(f"  study {name}: {n_trials} trials")
    if not found:
        print("  (no study in this storage yet)")
    cmd = dashboard_command(url, host, port)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
