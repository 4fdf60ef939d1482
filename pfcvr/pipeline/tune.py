"""The work of the DVC stage ``tune``: an Optuna study over ``tune.space`` with real training on
the train/val splits, then its reports (``stages/tune.py`` only does the I/O around :func:`tune`).

The study itself (sampler, pruner, storage, resume, failure policy) is :mod:`pfcvr.tuning.study`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from pfcvr.config import Params
from pfcvr.engine import fingerprint as F
from pfcvr.tuning.study import (best_markdown, importances, redact, run_study, storage_url,
                                summarize)


def tune(params: Params, params_path: str | Path, root: Path, *, prepared: Path, parts: Path,
         out: Path, history_figure: Path, importance_figure: Path, run=None) -> dict[str, Any]:
    """Run (or resume) the study with real training on the train/val splits; write its reports.

    Each trial trains with ``train_model`` (seed ``params.seed``, ``tune.epochs`` epochs, no
    progress output) and is pruned on its per-epoch val Rank-1. Writes ``out/summary.json``
    (:func:`summarize` + ``storage`` (relative to the repo, password hidden), ``importance``,
    ``importance_trials``, ``seed`` and ``seeds_per_trial``), ``out/best_params.yaml``,
    ``out/best.md`` and the two figures, as one set (the summary last; a figure that cannot be
    drawn is a warning and a placeholder). Returns the summary.

    Raises ``pfcvr.runtime.storage.WriteError`` before any trial when an output folder (or, with the
    default storage, the repository root that holds optuna.db) cannot be written, and
    :class:`TuneError` as :func:`run_study`; then no report is written.
    """
    import yaml

    from pfcvr.data.dataset import load_split
    from pfcvr.engine.train import train_model
    from pfcvr.report.figures import tuning as figures
    from pfcvr.runtime.output_set import OutputSet
    from pfcvr.runtime.storage import check_writable

    check_writable([out, history_figure.parent, importance_figure.parent, root / ".cache" / "tune",
                    *([] if os.environ.get("OPTUNA_STORAGE") else [root])])
    train_split = load_split(prepared, parts, "train")
    val_split = load_split(prepared, parts, "val")
    inputs = F.inputs_key(params, prepared, parts, (train_split, val_split))

    def train_fn(tp: Params, out_dir: Path, on_epoch: Callable[[dict], None]):
        return train_model(tp, train_split, val_split, out_dir, seed=tp.seed, run=None,
                           progress=False, on_epoch=on_epoch)

    study = run_study(params, params_path, root, train_fn=train_fn, run=run, inputs=inputs)
    summary = summarize(study)
    # Relative to the repository, so the committed summary holds no machine-specific path.
    summary["storage"] = redact(storage_url(root)).replace(f"{root}/", "<repo>/")
    summary["importance"] = importances(study)
    summary["importance_trials"] = summary["n_complete"]
    summary.update(seed=params.seed, seeds_per_trial=1)
    trials = [{"number": t.number, "value": t.value, "state": t.state.name, "params": t.params}
              for t in study.trials]
    with OutputSet(out / "summary.json") as outs:     # one set; the DVC metrics file last
        outs.file(out / "best_params.yaml").write_text(
            yaml.safe_dump(summary.get("best_params", {}), sort_keys=True))
        outs.file(out / "best.md").write_text(best_markdown(summary))
        outs.figure(history_figure, lambda path: figures.tune_history_figure(trials, path),
                    "tuning history figure")
        outs.figure(importance_figure, lambda path: figures.importance_figure(
            summary["importance"], path), "parameter importance figure")
        outs.file(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
