"""A trained model folder as an MLflow model: a pyfunc that embeds captions and images.

:func:`log_model` (a stage's call, through its :class:`pfcvr.tracking.StageRun`) and
:func:`log_embedding_model` (the MLflow calls) log one model folder (what :func:`pfcvr.load`
restores) as an MLflow "logged model" of a run and register it as a new version of a registered
model, so that

    mlflow.pyfunc.load_model("models:/pfcvr-full/latest").predict(frame)

returns embeddings, offline. The pyfunc's contract (also its MLflow signature):

- input: a pandas DataFrame, one item per row, with the string columns ``caption`` (a caption)
  and ``image`` (the base64 text of an image file's bytes: PNG, JPEG, ...); each row sets exactly
  one of them (the other is None or missing). Base64 keeps the model self-contained: no path has
  to exist where it is served, and the JSON of ``mlflow models serve`` can carry it;
- params: ``device`` ("cpu", "cuda", ...; default "cpu"), ``batch_size`` (default 32);
- output: float32 [N, D], row i the L2-normalised embedding of input row i in the joint space;
  the dot product of a caption's row and an image's row is the retrieval score of the model.
  Images are squashed to the model's input size as in training (pfcvr.data.dataset).

Logging stays cheap: the weights and the pfcvr package (code_paths, well under 1 MB) are
copied; the requirements are pinned from the installed versions (no pip inference, no network);
the input example (one caption, one 8x8 PNG) is embedded once before saving, as a check.
"""
from __future__ import annotations

import base64
import io
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # a stage log, not a tty

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402  (the type hint below tells MLflow the input is a DataFrame)

from pfcvr.tracking.state import note  # noqa: E402

# The distributions that pfcvr.load and the encoders import, pinned as installed.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow", "safetensors", "tokenizers",
                "transformers", "pydantic", "ruamel.yaml", "pyyaml", "tqdm")
EXAMPLE_CAPTION = "a white sedan with a black roof and silver wheels"


class ModelFolderError(ValueError):
    """The model folder cannot be turned into the pyfunc (not a model, cannot embed): the
    folder's fault, not the store's, so the tracking outbox does not retry it."""


class EmbeddingModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: artifact ``model`` is a pfcvr model folder (module docstring for the I/O)."""

    def load_context(self, context) -> None:
        from pfcvr.model.io import load_model

        self.model = load_model(context.artifacts["model"], device="cpu").eval()
        self.device = "cpu"

    def predict(self, context, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        params = params or {}
        device = str(params.get("device") or "cpu")
        if device != self.device:
            self.model, self.device = self.model.to(device), device
        return embed(self.model, model_input, device, int(params.get("batch_size") or 32))


def _column(frame, name: str) -> list:
    return list(frame[name]) if name in getattr(frame, "columns", ()) else [None] * len(frame)


def _present(value) -> bool:
    return isinstance(value, str) and value != ""


def _decode_image(text: str, size: int, row: int) -> np.ndarray:
    """base64 of an image file -> uint8 [size, size, 3], squashed bilinearly as in training."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=False))) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im)
    except Exception as err:  # bad base64 or not an image: name the row
        raise ValueError(f"row {row}: column image is not the base64 text of an image file "
                         f"({type(err).__name__}: {err})") from None


def embed(model, frame, device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """Embeddings float32 [N, D] of the rows of ``frame`` (module docstring).

    Raises ValueError naming the first row that sets neither or both of caption and image, or
    whose image cannot be decoded.
    """
    import torch

    from pfcvr.data.dataset import normalize
    from pfcvr.engine.encode import encode_image_batches, encode_queries

    captions, images = _column(frame, "caption"), _column(frame, "image")
    text_rows, image_rows = [], []
    for i, (c, im) in enumerate(zip(captions, images)):
        if _present(c) == _present(im):
            raise ValueError(f"row {i}: set exactly one of the columns caption and image")
        (text_rows if _present(c) else image_rows).append(i)
    if not text_rows and not image_rows:
        raise ValueError("no rows to embed")
    out: np.ndarray | None = None
    if text_rows:
        feats = encode_queries(model, [captions[i] for i in text_rows], batch_size, device)
        out = _place(out, text_rows, feats.features, len(captions))
    if image_rows:
        size = int(model.image_size)
        batches = []
        for lo in range(0, len(image_rows), batch_size):
            rows = image_rows[lo:lo + batch_size]
            u8 = np.stack([_decode_image(images[i], size, i) for i in rows])
            batches.append({"images": normalize(torch.from_numpy(u8).permute(0, 3, 1, 2))})
        feats, _ = encode_image_batches(model, batches, device)
        out = _place(out, image_rows, feats, len(captions))
    return out


def _place(out: np.ndarray | None, rows: list[int], feats, n: int) -> np.ndarray:
    feats = feats.detach().cpu().numpy().astype(np.float32)
    if out is None:
        out = np.zeros((n, feats.shape[1]), dtype=np.float32)
    out[rows] = feats
    return out


def example_image(size: int = 8) -> str:
    """base64 of a small PNG (a grey-blue square): the image of the input example."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 110, 140)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"caption": [EXAMPLE_CAPTION, None], "image": [None, example_image()]})


def signature(dim: int):
    """Inputs caption / image (optional strings), params device / batch_size, output [-1, dim]."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec("string", "caption", required=False),
                       ColSpec("string", "image", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
        params=ParamSchema([ParamSpec("device", "string", "cpu"),
                            ParamSpec("batch_size", "long", 32)]))


def requirements(names: Sequence[str] = REQUIREMENTS) -> list[str]:
    """``name==version`` of each installed distribution among ``names`` (missing ones skipped)."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return out


def save_embedding_model(folder: str | Path, path: str | Path, mlflow_model=None,
                         metadata_: dict[str, Any] | None = None) -> int:
    """Write the pyfunc of the model ``folder`` to the new folder ``path``; returns D.

    Raises ValueError when the folder's model cannot embed the input example (wrong shape or
    non-finite values), before anything is logged.
    """
    import pfcvr
    from pfcvr.model.io import load_model

    model = load_model(folder, device="cpu").eval()
    example = input_example()
    check = embed(model, example)
    if check.ndim != 2 or check.shape[0] != len(example) or not np.isfinite(check).all():
        raise ValueError(f"model {folder} gives embeddings of shape {check.shape} (or non-finite "
                         "values) for the input example")
    dim = int(check.shape[1])
    mlflow.pyfunc.save_model(
        path=str(path), python_model=EmbeddingModel(), artifacts={"model": str(folder)},
        code_paths=[str(Path(pfcvr.__file__).parent)], signature=signature(dim),
        input_example=example, pip_requirements=requirements(), mlflow_model=mlflow_model,
        metadata=metadata_)
    return dim


def log_embedding_model(client, exp_id: str, run_id: str, folder: str | Path, registered: str,
                        metadata_: dict[str, Any] | None = None, description: str = ""):
    """Log ``folder`` as the logged model ``model`` of run ``run_id`` and register it as a new
    version of ``registered``; returns the ModelVersion. Raises :class:`ModelFolderError` when
    the folder cannot become the pyfunc (:func:`save_embedding_model`), else what MLflow raises.

    Call it with ``client``'s store as MLflow's process-wide tracking URI
    (pfcvr.tracking.client.process_store): for a database store, MLflow's registry finds the
    logged model through a client of its own that reads that URI. ``registered`` is a valid
    registered-model name (pfcvr.config checks variant names up front); it is looked up by
    name, never pasted into a filter string."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    tags = {k: str(v) for k, v in (metadata_ or {}).items()}
    logged = client.create_logged_model(exp_id, name="model", source_run_id=run_id, tags=tags,
                                        model_type="embedding")
    try:
        with tempfile.TemporaryDirectory(prefix="pfcvr-mlflow-model-") as tmp:
            local = Path(tmp) / "model"
            info = Model(artifact_path=logged.artifact_location, run_id=run_id,
                         model_id=logged.model_id)
            try:
                save_embedding_model(folder, local, mlflow_model=info, metadata_=metadata_)
            except Exception as err:   # local: no store involved, and a retry cannot help
                raise ModelFolderError(f"model {folder} cannot be logged: "
                                       f"{type(err).__name__}: {err}") from err
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, 0)])
    try:
        client.get_registered_model(registered)
    except Exception as err:
        if getattr(err, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(registered, description=description or None)
        except Exception as made:  # created meanwhile by another process
            if getattr(made, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
    return client.create_model_version(registered, source=f"models:/{logged.model_id}",
                                       run_id=run_id, model_id=logged.model_id,
                                       description=description or None, await_creation_for=0)


def log_model(run, folder: str | Path, registered: str, *,
              metadata: dict[str, Any] | None = None, description: str = "") -> None:
    """Log the model folder ``folder`` (what :func:`pfcvr.load` restores) as the logged model
    ``model`` of the stage run ``run`` (a :class:`pfcvr.tracking.StageRun`), a pyfunc that embeds
    captions and images, and register it as a new version of ``registered``
    (``models:/<registered>/latest``); the module docstring has the input/output contract. Like
    every call of a stage run it never raises: a failure is one warning (the stage's own files
    keep the model); a no-op in a disabled run.

    A function of this module, not a method of StageRun, so that only the stage that logs a
    model (evaluate) depends on the model code (the DVC deps of every other stage stay free of
    it: tests/test_dvc_deps.py).
    """
    if not run.enabled:
        return

    from pfcvr.tracking.client import process_store

    def log() -> None:
        with process_store(run.store_uri):   # MLflow's registry reads it (issue 23, item 1)
            version = log_embedding_model(run.client, run.experiment_id, run.run_id, folder,
                                          registered, metadata, description)
        note(f"model {folder} registered as models:/{registered}/{version.version}")

    run.call(f"log model {registered}", log)
