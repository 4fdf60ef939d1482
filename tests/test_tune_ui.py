"""`make tune-ui` (python -m pfcvr.tuning.dashboard) serves Optuna's dashboard over the study storage.

A real SQLite storage with a real small study (optuna, three trials); the entry point runs as a
subprocess in its own process group (it execs `optuna-dashboard`), the test waits until the server
answers, checks the printed URL and study, the dashboard's REST API, and the page as headless
Chromium renders it offline, then stops the group.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from pfcvr.tuning import dashboard
from tests.support.offline_browser import dom, require_chromium, screenshot
from tests.support.uicheck import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
STUDY = "pfcvr-tune-dashboardtest"


def make_study(db: Path, name: str = STUDY) -> str:
    """A finished 3-trial study in ``db``; returns the storage URL."""
    url = f"sqlite:///{db}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: -(t.suggest_float("train.mask_ratio", 0.1, 0.9) - 0.6) ** 2, n_trials=3)
    return url


class Dashboard:
    """`python -m pfcvr.tuning.dashboard 127.0.0.1 <port>` in its own session; a context manager."""

    def __init__(self, storage: str, cwd: Path, timeout: float = 60.0):
        self.port, self.timeout = free_port(), timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, OPTUNA_STORAGE=storage)
        self.cwd, self.log = cwd, cwd / "dashboard.log"

    def __enter__(self) -> "Dashboard":
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pfcvr.tuning.dashboard", "127.0.0.1", str(self.port)],
                cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"dashboard exited: {self.log.read_text()[-2000:]}"
            try:
                self.get("/api/studies")
                return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise AssertionError(f"no answer from {self.url}: {self.log.read_text()[-2000:]}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return r.read()

    def __exit__(self, *exc) -> None:
        stop_process_group(self.proc)


def test_tune_ui_serves_the_study(tmp_path):
    storage = make_study(tmp_path / "optuna.db")
    with Dashboard(storage, cwd=tmp_path) as ui:
        studies = json.loads(ui.get("/api/studies"))["study_summaries"]
        assert [s["study_name"] for s in studies] == [STUDY]
        assert ui.get("/").lower().lstrip().startswith(b"<!doctype html")
        printed = ui.log.read_text()
        assert f"Optuna dashboard: {ui.url}" in printed
        assert f"study {STUDY}: 3 trials" in printed
        require_chromium()
        text = dom(ui.url + "/dashboard")
        png = screenshot(ui.url + f"/dashboard/studies/{studies[0]['study_id']}",
                         tmp_path / "dashboard.png", window="1400,900")
    assert STUDY in text
    assert png.stat().st_size > 10_000
    assert ui.proc.returncode is not None  # the whole process group is gone


def test_tune_ui_without_a_study_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert dashboard.main(["127.0.0.1", "1"]) == 1
    assert "run the tune stage first" in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists()


def test_sqlite_file():
    assert dashboard.sqlite_file("sqlite:////a/b/optuna.db") == Path("/a/b/optuna.db")
    assert dashboard.sqlite_file("sqlite:///:memory:") is None
    assert dashboard.sqlite_file("postgresql://u:p@h/optuna") is None


def test_tune_ui_bad_storage_or_port_is_one_line(tmp_path, monkeypatch, capsys):
    """A corrupt study file or a bad TUNE_PORT ends with one line naming it, exit 1, no server."""
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{bad}")
    assert dashboard.main(["127.0.0.1", "8080"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tune-ui: error: cannot read the Optuna storage sqlite:///{bad} (")
    assert dashboard.main(["127.0.0.1", "abc"]) == 1
    assert capsys.readouterr().err.strip() == \
        "tune-ui: error: port 'abc' (TUNE_PORT): must be a number in 1..65535"
