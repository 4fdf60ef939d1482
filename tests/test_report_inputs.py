"""Issue 23 §4: a report describes what its inputs hold. Seeds, backbone, input size, epochs,
recipe, data and pretraining are read from the metrics and stats files; every disagreement with
params.yaml is a warning (on stderr and at the top of the report), a metrics file of another
variant is a one-line error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pfcvr.config import load_params, read_raw, set_dotted
from pfcvr.metrics import METRIC_NAMES
from pfcvr.pipeline.report import ablation_report
from pfcvr.runtime.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"epochs": 3, "batch_size": 32, "lr": 3e-4, "precision": "fp32"}


def _params(tmp_path: Path, **overrides) -> Path:
    raw = read_raw(ROOT / "params.yaml")
    # the recipe the fake metrics below record (RECIPE), whatever params.yaml's defaults are
    for key, value in {"report.variants": ["full", "no_part"], "train.epochs": 3,
                       **overrides}.items():
        set_dotted(raw, key, value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _metrics(folder: Path, variant: str, runs: dict[int, float], *, backbone="pretrained",
             epochs: int = 3, recipe: dict | None = RECIPE, source="synthetic") -> None:
    """A metrics file as the evaluate stage writes it (runs: {seed: R1 = mAP})."""
    values = list(runs.values())
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 \
        if len(values) > 1 else 0.0
    cell = {"mean": mean, "std": std, "runs": values}
    write_json(folder / f"{variant}.json", {
        "best": {m: cell for m in METRIC_NAMES}, "final": {m: cell for m in METRIC_NAMES},
        "split": "test", "seeds": list(runs), "n_queries": 40, "n_gallery": 20,
        "part_fusion": 0.0, "single_seed": len(values) < 2, "variant": variant,
        "data_source": source,
        "models": {"backbone": backbone, "image_size": 96, "epochs": [epochs] * len(values),
                   "train": None if recipe is None else {**recipe, "epochs": epochs}}})


def test_the_report_states_the_seeds_its_metrics_hold(tmp_path):
    """The example of the issue: report.seeds [0, 1, 2], metrics of seed 0 only. Before, the
    report exited 0 saying "3 seeds per variant (0, 1, 2)". Now its setup says what the files
    hold and a warning, on stderr and at the top of the report, names each file."""
    params = _params(tmp_path, **{"report.seeds": [0, 1, 2]})
    metrics = tmp_path / "metrics"
    _metrics(metrics, "full", {0: 12.5})
    _metrics(metrics, "no_part", {0: 11.5})
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               MLFLOW_DISABLE_TELEMETRY="true")
    done = subprocess.run(
        [sys.executable, "-m", "stages.report", "--params", str(params), "--metrics", str(metrics),
         "--data-stats", str(tmp_path / "none.json"), "--out-md", str(out / "ablation.md"),
         "--out-json", str(out / "ablation.json"), "--compare", str(out / "compare.json"),
         "--figure", str(out / "ablation.png")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = [f"{metrics / v}.json holds 1 seed (0), but report.seeds lists 0, 1, 2: the numbers "
            "are over the seeds the file holds; rerun the pipeline (`dvc repro`) to evaluate the "
            "others" for v in ("full", "no_part")]
    assert [line for line in done.stderr.splitlines() if ": warning: " in line] == \
        [f"report: warning: {s}" for s in said]
    md = (out / "ablation.md").read_text()
    assert "- training: 3 epochs, batch 32, lr 0.0003, precision fp32; 1 seed per variant (0)" in md
    from pfcvr.report.provenance import _epochs
    assert (_epochs([1, 1]), _epochs([2]), _epochs([1, 3])) == ("1 epoch", "2 epochs", "1–3 epochs")
    assert "3 seeds per variant" not in md
    assert "## Warning: the inputs differ from params.yaml\n" in md
    assert md.index("## Warning") < md.index("## Setup")
    assert all(f"- {s}\n" in md for s in said)
    assert "A single seed per variant (the metrics hold one)" in md


def test_every_setup_fact_comes_from_the_inputs(tmp_path):
    """Metrics measured with the tiny backbone for 2 epochs at another lr, a zero-shot file of
    the tiny backbone, pretraining stats on disk: the report states what the files hold (no
    pretraining line: no input used the pretrained backbone) and names each disagreement."""
    metrics = tmp_path / "metrics"
    recipe = {**RECIPE, "lr": 1e-3}
    _metrics(metrics, "full", {0: 12.0, 1: 13.0}, backbone="tiny", epochs=2, recipe=recipe)
    _metrics(metrics, "no_part", {0: 11.0, 1: 12.0}, backbone="tiny", epochs=2, recipe=recipe)
    cell = {"mean": 4.0, "std": 0.0, "runs": [4.0]}
    write_json(metrics / "zero_shot.json", {"best": {m: cell for m in METRIC_NAMES},
                                            "seeds": [0], "backbone": "tiny"})
    write_json(tmp_path / "data.json", {"source": "synthetic",
                                        "splits": {"test": {"ids": 5, "images": 20}}})
    pre = tmp_path / "pretrain.json"
    write_json(pre, {"n_images": 80, "n_ids": 40, "steps": 20, "batch_size": 8,
                     "seconds": 3.0, "final_val_R1": 5.0})
    params = load_params(_params(tmp_path, **{"report.seeds": [0, 1]}))
    with pytest.warns(UserWarning) as caught:
        rep = ablation_report(params, metrics, tmp_path / "data.json", pre)
    expected = []
    for v in ("full", "no_part"):
        expected += [f"{metrics / v}.json was measured with {key} = {value}, but the params say "
                     f"{want}: rerun the pipeline (`dvc repro`) for the params' setting"
                     for key, value, want in (("model.backbone", "tiny", "pretrained"),
                                              ("train.epochs", 2, 3), ("train.lr", 0.001, 0.0003))]
    expected.append(f"{metrics / 'zero_shot.json'} was measured with model.backbone = tiny, but "
                    "the params say pretrained: rerun `dvc repro zero_shot`")
    assert list(rep.problems) == expected == [str(w.message) for w in caught]
    md = rep.markdown
    assert "- data: `synthetic`; model backbone `tiny` at 96x96 px\n" in md
    assert "- training: 2 epochs, batch 32, lr 0.001, precision fp32; 2 seeds per variant (0, 1)" in md
    assert "- splits: test: 5 ids, 20 images" in md
    assert "pretraining (`model.backbone: pretrained`)" not in md          # not used by any input
    assert "| `zero_shot` | tiny backbone, no fine-tuning (one model) |" in md


def test_inputs_that_match_the_params_give_no_warning(tmp_path, recwarn):
    metrics = tmp_path / "metrics"
    _metrics(metrics, "full", {0: 12.0, 1: 13.0})
    _metrics(metrics, "no_part", {0: 11.0, 3: 12.0})       # a variant with other seeds
    params = load_params(_params(tmp_path, **{"report.seeds": [0, 1]}))
    rep = ablation_report(params, metrics, tmp_path / "none.json")
    assert list(rep.problems) == [f"{metrics / 'no_part'}.json holds 2 seeds (0, 3), but "
                                  "report.seeds lists 0, 1: the numbers are over the seeds the "
                                  "file holds; rerun the pipeline (`dvc repro`) to evaluate the "
                                  "others"]
    assert ("seeds per variant: `full` 2 seeds (0, 1); `no_part` 2 seeds (0, 3)") in rep.markdown
    _metrics(metrics, "no_part", {0: 11.0, 1: 12.0})
    recwarn.clear()
    rep = ablation_report(params, metrics, tmp_path / "none.json")
    assert rep.problems == () and not recwarn.list and "## Warning" not in rep.markdown


def test_a_metrics_file_of_another_variant_is_one_line(tmp_path):
    metrics = tmp_path / "metrics"
    _metrics(metrics, "full", {0: 12.0})
    _metrics(metrics, "no_part", {0: 11.0})
    (metrics / "no_part.json").write_text((metrics / "full.json").read_text())   # copied by hand
    params = load_params(_params(tmp_path, **{"report.seeds": [0]}))
    with pytest.raises(ValueError) as err:
        ablation_report(params, metrics, tmp_path / "none.json")
    assert str(err.value) == (f"{metrics / 'no_part.json'}: holds the metrics of variant 'full', "
                              "not 'no_part' (a file copied or renamed by hand); rerun `dvc repro "
                              "evaluate@no_part`")
