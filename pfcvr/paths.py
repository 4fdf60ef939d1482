"""Every path the pipeline reads or writes, in one place (relative to the repository root, where
DVC runs the stages). Every path dvc.yaml tracks is one of these or lies inside one of these
folders (tests/test_dvc_deps.py checks it).

Stages take these as defaults; the library functions take paths as arguments, so tests and other
layouts pass their own.
"""
from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")

# prepare
PREPARED = Path("data/prepared")
DATA_STATS = Path("reports/data/stats.json")
DATA_FIGURE = Path("reports/figures/data_samples.png")

# parts
PARTS_DIR = Path("data/parts")             # the folder DVC tracks as the stage's output
PARTS = PARTS_DIR / "parts.json"
PARTS_STATS = Path("reports/parts/stats.json")
PARTS_FIGURE = Path("reports/figures/part_pairs.png")
PARTS_CACHE = Path(".cache/parts")

# pretrain
PRETRAINED = Path("models/pretrained")    # model.backbone: pretrained loads this folder
PRETRAIN_REPORTS = Path("reports/pretrain")
PRETRAIN_FIGURE = Path("reports/figures/pretrain.png")
PRETRAIN_CACHE = Path(".cache/pretrain")

# zero_shot: the pretrained backbone on test, no fine-tuning -> METRICS / f"{ZERO_SHOT}.json"
ZERO_SHOT = "zero_shot"

# train@<variant> / evaluate@<variant>
MODELS = Path("models")
TRAIN_REPORTS = Path("reports/train")
TRAIN_CACHE = Path(".cache/train")
METRICS = Path("reports/metrics")
EVAL_REPORTS = Path("reports/eval")
FIGURES = Path("reports/figures")

# report
ABLATION_MD = Path("reports/ablation.md")
ABLATION_JSON = Path("reports/ablation.json")
COMPARE_JSON = Path("reports/compare.json")    # test R1 / mAP per variant: `make compare`
ABLATION_FIGURE = FIGURES / "ablation.png"

# tune
TUNE_REPORTS = Path("reports/tune")
TUNE_HISTORY_FIGURE = FIGURES / "tune_history.png"
TUNE_IMPORTANCE_FIGURE = FIGURES / "tune_importance.png"

# pfcvr search
SEARCH_CACHE = Path(".cache/pfcvr")

# torch.compile (train.compile): inductor's on-disk cache of compiled graphs, kept across runs
INDUCTOR_CACHE = Path(".cache/inductor")

# `dvc plots show/diff` page with vega inlined (built by `make setup`; .dvc/config points at it)
PLOTS_TEMPLATE = Path(".cache/dvc-plots/template.html")


def model_dir(variant: str) -> Path:
    """models/<variant>: one seed<k>/{best,final}/ folder per seed."""
    return MODELS / variant


def train_reports(variant: str) -> Path:
    """reports/train/<variant>: history.tsv and summary.json."""
    return TRAIN_REPORTS / variant
