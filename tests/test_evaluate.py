"""Evaluation engine and the `evaluate` stage on a tiny randomly initialised PFCVR."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pfcvr.config import load_params
from pfcvr.data.dataset import ImageDataset, collate, load_split
from pfcvr.engine.evaluate import (EvaluationError, Ranking, RetrievalResult, TopkItem,
                                   applicable_fusion, evaluate_retrieval)
from pfcvr.engine.ranking import retrieval_metrics
from pfcvr.metrics import summarize_runs
from pfcvr.pipeline.evaluate import plan_evaluation
from pfcvr.report.cards import cmc_table
from tests.support.eval_helpers import build_tiny_model, make_split_data, write_params

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    params_file = write_params(root / "params.yaml", {
        "report.seeds": list(SEEDS), "eval.topk_queries": 3, "eval.chunk_size": 5,
        "eval.batch_size": 16, "train.device": "cpu"})
    params = load_params(params_file, variant="full")
    prepared, parts = make_split_data(root, params)
    train = load_split(prepared, parts, "train")
    test = load_split(prepared, parts, "test")
    captions = [c for r in train.records for c in r["captions"]]
    model = build_tiny_model(params, captions, seed=0)
    return {"root": root, "params_file": params_file, "params": params, "prepared": prepared,
            "parts": parts, "test": test, "captions": captions, "model": model}


def _direct_features(model, split):
    """Global features computed without the engine: whole split in one batch."""
    ds = ImageDataset(split, model.image_size, model.image_size // model.grid_size)
    batch = collate([ds[i] for i in range(len(ds))])
    texts, qids, _ = split.captions()
    with torch.no_grad():
        model.eval()
        img = F.normalize(model.encode_image(batch["images"]), dim=-1)
        txt = F.normalize(model.encode_text(model.tokenizer(texts)), dim=-1)
        parts_img = F.normalize(model.image_part_features(batch["images"], batch["part_masks"]), dim=-1)
        parts_txt = F.normalize(model.text_part_queries(model.tokenizer(texts)), dim=-1)
    return txt, img, parts_txt, parts_img, batch["part_present"], qids, batch["pids"]


def test_metrics_equal_direct_computation_and_mode_is_restored(tiny):
    model, split = tiny["model"], tiny["test"]
    model.train()
    result = evaluate_retrieval(model, split, batch_size=3, chunk_size=4, device="cpu")
    assert model.training, "evaluate_retrieval must restore train mode"
    assert isinstance(result, RetrievalResult) and result.fused is None
    out = result.scalars()
    txt, img, *_, qids, gids = _direct_features(model, split)
    expected = retrieval_metrics(txt @ img.t(), qids, gids)
    for k, v in expected.items():
        assert out[k] == pytest.approx(v, abs=1e-9), k
        assert getattr(result, k) == out[k]
    assert out["n_queries"] == len(qids) and out["n_gallery"] == len(gids)
    assert result.n_queries == len(qids) and result.n_gallery == len(gids)
    assert all(isinstance(v, float) for v in out.values())   # the trainer float()s every value
    assert not any(k.startswith("fused_") for k in out)


def test_part_fusion_equals_explicit_formula(tiny):
    model, split = tiny["model"], tiny["test"]
    w = 0.7
    result = evaluate_retrieval(model, split, batch_size=5, chunk_size=3, device="cpu",
                                part_fusion=w)
    out = result.scalars()
    assert result.part_fusion == w and result.part_fusion_note is None
    assert isinstance(result.fused, Ranking) and result.fused.R1 == out["fused_R1"]
    txt, img, pt, pi, present, qids, gids = _direct_features(model, split)
    # score[q, g] = cos(t_q, v_g) + w * mean over parts k present in g of cos(q_k, p_k)
    part_cos = torch.einsum("qkd,gkd->qgk", pt, pi)                     # [Q, G, 6]
    pres = present.float()[None]                                        # [1, G, 6]
    mean_part = (part_cos * pres).sum(-1) / pres.sum(-1).clamp_min(1)
    fused = txt @ img.t() + w * mean_part
    expected = retrieval_metrics(fused, qids, gids)
    for k, v in expected.items():
        assert out["fused_" + k] == pytest.approx(v, abs=1e-9), k
    plain = retrieval_metrics(txt @ img.t(), qids, gids)
    assert out["R1"] == pytest.approx(plain["R1"])                      # global still reported
    assert present.any(), "fixture should have annotated parts"


def test_part_fusion_needs_caption_context(tiny):
    # One rule (issue 11): fusion asked for on an image-context model is skipped with a warning
    # and a note; the global metrics are still computed.
    params = load_params(tiny["params_file"], variant="image_context")
    model = build_tiny_model(params, tiny["captions"], seed=3)
    with pytest.warns(UserWarning, match="part_context: caption"):
        skipped = evaluate_retrieval(model, tiny["test"], batch_size=8, chunk_size=8,
                                     device="cpu", part_fusion=0.5)
    assert skipped.fused is None and skipped.part_fusion == 0.0
    assert "part_context is image" in skipped.part_fusion_note
    assert not any(k.startswith("fused_") for k in skipped.scalars())
    out = evaluate_retrieval(model, tiny["test"], batch_size=8, chunk_size=8, device="cpu")
    assert 0.0 <= out.R1 <= 100.0 and out.part_fusion_note is None
    assert skipped.metrics() == out.metrics()
    weight, note = applicable_fusion(model, 0.5)
    assert weight == 0.0 and "part_context is image" in note
    assert applicable_fusion(tiny["model"], 0.5) == (0.5, None)
    assert applicable_fusion(model, 0.0) == (0.0, None)
    with pytest.raises(EvaluationError, match="must be >= 0"):
        applicable_fusion(tiny["model"], -0.1)


def test_details_cmc_and_topk_are_consistent(tiny):
    model, split = tiny["model"], tiny["test"]
    out = evaluate_retrieval(model, split, batch_size=8, chunk_size=None, device="cpu",
                             topk_queries=3, topk=4)
    cmc = np.asarray(out.cmc)
    assert len(cmc) == min(20, len(split))
    assert cmc[0] == pytest.approx(out.R1) and cmc[4] == pytest.approx(out.R5)
    assert np.all(np.diff(cmc) >= 0) and cmc[-1] == pytest.approx(100.0)
    texts, qids, q_img = split.captions()
    assert len(out.topk) == 3 and all(isinstance(t, TopkItem) for t in out.topk)
    for t in out.topk:
        assert t.caption == texts[t.query] and t.image_index == int(q_img[t.query])
        assert len(t.gallery) == 4 and t.scores == sorted(t.scores, reverse=True)
        assert t.correct == [split.ids[j] == t.pid for j in t.gallery]
    assert len({t.query for t in out.topk}) == 3
    assert evaluate_retrieval(model, split, batch_size=8, chunk_size=None, device="cpu").topk == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_encoding_matches_cpu(tiny):
    from pfcvr.engine.encode import encode_gallery, encode_queries

    model, split = tiny["model"], tiny["test"]
    ds = ImageDataset(split, model.image_size, model.image_size // model.grid_size)
    texts, _, _ = split.captions()
    feats = {}
    for dev in ("cpu", "cuda"):
        model.to(dev)
        feats[dev] = (encode_gallery(model, ds, 5, dev, parts=True),
                      encode_queries(model, texts, 5, dev, parts=True))
        out = evaluate_retrieval(model, split, batch_size=5, chunk_size=3, device=dev,
                                 part_fusion=0.3)
        assert 0.0 <= out.fused.R1 <= 100.0
    model.to("cpu")
    (gc, qc), (gg, qg) = feats["cpu"], feats["cuda"]
    torch.testing.assert_close(gg.features, gc.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gg.part_features, gc.part_features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(qg.features, qc.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(qg.part_queries, qc.part_queries, atol=1e-4, rtol=1e-4)


def test_summaries():
    runs = [{"R1": 10.0, "R5": 1, "R10": 1, "mAP": 1, "mINP": 1, "fused_R1": 3.0},
            {"R1": 20.0, "R5": 1, "R10": 1, "mAP": 1, "mINP": 1, "fused_R1": 5.0}]
    s = summarize_runs(runs)
    assert s["R1"] == {"mean": 15.0, "std": pytest.approx(np.std([10, 20], ddof=1)),
                       "runs": [10.0, 20.0]}
    assert summarize_runs(runs, metrics=("R1",), prefix="fused_")["R1"]["mean"] == 4.0
    assert summarize_runs(runs[:1])["R1"]["std"] == 0.0
    tsv = cmc_table({"best": [[10, 50], [20, 70]], "final": [[0, 100]]})
    assert tsv.splitlines() == ["rank\tbest\tfinal", "1\t15.0000\t0.0000", "2\t60.0000\t100.0000"]


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage_env(tiny, tmp_path_factory):
    from pfcvr.model.io import save_model

    ws = tmp_path_factory.mktemp("stage")
    for seed in SEEDS:
        for i, kind in enumerate(("best", "final")):
            model = build_tiny_model(tiny["params"], tiny["captions"], seed=10 * seed + i)
            save_model(model, ws / "models" / "full" / f"seed{seed}" / kind,
                       {"variant": "full", "seed": seed, "epoch": 2 + i,
                        "description": "all five losses"})
    return ws


def _stage_args(tiny, ws, variant="full"):
    return ["--variant", variant, "--params", str(tiny["params_file"]),
            "--models", str(ws / "models"), "--prepared", str(tiny["prepared"]),
            "--parts", str(tiny["parts"]), "--metrics", str(ws / "reports/metrics"),
            "--eval-reports", str(ws / "reports/eval"), "--figures", str(ws / "reports/figures")]


def test_stage_writes_metrics_plots_figures_and_mlflow_run(tiny, stage_env, monkeypatch):
    from pfcvr.tracking import stage_runs
    from stages import evaluate as stage

    ws = stage_env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ws / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(ws))
    monkeypatch.chdir(ws)
    stage.main(_stage_args(tiny, ws))

    doc = json.loads((ws / "reports/metrics/full.json").read_text())
    assert {"best", "final"} <= set(doc) and doc["seeds"] == list(SEEDS)
    # issue 23 §4: what was evaluated, read from the model folders (the report states it)
    assert doc["variant"] == "full" and doc["data_source"] == "synthetic"
    assert doc["models"] == {"backbone": tiny["params"].model.backbone,
                             "image_size": tiny["params"].model.image_size,
                             "epochs": [3, 3], "train": None}   # saved without a recipe here
    assert "best_part_fusion" not in doc               # default eval.part_fusion = 0
    for kind in ("best", "final"):
        for m in ("R1", "R5", "R10", "mAP", "mINP"):
            entry = doc[kind][m]
            assert len(entry["runs"]) == len(SEEDS)
            assert entry["mean"] == pytest.approx(np.mean(entry["runs"]))
            assert entry["std"] == pytest.approx(np.std(entry["runs"], ddof=1))
    # best seed 0 equals a direct evaluation of that saved model
    from pfcvr.model.io import load_model

    m0 = load_model(ws / "models/full/seed0/best")
    direct = evaluate_retrieval(m0, tiny["test"], batch_size=7, chunk_size=2, device="cpu")
    assert doc["best"]["R1"]["runs"][0] == pytest.approx(direct.R1)
    assert doc["best"]["mAP"]["runs"][0] == pytest.approx(direct.mAP)

    with open(ws / "reports/eval/full/cmc.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == ["rank", "best", "final"] and len(rows) == len(tiny["test"])
    assert float(rows[0]["best"]) == pytest.approx(doc["best"]["R1"]["mean"], abs=1e-4)  # 4 decimals
    assert float(rows[-1]["best"]) == pytest.approx(100.0)
    for fig in ("cmc_full", "topk_full"):
        assert (ws / f"reports/figures/{fig}.png").read_bytes()[:4] == b"\x89PNG"
    card = (ws / "reports/eval/full/model_card.md").read_text()
    assert "all five losses" in card and "| best |" in card

    runs = [r for r in stage_runs("evaluate@full")]
    assert runs and runs[0]["status"] == "FINISHED"
    metrics = runs[0]["metrics"]
    assert metrics["best/R1_mean"] == pytest.approx(doc["best"]["R1"]["mean"])
    assert metrics["final/seed1/mAP"] == pytest.approx(doc["final"]["mAP"]["runs"][1])
    assert runs[0]["params"]["eval.chunk_size"] == "5"


def test_stage_names_missing_models(tiny, stage_env):
    import shutil

    from stages import evaluate as stage

    # only seed 0 of the variant was trained: the two seed-1 folders are named, before any work
    shutil.copytree(stage_env / "models/full/seed0", stage_env / "models/no_part/seed0")
    with pytest.raises(FileNotFoundError, match=r"2 model folder\(s\) missing.*seed1/best"):
        stage.main(_stage_args(tiny, stage_env, variant="no_part"))
    assert not (stage_env / "reports/metrics/no_part.json").exists()


def test_variant_applies_or_skips_part_fusion_by_the_one_rule(tiny, tmp_path_factory):
    from pfcvr.model.io import save_model

    ws = tmp_path_factory.mktemp("fusion")
    params_file = write_params(ws / "params.yaml", {
        "report.seeds": [0], "eval.part_fusion": 0.5, "eval.topk_queries": 2,
        "eval.batch_size": 16, "train.device": "cpu"})
    plans = {}
    for variant in ("full", "image_context"):
        params = load_params(params_file, variant=variant)
        for i, kind in enumerate(("best", "final")):
            save_model(build_tiny_model(params, tiny["captions"], seed=20 + i),
                       ws / "models" / variant / "seed0" / kind, {"description": variant})
        plans[variant] = plan_evaluation(params, variant, ws / "models", tiny["prepared"],
                                         tiny["parts"])

    full = plans["full"].run()
    doc = full.metrics_document()
    assert list(doc)[:4] == ["best", "final", "best_part_fusion", "final_part_fusion"]
    assert doc["part_fusion"] == 0.5 and "part_fusion_note" not in doc
    assert doc["best_part_fusion"]["R1"]["runs"] == [full.results("best")[0].fused.R1]
    assert list(full.curves()) == ["best", "final", "best_part_fusion", "final_part_fusion"]
    assert full.mlflow_metrics()["final/seed0/fused_mAP"] == full.results("final")[0].fused.mAP
    assert "`*_part_fusion` adds 0.5 x mean part-query cosine" in full.model_card()
    seed, items = full.topk()
    assert seed == 0 and len(items) == 2

    # image_context: the same setting evaluates, without the fused rows, and says why
    with pytest.warns(UserWarning, match="part_context is image"):
        image = plans["image_context"].run()
    doc = image.metrics_document()
    assert list(doc)[:2] == ["best", "final"] and "best_part_fusion" not in doc
    assert doc["part_fusion"] == 0.5 and "part_context is image" in doc["part_fusion_note"]
    assert list(image.curves()) == ["best", "final"]
    assert "best/seed0/R1" in image.mlflow_metrics()
    assert not any("fused_" in k for k in image.mlflow_metrics())
    card = image.model_card()
    assert doc["part_fusion_note"] in card and "`*_part_fusion` adds" not in card
