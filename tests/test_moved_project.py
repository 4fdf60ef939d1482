"""Issue 13 §4: nothing the stages store is tied to where the project folder was.

A dataset kept inside the project is recorded in ``meta.json`` relative to ``data/prepared``, so
`mv` of the whole project keeps the prepared data valid; a dataset outside it keeps its absolute
path (tests/test_prepare.py); a recorded images folder that is gone is named in one clear error.
The main test runs the real stage processes (`python -m stages.prepare`, then `stages.parts`
after the move), with the project's own default stores, as a user would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pfcvr.config import read_raw, set_dotted
from pfcvr.data.dataset import load_split
from pfcvr.data.manifest import DataError, images_root, stored_location

sys.path.insert(0, str(Path(__file__).parent))
from test_readers import VERW, t2i_dataset  # noqa: E402  (fixture in the published layout)

ROOT = Path(__file__).resolve().parents[1]


def stage(name: str, project: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DVC_", "MLFLOW_", "OPTUNA_", "PYTEST_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    args = ["--workers", "1"] if name == "prepare" else []
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_moved_project_with_its_dataset_inside_keeps_working(tmp_path):
    project = tmp_path / "project"
    dataset = project / "datasets" / "T2I_VeRW"
    t2i_dataset(dataset, {1: "train", 2: "train", 3: "train", 4: "train", 5: "val", 6: "val"},
                name=VERW)
    raw = read_raw(ROOT / "params.yaml")
    for key, value in {"data.source": "t2i-verw", "data.root": "datasets/T2I_VeRW",
                       "data.val_fraction": 0.25, "parts.source": "annotations"}.items():
        set_dotted(raw, key, value)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    done = stage("prepare", project)
    assert done.returncode == 0, done.stderr
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert meta["images_root"] == "../../datasets/T2I_VeRW"
    assert meta["annotations"] == f"../../datasets/T2I_VeRW/{VERW}"

    moved = tmp_path / "moved" / "project"
    moved.parent.mkdir()
    os.rename(project, moved)            # what `mv project moved/project` does
    done = stage("parts", moved)
    assert done.returncode == 0, done.stderr
    assert not project.exists()          # nothing written to (or re-created at) the old place
    doc = json.loads((moved / "data/parts/parts.json").read_text())
    assert len(doc["images"]) == meta["num_records"]
    train = load_split(moved / "data/prepared", moved / "data/parts/parts.json", "train")
    assert train.images_root == moved / "datasets/T2I_VeRW"
    assert len(train) == 6 and all(p.is_file() for p in train.paths)   # 3 ids (1 carved to val)
    # no file the stages wrote names the folder the project was built in
    written = [p for d in ("data", "reports") for p in (moved / d).rglob("*") if p.is_file()
               and p.suffix in (".json", ".md", ".tsv", ".yaml")]
    assert written and not [p for p in written if str(project) in p.read_text()]


def test_stored_location_is_relative_inside_the_project_only(tmp_path):
    project = tmp_path / "project"
    prepared = project / "data" / "prepared"
    inside, outside = project / "datasets" / "x" / "imgs", tmp_path / "elsewhere" / "imgs"
    for folder in (inside, outside):
        folder.mkdir(parents=True)
    assert stored_location(inside, prepared, project) == "../../datasets/x/imgs"
    assert stored_location(outside, prepared, project) == str(outside.resolve())
    # a link inside the project to another disk is recorded by its (absolute) target
    (project / "datasets" / "link").symlink_to(outside)
    assert stored_location(project / "datasets/link", prepared, project) == str(outside.resolve())
    # prepared data written outside the project (a test, another --out): absolute
    assert stored_location(inside, tmp_path / "out", project) == str(inside.resolve())
    # read back from data/prepared, whatever the working directory
    prepared.mkdir(parents=True)
    root = images_root(prepared, {"images_root": "../../datasets/x/imgs"})
    assert root == inside.resolve() and root.is_dir()
    assert images_root(prepared, {"images_root": str(outside)}) == outside
    assert images_root(prepared, {}) == prepared / "images"       # the synthetic default


def test_a_recorded_images_folder_that_is_gone_is_named(tmp_path):
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    gone = tmp_path / "datasets" / "gone"
    with pytest.raises(DataError) as info:
        images_root(prepared, {"images_root": str(gone)})
    assert str(info.value) == (
        f"{prepared / 'meta.json'}: the images folder {gone} (its images_root {str(gone)!r}) "
        "does not exist: the dataset was moved or deleted after the prepare stage; set "
        "data.root to where it is now and rerun prepare (`dvc repro prepare`, `-f` if "
        "data.root is unchanged)")
