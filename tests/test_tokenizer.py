"""The caption tokenizer: framing, determinism, byte-level coverage, save/load, CLIP path."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfcvr.model.tokenizer import Tokenizer
from tests.support.model_helpers import CAPTIONS, save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CAPTIONS * 4, 700, 16)


def test_framing_sot_words_eot_zero_padding(tok):
    ids = tok(["a red sedan", ""])
    assert ids.dtype == torch.long and ids.shape == (2, 16)
    assert tok.pad_id == 0
    assert ids[0, 0] == tok.sot_id
    n = len(tok.encode_words(["a red sedan"])[0])
    assert ids[0, 1 + n] == tok.eot_id
    assert (ids[0, 2 + n:] == 0).all() and (ids[0, 1:1 + n] > 3).all()
    assert ids[1, :2].tolist() == [tok.sot_id, tok.eot_id] and (ids[1, 2:] == 0).all()


def test_truncation_keeps_eot_last(tok):
    ids = tok([" ".join(["wheels"] * 40)])
    assert ids[0, -1] == tok.eot_id and ids[0, 0] == tok.sot_id
    assert (ids[0, 1:-1] != 0).all() and (ids[0, 1:-1] != tok.eot_id).all()


def test_special_ids_and_vocabulary_bounds(tok):
    assert (tok.pad_id, tok.sot_id, tok.eot_id, tok.mask_id) == (0, 1, 2, 3)
    assert tok.special_ids == (0, 1, 2, 3)
    assert 516 <= tok.vocab_size <= 700
    assert int(tok(CAPTIONS).max()) < tok.vocab_size


def test_frequent_words_become_single_tokens(tok):
    # "wheels" occurs in the corpus often enough to be merged into one token.
    assert len(tok.encode_words(["wheels"])[0]) == 1


def test_unseen_characters_are_not_lost():
    tok = Tokenizer.train(CAPTIONS, 600, 64)
    text = "Héllo, 4x4 Wörld — ünseen ☃!"
    ids = tok([text])[0]
    assert ids[-1] == 0                                  # nothing truncated
    assert tok.decode(ids).replace(" ", "") == text.lower().replace(" ", "")


def test_training_is_deterministic_and_order_free():
    a = Tokenizer.train(CAPTIONS * 4, 700, 16)
    shuffled = CAPTIONS * 4
    random.Random(1).shuffle(shuffled)
    b = Tokenizer.train(shuffled, 700, 16)
    assert a.backend.to_str() == b.backend.to_str()


def test_training_is_identical_in_another_process(tmp_path):
    # A fresh interpreter has other hash seeds: the vocabulary must not depend on them.
    code = ("import sys; sys.path.insert(0, {root!r}); from pfcvr.model.tokenizer import Tokenizer;"
            "from tests.support.model_helpers import CAPTIONS;"
            "Tokenizer.train(CAPTIONS * 4, 700, 16).save({out!r})").format(
        root=str(ROOT), out=str(tmp_path / "other"))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"})
    here = Tokenizer.train(CAPTIONS * 4, 700, 16)
    there = Tokenizer.load(tmp_path / "other")
    assert there.backend.to_str() == here.backend.to_str()


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "t")
    back = Tokenizer.load(tmp_path / "t")
    assert torch.equal(back(CAPTIONS), tok(CAPTIONS))
    assert (back.vocab_size, back.context_length, back.mask_id) == (
        tok.vocab_size, tok.context_length, tok.mask_id)
    meta = json.loads((tmp_path / "t" / "pfcvr_tokenizer.json").read_text())
    assert meta["kind"] == "bpe" and meta["vocab_size"] == tok.vocab_size


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_bad_arguments_are_clear_errors(tok):
    with pytest.raises(ValueError, match="model.tiny.vocab_size=400"):
        Tokenizer.train(CAPTIONS, 400, 16)
    with pytest.raises(ValueError, match="no training captions"):
        Tokenizer.train([], 700, 16)
    with pytest.raises(TypeError, match="list of captions"):
        tok("a single string")


def test_clip_checkpoint_tokenizer_gets_a_mask_token(tmp_path):
    n_vocab = save_tiny_clip(tmp_path / "clip", with_model=False)
    tok = Tokenizer.from_clip(str(tmp_path / "clip"), 16)
    assert tok.kind == "clip"
    assert tok.mask_id == n_vocab and tok.vocab_size == n_vocab + 1     # appended at the end
    assert tok.mask_id > tok.eot_id                                    # why EOT is found by id
    ids = tok(["a red car with blue wheels"])[0]
    assert ids[0] == tok.sot_id and tok.eot_id in ids.tolist() and ids[-1] == 0
    assert tok.decode(ids) == "a red car with blue wheels"
    tok.save(tmp_path / "saved")
    assert torch.equal(Tokenizer.load(tmp_path / "saved")(CAPTIONS), tok(CAPTIONS))


def test_the_default_data_fits_the_default_context_length(tmp_path, monkeypatch):
    """Issue 23 §8: with 48 tokens the default benchmark's own captions were cut (a warning at
    every run). Every caption of every split of the default data must fit
    `model.tiny.context_length` under both tokenizers the default can use: the pretrained
    backbone's BPE (learned on the pretraining corpus) and the tiny backbone's (learned on the
    training captions). The captions are the real generator's (their random stream is separate
    from the rendering's, so the images are stood in for by 1-pixel ones: about 10 s instead of
    minutes). When a change of the default data or vocabulary makes this fail, raise the default
    to the value the message names (the pretrained backbone then needs `dvc repro pretrain`)."""
    import numpy as np
    from PIL import Image

    import pfcvr.data.synthetic.corpus as corpus
    import pfcvr.data.synthetic.generator as generator
    from pfcvr.config import load_params
    from pfcvr.pipeline.pretrain import benchmark_identity_keys

    root = Path(__file__).resolve().parents[1]
    params = load_params(root / "params.yaml")
    monkeypatch.setattr(generator, "render", lambda attrs, view, size, rng: (Image.new("RGB", (1, 1)), {}))
    monkeypatch.setattr(corpus, "render_jobs", lambda fn, jobs, *a, **k: [
        np.zeros((1, 1, 3), np.uint8) for job in jobs for _ in job[3]])
    records = generator.generate(params.data.synthetic, params.seed, tmp_path, workers=1)
    p, m = params.pretrain, params.model
    pool = corpus.build_corpus(p.n_ids, p.images_per_id, p.captions_per_image, p.part_rate,
                               m.image_size, params.seed, benchmark_identity_keys(records) or ())
    captions = [c for r in records for c in r["captions"]]
    train = [c for r in records if r["split"] == "train" for c in r["captions"]]
    longest = {}
    for name, learned_on in (("pretrained", [c for cs in pool.captions for c in cs]),
                             ("tiny", train)):
        tok = Tokenizer.train(learned_on, m.tiny.vocab_size, m.tiny.context_length)
        longest[name] = max(tok.count_tokens(captions + learned_on))
    need = max(longest.values())
    assert need <= m.tiny.context_length, (
        f"the default data's longest caption takes {need} tokens ({longest}), more than "
        f"model.tiny.context_length={m.tiny.context_length}: raise it in params.yaml to "
        f"{-(-need // 8) * 8}")
