"""save_model -> pfcvr.load restores the model exactly, offline; folder resolution."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import pfcvr
from pfcvr.model import build_model, build_tokenizer
from pfcvr.model.io import load_model, resolve_model_folder, save_model
from tests.support.model_helpers import (CAPTIONS, FULL, model_cfg, random_batch, save_tiny_clip,
                                 small_model, train_forward)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Any attempt to reach the hub fails instead of downloading.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def trained():
    """A small model after two training steps (so no parameter is at its initial value)."""
    m = small_model(num_classes=5, seed=1, cls_pos_quirk=True, part_context="image")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for seed in range(2):
        out = train_forward(m, random_batch(m, seed=seed, num_classes=5), FULL, mask_ratio=0.5,
                            text_mask_ratio=0.15, mim_mask="random")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return m.eval()


def _embeddings(m, batch):
    with torch.no_grad():
        return (m.encode_text(batch["caption_ids"]), m.encode_image(batch["images"]),
                m.image_part_features(batch["images"], batch["part_masks"]))


def test_save_then_pfcvr_load_gives_identical_embeddings(trained, tmp_path):
    save_model(trained, tmp_path / "m", {"variant": "full", "seed": 0, "epoch": 3,
                                         "val": {"R1": 12.5}})
    back = pfcvr.load(tmp_path / "m")
    assert not back.training and back.extra["val"] == {"R1": 12.5}
    batch = random_batch(trained, seed=7, num_classes=5)
    for a, b in zip(_embeddings(trained, batch), _embeddings(back, batch)):
        assert torch.equal(a, b)
    assert torch.equal(back.tokenizer(CAPTIONS), trained.tokenizer(CAPTIONS))
    assert back.config == trained.config and back.num_classes == 5
    assert back.backbone.cls_pos_quirk and back.part_context == "image"
    sd_a, sd_b = trained.state_dict(), back.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    # the conv stem (model.tiny.stem: conv) is rebuilt from the saved config, not a patchify
    assert type(back.backbone.vision.embeddings.patch_embedding).__name__ == "ConvStem"
    assert "backbone.vision.embeddings.patch_embedding.4.weight" in sd_b


def test_a_patch_stem_model_round_trips_with_a_patchify(tmp_path):
    m = small_model(seed=2, **{"tiny.stem": "patch"}).eval()
    save_model(m, tmp_path / "p")
    back = pfcvr.load(tmp_path / "p")
    assert isinstance(back.backbone.vision.embeddings.patch_embedding, torch.nn.Conv2d)
    batch = random_batch(m, seed=3)
    for a, b in zip(_embeddings(m, batch), _embeddings(back, batch)):
        assert torch.equal(a, b)


def test_folder_layout_and_config(trained, tmp_path):
    save_model(trained, tmp_path / "m", {"variant": "no_mim"})
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["num_classes"] == 5 and meta["extra"] == {"variant": "no_mim"}
    assert meta["model"]["part_context"] == "image" and meta["model"]["tiny"]["vocab_size"] == 600
    assert meta["clip_config"]["vision_config"]["image_size"] == 32


def test_saving_again_replaces_the_folder(trained, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stale.txt").write_text("old")
    save_model(trained, tmp_path / "m", {})
    assert not (tmp_path / "m" / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temp left


def test_extra_must_be_json(trained, tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_model(trained, tmp_path / "m", {"bad": object()})
    assert not (tmp_path / "m").exists()


def test_folder_resolution(trained, tmp_path):
    variant = tmp_path / "models" / "full"
    for seed in (10, 2):
        save_model(trained, variant / f"seed{seed}" / "best", {"seed": seed})
    save_model(trained, variant / "seed2" / "final", {"seed": 2, "final": True})
    assert resolve_model_folder(variant) == variant / "seed2" / "best"          # 2 < 10
    assert resolve_model_folder(variant / "seed10") == variant / "seed10" / "best"
    assert load_model(variant).extra == {"seed": 2}
    assert load_model(variant / "seed2" / "final").extra["final"] is True
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: not a model folder .*config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere: no such model folder"):
        load_model(tmp_path / "nowhere")


def test_mismatched_weights_are_rejected(trained, tmp_path):
    save_model(trained, tmp_path / "a", {})
    other = small_model(num_classes=3)
    save_model(other, tmp_path / "b", {})
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="(?s)model.safetensors: does not match .*classifier"):
        load_model(tmp_path / "a")


def test_real_checkpoint_model_restores_without_the_checkpoint(tmp_path):
    save_tiny_clip(tmp_path / "clip", image_size=32, patch_size=8)
    cfg = model_cfg(backbone=str(tmp_path / "clip"), image_size=40)
    torch.manual_seed(0)
    m = build_model(cfg, 2, build_tokenizer(cfg, [])).eval()
    save_model(m, tmp_path / "m", {})
    shutil.rmtree(tmp_path / "clip")                 # restoring must not need it
    back = load_model(tmp_path / "m")
    assert back.grid_size == 5 and back.tokenizer.kind == "clip"
    assert back.tokenizer.mask_id == m.tokenizer.mask_id
    batch = random_batch(m, num_classes=2)
    for a, b in zip(_embeddings(m, batch), _embeddings(back, batch)):
        assert torch.equal(a, b)
