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
