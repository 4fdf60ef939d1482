"""DVC stage `evaluate@<variant>`: test-split retrieval of every trained seed, best and final.

    python -m stages.evaluate --variant full

Reads models/<variant>/seed<k>/{best,final}/ for every k of report.seeds, data/prepared and
data/parts/parts.json; writes reports/metrics/<variant>.json (DVC metrics:
``{checkpoint: {metric: {"mean", "std", "runs"}}}`` for checkpoint best, final, and with
eval.part_fusion > 0 best_part_fusion / final_part_fusion), reports/eval/<variant>/cmc.tsv (DVC
plot), reports/eval/<variant>/model_card.md, reports/figures/cmc_<variant>.png and
topk_<variant>.png; logs all of it to the nested MLflow run `evaluate@<variant>`.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from pfcvr import viz
from pfcvr.config import load_params
from pfcvr.data.dataset import ImageDataset, load_split
from pfcvr.engine.evaluate import (FUSED_PREFIX, applicable_fusion, cmc_table,
                                   evaluate_retrieval, model_card, resolve_device, summarize_runs,
                                   topk_figure_items)
from pfcvr.io import write_json, write_text
from pfcvr.model.io import load_model
from pfcvr.tracking import stage_run

CHECKPOINTS = ("best", "final")
FUSED = "_part_fusion"


def model_folders(models_dir: Path, variant: str, seeds: list[int]) -> dict[tuple[int, str], Path]:
    """Every (seed, checkpoint) folder; one error listing all that are missing or incomplete."""
    folders, missing = {}, []
    for seed in seeds:
        for kind in CHECKPOINTS:
            folder = models_dir / variant / f"seed{seed}" / kind
            if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
                missing.append(str(folder))
            folders[(seed, kind)] = folder
    if missing:
        raise FileNotFoundError(f"evaluate@{variant}: {len(missing)} model folder(s) missing or "
                                f"incomplete: {', '.join(missing)} (run `dvc repro train@{variant}`; "
                                f"report.seeds = {seeds})")
    return folders


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True, help="an ablations.<variant> of params.yaml")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--models", default="models")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--parts", default="data/parts/parts.json")
    ap.add_argument("--reports", default="reports")
    args = ap.parse_args(argv)

    variant = args.variant
    params = load_params(args.params, variant=variant)
    ev, seeds = params.eval, list(params.report.seeds)
    batch_size, chunk_size, fusion, n_show = ev.batch_size, ev.chunk_size, ev.part_fusion, ev.topk_queries
    device = resolve_device(params.train.device)
    folders = model_folders(Path(args.models), variant, seeds)
    split = load_split(args.prepared, args.parts, "test")
    reports = Path(args.reports)
    out_json = reports / "metrics" / f"{variant}.json"
    out_dir = reports / "eval" / variant
    fig_cmc = reports / "figures" / f"cmc_{variant}.png"
    fig_topk = reports / "figures" / f"topk_{variant}.png"
    progress = sys.stderr.isatty()

    with stage_run("evaluate", params, variant=variant, tags={"split": "test"}) as run:
        results: dict[str, list[dict]] = {k: [] for k in CHECKPOINTS}
        cards, gallery, topk, fused_note = {}, None, None, None
        for seed in seeds:
            for kind in CHECKPOINTS:
                t0 = time.perf_counter()
                model = load_model(folders[(seed, kind)], device)
                if gallery is None:  # same preprocessing for every seed of a variant
                    gallery = ImageDataset(split, model.image_size,
                                           model.image_size // model.grid_size)
                weight, note = applicable_fusion(model, fusion)
                if note and not fused_note:
                    fused_note = note
                    warnings.warn(f"evaluate@{variant}: {note}")
                want_topk = topk is None and kind == "best"
                res = evaluate_retrieval(model, split, batch_size=batch_size,
                                         chunk_size=chunk_size, device=device, part_fusion=weight,
                                         progress=progress, details=True, gallery_dataset=gallery,
                                         topk_queries=n_show if want_topk else 0)
                if want_topk:
                    topk = (seed, res["topk"])
                results[kind].append(res)
                cards[f"seed{seed}/{kind}"] = {"folder": str(folders[(seed, kind)]),
                                               "extra": getattr(model, "extra", {})}
                run.log_metrics({f"{kind}/seed{seed}/{m}": v for m, v in res.items()
                                 if isinstance(v, float)})
                print(f"evaluate@{variant} seed {seed} {kind}: R1 {res['R1']:.2f}  R5 "
                      f"{res['R5']:.2f}  R10 {res['R10']:.2f}  mAP {res['mAP']:.2f}  mINP "
                      f"{res['mINP']:.2f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
                del model

        summary = {kind: summarize_runs(results[kind]) for kind in CHECKPOINTS}
        curves = {kind: [r["cmc"] for r in results[kind]] for kind in CHECKPOINTS}
        if fusion > 0 and fused_note is None:
            for kind in CHECKPOINTS:
                summary[kind + FUSED] = summarize_runs(results[kind], prefix=FUSED_PREFIX)
                curves[kind + FUSED] = [r[FUSED_PREFIX + "cmc"] for r in results[kind]]
        first = results["best"][0]
        info = {"split": "test", "seeds": seeds, "n_queries": int(first["n_queries"]),
                "n_gallery": int(first["n_gallery"]), "part_fusion": fusion}
        if fused_note:
            info["part_fusion_note"] = fused_note
        write_json(out_json, {**summary, **info})
        write_text(out_dir / "cmc.tsv", cmc_table(curves))
        description = str(next(iter(cards.values()))["extra"].get("description", ""))
        card = model_card(variant, description, summary, cards, info)
        write_text(out_dir / "model_card.md", card)
        labels = {"best": "best (val-selected)", "final": "final (last epoch)"}
        viz.cmc_figure({labels[k.split("_")[0]] + (" + part fusion" if FUSED in k else ""): v
                        for k, v in curves.items()}, fig_cmc,
                       title=f"CMC on the test split, variant {variant} "
                             f"(mean over {len(seeds)} seed(s); band = min..max)")
        seed, items = topk
        viz.topk_figure(topk_figure_items(items, split), fig_topk,
                        title=f"Top-{len(items[0]['gallery']) if items else 5} test retrieval, "
                              f"variant {variant}, seed {seed} best checkpoint: green frame = right "
                              "vehicle, red = wrong vehicle, blue = the image the caption describes")

        run.log_metrics({f"{kind}/{m}_{stat}": s[stat] for kind, res in summary.items()
                         for m, s in res.items() for stat in ("mean", "std")})
        for path in (out_json, out_dir / "cmc.tsv", out_dir / "model_card.md", fig_cmc, fig_topk):
            run.log_artifact(path)
        for label, m in cards.items():
            run.log_artifact(Path(m["folder"]) / "config.json", f"models/{label}")
        run.set_tags({"mlflow.note.content": card})
    b = summary["best"]
    print(f"evaluate@{variant}: best R1 {b['R1']['mean']:.2f} ± {b['R1']['std']:.2f}, mAP "
          f"{b['mAP']['mean']:.2f} ± {b['mAP']['std']:.2f} over seeds {seeds} -> {out_json}")


if __name__ == "__main__":
    main()
