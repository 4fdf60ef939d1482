"""The pretraining corpus (identity-disjoint from the benchmark, coarse captions) and the pretrain
stage (a real `python -m stages.pretrain` killed with SIGKILL resumes and ends as an
uninterrupted run), plus `model.backbone: pretrained` and the zero-shot evaluation."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pfcvr.config import load_params
from pfcvr.data.synthetic.corpus import (CORPUS_STREAM, alt_text, build_corpus, identity_key,
                                         sample_corpus_identities)
from pfcvr.losses import info_nce
from pfcvr.pipeline.pretrain import benchmark_identity_keys
from pfcvr.runtime.atomic import read_json
from tests.support.train_helpers import make_project

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"pretrain.n_ids": 48, "pretrain.images_per_id": 2, "pretrain.steps": 6,
         "pretrain.warmup_steps": 1, "pretrain.batch_size": 16, "pretrain.eval_every": 2,
         "model.backbone": "tiny"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    make_project(root, SMALL)
    return root


def test_corpus_redraws_every_vehicle_that_matches_a_benchmark_identity():
    first, redrawn = sample_corpus_identities(5, np.random.default_rng([0, CORPUS_STREAM, 0]), [])
    assert redrawn == 0
    benchmark = [identity_key(a) for a in first[:3]]          # the corpus's own first 3 draws
    drawn, redrawn = sample_corpus_identities(5, np.random.default_rng([0, CORPUS_STREAM, 0]),
                                              benchmark)
    assert redrawn == 3
    keys = [identity_key(a) for a in drawn]
    assert not set(keys) & set(benchmark)
    assert keys[:2] == [identity_key(a) for a in first[3:]]   # the draws after the rejected ones
    assert len(set(keys)) == 5


def test_corpus_of_a_real_benchmark_shares_no_full_attribute_set(project):
    bench = benchmark_identity_keys(read_json(project / "data/prepared/manifest.json"))
    assert len(bench) == 24                                    # every id of train, val and test
    corpus = build_corpus(60, 2, 2, 0.2, 48, seed=0, exclude=bench, workers=1)
    assert corpus.images.shape == (120, 48, 48, 3) and corpus.images.dtype == np.uint8
    assert corpus.stats["shared_full_attribute_sets_with_benchmark"] == 0
    assert corpus.stats["benchmark_identities_excluded"] == 24
    assert corpus.stats["n_captions"] == 240 and sum(corpus.stats["views"].values()) == 120
    assert list(corpus.ids[:4]) == [0, 0, 1, 1]
    again = build_corpus(60, 2, 2, 0.2, 48, seed=0, exclude=bench, workers=1)
    assert np.array_equal(again.images, corpus.images) and again.captions == corpus.captions
    other = build_corpus(60, 2, 2, 0.2, 48, seed=1, exclude=bench, workers=1)
    assert other.captions != corpus.captions                  # its own seed stream


def test_alt_text_names_type_and_colour_and_a_part_only_at_part_rate():
    attrs = {"global": {"type": "suv", "colour": "red"},
             "windows": {"tint": "dark", "shape": "square"},
             "lights": {"shape": "round", "colour": "white"},
             "wheels": {"style": "spoked", "colour": "gold"}, "mirrors": {"colour": "black"},
             "roof": {"type": "rack", "colour": "black"},
             "doors": {"count": "four", "stripe": "none", "decal": "none", "colour": "none"}}
    rng = np.random.default_rng(0)
    plain = [alt_text(attrs, "side_left", rng, 0.0) for _ in range(50)]
    assert all("red" in c and ("SUV" in c or "sport utility" in c) for c in plain)
    assert not any(" with " in c for c in plain)
    detailed = [alt_text(attrs, "front", rng, 1.0) for _ in range(50)]
    assert all(" with " in c for c in detailed)
    assert not any("wheel" in c for c in detailed)            # wheels are not visible from the front


def test_info_nce_is_log_batch_for_identical_features_and_small_for_matched_ones():
    same = torch.ones(4, 8)
    assert float(info_nce(same, same, 1.0)) == pytest.approx(np.log(4), abs=1e-6)
    eye = torch.eye(4, 8)
    assert float(info_nce(eye, eye, 100.0)) < 1e-6


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
               MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _run(project: Path, env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout + out.stderr


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_pretrain_stage_killed_resumes_to_the_uninterrupted_result(project, tmp_path):
    import shutil

    other = tmp_path / "uninterrupted"
    shutil.copytree(project, other)
    env = _env(tmp_path)
    _run(other, env)
    ref = _weights(other / "models/pretrained")

    ckpt = project / ".cache/pretrain/checkpoint.pt"
    proc = subprocess.Popen([sys.executable, "-m", "stages.pretrain"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not ckpt.exists():                 # the step-2 checkpoint: then kill it mid-run
        assert proc.poll() is None, "the stage ended before its first checkpoint"
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (project / "models/pretrained").exists()
    step = torch.load(ckpt, weights_only=False)["step"]
    assert step in (2, 4)
    out = _run(project, env)
    assert f"resuming at step {step} of 6" in out
    got = _weights(project / "models/pretrained")
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert not ckpt.exists()                 # removed once the outputs are published
    hist = (project / "reports/pretrain/history.tsv").read_text().splitlines()
    assert hist[0].split("\t") == ["step", "loss", "lr", "val_R1", "seconds"]
    assert [int(r.split("\t")[0]) for r in hist[1:]] == [2, 4, 6]
    stats = read_json(project / "reports/pretrain/stats.json")
    assert stats["shared_full_attribute_sets_with_benchmark"] == 0
    assert stats["identity_disjoint_check"] == "checked" and stats["n_images"] == 96
    assert (project / "reports/figures/pretrain.png").stat().st_size > 10_000


def test_pretraining_twice_on_one_machine_gives_identical_weights(tmp_path):
    """Reproducibility on one machine (issue 21): the same params and seed give bit-identical
    weights and loss history run after run (across CPU models only the verdicts compare)."""
    runs = []
    for name in ("first", "second"):
        root = tmp_path / name
        root.mkdir()
        make_project(root, SMALL)
        _run(root, _env(tmp_path / name))
        runs.append((_weights(root / "models/pretrained"),
                     [r.split("\t")[:2] for r in
                      (root / "reports/pretrain/history.tsv").read_text().splitlines()]))
    (a, hist_a), (b, hist_b) = runs
    assert a.keys() == b.keys() and "vision_model.embeddings.patch_embedding.0.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert hist_a == hist_b and len(hist_a) == 4          # header + steps 2, 4, 6


def test_pretrained_backbone_loads_with_its_tokenizer_and_evaluates_zero_shot(project, tmp_path,
                                                                             monkeypatch):
    from pfcvr.model import build_model, build_tokenizer
    from pfcvr.pipeline.zero_shot import zero_shot_document

    if not (project / "models/pretrained").is_dir():
        _run(project, _env(tmp_path))
    monkeypatch.chdir(project)               # `pretrained` is relative to the repository root
    params = load_params(project / "params.yaml")
    cfg = params.model.model_copy(update={"backbone": "pretrained"})
    tok = build_tokenizer(cfg, ["not used: the pretrained folder has its own tokenizer"])
    saved = read_json(project / "models/pretrained/pfcvr_tokenizer.json")
    assert tok.vocab_size == saved["vocab_size"]
    model = build_model(cfg, 5, tok)
    ref = _weights(project / "models/pretrained")
    emb = model.backbone.text.embeddings.token_embedding.weight
    assert torch.equal(emb, ref["text_model.embeddings.token_embedding.weight"])
    stem = model.backbone.vision.embeddings.patch_embedding      # the conv stem, loaded whole
    assert type(stem).__name__ == "ConvStem"
    assert torch.equal(stem[4].weight, ref["vision_model.embeddings.patch_embedding.4.weight"])
    doc = zero_shot_document(params.model_copy(update={"model": cfg}), "data/prepared",
                             "data/parts/parts.json")
    assert doc["single_seed"] and doc["split"] == "test" and doc["backbone"] == "pretrained"
    assert 0.0 <= doc["best"]["R1"]["mean"] <= 100.0 and doc["best"]["R1"]["std"] == 0.0
    assert doc["n_queries"] == 2 * doc["n_gallery"]           # two captions per test image


def test_pretrained_backbone_before_the_pretrain_stage_is_a_one_line_error(tmp_path,
                                                                          monkeypatch):
    from pfcvr.model.backbone import backbone_source

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=r"model.backbone=pretrained: models/pretrained/ holds no "
                                      r"pretrained backbone; run the pretrain stage first"):
        backbone_source("pretrained")
    assert backbone_source("tiny") == "tiny"


def test_zero_shot_of_the_tiny_backbone_is_a_chance_level_row(project, monkeypatch):
    """`-S model.backbone=tiny` keeps the zero_shot stage working: its tokenizer is learned on the
    training captions (as training does) and the random network's row measures chance."""
    from pfcvr.pipeline.zero_shot import zero_shot_document

    monkeypatch.chdir(project)
    params = load_params(project / "params.yaml")
    assert params.model.backbone == "tiny"
    doc = zero_shot_document(params, "data/prepared", "data/parts/parts.json")
    assert doc["backbone"] == "tiny" and 0.0 <= doc["best"]["R1"]["mean"] <= 100.0


def test_a_warm_up_as_long_as_the_pretraining_is_refused(project):
    from pfcvr.config import ConfigError

    with pytest.raises(ConfigError, match=r"^pretrain.warmup_steps=6: must be below "
                                          r"pretrain.steps=6 \(the warm-up would never end\)"):
        load_params(project / "params.yaml", overrides={"pretrain.warmup_steps": 6})


def test_a_checkpoint_of_other_params_is_not_resumed_and_says_so(project, tmp_path, capsys):
    from pfcvr.engine.checkpoint import save_checkpoint
    from pfcvr.pipeline.pretrain import pretrain

    cache = tmp_path / "cache"
    cache.mkdir()
    params = load_params(project / "params.yaml", overrides={"pretrain.steps": 2,
                                                              "pretrain.eval_every": 2})
    layer = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(layer.parameters())
    save_checkpoint(cache / "checkpoint.pt", model=layer, optimizer=opt, scheduler=None,
                    scaler=None, epoch=0, step=4, best=None, history=[],
                    fingerprint="written-for-other-params")
    result = pretrain(params, prepared=project / "data/prepared",
                      parts=project / "data/parts/parts.json", cache=cache, progress=False)
    assert "was written for other params, data or code: starting over" in capsys.readouterr().out
    assert [r["step"] for r in result.history] == [2]
