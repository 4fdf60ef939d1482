"""DVC stage `train@<variant>`: train one ablation variant for every seed in `report.seeds`.

    python -m stages.train --variant full
    torchrun --nproc_per_node 4 -m stages.train --variant full        # DDP, one node

Reads data/prepared/ and data/parts/parts.json (train and val splits; never test). Writes
models/<variant>/seed<k>/{best,final}/ (model folders for `pfcvr.load`) and result.json,
reports/train/<variant>/history.tsv (one row per seed and epoch), reports/train/<variant>/
summary.json, reports/figures/train_<variant>.png and the nested MLflow run `train@<variant>`.

Resume: each seed trains in .cache/train/<variant>/seed<k>/ (checkpoint every epoch). A killed
stage started again resumes the seed it was on and skips the finished ones; models/<variant> is
assembled atomically once every seed is done, and the cache is then removed. A checkpoint written
for other params, data or world size is not resumed.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from pfcvr import viz
from pfcvr.config import flatten, load_params, read_raw
from pfcvr.data.dataset import load_split
from pfcvr.engine import distributed as D
from pfcvr.engine.train import TERMS, train_model
from pfcvr.io import atomic_dir, read_json, write_json, write_text

PREPARED = Path("data/prepared")
PARTS = Path("data/parts/parts.json")
MODELS = Path("models")
REPORTS = Path("reports/train")
FIGURES = Path("reports/figures")
CACHE = Path(".cache/train")
COLUMNS = ("seed", "epoch", "step", "loss", *TERMS, "lr", "val_R1", "val_mAP", "samples_per_s",
           "seconds")


def fingerprint(params, seed: int, world_size: int) -> str:
    """Hash of what decides a training run: merged params (minus reporting), seed, data files."""
    cosmetic = ("ablations.", "report.", "tune.", "tracking.", "train.log_every",
                "eval.topk_queries", "eval.part_fusion")
    flat = {k: v for k, v in flatten(params).items() if not k.startswith(cosmetic)}
    h = hashlib.sha256(json.dumps([flat, seed, world_size], sort_keys=True, default=str).encode())
    for path in (PREPARED / "manifest.json", PREPARED / "meta.json", PARTS):
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def history_tsv(rows: list[dict]) -> str:
    def fmt(v):
        if v is None:
            return ""
        return f"{v:.6g}" if isinstance(v, float) else str(v)
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(fmt(r.get(c)) for c in COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def _copy_tree(src: Path, dst: Path) -> None:
    """Hard links where possible (same filesystem), else copies."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link)


def _mean(xs: list[float]) -> float:
    return float(statistics.fmean(xs)) if xs else float("nan")


def summarize(variant: str, results: list[dict]) -> dict:
    """Val metrics per seed and over seeds, and times, from the seeds' result dicts."""
    best = [r["best"] for r in results if r.get("best")]
    final = [r["final"] for r in results]
    out = {"variant": variant, "seeds": [r["seed"] for r in results],
           "best_val_R1_mean": _mean([b["R1"] for b in best]),
           "best_val_mAP_mean": _mean([b["mAP"] for b in best]),
           "final_val_R1_mean": _mean([f["val_R1"] for f in final if f.get("val_R1") is not None]),
           "final_loss_mean": _mean([f["loss"] for f in final]),
           "train_seconds_total": float(sum(r["seconds"] for r in results)),
           "samples_per_s_mean": _mean([row["samples_per_s"] for r in results
                                        for row in r["history"]])}
    out["train_seconds_per_seed"] = out["train_seconds_total"] / max(len(results), 1)
    for r in results:
        if r.get("best"):
            out[f"seed{r['seed']}/best_val_R1"] = r["best"]["R1"]
            out[f"seed{r['seed']}/best_epoch"] = r["best"]["epoch"]
    return out


def model_card(variant: str, description: str, params, base, summary: dict,
               results: list[dict]) -> str:
    """A short markdown card: what was trained, how it differs from base, val metrics, time."""
    cur, ref = flatten(params), flatten(base)
    diff = [(k, ref.get(k), v) for k, v in cur.items()
            if k.startswith(("model.", "train.")) and ref.get(k) != v]
    t = params.train
    lines = [f"# Model card: `{variant}`", "", description, "",
             f"- backbone: `{params.model.backbone}`, input {params.model.image_size} px",
             f"- {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g}, precision {t.precision}, "
             f"seeds {summary['seeds']}",
             f"- loss weights: " + ", ".join(f"{k} {getattr(t.weights, k):g}" for k in TERMS),
             f"- selection: best val Rank-1 (the test split is not read by training)", "",
             "## Params that differ from the base configuration", ""]
    lines += ([f"| parameter | base | `{variant}` |", "|---|---|---|"] +
              [f"| `{k}` | {a} | {b} |" for k, a, b in diff]) if diff else ["(none)"]
    lines += ["", "## Validation metrics", "", "| seed | best epoch | best val R1 | best val mAP |"
              " final val R1 | train time (s) |", "|---|---|---|---|---|---|"]
    for r in results:
        b, f = r.get("best") or {}, r["final"]
        lines.append(f"| {r['seed']} | {b.get('epoch', '-')} | {b.get('R1', float('nan')):.2f} | "
                     f"{b.get('mAP', float('nan')):.2f} | {f.get('val_R1') or float('nan'):.2f} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", f"Mean best val R1 {summary['best_val_R1_mean']:.2f}, mean best val mAP "
              f"{summary['best_val_mAP_mean']:.2f}; total training time "
              f"{summary['train_seconds_total']:.1f} s.", ""]
    return "\n".join(lines)


def _finished(work: Path, fp: str) -> dict | None:
    """The result of a seed that already finished with this fingerprint, else None."""
    res = work / "result.json"
    if not (res.is_file() and (work / "final").is_dir() and (work / "best").is_dir()):
        return None
    result = read_json(res)
    return result if result.get("fingerprint") == fp else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True, help="a key of the ablations section")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    variant = args.variant

    params = load_params(args.params, variant=variant)
    base = load_params(args.params)
    # Read from the raw file so that only ablations.<variant> (listed in dvc.yaml) is consumed.
    description = str(read_raw(args.params)["ablations"][variant].get("description", variant))
    info = D.env_info()
    device = D.resolve_device(params.train.device, info.local_rank)   # fails before any work
    D.init(device, info)
    seeds = list(params.report.seeds)
    if not seeds:
        raise ValueError("report.seeds is empty: nothing to train")
    tracker = contextlib.nullcontext(None)
    if info.is_main:
        from pfcvr.tracking import stage_run

        tracker = stage_run("train", params, variant=variant,
                            tags={"seeds": ",".join(map(str, seeds)), "world_size": info.world_size})
    train_split = load_split(PREPARED, PARTS, "train")
    val_split = load_split(PREPARED, PARTS, "val")
    history_path = REPORTS / variant / "history.tsv"
    figure_path = FIGURES / f"train_{variant}.png"
    cache = CACHE / variant
    t0 = time.perf_counter()
    results: list[dict] = []
    with tracker as run:
        if run is not None:
            run.set_tags({"description": description})
        tokenizer = None
        for seed in seeds:
            work = cache / f"seed{seed}"
            fp = fingerprint(params, seed, info.world_size)
            done = D.broadcast_object(_finished(work, fp) if info.is_main else None)
            if done is not None:
                print(f"[train@{variant}] seed {seed}: already finished, skipped", flush=True)
                if run is not None:
                    for row in done["history"]:
                        run.log_metrics({f"seed{seed}/{k}": v for k, v in row.items()
                                         if k not in ("seed", "epoch") and v is not None},
                                        step=row["epoch"])
                results.append(done)
                continue
            if tokenizer is None:
                from pfcvr.model import build_tokenizer

                tokenizer = build_tokenizer(params.model, train_split.captions()[0])
            live: list[dict] = []

            def on_epoch(row: dict) -> None:
                live.append(row)
                done_rows = [r for res in results for r in res["history"]]
                write_text(history_path, history_tsv(done_rows + live))

            result = train_model(params, train_split, val_split, work, seed, run=run,
                                 tokenizer=tokenizer, fingerprint=fp, on_epoch=on_epoch,
                                 extra={"variant": variant, "description": description})
            rd = result.to_dict()
            rd["fingerprint"] = fp
            if info.is_main:
                write_json(work / "result.json", rd)
            results.append(rd)
        if not info.is_main:
            D.barrier()
            return {}
        rows = [r for res in results for r in res["history"]]
        write_text(history_path, history_tsv(rows))
        viz.train_history_figure(rows, figure_path, title=f"train@{variant}: {description}")
        summary = summarize(variant, results)
        summary["stage_seconds"] = time.perf_counter() - t0
        write_json(REPORTS / variant / "summary.json", summary)
        card = model_card(variant, description, params, base, summary, results)
        with atomic_dir(MODELS / variant) as tmp:
            for res in results:
                src, dst = cache / f"seed{res['seed']}", tmp / f"seed{res['seed']}"
                dst.mkdir(parents=True)
                for which in ("best", "final"):
                    _copy_tree(src / which, dst / which)
                slim = {k: v for k, v in res.items() if k not in ("history", "out_dir")}
                write_json(dst / "result.json", slim)
            write_text(tmp / "MODEL_CARD.md", card)
        if run is not None:
            run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            run.log_artifact(figure_path)
            run.log_artifact(history_path)
            run.log_text(card, "model_card.md")
    D.barrier()
    shutil.rmtree(cache, ignore_errors=True)
    print(f"[train@{variant}] seeds {seeds}: mean best val R1 {summary['best_val_R1_mean']:.2f} "
          f"(final {summary['final_val_R1_mean']:.2f}); {summary['train_seconds_total']:.1f} s "
          f"of training", flush=True)
    return summary


if __name__ == "__main__":
    try:
        main()
    finally:
        D.destroy()
