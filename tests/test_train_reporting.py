"""The training reports of pfcvr.report.cards: history TSV, per-variant summary, model card."""
import math

from pfcvr.config import load_params
from pfcvr.report.cards import HISTORY_COLUMNS, history_tsv, train_model_card, train_summary


def _result(seed, r1s, seconds=2.0):
    history = [{"seed": seed, "epoch": e, "step": 10 * e, "loss": 1.0 / e, "sdm": 0.5, "id": 0.25,
                "mlm": None, "mim": None, "part": 0.125, "lr": 1e-4, "val_R1": r1,
                "val_mAP": r1 / 2, "samples_per_s": 100.0 * e, "seconds": seconds / len(r1s)}
               for e, r1 in enumerate(r1s, 1)]
    e_best = max(range(len(r1s)), key=lambda i: r1s[i])
    return {"seed": seed, "epochs": len(r1s), "history": history, "final": history[-1],
            "best": {"epoch": e_best + 1, "R1": r1s[e_best], "mAP": r1s[e_best] / 2},
            "seconds": seconds}


def test_history_tsv_columns_and_cells():
    assert HISTORY_COLUMNS == ("seed", "epoch", "step", "loss", "sdm", "id", "mlm", "mim", "part",
                               "lr", "val_R1", "val_mAP", "samples_per_s", "seconds")
    text = history_tsv([{"seed": 3, "epoch": 1, "step": 7, "loss": 1 / 3, "lr": 2e-4,
                         "val_R1": None}])
    assert text == ("\t".join(HISTORY_COLUMNS) + "\n"
                    "3\t1\t7\t0.333333\t\t\t\t\t\t0.0002\t\t\t\t\n")


def test_train_summary_means_over_seeds():
    s = train_summary("full", [_result(0, [10.0, 30.0, 20.0]), _result(1, [40.0, 50.0], 4.0)])
    assert s["variant"] == "full" and s["seeds"] == [0, 1]
    assert s["best_val_R1_mean"] == 40.0 and s["best_val_mAP_mean"] == 20.0
    assert s["final_val_R1_mean"] == 35.0                   # (20 + 50) / 2
    assert s["final_loss_mean"] == (1 / 3 + 1 / 2) / 2
    assert s["train_seconds_total"] == 6.0 and s["train_seconds_per_seed"] == 3.0
    assert s["samples_per_s_mean"] == (100 + 200 + 300 + 100 + 200) / 5
    assert s["seed0/best_val_R1"] == 30.0 and s["seed0/best_epoch"] == 2
    assert s["seed1/best_epoch"] == 2


def test_train_summary_without_val_split_is_nan():
    r = _result(0, [10.0])
    r["best"], r["final"]["val_R1"] = None, None
    s = train_summary("x", [r])
    assert math.isnan(s["best_val_R1_mean"]) and math.isnan(s["final_val_R1_mean"])
    assert "seed0/best_val_R1" not in s


def test_model_card_lists_differences_and_seeds():
    base = load_params("params.yaml")
    params = load_params("params.yaml", overrides={"train.weights.mim": 0.0})
    results = [_result(0, [10.0, 30.0])]
    card = train_model_card("no_mim", "Without MIM.", params, base,
                            train_summary("no_mim", results), results)
    lines = card.splitlines()
    assert lines[0] == "# Model card: `no_mim`" and lines[2] == "Without MIM."
    assert "| `train.weights.mim` | 0.5 | 0.0 |" in lines
    assert "| 0 | 2 | 30.00 | 15.00 | 30.00 | 2.0 |" in lines
    assert lines[-1] == ("Mean best val R1 30.00, mean best val mAP 15.00; total training time "
                         "2.0 s.")
    same = train_model_card("full", "d", base, base, train_summary("full", results), results)
    assert "(none)" in same.splitlines()
