"""Issue 23 §6: an optional part never costs the answer. A cache that cannot be written (full or
read-only disk), a grid figure that cannot be saved, a gallery image that cannot be decoded, a
tracking store that cannot be used with `tracking.required: false`: one warning naming what was
skipped, and the result. The disks are real tmpfs mounts (skipped where mounting is denied)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pfcvr.cli import main as cli
from tests.support.tmpfs import mounted_tmpfs
from tests.test_search import env  # noqa: F401 (a module fixture: a tiny model and a gallery)

ROOT = Path(__file__).resolve().parents[1]


def _ranking(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"\s+\d+\s+-?\d\.\d{4}\s", line)]


def _gallery(env, tmp_path: Path) -> Path:   # noqa: F811
    gallery = tmp_path / "gallery"
    shutil.copytree(env["gallery"], gallery)
    (gallery / "00001" / "broken.png").write_bytes(b"\x89PNG but cut short")   # cannot be decoded
    return gallery


@pytest.mark.parametrize("disk", ["ro,size=1M", "size=8k"], ids=["read-only", "full"])
def test_search_answers_when_its_cache_and_grid_cannot_be_written(env, tmp_path, capsys, disk):  # noqa: F811
    """The example of the issue: `pfcvr search --cache-dir` on a read-only or full disk encoded
    every image, then ended with [Errno 30] / [Errno 28] and no ranking. Now: exit 0, the same
    ranking as without a cache, one warning for the cache, one for the grid, one for the
    undecodable image."""
    gallery = _gallery(env, tmp_path)
    query = ["white", "SUV", "with", "a", "black", "roof", "rack"]
    assert cli(["search", "--model", str(env["model"]), "--gallery", str(gallery), "--no-cache",
                "--top-k", "5", *query]) == 0
    expected = _ranking(capsys.readouterr().out)
    assert len(expected) == 5
    with mounted_tmpfs(tmp_path / "disk", disk) as mnt:
        rc = cli(["search", "--model", str(env["model"]), "--gallery", str(gallery),
                  "--cache-dir", str(mnt / "cache" if "ro" not in disk else mnt), "--top-k", "5",
                  "--grid", str(mnt / "grid.png"), *query])
        captured = capsys.readouterr()
        assert not (mnt / "grid.png").exists()
    assert rc == 0, captured.err
    assert _ranking(captured.out) == expected
    warnings = captured.err.splitlines()
    assert len(warnings) == 3, captured.err
    cache, grid, skipped = sorted(warnings, key=lambda w: ("cache" not in w, "grid" not in w))
    errno = "(OSError: [Errno 30] Read-only file system" if "ro" in disk else "(disk full: "
    assert cache.startswith("warning: search cache ") and errno in cache, cache
    assert cache.endswith("; going on without it: the result is the same, only the next run "
                          "does the work again")
    assert grid.startswith(f"warning: grid figure {mnt / 'grid.png'} not written (") and \
        grid.endswith("); the ranking is complete")
    assert skipped.startswith("warning: skipped 1 unreadable gallery image(s): ") and \
        "broken.png" in skipped
    assert "encoded, cached" not in captured.out               # nothing claims a cache


def test_groundingdino_detections_stand_when_the_cache_cannot_be_written(tmp_path):
    """The parts stage's GroundingDINO cache on a read-only disk: one warning, the detections
    are those computed without a cache."""
    from pfcvr.data.grounding import GroundingDetector
    from tests.test_grounding import make_fixture, save_tiny_grounding_dino, settings

    detector = save_tiny_grounding_dino(tmp_path / "tiny-grounding-dino")
    prepared = make_fixture(tmp_path, 1, 2)
    paths = sorted((prepared / "images").rglob("*.png"))
    plain = GroundingDetector(settings(detector)).detect(paths, progress=False)
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1M") as ro:
        with pytest.warns(UserWarning) as said:
            det = GroundingDetector(settings(detector), cache_dir=ro)
            assert det.detect(paths, progress=False) == plain
    assert [str(w.message).split(" (")[0] for w in said] == [
        f"GroundingDINO result cache {ro} cannot be written"]


def test_a_stage_goes_on_without_an_unusable_tracking_store(tmp_path):
    """`tracking.required: false` and the MLflow store on a read-only disk: the report stage (a
    real process) exits 0 with its outputs and one warning line about the store."""
    import yaml

    from pfcvr.config import read_raw, set_dotted
    from tests.test_report_inputs import _metrics

    raw = read_raw(ROOT / "params.yaml")
    set_dotted(raw, "report.variants", ["full", "no_part"])
    set_dotted(raw, "report.seeds", [0])
    set_dotted(raw, "tracking.required", False)
    set_dotted(raw, "train.epochs", 3)          # what the fake metrics (_metrics) record
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _metrics(tmp_path / "metrics", "full", {0: 12.0})
    _metrics(tmp_path / "metrics", "no_part", {0: 11.0})
    out = tmp_path / "out"
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1M") as ro:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{ro / 'mlflow.db'}",
                   MLFLOW_DISABLE_TELEMETRY="true")
        done = subprocess.run(
            [sys.executable, "-m", "stages.report", "--params", str(tmp_path / "params.yaml"),
             "--metrics", str(tmp_path / "metrics"), "--data-stats", str(tmp_path / "none.json"),
             "--out-md", str(out / "a.md"), "--out-json", str(out / "a.json"),
             "--compare", str(out / "c.json"), "--figure", str(out / "a.png")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith(f"report: warning: tracking store ") and \
        warned[0].endswith("going on without MLflow tracking (tracking.required is false)"), \
        done.stderr
    assert "Traceback" not in done.stderr
    assert {p.name for p in out.iterdir()} == {"a.md", "a.json", "c.json", "a.png"}
