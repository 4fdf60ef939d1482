"""Check the MLflow UI as a user sees it: a real `mlflow server` and headless Chromium.

`python -m tests.uicheck [--store sqlite:///mlflow.db] [--screenshot reports/figures/mlflow_compare.png]`
starts a server on a free 127.0.0.1 port over the store, asks its REST API for the experiment's
runs, opens the runs page and the compare-runs page of two ablation variants in headless Chromium,
checks that the variant run names, their params and their metrics are on the page, saves a
screenshot, and stops the server (by its process group).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


class UICheckError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group on 127.0.0.1; a context manager."""

    def __init__(self, store_uri: str, port: int | None = None, timeout: float = 180.0):
        self.store_uri, self.port, self.timeout = store_uri, port or free_port(), timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="mlflow-server-", suffix=".log", delete=False)

    def __enter__(self) -> "MlflowServer":
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no background job workers
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
               "--backend-store-uri", self.store_uri, "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise UICheckError(f"mlflow server exited with {self.proc.returncode}; log: "
                                   f"{Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise UICheckError(f"mlflow server on {self.url} not ready after {self.timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()

    def api(self, endpoint: str, payload: dict | None = None) -> dict:
        """Call the MLflow REST API (POST with a JSON body, or GET)."""
        url = f"{self.url}/api/2.0/mlflow/{endpoint}"
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise UICheckError("headless Chromium not found: install Debian's `chromium` package "
                       "(apt-get install chromium)")


def _chromium(url: str, *args: str, window: str = "1400,1000", budget_ms: int = 30000) -> str:
    with tempfile.TemporaryDirectory(prefix="pfcvr-chromium-") as profile:
        cmd = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--window-size={window}", f"--virtual-time-budget={budget_ms}", *args, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise UICheckError(f"chromium failed on {url}: {out.stderr[-1000:]}")
    return out.stdout


def page_text(url: str) -> str:
    """The visible text of a page after its JavaScript ran (styles and scripts removed)."""
    dom = _chromium(url, "--dump-dom")
    dom = re.sub(r"<style.*?</style>|<script.*?</script>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def screenshot(url: str, path: str | Path, window: str = "1400,1800") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    _chromium(url, f"--screenshot={tmp}", window=window)
    os.replace(tmp, path)
    return path


def compare_url(base: str, exp_id: str, run_ids: list[str]) -> str:
    q = urllib.parse.quote
    return f"{base}/#/compare-runs?runs={q(json.dumps(run_ids))}&experiments={q(json.dumps([exp_id]))}"


def check_ui(store_uri: str, variants: tuple[str, str] = ("full", "no_part"),
             experiment: str = "pfcvr", screenshot_path: str | Path | None = None) -> dict:
    """Run the whole check; returns what was found. Raises UICheckError on a missing item."""
    with MlflowServer(store_uri) as server:
        exp = server.api(f"experiments/get-by-name?experiment_name={experiment}")["experiment"]
        exp_id = exp["experiment_id"]
        runs = server.api("runs/search", {"experiment_ids": [exp_id], "max_results": 1000})
        runs = runs.get("runs", [])
        by_name: dict[str, dict] = {}
        for r in sorted(runs, key=lambda r: r["info"]["start_time"]):
            by_name[r["info"]["run_name"]] = r  # newest run of each name wins
        wanted = [f"evaluate@{v}" for v in variants]
        missing = [w for w in wanted if w not in by_name]
        if missing:
            raise UICheckError(f"runs not in the store: {missing}; found: {sorted(by_name)}")
        chosen = [by_name[w] for w in wanted]
        runs_text = page_text(f"{server.url}/#/experiments/{exp_id}/runs")
        parents = [r["info"]["run_name"] for r in runs
                   if any(t["key"] == "pfcvr.kind" and t["value"] == "parent"
                          for t in r["data"].get("tags", []))]
        if not any(p in runs_text for p in parents):
            raise UICheckError(f"no parent run {parents} on the runs page")
        url = compare_url(server.url, exp_id, [r["info"]["run_id"] for r in chosen])
        text = page_text(url)
        found = {"parents": parents, "compare_url": url}
        for r in chosen:
            name = r["info"]["run_name"]
            if name not in text:
                raise UICheckError(f"run name {name} not on the compare page")
            metrics = {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
            params = {p["key"]: p["value"] for p in r["data"].get("params", [])}
            if not metrics or not any(k in text for k in metrics):
                raise UICheckError(f"no metric of {name} on the compare page ({list(metrics)[:5]})")
            if not params or not any(k in text for k in params):
                raise UICheckError(f"no param of {name} on the compare page")
            found[name] = {"metrics": len(metrics), "params": len(params)}
        if screenshot_path:
            found["screenshot"] = str(screenshot(url, screenshot_path))
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    ap.add_argument("--variants", nargs=2, default=["full", "no_part"])
    ap.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME", "pfcvr"))
    ap.add_argument("--screenshot", default="reports/figures/mlflow_compare.png")
    args = ap.parse_args(argv)
    try:
        found = check_ui(args.store, tuple(args.variants), args.experiment, args.screenshot)
    except UICheckError as err:
        print(f"UI check failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
