"""Ablation aggregation: hand-computed deltas and noise bands, outputs on disk."""
import json
import math

import pytest
import torch

from pfcvr.metrics import METRIC_NAMES as METRICS
from pfcvr.report.ablation import (ablation_json, ablation_markdown, collect, compare, noise_band,
                                   paired_comparison)
from pfcvr.report.figures.ablation import ablation_figure
from pfcvr.runtime.atomic import write_json


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
    paired = paired_comparison(collect(["full", "baseline"], tmp_path))
    data = {v: {m: p.as_dict() for m, p in cells.items()} for v, cells in paired.items()}
    ablation_figure(data, out, mde={"R1": 2.0, "mAP": None})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnosis_against_the_attribute_oracle(tmp_path):
    from pfcvr.report.ablation import diagnosis
    _write(tmp_path, "full", [9.0, 10.0, 11.0], [12.0, 12.5, 13.0])
    _write(tmp_path, "no_part", [9.5, 10.0, 10.5], [12.0, 12.5, 13.0])
    table = collect(["full", "no_part"], tmp_path)
    deltas = compare(table)
    low = diagnosis(table, deltas, {"oracle_global_R1": 20.0, "oracle_all_R1": 90.0})
    assert "below the attribute oracle" in low[0] and "training are too small" in low[0]
    assert "No variant differs" in low[1]
    high = diagnosis(table, deltas, {"oracle_global_R1": 5.0, "oracle_all_R1": 85.0})
    assert "6 % of the way" in high[0]  # (10 - 5) / (85 - 5)
    assert "2.00x the type-and-colour oracle" in high[0]   # 10 / 5
    zs = {m: {"mean": 4.0, "std": 0.0, "runs": [4.0]} for m in METRICS}
    both = diagnosis(table, deltas, {"oracle_global_R1": 5.0, "oracle_all_R1": 85.0}, zero_shot=zs)
    assert both[1] == ("- The pretrained backbone alone (zero-shot) reaches test R1 4.0; "
                       "fine-tuning `full` adds +6.0 points.")


def test_zero_shot_row_and_pretraining_line_in_the_report(tmp_path):
    """Issue 10: the paper's first row (the pretrained backbone, no fine-tuning), one run, no
    spread and no paired comparison; the pretraining corpus and its disjointness in the setup."""
    from pfcvr.config import load_params
    from pfcvr.pipeline.report import ablation_report

    params = load_params("params.yaml", overrides={"report.variants": ["full", "no_part"]})
    _write(tmp_path, "full", [30.0, 32.0, 34.0], [20.0, 21.0, 22.0])
    _write(tmp_path, "no_part", [29.0, 31.0, 32.0], [20.0, 21.0, 22.0])
    body = {m: {"mean": 12.5, "std": 0.0, "runs": [12.5]} for m in METRICS}
    write_json(tmp_path / "zero_shot.json", {"best": body, "seeds": [0], "single_seed": True})
    pre = tmp_path / "pretrain_stats.json"
    write_json(pre, {"n_images": 8000, "n_ids": 4000, "identity_disjoint_check": "checked",
                     "shared_full_attribute_sets_with_benchmark": 0, "steps": 2500,
                     "batch_size": 64, "seconds": 301.2, "final_val_R1": 11.02})
    rep = ablation_report(params, tmp_path, tmp_path / "no_stats.json", pre)
    assert "| `zero_shot` | pretrained backbone, no fine-tuning (one model) | 12.5 | 12.5 | 12.5 " \
           "| 12.5 | 12.5 | — | — |" in rep.markdown
    assert rep.document["zero_shot"] == {m: 12.5 for m in METRICS}
    assert "zero_shot" not in rep.paired and list(rep.table) == ["full", "no_part"]
    assert ("- pretraining (`model.backbone: pretrained`): 8000 corpus images of 4000 vehicles "
            "with coarse alt-text captions (0 full attribute sets shared with the benchmark's "
            "identities); 2500 steps of batch 64 in 301 s; zero-shot val R1 11.0") in rep.markdown
    assert "fine-tuning `full` adds +19.5 points" in rep.markdown
    (tmp_path / "zero_shot.json").unlink()                 # a run without the zero_shot stage
    plain = ablation_report(params, tmp_path, tmp_path / "no_stats.json")
    assert "`zero_shot`" not in plain.markdown and "zero_shot" not in plain.document


def test_report_stage_writes_outputs_and_publishes(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from pfcvr.config import load_params
    from pfcvr.tracking import stage_runs
    from stages import report as stage

    params_file = Path(__file__).resolve().parents[1] / "params.yaml"
    variants = list(load_params(params_file).report.variants)
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
    # the variants first, in params order, then the paired statistics (issue 10: `mde_R1` is a
    # top-level key, so the document is no longer the variants alone)
    assert list(doc)[:len(variants)] == variants and doc["full"]["R1"]["mean"] == pytest.approx(52.0)
    assert list(doc)[len(variants):] == ["paired", "mde_R1", "mde", "environment"]
    env = doc["environment"]                # what makes digits differ between machines (issue 21)
    import numpy
    import transformers
    assert env["cpu"] and env["cores"] >= 1 and env["torch"] == torch.__version__
    assert (env["numpy"], env["transformers"]) == (numpy.__version__, transformers.__version__)
    assert f"torch {torch.__version__}, numpy {numpy.__version__}" in md
    assert doc[variants[1]]["R1"]["delta_vs_full"] == pytest.approx(-1.0)
    assert (out / "a.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| `full` |" in printed
    # every variant is exactly i points below full on every seed: no spread, so MDE 0
    assert doc["paired"]["variants"][variants[1]]["verdict"] == "helps"
    assert doc["mde_R1"] == 0.0 and "Minimal detectable effect (R1): **0.0 points**" in printed
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
    from pfcvr.report.ablation import diagnosis
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
    from pfcvr.report.cards import evaluation_card, mean_std

    assert mean_std({"mean": 12.345, "std": 0.0, "runs": [12.345]}) == "12.35 (1 seed)"
    assert mean_std({"mean": 12.0, "std": 1.5, "runs": [10.5, 13.5]}) == "12.00 ± 1.50"
    one = {m: {"mean": 10.0, "std": 0.0, "runs": [10.0]} for m in ("R1", "mAP")}
    card = evaluation_card("full", "all", {"best": one}, {}, {"seeds": [0]})
    assert "| best | 10.00 (1 seed) | 10.00 (1 seed) |" in card and "± 0.00" not in card



# ----------------------------------------------------------------------------------------------
# Issue 10: paired differences to `full` over seeds, their t interval, verdict and the MDE
# ----------------------------------------------------------------------------------------------

def _seeded(tmp_path, variant, seeds, r1_runs, map_runs=None):
    """A metrics file as the evaluate stage writes it: runs[i] belongs to seeds[i]."""
    map_runs = map_runs or r1_runs
    body = {m: _cell(r1_runs if m in ("R1", "R5", "R10") else map_runs) for m in METRICS}
    write_json(tmp_path / f"{variant}.json", {"best": body, "final": body, "seeds": seeds})


def test_paired_interval_matches_a_hand_computed_example():
    from scipy import stats

    from pfcvr.report.paired import paired_difference

    # differences variant - full per seed: [1, 2, 4]
    p = paired_difference([11.0, 22.0, 34.0], [0, 1, 2], [10.0, 20.0, 30.0], [0, 1, 2])
    # by hand: mean 7/3 = 2.3333; s² = ((4/3)² + (1/3)² + (5/3)²) / 2 = 42/9 / 2 = 7/3, s = 1.5275;
    # t_{0.975, 2} = 0.95 / sqrt(2 * 0.975 * 0.025) = 4.3027 (closed form of t with 2 df);
    # half width 4.3027 * 1.5275 / sqrt(3) = 3.7946 -> [-1.4612, 6.1279]
    assert p.differences == [1.0, 2.0, 4.0] and p.seeds == [0, 1, 2] and p.n == 3
    assert p.mean == pytest.approx(2.3333, abs=1e-4)
    assert p.sd == pytest.approx(1.5275, abs=1e-4)
    assert p.low == pytest.approx(-1.4612, abs=1e-3) and p.high == pytest.approx(6.1279, abs=1e-3)
    low, high = stats.t.interval(0.95, 2, loc=7 / 3, scale=math.sqrt(7 / 3) / math.sqrt(3))
    assert (p.low, p.high) == (pytest.approx(low), pytest.approx(high))


def test_minimal_detectable_effect_by_hand_and_exact():
    from scipy import stats

    from pfcvr.report.paired import (PairedDifference, design_mde, mde, mde_approx, pooled_sd,
                              power_at)

    # s_d = 2, n = 3 seeds: t_{0.975, 2} = 4.3027, t_{0.80, 2} = 0.6 / sqrt(2 * 0.8 * 0.2) = 1.0607
    # (closed form with 2 df); (4.3027 + 1.0607) * 2 / sqrt(3) = 6.1930
    assert stats.t.ppf(0.80, 2) == pytest.approx(1.0607, abs=1e-4)
    assert mde_approx(2.0, 3) == pytest.approx(6.1930, abs=1e-3)
    # the exact noncentral-t answer gives 80 % power, and at n = 3 is larger than the formula
    exact = mde(2.0, 3)
    assert power_at(exact, 2.0, 3) == pytest.approx(0.80, abs=1e-6)
    assert power_at(mde_approx(2.0, 3), 2.0, 3) < 0.80 < power_at(exact + 0.01, 2.0, 3)
    assert exact == pytest.approx(2.0 * 3.2640, abs=1e-3)
    assert mde(1.0, 30) == pytest.approx(mde_approx(1.0, 30), rel=1e-3)  # they converge
    assert mde(0.0, 3) == 0.0
    with pytest.raises(ValueError, match="at least 2 seeds"):
        mde(1.0, 1)

    # pooled over two variants: diffs [1, 2, 4] (s² = 7/3, 2 df) and [0, 2] (s² = 2, 1 df):
    # s² = (2 * 7/3 + 1 * 2) / 3 = 20/9, s = 1.4907 with 3 df; n = the smaller pairing, 2
    a = PairedDifference([0, 1, 2], [1.0, 2.0, 4.0], 7 / 3, math.sqrt(7 / 3), 0, 0, [], [])
    b = PairedDifference([0, 1], [0.0, 2.0], 1.0, math.sqrt(2.0), 0, 0, [], [])
    one = PairedDifference([0], [5.0], 5.0, None, None, None, [], [])
    assert pooled_sd([a, b, one]) == (pytest.approx(1.4907, abs=1e-4), 3)
    d = design_mde([a, b, one])
    assert d["n_seeds"] == 2 and d["n_variants"] == 2 and d["sd_df"] == 3
    assert d["value"] == pytest.approx(mde(math.sqrt(20 / 9), 2))
    assert d["approx"] == pytest.approx(mde_approx(math.sqrt(20 / 9), 2))
    assert design_mde([one])["value"] is None


def test_verdict_rules():
    from pfcvr.report.paired import HELPS, HURTS, NO_PAIR, SINGLE, UNCLEAR, paired_difference, verdict

    full = [50.0, 50.0, 50.0]

    def v(runs):
        return verdict(paired_difference(runs, [0, 1, 2][:len(runs)], full, [0, 1, 2]))

    # [-2, -2.1, -1.9]: mean -2, s 0.1, half 4.3027 * 0.1 / sqrt(3) = 0.248 -> [-2.25, -1.75]
    assert v([48.0, 47.9, 48.1]) == HELPS == "helps"
    assert v([52.0, 52.1, 51.9]) == HURTS == "hurts"
    assert v([51.0, 52.0, 54.0]) == UNCLEAR == "cannot be told apart"   # [-1.46, 6.13]
    assert v([49.0]) == SINGLE == "single seed: a difference, not a significance"
    assert verdict(paired_difference([49.0], [7], full, [0, 1, 2])) == NO_PAIR


def test_pairing_is_by_seed_and_a_missing_seed_is_dropped_and_said(tmp_path):
    # full ran seeds 0, 1, 2; no_part ran 2, 0, 3 (another order, seed 1 missing, seed 3 extra)
    _seeded(tmp_path, "full", [0, 1, 2], [50.0, 60.0, 70.0])
    _seeded(tmp_path, "no_part", [2, 0, 3], [68.0, 49.0, 10.0])
    table = collect(["full", "no_part"], tmp_path)
    p = paired_comparison(table)["no_part"]["R1"]
    assert p.seeds == [2, 0] and p.differences == [-2.0, -1.0]
    assert p.only_variant == [3] and p.only_reference == [1]
    md = ablation_markdown(table, compare(table), {"no_part": "without parts"}, ["- s"])
    assert ("Pairing: seed 3 of `no_part` dropped (no `full` run with it); seed 1 of `full` "
            "dropped (no `no_part` run with it).") in md
    js = ablation_json(table, compare(table))
    entry = js["paired"]["variants"]["no_part"]
    assert entry["only_variant"] == [3] and entry["only_reference"] == [1]
    assert entry["metrics"]["R1"]["seeds"] == [2, 0]
    # a seeds list that does not match the runs is an error naming the file
    write_json(tmp_path / "bad.json", {"best": {m: {"mean": 1, "std": 0, "runs": [1, 2]}
                                                for m in METRICS}, "seeds": [0]})
    with pytest.raises(ValueError, match="bad.json.*2 runs but 1 seeds"):
        collect(["bad"], tmp_path)


def test_paired_report_states_intervals_verdicts_and_mde(tmp_path):
    _seeded(tmp_path, "full", [0, 1, 2], [10.0, 20.0, 30.0])
    _seeded(tmp_path, "no_part", [0, 1, 2], [11.0, 22.0, 34.0])    # +1, +2, +4: can't tell
    _seeded(tmp_path, "no_mlm", [0, 1, 2], [8.0, 17.9, 28.1])      # -2, -2.1, -1.9: helps
    table = collect(["full", "no_part", "no_mlm"], tmp_path)
    deltas = compare(table)
    md = ablation_markdown(table, deltas, {"no_part": "without parts", "no_mlm": "no mlm"}, ["- s"])
    assert "| `no_part` | 0, 1, 2 | +2.3 [-1.5, +6.1] |" in md
    assert "| `no_mlm` | 0, 1, 2 | -2.0 [-2.2, -1.8] |" in md and "| helps |" in md
    assert ("- `no_part` (without parts): **cannot be told apart** — R1 +2.3 against `full`, "
            "95 % CI [-1.5, +6.1] paired over 3 seeds; the interval includes 0.") in md
    assert "- `no_mlm` (no mlm): **helps** — R1 -2.0 against `full`" in md
    assert "| -2.0 * |" in md and "| +2.3 |" in md          # `*`: paired interval excludes 0
    # MDE: s² pooled = (2 * 7/3 + 2 * 0.01) / 4 = 1.1717, s = 1.0824 over n = 3 seeds;
    # formula (4.3027 + 1.0607) * 1.0824 / sqrt(3) = 3.352
    js = ablation_json(table, deltas)
    assert js["mde"]["sd"] == pytest.approx(1.0824, abs=1e-4) and js["mde"]["n_seeds"] == 3
    assert js["mde"]["approx"] == pytest.approx(3.352, abs=1e-3)
    assert js["mde_R1"] == pytest.approx(3.2640 * 1.0824, abs=2e-3)   # exact: 3.2640 s_d at n=3
    assert f"Minimal detectable effect (R1): **{js['mde_R1']:.1f} points**" in md
    assert js["paired"]["variants"]["no_mlm"]["verdict"] == "helps"
    from pfcvr.report.ablation import diagnosis
    assert diagnosis(table, deltas, {}) == [
        "- Told apart from `full` in R1 (paired 95 % interval excludes 0): `no_mlm` (helps); "
        "every other variant cannot be told apart."]
    assert js["paired"]["variants"]["no_part"]["metrics"]["R1"]["ci_low"] == pytest.approx(
        -1.4612, abs=1e-3)
    assert js["no_part"]["R1"] == {"mean": pytest.approx(67 / 3), "std": pytest.approx(11.5036,
                                   abs=1e-4), "runs": [11.0, 22.0, 34.0], "single_seed": False,
                                   "delta_vs_full": pytest.approx(7 / 3), "within_noise": True}
    json.dumps(js)


def test_single_seed_has_no_interval_no_verdict_and_no_mde(tmp_path):
    _single(tmp_path, "full", 50.0)
    _single(tmp_path, "no_part", 49.0)
    table = collect(["full", "no_part"], tmp_path)
    js = ablation_json(table, compare(table))
    entry = js["paired"]["variants"]["no_part"]
    assert entry["verdict"] == "single seed: a difference, not a significance"
    assert entry["metrics"]["R1"] == {"n": 1, "seeds": [0], "differences": [-1.0], "mean": -1.0,
                                      "sd": None, "ci_low": None, "ci_high": None}
    assert js["mde_R1"] is None and js["mde"]["n_seeds"] is None
    md = ablation_markdown(table, compare(table), {"no_part": "without parts"}, ["- s"])
    assert "| `no_part` | 0 | -1.0 (1 seed) | -1.0 (1 seed) | single seed: a difference, not a " \
           "significance |" in md
    assert "Minimal detectable effect (R1): not defined: with a single seed" in md
    assert "**helps** —" not in md and "**hurts** —" not in md and "apart** —" not in md


def test_a_variant_named_like_a_report_key_is_refused(tmp_path):
    _write(tmp_path, "full", [1.0, 2.0], [1.0, 2.0])
    _write(tmp_path, "paired", [1.0, 2.0], [1.0, 2.0])
    table = collect(["full", "paired"], tmp_path)
    with pytest.raises(ValueError, match="clash"):
        ablation_json(table, compare(table))
