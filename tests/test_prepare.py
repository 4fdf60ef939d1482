"""The prepare stage: outputs, determinism, real sources, atomicity, MLflow logging, dvc.yaml."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pfcvr.config import load_params, read_raw, set_dotted
from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.manifest import DataError, load_manifest
from pfcvr.data.readers import DEFAULT_ANNOTATIONS
from pfcvr.pipeline.prepare import prepare

sys.path.insert(0, str(Path(__file__).parent))
from test_readers import t2i_dataset  # noqa: E402  (fixture builder in the real JSON layout)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data.synthetic.n_ids": 12, "data.synthetic.images_per_id": 2,
        "data.synthetic.image_size": 48, "data.synthetic.family_size": 3}


def write_params(path: Path, **overrides) -> Path:
    raw = read_raw(ROOT / "params.yaml")
    for k, v in {**TINY, **overrides}.items():
        set_dotted(raw, k, v)
    path.write_text(yaml.safe_dump(raw))
    return path


def outputs(tmp: Path) -> tuple[Path, Path, Path]:
    return tmp / "data" / "prepared", tmp / "reports" / "stats.json", tmp / "reports" / "fig.png"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_prepare_outputs_and_determinism(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml"))
    out, stats_path, fig = outputs(tmp_path / "a")
    stats = prepare(params, out, stats_path, fig, workers=1)
    records = load_manifest(out / "manifest.json")             # validates every record
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "synthetic" and meta["images_root"] == "images"
    assert meta["num_records"] == len(records) == 24
    assert meta["settings"] == {"source": "synthetic", "root": "", "annotations": "",
                                "val_fraction": 0.15, "on_error": "raise", "seed": 0,
                                "unknown_category": "error"}
    assert all((out / "images" / r["file_path"]).is_file() for r in records)
    assert json.loads(stats_path.read_text()) == stats
    assert stats["total"] == {"ids": 12, "images": 24, "captions": 48}
    assert sum(s["ids"] for s in stats["splits"].values()) == 12 and stats["splits"]["test"]["ids"] >= 3
    assert stats["skipped"] == {"total": 0}
    assert 8 <= stats["caption_words"]["mean"] <= stats["caption_words"]["max"] <= 45
    side = sum(r["view"].startswith("side") for r in records) / 24
    assert stats["part_coverage"]["wheels"] == pytest.approx(side, abs=1e-4)
    assert stats["part_coverage"]["lights"] == pytest.approx(1 - side, abs=1e-4)
    assert stats["part_coverage"]["windows"] == 1.0 and set(stats["part_coverage"]) == set(PART_CATEGORIES)
    for key in ("oracle_global_R1", "oracle_all_R1", "oracle_global_mAP", "oracle_all_mAP"):
        assert 0 <= stats[key] <= 100
    assert stats["oracle_all_R1"] > stats["oracle_global_R1"]
    with Image.open(fig) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
    # same params -> byte-identical data and stats (the figure embeds no time either)
    out_b, stats_b, fig_b = outputs(tmp_path / "b")
    prepare(params, out_b, stats_b, fig_b, workers=1)
    assert digest(out) == digest(out_b)
    assert stats_path.read_bytes() == stats_b.read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]   # no temp leftovers


def test_real_source_keeps_images_in_place_and_counts_skips(tmp_path):
    ds = tmp_path / "T2I_VeRi_new"
    recs = t2i_dataset(ds, {1: "train", 2: "train", 3: "train", 4: "train", 5: "val", 6: "val"},
                       name=DEFAULT_ANNOTATIONS["t2i-verw"])
    (ds / recs[0]["file_path"]).unlink()
    params = load_params(write_params(tmp_path / "params.yaml", **{
        "data.source": "t2i-verw", "data.root": str(ds), "data.on_error": "skip",
        "data.val_fraction": 0.25}))
    out, stats_path, fig = outputs(tmp_path)
    stats = prepare(params, out, stats_path, fig, workers=1)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["images_root"] == str(ds.resolve()) and meta["val_is_test"] and meta["val_carved_ids"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "meta.json"]   # nothing copied
    records = load_manifest(out / "manifest.json")
    assert all((ds / r["file_path"]).is_file() for r in records) and len(records) == 11
    assert stats["skipped"] == {"missing_image": 1, "total": 1}
    assert stats["splits"]["test"]["ids"] == 2 and stats["splits"]["val"]["ids"] == 1
    assert stats["part_coverage"]["wheels"] == 1.0 and stats["part_coverage"]["roof"] == 0.0
    assert not any(k.startswith("oracle") for k in stats)
    assert fig.is_file()


def test_a_failed_run_leaves_the_previous_output_untouched(tmp_path):
    ds = tmp_path / "veri"
    t2i_dataset(ds, {1: "train", 2: "train", 3: "test"})
    params = load_params(write_params(tmp_path / "params.yaml", **{
        "data.source": "t2i-veri", "data.root": str(ds)}))
    out, stats_path, fig = outputs(tmp_path)
    prepare(params, out, stats_path, fig, workers=1)
    before = digest(out)
    (ds / "image" / "0003" / "0003_0.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"record 4 \(image/0003/0003_0\.jpg\): unreadable image"):
        prepare(params, out, stats_path, fig, workers=1)
    assert digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["prepared"]   # no half-written folder


def test_stage_logs_params_stats_and_artifacts_to_mlflow(tmp_path, monkeypatch, capsys):
    from pfcvr import tracking
    from stages import prepare as stage

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))          # store + artifacts inside tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "test-prepare")
    params = write_params(tmp_path / "params.yaml")
    out, stats_path, fig = outputs(tmp_path)
    assert stage.main(["--params", str(params), "--out", str(out), "--stats", str(stats_path),
                       "--figure", str(fig), "--workers", "1"]) == 0
    assert "prepare: synthetic: 12 ids, 24 images, 48 captions" in capsys.readouterr().out
    (run,) = tracking.stage_runs("prepare")
    assert run["status"] == "FINISHED" and run["name"] == "prepare"
    assert run["params"]["data.synthetic.n_ids"] == "12" and run["params"]["seed"] == "0"
    stats = json.loads(stats_path.read_text())
    assert run["metrics"]["total.images"] == 24
    assert run["metrics"]["oracle_all_R1"] == pytest.approx(stats["oracle_all_R1"])
    assert run["metrics"]["seconds"] > 0
    logged = {p.name for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()}
    assert {"stats.json", "fig.png", "meta.json"} <= logged
    # a bad parameter stops the stage before any work, naming the key
    bad = write_params(tmp_path / "bad.yaml", **{"data.synthetic.image_size": 7})
    assert stage.main(["--params", str(bad), "--out", str(tmp_path / "x")]) == 1
    assert ("prepare: error: data.synthetic.image_size=7: must be in [32, 1024]"
            in capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_dvc_yaml_prepare_stage_lists_its_code_params_and_outputs():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["prepare"]
    assert stage["cmd"] == "python -m stages.prepare"
    assert stage["params"] == ["seed", "data", "parts.unknown_category", "tracking"]
    assert stage["outs"] == ["data/prepared"]
    assert stage["metrics"] == [{"reports/data/stats.json": {"cache": False}}]
    assert stage["plots"] == [{"reports/figures/data_samples.png": {"cache": False}}]
    # every project module the stage imports is a dependency, and the lazily imported ones
    assert {"pfcvr/metrics.py", "pfcvr/report/figures/data.py"} <= set(stage["deps"])
    code = ("import sys, stages.prepare, pfcvr.report.figures.data; "
            "print('\\n'.join(sorted(m.__file__ for m in list(sys.modules.values()) "
            "if getattr(m, '__file__', None))))")
    files = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           check=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}).stdout
    ours = {str(Path(f).resolve().relative_to(ROOT)) for f in files.split()
            if Path(f).resolve().is_relative_to(ROOT) and ".venv" not in f}
    ours = {f for f in ours if not f.endswith("__init__.py")}
    # a dep is a file or a whole folder (a package such as pfcvr/data/synthetic)
    deps = [Path(d) for d in stage["deps"]]
    uncovered = sorted(f for f in ours if not any(Path(f) == d or d in Path(f).parents for d in deps))
    assert not uncovered, uncovered
    assert all((ROOT / d).is_file() or (ROOT / d).is_dir() for d in stage["deps"])
