"""The best model one click from its run: a tiny PFCVR logged as a pyfunc, registered, and loaded
back with `mlflow.pyfunc.load_model("models:/pfcvr-full/latest")` in a fresh process with the
network cut off; its embeddings equal the ones the model gives directly."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from pfcvr.config import load_params
from pfcvr.data.dataset import load_split
from pfcvr.model.io import load_model, save_model
from pfcvr.tracking import stage_run
from pfcvr.tracking.model import log_model
from tests.support.eval_helpers import build_tiny_model, make_split_data, write_params

ROOT = Path(__file__).resolve().parents[1]
# A fresh process that loads the registered model with every proxy pointing at a closed port
# and the Hugging Face hub offline: any network access fails instead of being slow.
LOADER = """
import sys, numpy as np, pandas as pd, mlflow.pyfunc
model = mlflow.pyfunc.load_model("models:/pfcvr-full/latest")
frame = pd.read_json(sys.argv[1], orient="split")
np.save(sys.argv[2], model.predict(frame, params={"batch_size": 2}))
print(model.metadata.signature.to_dict()["outputs"])
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_model")
    params_file = write_params(root / "params.yaml", {"report.seeds": [0]})
    params = load_params(params_file, variant="full")
    prepared, parts = make_split_data(root, params)
    split = load_split(prepared, parts, "test")
    train = load_split(prepared, parts, "train")
    captions = [c for r in train.records for c in r["captions"]]
    folder = root / "models/full/seed0/best"
    save_model(build_tiny_model(params, captions), folder, {"variant": "full", "seed": 0})
    return {"root": root, "params": params, "folder": folder, "split": split}


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _direct(folder: Path, captions: list[str], images: list[Path]) -> np.ndarray:
    """Embeddings computed without the pyfunc: tokenizer + encoders of the loaded model."""
    from PIL import Image

    model = load_model(folder).eval()
    size = model.image_size
    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size),
                                                                   Image.BILINEAR))
                    for p in images])
    from pfcvr.data.dataset import normalize

    with torch.no_grad():
        text = F.normalize(model.encode_text(model.tokenizer(captions)).float(), dim=-1)
        img = F.normalize(model.encode_image(
            normalize(torch.from_numpy(arr).permute(0, 3, 1, 2))).float(), dim=-1)
    return torch.cat([text, img]).numpy()


def test_registered_model_round_trip_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "workspace")
    with stage_run("evaluate", tiny["params"], variant="full", required=True) as run:
        log_model(run, tiny["folder"], "pfcvr-full", metadata={"variant": "full", "seed": 0})
    with stage_run("evaluate", tiny["params"], variant="full", required=True) as rerun:
        log_model(rerun, tiny["folder"], "pfcvr-full")      # a rerun: version 2 is the latest
    mc = run.client
    versions = sorted(mc.search_model_versions("name = 'pfcvr-full'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert [v.run_id for v in versions] == [run.run_id, rerun.run_id]
    model_ids = [v.source.removeprefix("models:/") for v in versions]
    outputs = mc.get_run(rerun.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [model_ids[1]]   # the run's logged model
    logged = mc.get_logged_model(model_ids[0])
    assert logged.source_run_id == run.run_id and logged.status.to_proto() == 2   # READY

    records = tiny["split"].records[:2]
    captions = [records[0]["captions"][0], records[1]["captions"][0]]
    images = [tiny["split"].paths[0], tiny["split"].paths[1]]
    frame = pd.DataFrame({"caption": [captions[0], None, captions[1], None],
                          "image": [None, _b64(images[0]), None, _b64(images[1])]})
    frame_file, out_file = tmp_path / "frame.json", tmp_path / "emb.npy"
    frame.to_json(frame_file, orient="split")
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
           "NO_PROXY": "", "no_proxy": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", LOADER, str(frame_file), str(out_file)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.load(out_file)
    direct = _direct(tiny["folder"], captions, images)
    want = direct[[0, 2, 1, 3]]      # rows: caption, image, caption, image
    assert got.dtype == np.float32 and got.shape == want.shape == (4, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert json.loads(out.stdout.strip().splitlines()[-1])[0]["tensor-spec"]["shape"] == [-1, 32]

    # What the model folder holds: signature, example, pinned requirements, the code, the weights.
    folder = Path(_model_dir(model_ids[0], tmp_path / "dl"))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["type"], c["required"]) for c in inputs] == [
        ("caption", "string", False), ("image", "string", False)]
    assert mlmodel["metadata"] == {"variant": "full", "seed": 0}
    reqs = (folder / "requirements.txt").read_text().splitlines()
    assert f"torch=={torch.__version__.split('+')[0]}" in [r.split("+")[0] for r in reqs]
    assert (folder / "input_example.json").is_file()
    assert (folder / "code/pfcvr/tracking/model.py").is_file()
    assert (folder / "artifacts/best/model.safetensors").is_file()


def _model_dir(model_id: str, dest: Path) -> str:
    """The files of a logged model, downloaded from the store."""
    import mlflow.artifacts

    dest.mkdir(parents=True, exist_ok=True)
    return mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}",
                                               dst_path=str(dest),
                                               tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def test_rows_must_set_one_column_and_images_must_decode(tiny):
    from pfcvr.tracking.model import embed, example_image

    model = load_model(tiny["folder"]).eval()
    ok = embed(model, pd.DataFrame({"caption": ["a red car"]}))   # no image column at all
    assert ok.shape == (1, 32)
    with pytest.raises(ValueError, match="row 1: set exactly one"):
        embed(model, pd.DataFrame({"caption": ["a", "b"], "image": [None, example_image()]}))
    with pytest.raises(ValueError, match="row 0: set exactly one"):
        embed(model, pd.DataFrame({"caption": [None], "image": [None]}))
    with pytest.raises(ValueError, match="row 0: column image is not the base64"):
        embed(model, pd.DataFrame({"image": ["bm90IGFuIGltYWdl"]}))


def test_disabled_run_logs_no_model(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    with pytest.warns(UserWarning, match="going on without MLflow tracking"):
        with stage_run("evaluate", variant="full", required=False) as run:
            log_model(run, tiny["folder"], "pfcvr-full")     # a no-op, not an error
    assert not run.enabled
