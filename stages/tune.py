"""DVC stage `tune`: an Optuna study over `tune.space` on the validation split.

Writes reports/tune/best_params.yaml, reports/tune/summary.json (DVC metrics),
reports/tune/best.md, reports/figures/tune_history.png and reports/figures/tune_importance.png,
and prints the `dvc exp run -S ...` line that applies the best params. Each trial is a nested MLflow
run under the `tune` run. Several workers may run this at once against one OPTUNA_STORAGE.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from pfcvr import viz
from pfcvr.config import load_params
from pfcvr.data.dataset import load_split
from pfcvr.engine.train import train_model
from pfcvr.io import write_json, write_text
from pfcvr.tracking import repo_root, stage_run
from pfcvr.tuning import importances, redact, run_study, storage_url, summarize

PREPARED, PARTS = Path("data/prepared"), Path("data/parts/parts.json")
OUT = Path("reports/tune")
FIG_HISTORY = Path("reports/figures/tune_history.png")
FIG_IMPORTANCE = Path("reports/figures/tune_importance.png")


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = load_params()
    root = repo_root()
    train_split = load_split(PREPARED, PARTS, "train")
    val_split = load_split(PREPARED, PARTS, "val")

    def train_fn(trial_params, out_dir, on_epoch, trial_run):
        return train_model(trial_params, train_split, val_split, out_dir, seed=trial_params.seed,
                           run=None, progress=False, on_epoch=on_epoch)

    with stage_run("tune", params) as run:
        study = run_study(params, "params.yaml", root, train_fn=train_fn, run=run)
        summary = summarize(study)
        # Relative to the repository, so the committed summary holds no machine-specific path.
        summary["storage"] = redact(storage_url(root)).replace(f"{root}/", "<repo>/")
        imp = importances(study)
        summary["importance"] = imp
        trials = [{"number": t.number, "value": t.value, "state": t.state.name,
                   "params": t.params} for t in study.trials]
        write_json(OUT / "summary.json", summary)
        write_text(OUT / "best_params.yaml", yaml.safe_dump(summary.get("best_params", {}),
                                                            sort_keys=True))
        command = summary.get("command", "(no trial completed)")
        write_text(OUT / "best.md", best_markdown(summary, command))
        viz.tune_history_figure(trials, FIG_HISTORY)
        viz.importance_figure(imp, FIG_IMPORTANCE)
        run.log_metrics({k: summary[k] for k in ("best_value", "n_complete", "n_pruned", "n_failed")
                         if k in summary})
        for path in (OUT / "summary.json", OUT / "best_params.yaml", OUT / "best.md",
                     FIG_HISTORY, FIG_IMPORTANCE):
            run.log_artifact(path)
    print(f"best val R1 {summary.get('best_value', float('nan')):.2f} "
          f"({summary['n_complete']} complete, {summary['n_pruned']} pruned, "
          f"{summary['n_failed']} failed)\napply it with:\n  {command}")


def best_markdown(summary: dict, command: str) -> str:
    lines = ["# Tuning result", "",
             f"Study `{summary['study']}`: {summary['n_trials']} trials "
             f"({summary['n_complete']} complete, {summary['n_pruned']} pruned, "
             f"{summary['n_failed']} failed). Objective: {summary['objective']} on the val split.", ""]
    if "best_value" in summary:
        lines += [f"Best val R1: **{summary['best_value']:.2f}** (trial {summary['best_trial']})", "",
                  "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                  for k, v in summary["best_params"].items()]
        lines += ["", "Apply it:", "", "```", command, "```", ""]
    if summary.get("importance"):
        lines += ["Parameter importance (fANOVA): " + ", ".join(
            f"`{k}` {v:.2f}" for k, v in summary["importance"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
