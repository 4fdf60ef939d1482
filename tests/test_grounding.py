"""GroundingDINO part detection, offline, with a tiny randomly initialised model.

The tiny model (Swin + BERT with a handful of channels, built from an in-memory vocabulary) is
saved with save_pretrained to a temporary folder and loaded back through AutoModel/AutoProcessor
exactly like real weights; its detections are random but exercise the whole code path.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.grounding import (DetectorError, DetectorSettings, GroundingDetector, best_boxes,
                                  detector_device, prompt_phrases, resolve_detector)
from tests.test_parts import _stage_env, make_fixture, run_stage

PROMPT = "car window. car light. car wheel. car mirror. car roof. car door."
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "car", "window", "light", "wheel",
         "mirror", "roof", "door"]


def save_tiny_grounding_dino(folder: Path) -> Path:
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig,
                              GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
                              GroundingDinoProcessor, SwinConfig)

    torch.manual_seed(0)
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], window_size=4,
                                   out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=64),
        # d_model must be a multiple of 32 (GroupNorm); 2 decoder layers (box heads are tied)
        num_queries=20, encoder_layers=1, decoder_layers=2, d_model=32, encoder_ffn_dim=32,
        decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=1, decoder_n_points=1, num_feature_levels=3, max_text_len=32)
    model = GroundingDinoForObjectDetection(cfg).eval()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}),
        tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> Path:
    return save_tiny_grounding_dino(tmp_path_factory.mktemp("gdino") / "tiny-grounding-dino")


def settings(path, **kw) -> DetectorSettings:
    base = dict(detector=str(path), prompt=PROMPT, box_threshold=0.0, text_threshold=0.0,
                batch_size=3, device="cpu")
    return DetectorSettings(**{**base, **kw})


# ----------------------------------------------------------------------------------------------
# missing or wrong weights: clear errors before any work
# ----------------------------------------------------------------------------------------------

def _assert_helpful(err: DetectorError) -> None:
    text = str(err)
    assert "parts.detector" in text
    assert "IDEA-Research/grounding-dino-tiny" in text and "save_pretrained" in text


def test_empty_detector_is_an_error():
    with pytest.raises(DetectorError) as err:
        resolve_detector("")
    _assert_helpful(err.value)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DetectorError, match="does not exist") as err:
        resolve_detector(str(tmp_path / "nothing-here"))
    _assert_helpful(err.value)


def test_uncached_hub_id_is_an_error_without_network():
    with pytest.raises(DetectorError, match="not in the local Hugging Face cache") as err:
        resolve_detector("pfcvr-test/no-such-grounding-dino")
    _assert_helpful(err.value)


def test_folder_without_weights_is_an_error(tmp_path, tiny_detector):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_detector / "config.json").read_text())
    with pytest.raises(DetectorError, match="holds no transformers model") as err:
        resolve_detector(str(folder))
    _assert_helpful(err.value)


def test_folder_with_another_model_is_an_error(tmp_path, tiny_detector):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(DetectorError, match="'clip' model, not GroundingDINO"):
        resolve_detector(str(folder))


def test_folder_without_processor_is_an_error(tmp_path, tiny_detector):
    folder = tmp_path / "no-processor"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        (folder / f).write_bytes((tiny_detector / f).read_bytes())
    with pytest.raises(DetectorError, match="no processor files"):
        resolve_detector(str(folder))


def test_tiny_folder_resolves(tiny_detector):
    assert resolve_detector(str(tiny_detector)) == tiny_detector


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_an_error():
    with pytest.raises(DetectorError, match="parts.device=cuda"):
        detector_device("cuda")
    assert detector_device("auto") == "cpu"


def test_stage_with_missing_weights_fails_before_any_work(tmp_path, monkeypatch):
    _stage_env(tmp_path, monkeypatch)
    prepared = make_fixture(tmp_path, 1, 1)
    (prepared / "manifest.json").write_text("not even json")  # would fail if it were read
    with pytest.raises(DetectorError, match="parts.detector"):
        run_stage(tmp_path, prepared, source="groundingdino", detector=str(tmp_path / "missing"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------------------------
# prompt -> categories, and the box selection rule
# ----------------------------------------------------------------------------------------------

def test_prompt_phrases_map_to_categories():
    spans = prompt_phrases(PROMPT)
    assert [c for _, _, c in spans] == list(PART_CATEGORIES)
    assert [PROMPT[s:e] for s, e, _ in spans][:2] == ["car window", "car light"]
    assert [c for *_, c in prompt_phrases("headlights . tires")] == ["lights", "wheels"]


@pytest.mark.parametrize("prompt", ["car bumper. car wheel.", "wheel and door.", " . "])
def test_bad_prompt_is_an_error_naming_the_parameter(prompt):
    with pytest.raises(DetectorError, match="parts.prompt"):
        prompt_phrases(prompt)


def test_best_boxes_applies_both_thresholds_and_keeps_the_best_box():
    # 1 image, 3 queries, 4 text tokens; tokens 0-1 = windows, 2 = wheels, 3 = nothing
    tc = torch.zeros(len(PART_CATEGORIES), 4, dtype=torch.bool)
    tc[0, :2] = True
    tc[2, 2] = True
    p = torch.tensor([[[0.9, 0.2, 0.05, 0.05],     # q0: windows 0.9
                       [0.95, 0.1, 0.6, 0.05],     # q1: windows 0.95 (best), wheels 0.6
                       [0.1, 0.1, 0.2, 0.35]]])    # q2: below the box threshold (max 0.35)
    logits = torch.logit(p)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.4, 0.2, 0.4], [0.5, 0.5, 1.0, 1.0]]])
    (out,) = best_boxes(logits, boxes, tc, box_threshold=0.4, text_threshold=0.5)
    assert set(out) == {"windows", "wheels"}
    assert out["windows"]["box"] == pytest.approx([0.2, 0.2, 0.4, 0.6], abs=1e-6)
    assert out["windows"]["score"] == pytest.approx(0.95, abs=1e-5)
    assert out["wheels"]["score"] == pytest.approx(0.6, abs=1e-5)
    # a higher text threshold drops wheels; a box threshold above every query drops all
    (out,) = best_boxes(logits, boxes, tc, box_threshold=0.4, text_threshold=0.7)
    assert set(out) == {"windows"}
    (out,) = best_boxes(logits, boxes, tc, box_threshold=0.96, text_threshold=0.0)
    assert out == {}


def test_best_boxes_clamps_to_the_image_and_drops_empty_boxes():
    tc = torch.zeros(len(PART_CATEGORIES), 2, dtype=torch.bool)
    tc[0, 0] = tc[1, 1] = True
    logits = torch.full((1, 2, 2), -10.0)
    logits[0, 0, 0] = logits[0, 1, 1] = 5.0
    boxes = torch.tensor([[[0.95, 0.5, 0.3, 0.2],      # sticks out on the right: clamped
                           [1.2, 0.5, 0.2, 0.2]]])    # wholly outside: dropped
    (out,) = best_boxes(logits, boxes, tc, 0.3, 0.25)
    assert list(out) == ["windows"]
    assert out["windows"]["box"] == pytest.approx([0.8, 0.4, 1.0, 0.6], abs=1e-6)


# ----------------------------------------------------------------------------------------------
# the detector end to end (tiny random weights)
# ----------------------------------------------------------------------------------------------

def test_detect_batches_and_caches(tiny_detector, tmp_path):
    prepared = make_fixture(tmp_path, 2, 2)
    paths = sorted((prepared / "images").rglob("*.png"))
    paths = paths + paths[:1]  # a duplicate image is computed once
    det = GroundingDetector(settings(tiny_detector), cache_dir=tmp_path / "cache")
    out = det.detect(paths, progress=False)
    assert det.stats == {"images": 5, "cached": 0, "computed": 4}
    assert len(out) == 5 and out[4] == out[0]
    assert any(out)
    for d in out:
        assert set(d) <= set(PART_CATEGORIES)
        for r in d.values():
            x0, y0, x1, y1 = r["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and 0 < r["score"] <= 1
    # a rerun with the same inputs runs no model at all (batch size is not part of the key)
    again = GroundingDetector(settings(tiny_detector, batch_size=1), cache_dir=tmp_path / "cache")
    assert again.detect(paths, progress=False) == out
    assert again.stats["computed"] == 0 and again._model is None
    # other thresholds or another prompt are other cache entries
    for change in ({"box_threshold": 0.5}, {"text_threshold": 0.5},
                   {"prompt": "car wheel. car door."}):
        other = GroundingDetector(settings(tiny_detector, **change), cache_dir=tmp_path / "cache")
        assert other.cache_key != det.cache_key and other._read_cache() == {}
    # batching does not change the results: one image per batch, no cache
    single = GroundingDetector(settings(tiny_detector, batch_size=1)).detect(paths[:4], progress=False)
    for a, b in zip(single, out):
        assert a.keys() == b.keys()
        for c in a:
            assert a[c]["box"] == pytest.approx(b[c]["box"], abs=1e-4)


def test_box_threshold_above_every_score_detects_nothing(tiny_detector, tmp_path):
    prepared = make_fixture(tmp_path, 1, 1)
    paths = sorted((prepared / "images").rglob("*.png"))
    assert GroundingDetector(settings(tiny_detector, box_threshold=1.0)).detect(
        paths, progress=False) == [{}]


def test_stage_with_groundingdino(tiny_detector, tmp_path, monkeypatch):
    _stage_env(tmp_path, monkeypatch)
    prepared = make_fixture(tmp_path, 2, 2)
    out = run_stage(tmp_path, prepared, source="groundingdino", detector=str(tiny_detector),
                    box_threshold=0.0, text_threshold=0.0, device="cpu")
    doc = json.loads(out["out"].read_text())
    stats = json.loads(out["stats"].read_text())
    assert stats["source"] == "groundingdino" and stats["detector"]["prompt"] == PROMPT
    assert stats["region_sources"]["groundingdino"] > 0 and stats["region_sources"]["annotation"] == 0
    regions = [r for im in doc["images"] for r in im["regions"].values() if r]
    assert all(r["source"] == "groundingdino" and "grid" not in r for r in regions)
    assert "agreement_with_annotations" in stats  # the fixture also carries annotation boxes
    # a rerun takes everything from the cache: the cache file is not even rewritten
    (cache,) = (tmp_path / "cache").glob("grounding-*.json")
    stamp = cache.stat().st_mtime_ns
    out["out"].unlink()
    run_stage(tmp_path, prepared, source="groundingdino", detector=str(tiny_detector),
              box_threshold=0.0, text_threshold=0.0, device="cpu")
    assert cache.stat().st_mtime_ns == stamp
    assert json.loads(out["out"].read_text()) == doc


# ----------------------------------------------------------------------------------------------
# the cache key covers every input; batches never pad (issue 12)
# ----------------------------------------------------------------------------------------------

def mixed_size_images(folder: Path) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(48, 48), (80, 40), (40, 90), (48, 48)]):
        p = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def test_detections_do_not_depend_on_the_batch(tiny_detector, tmp_path):
    """GroundingDINO pads a batch to its largest image, which moved this model's boxes (e.g. image
    2: wheels at x0 0.4125 alone, 0.1625 in a padded batch of 3). Batches of one size only make an
    image's detections the same in any batch, so parts.batch_size needs no place in the key."""
    paths = mixed_size_images(tmp_path)
    alone = GroundingDetector(settings(tiny_detector, batch_size=1)).detect(paths, progress=False)
    batched = GroundingDetector(settings(tiny_detector, batch_size=4)).detect(paths, progress=False)
    for a, b in zip(alone, batched):
        assert a.keys() == b.keys()
        for c in a:
            assert a[c]["box"] == pytest.approx(b[c]["box"], abs=1e-4)
    det = GroundingDetector(settings(tiny_detector, batch_size=4))
    det._load()
    first = dict(zip(map(str, paths), paths))
    assert det._batches(list(first), first) == [[str(paths[0]), str(paths[3])], [str(paths[1])],
                                                [str(paths[2])]]


def test_cache_is_not_reused_when_an_input_of_the_detections_changes(tiny_detector, tmp_path,
                                                                     monkeypatch):
    from pfcvr.data import grounding

    paths = mixed_size_images(tmp_path)[:2]
    cache = tmp_path / "cache"
    base = GroundingDetector(settings(tiny_detector), cache_dir=cache)
    base.detect(paths, progress=False)
    assert GroundingDetector(settings(tiny_detector), cache_dir=cache).cache_key == base.cache_key

    def computed() -> int:
        det = GroundingDetector(settings(tiny_detector), cache_dir=cache)
        det.detect(paths, progress=False)
        return det.stats["computed"]

    assert computed() == 0
    # another transformers release (its processor and post-processing run before best_boxes)
    real = grounding.versions
    monkeypatch.setattr(grounding, "versions",
                        lambda *names: {**real(*names), "transformers": "99.0.0"})
    assert computed() == 2
    monkeypatch.setattr(grounding, "versions", real)
    assert computed() == 0
    # the post-processing code (this module, the lexicon) changed
    extra = tmp_path / "post.py"
    extra.write_text("# v1\n")
    monkeypatch.setattr(grounding, "DETECTOR_SOURCES", (*grounding.DETECTOR_SOURCES, extra))
    assert computed() == 2 and computed() == 0
    extra.write_text("# v2: another threshold rule\n")
    assert computed() == 2
    # the device type (cuda kernels round differently): the key differs, no GPU needed to see it
    monkeypatch.setattr(grounding, "detector_device", lambda device: "cuda:0")
    assert GroundingDetector(settings(tiny_detector), cache_dir=cache).key_inputs["device"] == "cuda"
    assert GroundingDetector(settings(tiny_detector), cache_dir=cache).cache_key != base.cache_key


def test_a_prompt_longer_than_the_detector_reads_is_an_error(tiny_detector):
    long_prompt = " ".join(["car window."] * 20)   # 20 x (car, window, .) + [CLS] + [SEP] = 62
    det = GroundingDetector(settings(tiny_detector, prompt=long_prompt))
    with pytest.raises(DetectorError, match=r"parts\.prompt is 62 tokens long but the detector "
                                            r"reads 32; shorten it"):
        det._load()
