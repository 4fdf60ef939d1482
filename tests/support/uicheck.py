"""Check the MLflow UI as a user sees it: a real `mlflow server` and headless Chromium, offline.

`python -m tests.support.uicheck [--store sqlite:///mlflow.db] [--figures reports/figures]` starts a server
on a free 127.0.0.1 port over the store, asks `python -m pfcvr.tracking --ui-urls` (what `make ui`
prints) for the pages to open, and checks them in headless Chromium with every host name but
127.0.0.1 unresolvable:

- the experiment is marked as model training and its printed runs page opens on the runs table
  (the ablation view), not on MLflow's GenAI overview: the finished `evaluate@<variant>` runs are
  listed flat with R1, R5, R10, mAP and mINP columns and their values, without a click;
- no parent run (one per DVC experiment) is RUNNING: each parent's run page says "Finished";
- the printed compare page puts the variant runs side by side: their names, a parameter, a metric
  and each run's R1 value are on it;

saves screenshots of both pages (mlflow_runs.png, mlflow_compare.png) and stops the server (by its
process group).
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

from pfcvr.metrics import METRIC_NAMES

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# Offline: a page that still needs the internet fails here even on a machine that is online.
OFFLINE_FLAGS = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
HEADLINE = METRIC_NAMES     # the columns the ablation view shows
TRAINING_KIND = "custom_model_development"
REPO = Path(__file__).resolve().parents[2]


class UICheckError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server started with ``start_new_session=True`` (setsid): SIGTERM to its process
    group, SIGKILL if it has not ended within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
        if self.proc is not None:
            stop_process_group(self.proc)

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
        cmd = [chromium_binary(), *CHROMIUM_FLAGS, *OFFLINE_FLAGS, f"--user-data-dir={profile}",
               f"--window-size={window}", f"--virtual-time-budget={budget_ms}", *args, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise UICheckError(f"chromium failed on {url}: {out.stderr[-1000:]}")
    return out.stdout


def page_text(url: str, window: str = "1400,1000") -> str:
    """The visible text of a page after its JavaScript ran (styles and scripts removed)."""
    dom = _chromium(url, "--dump-dom", window=window)
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
    return (f"{base}/#/compare-runs?runs={q(json.dumps(run_ids))}"
            f"&experiments={q(json.dumps([exp_id]))}")


def helper_urls(store_uri: str, base: str, experiment: str = "pfcvr") -> tuple[str, str | None]:
    """(runs page, compare page) as `make ui` prints them (`python -m pfcvr.tracking --ui-urls`)."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=store_uri, MLFLOW_EXPERIMENT_NAME=experiment,
               MLFLOW_DISABLE_TELEMETRY="true")
    out = subprocess.run([sys.executable, "-m", "pfcvr.tracking", "--ui-urls", base], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise UICheckError(f"pfcvr.tracking --ui-urls failed: {out.stderr[-2000:]}")
    urls = re.findall(r"^\s*(http\S+)$", out.stdout, flags=re.M)
    runs = next((u for u in urls if "/runs?" in u), None)
    compare = next((u for u in urls if "compare-runs" in u), None)
    if runs is None:
        raise UICheckError(f"no runs page in the helper's output:\n{out.stdout}")
    return runs, compare


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def _shown(value: float, text: str) -> bool:
    """Whether ``value`` is on the page in one of the ways MLflow prints a number."""
    return any(f in text for f in {f"{value:g}", f"{value:.4g}", f"{value:.2f}", f"{value:.1f}"})


def check_ui(store_uri: str, variants: tuple[str, ...] = ("full", "no_part"),
             experiment: str = "pfcvr", screenshot_path: str | Path | None = None,
             runs_screenshot: str | Path | None = None,
             finished_parents: tuple[str, ...] = ()) -> dict:
    """Run the whole check (module docstring); returns what was found. Raises UICheckError on a
    missing item. ``finished_parents``: DVC experiments whose parent run must be FINISHED."""
    with MlflowServer(store_uri) as server:
        exp = server.api(f"experiments/get-by-name?experiment_name={experiment}")["experiment"]
        exp_id = exp["experiment_id"]
        kind = {t["key"]: t["value"] for t in exp.get("tags", [])}.get("mlflow.experimentKind")
        if kind != TRAINING_KIND:
            raise UICheckError(f"experiment {experiment} is not marked as model training "
                               f"(mlflow.experimentKind = {kind!r})")
        runs = server.api("runs/search", {"experiment_ids": [exp_id], "max_results": 1000})
        runs = runs.get("runs", [])
        found: dict = {"experiment_id": exp_id}
        found["parents"] = _check_parents(server, runs, finished_parents)
        runs_url, cmp_url = helper_urls(store_uri, server.url, experiment)
        if cmp_url is None:
            raise UICheckError("the helper printed no compare page (no finished evaluate@ run)")
        chosen = _compared_runs(cmp_url, runs, variants)
        found.update(runs_url=runs_url, compare_url=cmp_url)
        _check_runs_page(runs_url, runs, variants)
        text = page_text(cmp_url)
        for r in chosen:
            name = r["info"]["run_name"]
            if name not in text:
                raise UICheckError(f"run name {name} not on the compare page")
            metrics = _metrics(r)
            params = {p["key"]: p["value"] for p in r["data"].get("params", [])}
            if not metrics or not any(k in text for k in metrics):
                raise UICheckError(f"no metric of {name} on the compare page ({list(metrics)[:5]})")
            if not params or not any(k in text for k in params):
                raise UICheckError(f"no param of {name} on the compare page")
            if "R1" not in metrics or not _shown(metrics["R1"], text):
                raise UICheckError(f"R1 of {name} ({metrics.get('R1')}) not on the compare page")
            found[name] = {"metrics": len(metrics), "params": len(params), "R1": metrics["R1"]}
        if screenshot_path:
            found["screenshot"] = str(screenshot(cmp_url, screenshot_path, window="1500,2000"))
        if runs_screenshot:
            found["runs_screenshot"] = str(screenshot(runs_url, runs_screenshot, "1800,900"))
    return found


def _check_parents(server: MlflowServer, runs: list[dict], finished: tuple[str, ...]) -> dict:
    """``{DVC experiment: status}`` of the parent runs; each must be FINISHED on its run page
    when listed in ``finished``, and none may be RUNNING."""
    parents = {_tags(r).get("pfcvr.experiment", r["info"]["run_name"]): r for r in runs
               if _tags(r).get("pfcvr.kind") == "parent"}
    missing = [p for p in finished if p not in parents]
    if missing:
        raise UICheckError(f"no parent run for {missing}; found {sorted(parents)}")
    out = {}
    for name, r in parents.items():
        status = r["info"]["status"]
        if status == "RUNNING" or (name in finished and status != "FINISHED"):
            raise UICheckError(f"parent run {name} is {status}")
        if name in finished:
            info = r["info"]
            text = page_text(f"{server.url}/#/experiments/{info['experiment_id']}/runs/"
                             f"{info['run_id']}")
            if "Status Finished" not in text or "Status Running" in text:
                raise UICheckError(f"the run page of parent {name} does not say Finished")
        out[name] = status
    return out


def _compared_runs(url: str, runs: list[dict], variants: tuple[str, ...]) -> list[dict]:
    """The runs of the compare URL, checked to be the evaluate@ run of every variant."""
    ids = json.loads(urllib.parse.unquote(url.split("runs=", 1)[1].split("&", 1)[0]))
    by_id = {r["info"]["run_id"]: r for r in runs}
    chosen = [by_id[i] for i in ids if i in by_id]
    names = {r["info"]["run_name"] for r in chosen}
    missing = [f"evaluate@{v}" for v in variants if f"evaluate@{v}" not in names]
    if missing or len(chosen) != len(ids):
        raise UICheckError(f"the compare page lacks {missing} (it has {sorted(names)})")
    return chosen


def _check_runs_page(url: str, runs: list[dict], variants: tuple[str, ...]) -> None:
    """The printed runs page lists the variant runs with the headline columns and values."""
    text = page_text(url, window="1800,900")
    if "matching runs" not in text or "Latency" in text:
        raise UICheckError("the runs page did not open on the runs table (training view)")
    missing = [m for m in HEADLINE if f" {m} " not in text]
    if missing:
        raise UICheckError(f"columns {missing} not on the runs page without a click")
    for v in variants:
        name = f"evaluate@{v}"
        mine = [r for r in runs if r["info"]["run_name"] == name
                and r["info"]["status"] == "FINISHED"]
        if name not in text or not mine:
            raise UICheckError(f"run {name} not on the runs page")
        if not any(_shown(_metrics(r).get("R1", float("nan")), text) and
                   _shown(_metrics(r).get("mAP", float("nan")), text) for r in mine):
            raise UICheckError(f"R1 / mAP of {name} not shown on the runs page")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    ap.add_argument("--variants", nargs="+", default=["full", "no_part"])
    ap.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME", "pfcvr"))
    ap.add_argument("--figures", default="reports/figures",
                    help="folder for mlflow_compare.png and mlflow_runs.png")
    args = ap.parse_args(argv)
    figures = Path(args.figures)
    try:
        found = check_ui(args.store, tuple(args.variants), args.experiment,
                         figures / "mlflow_compare.png", figures / "mlflow_runs.png")
    except UICheckError as err:
        print(f"UI check failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
