"""Keys over the inputs of training (pfcvr.engine.fingerprint): each input changes the key."""
import os
from types import SimpleNamespace

from pfcvr.config import load_params
from pfcvr.engine import fingerprint as F


def _images(root, n=3):
    for i in range(n):
        (root / f"{i}.png").write_bytes(bytes([i]) * 100)
    return [f"{i}.png" for i in range(n)]


def test_images_key_uses_content_when_small(tmp_path):
    rel = _images(tmp_path)
    key = F.images_key(tmp_path, rel)
    assert key.startswith("content:")
    os.utime(tmp_path / "0.png", ns=(1, 1))                      # same bytes, other mtime
    assert F.images_key(tmp_path, rel) == key
    (tmp_path / "1.png").write_bytes(b"\x09" * 100)               # same size, other picture
    assert F.images_key(tmp_path, rel) != key
    assert F.images_key(tmp_path, rel + rel) == F.images_key(tmp_path, rel)   # listed twice


def test_images_key_uses_size_and_mtime_when_large(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CONTENT_HASH_LIMIT", 100)             # 300 bytes of images: "large"
    rel = _images(tmp_path)
    key = F.images_key(tmp_path, rel)
    assert key.startswith("stat:")
    st = (tmp_path / "2.png").stat()
    (tmp_path / "2.png").write_bytes(b"\x07" * 100)               # replaced: new mtime
    assert F.images_key(tmp_path, rel) != key
    os.utime(tmp_path / "2.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert F.images_key(tmp_path, rel) == key     # the documented blind spot: cp -p, same size
    (tmp_path / "0.png").unlink()
    assert F.images_key(tmp_path, rel) != key                     # a missing image counts


def test_data_key_covers_manifest_parts_and_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    split = SimpleNamespace(split="train", images_root=images,
                            records=[{"file_path": r} for r in _images(images)])
    for name in ("manifest.json", "meta.json", "parts.json"):
        (tmp_path / name).write_text("[]")
    key = F.data_key(tmp_path, tmp_path / "parts.json", [split])
    (tmp_path / "parts.json").write_text("[1]")
    assert F.data_key(tmp_path, tmp_path / "parts.json", [split]) != key


def test_backbone_key_follows_a_local_folder(tmp_path):
    assert F.backbone_key("tiny") == ""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"1234")
    key = F.backbone_key(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"12345")
    assert F.backbone_key(str(tmp_path)) != key
    assert F.backbone_key("openai/clip-vit-base-patch16-not-cached") == ""


def test_backbone_key_is_the_same_on_another_machine(tmp_path):
    """The same backbone files with other mtimes (a second clone, `dvc pull`) give the same key,
    so tune workers on two machines open one study (issue 22; it used size + mtime)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, mtime in ((a, 1_000_000_000), (b, 1_700_000_000)):
        (folder / "tokenizer").mkdir(parents=True)
        for name, data in (("config.json", b"{}"), ("model.safetensors", b"weights"),
                           ("tokenizer/vocab.json", b"{}")):
            (folder / name).write_bytes(data)
            os.utime(folder / name, (mtime, mtime))
    (a / "stats.json").write_text('{"seconds": 12.5}')   # the pretrain run's timings differ
    (b / "stats.json").write_text('{"seconds": 14.0}')
    assert F.backbone_key(str(a)) == F.backbone_key(str(b)) != ""
    (b / "model.safetensors").write_bytes(b"other weights")
    assert F.backbone_key(str(a)) != F.backbone_key(str(b))


def test_params_key_ignores_cosmetic_keys_only():
    p = load_params("params.yaml")
    assert F.params_key(p) == F.params_key(load_params("params.yaml", overrides={
        "train.log_every": 3, "report.seeds": [9], "tracking.required": False}))
    assert F.params_key(p) != F.params_key(load_params("params.yaml",
                                                       overrides={"train.hflip": 0.0}))
    assert F.params_key(p, exclude=("train.hflip",)) == F.params_key(
        load_params("params.yaml", overrides={"train.hflip": 0.0}), exclude=("train.hflip",))


def test_code_key_is_stable_and_covers_the_package():
    assert F.code_key() == F.code_key() and len(F.code_key()) == 64
