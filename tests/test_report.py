"""Ablation aggregation: hand-computed deltas and noise bands, outputs on disk."""
import json
import math

import pytest

from pfcvr import viz
from pfcvr.io import write_json
from pfcvr.report import METRICS, ablation_json, ablation_markdown, collect, compare, noise_band


def _cell(runs):
    mean = sum(runs) / len(runs)
    std = math.sqrt(sum((r - mean) ** 2 for r in runs) / (len(runs) - 1))
    return {"mean": mean, "std": std, "runs": runs}


def _write(tmp_path, variant, r1_runs, map_runs):
    body = {m: _cell(r1_runs if m in ("R1", "R5", "R10") else map_runs) for m in METRICS}
    write_json(tmp_path / f"{variant}.json", {"best": body, "final": body})


def test_noise_band_is_two_standard_errors():
    a = {"mean": 0, "std": 3.0, "runs": [0, 0, 0]}
    b = {"mean": 0, "std": 4.0, "runs": [0, 0, 0, 0]}
    assert noise_band(a, b) == pytest.approx(2 * math.sqrt(9 / 3 + 16 / 4))


def test_compare_flags_real_and_noise_deltas(tmp_path):
    _write(tmp_path, "full", [50.0, 52.0, 54.0], [30.0, 30.5, 31.0])
    _write(tmp_path, "no_part", [40.0, 41.0, 42.0], [30.0, 31.0, 30.5])
    table = collect(["full", "no_part"], tmp_path)
    deltas = compare(table)
    d = deltas["no_part"]["R1"]
    assert d["delta"] == pytest.approx(41.0 - 52.0)
    assert d["noise"] == pytest.approx(2 * math.sqrt(2.0 ** 2 / 3 + 1.0 ** 2 / 3))
    assert not d["within_noise"]
    assert deltas["no_part"]["mAP"]["within_noise"]
    md = ablation_markdown(table, deltas, {"no_part": "without parts"}, ["- setup line"], table)
    assert "| `no_part` | without parts | 41.0 ± 1.0" in md
    assert "-11.0 *" in md and "inside the seed noise" not in md.split("no_part")[-1].split("\n")[0]
    assert "Published numbers" in md and "55.2" in md
    js = ablation_json(table, deltas)
    assert js["no_part"]["R1"]["runs"] == [40.0, 41.0, 42.0]
    assert js["no_part"]["R1"]["within_noise"] is False
    json.dumps(js)  # serialisable


def test_missing_reference_and_missing_file_errors(tmp_path):
    _write(tmp_path, "no_part", [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="reference variant 'full'"):
        compare(collect(["no_part"], tmp_path))
    with pytest.raises(FileNotFoundError, match="full.json"):
        collect(["full"], tmp_path)
    write_json(tmp_path / "bad.json", {"best": {"R1": {"mean": 1, "std": 0, "runs": [1]}}})
    with pytest.raises(ValueError, match="lacks metrics R5"):
        collect(["bad"], tmp_path)


def test_ablation_figure_writes_png(tmp_path):
    _write(tmp_path, "full", [50.0, 52.0, 54.0], [30.0, 30.5, 31.0])
    _write(tmp_path, "baseline", [45.0, 47.0, 46.0], [28.0, 29.0, 28.5])
    out = tmp_path / "fig.png"
    viz.ablation_figure(collect(["full", "baseline"], tmp_path), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnosis_against_the_attribute_oracle(tmp_path):
    from pfcvr.report import diagnosis
    _write(tmp_path, "full", [9.0, 10.0, 11.0], [12.0, 12.5, 13.0])
    _write(tmp_path, "no_part", [9.5, 10.0, 10.5], [12.0, 12.5, 13.0])
    table = collect(["full", "no_part"], tmp_path)
    deltas = compare(table)
    low = diagnosis(table, deltas, {"oracle_global_R1": 20.0, "oracle_all_R1": 90.0})
    assert "below the attribute oracle" in low[0] and "training is too short" in low[0]
    assert "No variant differs" in low[1]
    high = diagnosis(table, deltas, {"oracle_global_R1": 5.0, "oracle_all_R1": 85.0})
    assert "6 % of the way" in high[0]  # (10 - 5) / (85 - 5)


def test_report_stage_writes_outputs_and_publishes(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from pfcvr.config import load_params
    from pfcvr.tracking import stage_runs
    from stages import report as stage

    params_file = Path(__file__).resolve().parents[1] / "params.yaml"
    variants = list(load_params(params_file).ablations)
    metrics = tmp_path / "metrics"
    for i, variant in enumerate(variants):
        _write(metrics, variant, [50.0 - i, 52.0 - i, 54.0 - i], [30.0, 30.5, 31.0])
    write_json(tmp_path / "stats.json", {"splits": {"test": {"images": 12, "ids": 4}},
                                         "oracle_global_R1": 20.0, "oracle_all_R1": 90.0})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    stage.main(["--params", str(params_file), "--metrics", str(metrics),
                "--data-stats", str(tmp_path / "stats.json"), "--out-md", str(out / "a.md"),
                "--out-json", str(out / "a.json"), "--figure", str(out / "a.png")])

    md = (out / "a.md").read_text()
    assert f"| `{variants[1]}` |" in md and "- splits: test: 12 images, 4 ids" in md
    assert "oracle_global_R1 = 20.0" in md and "52.0 ± 2.0" in md
    doc = json.loads((out / "a.json").read_text())
    assert list(doc) == variants and doc["full"]["R1"]["mean"] == pytest.approx(52.0)
    assert doc[variants[1]]["R1"]["delta_vs_full"] == pytest.approx(-1.0)
    assert (out / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert "| `full` |" in capsys.readouterr().out
    runs = stage_runs("report")
    assert runs and runs[0]["status"] == "FINISHED"
    assert runs[0]["metrics"][f"{variants[1]}/R1"] == pytest.approx(51.0)


# ----------------------------------------------------------------------------------------------
# Issue 12: a single seed shows a difference, never a significance
# ----------------------------------------------------------------------------------------------

def _single(tmp_path, variant, r1):
    """One seed, as the evaluate stage writes it for report.seeds: [0] (std 0.0, one run)."""
    cell = {"mean": r1, "std": 0.0, "runs": [r1]}
    write_json(tmp_path / f"{variant}.json", {"best": {m: cell for m in METRICS},
                                              "final": {m: cell for m in METRICS}})


def test_single_seed_difference_is_not_called_significant(tmp_path):
    # report.seeds: [0]; `no_part` finds one query fewer of 100 (R1 50.0 -> 49.0)
    _single(tmp_path, "full", 50.0)
    _single(tmp_path, "no_part", 49.0)
    table = collect(["full", "no_part"], tmp_path)
    deltas = compare(table)
    d = deltas["no_part"]["R1"]
    assert d["delta"] == pytest.approx(-1.0)
    assert d["noise"] is None and d["within_noise"] is None and d["single_seed"] is True
    assert noise_band(table["full"]["R1"], table["no_part"]["R1"]) is None

    md = ablation_markdown(table, deltas, {"no_part": "without parts"}, ["- setup"], table)
    assert "outside the seed noise" not in md and "±0" not in md and "± 0.0" not in md
    assert "a single seed can show a difference, never a significance" in md
    assert "| `no_part` | without parts | 49.0 | 49.0 | 49.0 | 49.0 | 49.0 | -1.0 | -1.0 |" in md
    assert ("- `no_part` (without parts): R1 -1.0 against `full`, from a single seed: a difference, "
            "not a significance") in md

    js = ablation_json(table, deltas)
    assert js["no_part"]["R1"] == {"mean": 49.0, "std": None, "runs": [49.0], "single_seed": True,
                                   "delta_vs_full": -1.0, "within_noise": None}
    assert js["full"]["R1"]["single_seed"] is True and js["full"]["R1"]["std"] is None
    json.dumps(js)


def test_single_seed_diagnosis_makes_no_noise_claim(tmp_path):
    from pfcvr.report import diagnosis
    _single(tmp_path, "full", 30.0)
    _single(tmp_path, "no_part", 30.0)
    table = collect(["full", "no_part"], tmp_path)
    lines = diagnosis(table, compare(table), {})
    assert lines == ["- With a single seed, no difference here can be told from seed noise: train "
                     "two or more seeds (`report.seeds`) before reading an effect into it."]


def test_several_seeds_keep_the_noise_verdict_and_flag(tmp_path):
    _write(tmp_path, "full", [50.0, 52.0, 54.0], [30.0, 30.5, 31.0])
    _write(tmp_path, "no_part", [40.0, 41.0, 42.0], [30.0, 31.0, 30.5])
    table = collect(["full", "no_part"], tmp_path)
    js = ablation_json(table, compare(table))
    assert js["no_part"]["R1"]["single_seed"] is False and js["no_part"]["R1"]["std"] == 1.0


def test_single_seed_cards_show_no_spread():
    from pfcvr.reporting import evaluation_card, mean_std

    assert mean_std({"mean": 12.345, "std": 0.0, "runs": [12.345]}) == "12.35 (1 seed)"
    assert mean_std({"mean": 12.0, "std": 1.5, "runs": [10.5, 13.5]}) == "12.00 ± 1.50"
    one = {m: {"mean": 10.0, "std": 0.0, "runs": [10.0]} for m in ("R1", "mAP")}
    card = evaluation_card("full", "all", {"best": one}, {}, {"seeds": [0]})
    assert "| best | 10.00 (1 seed) | 10.00 (1 seed) |" in card and "± 0.00" not in card
