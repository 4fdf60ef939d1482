"""GroundingDINO part detection through transformers (offline), batched and cached.

The prompt (``parts.prompt``) is a list of phrases separated by "." ("car window. car light.
..."); each phrase is mapped to one part category with the lexicon. A query box belongs to a
category when its best token probability passes ``parts.box_threshold`` and one of that
category's phrase tokens passes ``parts.text_threshold`` (GroundingDINO's own two-threshold
rule); per image and category the highest-scoring box is kept.

Results are cached per image (content hash) under a key of everything else that decides them:
the detector files, prompt and thresholds, the code of this module and of the lexicon (prompt ->
categories), the transformers / torch / Pillow versions (processor and post-processing live in
transformers) and the device type (cpu and cuda kernels round differently). So rerunning the
stage on unchanged inputs runs no model at all, and a change of any of these recomputes.

A batch holds images of one size only: GroundingDINO pads a batch to its largest image, and that
padding changes the detections (measured with the test model), so a mixed batch would make an
image's result depend on which other images happened to share its batch, and the cache would
keep whichever came first. ``parts.batch_size`` is therefore not part of the key. Datasets with
many different image sizes run with smaller batches.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfcvr.config import PartsConfig
from pfcvr.data.cachekey import source_digest, versions
from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.lexicon import phrase_category
from pfcvr.runtime.atomic import read_json
from pfcvr.runtime.output_set import OptionalCache

CACHE_VERSION = 2              # the cached content's format (code changes are in the key anyway)
DETECTOR_SOURCES = ("data/grounding.py", "data/lexicon.py", "config.py")   # relative to pfcvr/
LIBRARIES = ("transformers", "torch", "tokenizers", "pillow")
CACHE_SAVE_EVERY = 50          # batches between cache checkpoints (an interrupted run resumes)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HOW_TO_GET = (
    "GroundingDINO weights cannot be downloaded from here. On a machine with internet access run\n"
    "  python -c \"from transformers import AutoModelForZeroShotObjectDetection as M, AutoProcessor "
    "as P; i='IDEA-Research/grounding-dino-tiny'; M.from_pretrained(i).save_pretrained('grounding-"
    "dino-tiny'); P.from_pretrained(i).save_pretrained('grounding-dino-tiny')\"\n"
    "(or `huggingface-cli download IDEA-Research/grounding-dino-tiny --local-dir "
    "grounding-dino-tiny`), copy the folder here and set parts.detector to its path, e.g. "
    "`dvc exp run -S parts.detector=/path/to/grounding-dino-tiny`. A hub id works only when it "
    "is already in the local Hugging Face cache.")


class DetectorError(RuntimeError):
    """The GroundingDINO detector cannot be used (missing weights, bad prompt, no device)."""


@dataclass(frozen=True)
class DetectorSettings:
    detector: str
    prompt: str
    box_threshold: float
    text_threshold: float
    batch_size: int
    device: str

    @classmethod
    def from_config(cls, cfg: PartsConfig) -> "DetectorSettings":
        return cls(detector=cfg.detector, prompt=cfg.prompt, box_threshold=cfg.box_threshold,
                   text_threshold=cfg.text_threshold, batch_size=cfg.batch_size, device=cfg.device)


def prompt_phrases(prompt: str) -> list[tuple[int, int, str]]:
    """(start, end, category) of each "."-separated phrase of the prompt, in prompt order.

    Raises DetectorError naming ``parts.prompt`` when a phrase names no part or several.
    """
    out = []
    start = 0
    for end in [i for i, ch in enumerate(prompt) if ch == "."] + [len(prompt)]:
        text = prompt[start:end]
        if text.strip():
            cat = phrase_category(text)
            if cat is None:
                raise DetectorError(
                    f"parts.prompt={prompt!r}: phrase {text.strip()!r} must name exactly one part "
                    f"category ({', '.join(PART_CATEGORIES)}) with a lexicon word")
            lead = len(text) - len(text.lstrip())
            out.append((start + lead, start + len(text.rstrip()), cat))
        start = end + 1
    if not out:
        raise DetectorError(f"parts.prompt={prompt!r}: no phrase; use e.g. 'car window. car wheel.'")
    return out


def resolve_detector(detector: str) -> Path:
    """The local folder of ``parts.detector`` (a folder, or a hub id already cached); no network.

    Raises DetectorError naming ``parts.detector`` and how to obtain the weights otherwise.
    """
    if not detector.strip():
        raise DetectorError("parts.detector is empty but parts.source is groundingdino.\n" + HOW_TO_GET)
    path = Path(detector).expanduser()
    if not path.exists() and not path.is_absolute() and detector.count("/") == 1 \
            and not detector.startswith("."):
        try:  # looks like a hub id: accept it only from the local cache
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(detector, local_files_only=True))
        except Exception:
            raise DetectorError(f"parts.detector={detector!r}: no such folder, and the hub id is "
                                f"not in the local Hugging Face cache.\n{HOW_TO_GET}") from None
    if not path.is_dir():
        raise DetectorError(f"parts.detector={detector!r}: folder {path} does not exist.\n{HOW_TO_GET}")
    if not (path / "config.json").is_file() or not any((path / f).is_file() for f in WEIGHT_FILES):
        raise DetectorError(f"parts.detector={detector!r}: {path} holds no transformers model "
                            f"(config.json and {' or '.join(WEIGHT_FILES)} needed).\n{HOW_TO_GET}")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as err:
        raise DetectorError(f"parts.detector={detector!r}: unreadable config.json ({err})") from None
    if model_type != "grounding-dino":
        raise DetectorError(f"parts.detector={detector!r}: {path} is a {model_type!r} model, "
                            f"not GroundingDINO.\n{HOW_TO_GET}")
    if not ((path / "preprocessor_config.json").is_file() or (path / "processor_config.json").is_file()):
        raise DetectorError(f"parts.detector={detector!r}: {path} has no processor files "
                            "(preprocessor_config.json / processor_config.json); save the "
                            "AutoProcessor next to the model.\n" + HOW_TO_GET)
    return path


def _file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha1").hexdigest()


def folder_fingerprint(path: Path) -> str:
    """Content hash of every file of a model folder (weights included)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        h.update(str(f.relative_to(path)).encode())
        h.update(_file_digest(f).encode())
    return h.hexdigest()


def detector_device(device: str) -> str:
    """``parts.device`` (auto | cpu | cuda) resolved by :func:`pfcvr.runtime.device.resolve_device`, as
    the string transformers' ``.to()`` takes (``"cpu"``, ``"cuda:0"``).

    Raises DetectorError naming ``parts.device`` when the device does not exist here, so the
    parts stage reports every detector problem with one error type.
    """
    from pfcvr.runtime.device import DeviceError, resolve_device

    try:
        return str(resolve_device(device, key="parts.device"))
    except DeviceError as err:
        raise DetectorError(str(err)) from None


def best_boxes(logits, pred_boxes, token_category, box_threshold: float, text_threshold: float
               ) -> list[dict[str, dict[str, Any]]]:
    """Per image, the best box of each category (vectorised over the batch).

    logits [B, Q, T] (token logits), pred_boxes [B, Q, 4] (cx, cy, w, h in 0..1),
    token_category [C, T] bool (which prompt tokens belong to each category).
    Returns ``[{category: {"box": [x0, y0, x1, y1], "score": float}}]`` per image.
    """
    import torch

    probs = logits.float().sigmoid()                                   # [B, Q, T]
    tc = token_category.to(probs.device)
    box_conf = probs.amax(-1)                                          # [B, Q]
    cat_score = (probs[:, :, None, :] * tc[None, None]).amax(-1)       # [B, Q, C]
    valid = (box_conf > box_threshold)[..., None] & (cat_score > text_threshold)
    score = torch.where(valid, cat_score, torch.full_like(cat_score, -1.0))
    best, q = score.max(1)                                             # [B, C]
    boxes = torch.gather(pred_boxes.float(), 1, q[..., None].expand(-1, -1, 4))  # [B, C, 4]
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1)
    ok = (best > 0) & (xyxy[..., 2] > xyxy[..., 0]) & (xyxy[..., 3] > xyxy[..., 1])
    xyxy, best, ok = xyxy.cpu().numpy(), best.cpu().numpy(), ok.cpu().numpy()
    return [{c: {"box": [round(float(v), 6) for v in xyxy[b, k]], "score": round(float(best[b, k]), 6)}
             for k, c in enumerate(PART_CATEGORIES) if ok[b, k]} for b in range(len(xyxy))]


class GroundingDetector:
    """GroundingDINO from a local folder. Construction checks everything before any work."""

    def __init__(self, settings: DetectorSettings, cache_dir: str | Path | None = None):
        self.settings = settings
        self.path = resolve_detector(settings.detector)
        self.phrases = prompt_phrases(settings.prompt)
        self.device = detector_device(settings.device)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        # only saves time: a cache that cannot be written is one warning, the detections stand
        self.cache = OptionalCache(self.cache_dir, "GroundingDINO result cache")
        self._model = self._processor = self._token_category = None
        self.fingerprint = folder_fingerprint(self.path)
        self.key_inputs = {
            "version": CACHE_VERSION, "model": self.fingerprint, "prompt": settings.prompt,
            "box_threshold": settings.box_threshold, "text_threshold": settings.text_threshold,
            "code": source_digest(DETECTOR_SOURCES), "libraries": versions(*LIBRARIES),
            "device": self.device.split(":")[0]}
        self.cache_key = hashlib.sha256(json.dumps(self.key_inputs, sort_keys=True)
                                        .encode()).hexdigest()[:20]
        self.stats = {"images": 0, "cached": 0, "computed": 0}

    # -- model ---------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        try:
            self._processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
            self._model = AutoModelForZeroShotObjectDetection.from_pretrained(
                self.path, local_files_only=True).to(self.device).eval()
        except Exception as err:
            raise DetectorError(f"parts.detector={self.settings.detector!r}: cannot load "
                                f"GroundingDINO from {self.path}: {err}") from err
        enc = self._processor.tokenizer(self.settings.prompt, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        n_text = int(getattr(self._model.config, "max_text_len", len(offsets)))
        if len(offsets) > n_text:    # the model would cut the prompt: later phrases never match
            raise DetectorError(f"parts.prompt is {len(offsets)} tokens long but the detector "
                                f"reads {n_text}; shorten it (one short phrase per part)")
        tc = torch.zeros(len(PART_CATEGORIES), max(n_text, len(offsets)), dtype=torch.bool)
        for t, (s, e) in enumerate(offsets):
            if e <= s:
                continue  # special tokens
            for ps, pe, cat in self.phrases:
                if ps <= s and e <= pe and self.settings.prompt[s:e].strip(". "):
                    tc[PART_CATEGORIES.index(cat), t] = True
        missing = [cat for _, _, cat in self.phrases if not tc[PART_CATEGORIES.index(cat)].any()]
        if missing:
            raise DetectorError(f"parts.prompt={self.settings.prompt!r}: the detector's tokenizer "
                                f"gives no token for the phrase(s) of {missing}")
        self._token_category = tc

    def _infer(self, images: list) -> list[dict[str, dict]]:
        import torch

        inputs = self._processor(images=images, text=[self.settings.prompt] * len(images),
                                 return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self._model(**inputs)
        tc = self._token_category[:, : out.logits.shape[-1]]
        return best_boxes(out.logits, out.pred_boxes, tc, self.settings.box_threshold,
                          self.settings.text_threshold)

    # -- cache ---------------------------------------------------------------------------------
    def _cache_file(self) -> Path | None:
        return self.cache_dir / f"grounding-{self.cache_key}.json" if self.cache_dir else None

    def _read_cache(self) -> dict[str, dict]:
        f = self._cache_file()
        if f is None or not f.is_file():
            return {}
        try:
            data = read_json(f)
        except ValueError:
            return {}  # a corrupt cache is recomputed, not trusted
        return data.get("images", {}) if data.get("key") == self.cache_key else {}

    def _write_cache(self, cache: dict[str, dict]) -> None:
        f = self._cache_file()
        if f is not None:
            meta = {"key": self.cache_key, "detector": str(self.path), **{
                k: v for k, v in self.key_inputs.items() if k != "model"}}
            text = json.dumps({**meta, "images": cache}, separators=(",", ":"))
            self.cache.write(f, lambda tmp: tmp.write_text(text))

    def _batches(self, todo: list[str], first: dict[str, Path]) -> list[list[str]]:
        """``todo`` keys in batches of at most ``batch_size`` images of one size (no padding)."""
        from PIL import Image

        by_size: dict[tuple[int, int], list[str]] = {}
        for k in todo:
            try:
                with Image.open(first[k]) as im:     # reads the header only
                    size = im.size
            except OSError as err:
                raise DetectorError(f"image {first[k]}: cannot be decoded ({err})") from None
            by_size.setdefault(size, []).append(k)
        bs = self.settings.batch_size
        return [keys[i:i + bs] for keys in by_size.values() for i in range(0, len(keys), bs)]

    # -- public --------------------------------------------------------------------------------
    def detect(self, paths: list[str | Path], progress: bool = True) -> list[dict[str, dict]]:
        """``{category: {box, score}}`` for each image path (cached by image content)."""
        from PIL import Image
        from tqdm import tqdm

        keys = []
        for p in paths:
            try:
                keys.append(_file_digest(Path(p)))
            except OSError as err:
                raise DetectorError(f"image {p}: cannot be read ({err})") from None
        cache = self._read_cache()
        todo = list(dict.fromkeys(k for k in keys if k not in cache))  # unique images
        first = {k: p for k, p in zip(reversed(keys), reversed(paths))}
        self.stats = {"images": len(paths), "cached": len(paths) - sum(k in todo for k in keys),
                      "computed": len(todo)}
        if todo:
            self._load()
            batches = self._batches(todo, first)
            bar = tqdm(batches, desc=f"GroundingDINO ({self.device})", unit="batch",
                       disable=not progress, mininterval=2.0)
            for n, batch in enumerate(bar, 1):
                images = []
                for k in batch:
                    try:
                        with Image.open(first[k]) as im:
                            images.append(im.convert("RGB"))
                    except OSError as err:
                        raise DetectorError(f"image {first[k]}: cannot be decoded ({err})") from None
                for k, det in zip(batch, self._infer(images)):
                    cache[k] = det
                if n % CACHE_SAVE_EVERY == 0:
                    self._write_cache(cache)
            self._write_cache(cache)
        return [cache[k] for k in keys]


def detect_parts(settings: DetectorSettings, paths: list[Path], cache_dir: str | Path | None,
                 progress: bool = True) -> tuple[list[dict[str, dict]], dict[str, int]]:
    """Detections for ``paths`` plus counts (images, cached, computed)."""
    det = GroundingDetector(settings, cache_dir)
    out = det.detect(paths, progress=progress)
    return out, dict(det.stats)


def check_images_exist(paths: list[Path], names: list[str]) -> None:
    """Fail before running the detector when an image file is missing (names the record)."""
    for p, name in zip(paths, names):
        if not os.path.isfile(p):
            raise DetectorError(f"{name}: image file {p} not found")


__all__ = ["DetectorError", "DetectorSettings", "GroundingDetector", "best_boxes",
           "detect_parts", "detector_device", "prompt_phrases", "resolve_detector", "check_images_exist"]
