"""The work of the DVC stage ``evaluate@<variant>``: test-split evaluation of every trained seed
of one ablation variant (``stages/evaluate.py`` only does the I/O around :func:`plan_evaluation`).

:func:`plan_evaluation` checks everything before any work (device, every model folder, the
split); :meth:`EvaluationPlan.run` evaluates ``models/<variant>/seed<k>/{best,final}`` for every
k of ``report.seeds`` with :func:`pfcvr.engine.evaluate.evaluate_retrieval` and returns a
:class:`VariantEvaluation`, which gives the DVC metrics document
``{checkpoint: {metric: {"mean", "std", "runs"}}, split, seeds, n_queries, n_gallery,
part_fusion, part_fusion_note?, variant, data_source, models}``, the CMC curves, the model card
and the MLflow metrics. ``models`` says what the evaluated folders hold (read from them, not
from the params): backbone, image size, the epochs each seed trained and the training recipe,
so that the report states what was measured (:mod:`pfcvr.report.provenance`).
Checkpoints: ``best`` (selected on val Rank-1, the primary number), ``final`` (last epoch) and,
when ``eval.part_fusion > 0`` was applied, ``best_part_fusion`` / ``final_part_fusion``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pfcvr.engine.evaluate import FUSED_PREFIX, RetrievalResult, TopkItem, evaluate_retrieval
from pfcvr.metrics import summarize_runs
from pfcvr.runtime.device import resolve_device

CHECKPOINTS = ("best", "final")
FUSED_SUFFIX = "_part_fusion"      # checkpoint key of the fused ranking: best_part_fusion, ...
CURVE_LABELS = {"best": "best (val-selected)", "final": "final (last epoch)"}


def model_folders(models_dir: str | Path, variant: str, seeds: Sequence[int]
                  ) -> dict[tuple[int, str], Path]:
    """Every (seed, checkpoint) model folder of ``variant``.

    Raises FileNotFoundError listing every folder that is missing or lacks config.json /
    model.safetensors, in one message, and IncompleteOutputs while the train stage's output set
    is half-published (:func:`pfcvr.runtime.output_set.require_whole`).
    """
    from pfcvr.runtime.output_set import require_whole

    require_whole(Path(models_dir) / variant, f"train@{variant}")
    folders, missing = {}, []
    for seed in seeds:
        for kind in CHECKPOINTS:
            folder = Path(models_dir) / variant / f"seed{seed}" / kind
            if not all((folder / f).is_file() for f in ("config.json", "model.safetensors")):
                missing.append(str(folder))
            folders[(seed, kind)] = folder
    if missing:
        raise FileNotFoundError(f"evaluate@{variant}: {len(missing)} model folder(s) missing or "
                                f"incomplete: {', '.join(missing)} (run `dvc repro "
                                f"train@{variant}`; report.seeds = {list(seeds)})")
    return folders


@dataclass(frozen=True)
class EvaluatedModel:
    """One evaluated model folder: its seed, checkpoint kind (best | final), folder, the metadata
    training saved with it (``model.extra``) and its :class:`RetrievalResult`."""

    seed: int
    checkpoint: str
    folder: Path
    extra: dict
    result: RetrievalResult
    config: dict = field(default_factory=dict)   # the model params saved with it

    @property
    def label(self) -> str:
        return f"seed{self.seed}/{self.checkpoint}"


@dataclass
class VariantEvaluation:
    """Every seed and checkpoint of one variant, evaluated (seed-major order, best then final).

    ``part_fusion``: ``eval.part_fusion`` as asked; ``split``: the evaluated SplitData (for the
    top-k figure images).
    """

    variant: str
    seeds: list[int]
    part_fusion: float
    models: list[EvaluatedModel]
    split: Any = field(repr=False)

    def results(self, checkpoint: str) -> list[RetrievalResult]:
        return [m.result for m in self.models if m.checkpoint == checkpoint]

    @property
    def part_fusion_note(self) -> str | None:
        """Why the asked part fusion was skipped (the first model's reason), else None."""
        return next((m.result.part_fusion_note for m in self.models
                     if m.result.part_fusion_note), None)

    @property
    def fused(self) -> bool:
        return self.part_fusion > 0 and self.part_fusion_note is None

    def summary(self) -> dict[str, dict[str, dict]]:
        """``{checkpoint: {metric: {"mean", "std", "runs"}}}``, fused checkpoints last."""
        flat = {k: [r.scalars() for r in self.results(k)] for k in CHECKPOINTS}
        out = {k: summarize_runs(flat[k]) for k in CHECKPOINTS}
        if self.fused:
            out.update({k + FUSED_SUFFIX: summarize_runs(flat[k], prefix=FUSED_PREFIX)
                        for k in CHECKPOINTS})
        return out

    def curves(self) -> dict[str, list[list[float]]]:
        """``{checkpoint: [CMC percent per rank, one list per seed]}``, keys as :meth:`summary`."""
        out = {k: [r.cmc for r in self.results(k)] for k in CHECKPOINTS}
        if self.fused:
            out.update({k + FUSED_SUFFIX: [r.fused.cmc for r in self.results(k)]
                        for k in CHECKPOINTS})
        return out

    def info(self) -> dict[str, Any]:
        """The protocol keys of the metrics document, and what was evaluated
        (:meth:`provenance`)."""
        first = self.results("best")[0]
        out = {"split": "test", "seeds": list(self.seeds), "n_queries": int(first.n_queries),
               "n_gallery": int(first.n_gallery), "part_fusion": self.part_fusion,
               "single_seed": len(self.seeds) < 2}   # then "std" 0 is no noise estimate
        if self.part_fusion_note:
            out["part_fusion_note"] = self.part_fusion_note
        out.update(self.provenance())
        return out

    def provenance(self) -> dict[str, Any]:
        """``variant``; ``data_source`` (the prepared data's ``meta.json`` source); ``models``:
        ``backbone`` and ``image_size`` (from each folder's saved model params; a list when the
        seeds differ), ``epochs`` (per seed, the epoch of its final checkpoint), ``train``
        (the recipe saved by the train stage, or null for folders written before it was
        saved)."""
        finals = [m for m in self.models if m.checkpoint == "final"]

        def one(values: list) -> Any:   # the common value, else the list per seed
            return values[0] if all(v == values[0] for v in values) else values

        recipes = [m.extra.get("train") for m in finals]
        return {"variant": self.variant, "data_source": getattr(self.split, "source", ""),
                "models": {"backbone": one([m.config.get("backbone") for m in finals]),
                           "image_size": one([m.config.get("image_size") for m in finals]),
                           "epochs": [m.extra.get("epoch") for m in finals],
                           "train": one(recipes) if all(recipes) else None}}

    def metrics_document(self) -> dict[str, Any]:
        """reports/metrics/<variant>.json: :meth:`summary` then :meth:`info`."""
        return {**self.summary(), **self.info()}

    def mlflow_metrics(self) -> dict[str, float]:
        """``R1`` ... ``mINP``: the best checkpoint's mean over seeds, rounded to 0.01 (the
        headline numbers; every variant's run has them under the same names, so MLflow lines
        the variants up); ``<checkpoint>/seed<k>/<name>`` per model (RetrievalResult.scalars)
        and ``<checkpoint>/<metric>_{mean,std}`` per summary entry (unrounded)."""
        out = {m: round(s["mean"], 2) for m, s in self.summary()["best"].items()}
        out.update({f"{m.checkpoint}/seed{m.seed}/{k}": v
                    for m in self.models for k, v in m.result.scalars().items()})
        stats = ("mean", "std") if len(self.seeds) > 1 else ("mean",)   # one seed: no std
        out.update({f"{kind}/{m}_{stat}": s[stat] for kind, res in self.summary().items()
                    for m, s in res.items() for stat in stats})
        return out

    def model_card(self) -> str:
        """reports/eval/<variant>/model_card.md (:func:`pfcvr.report.cards.evaluation_card`)."""
        from pfcvr.report.cards import evaluation_card

        cards = {m.label: {"folder": str(m.folder), "extra": m.extra} for m in self.models}
        description = str(self.models[0].extra.get("description", ""))
        return evaluation_card(self.variant, description, self.summary(), cards, self.info())

    def published_model(self) -> EvaluatedModel:
        """The model a variant publishes (MLflow registry): the best checkpoint of the first
        seed of report.seeds, the one the top-k figure and the model card's first row show;
        chosen by seed order, not by a test result, so publishing selects nothing on test."""
        return next(m for m in self.models if m.checkpoint == "best")

    def topk(self) -> tuple[int, list[TopkItem]]:
        """The seed whose best checkpoint gave the top-k items, and the items."""
        m = next(m for m in self.models if m.checkpoint == "best")
        return m.seed, m.result.topk


@dataclass
class EvaluationPlan:
    """Everything checked, nothing run yet: the model folders per (seed, checkpoint), the split,
    the device and the ``eval`` settings. :meth:`run` does the work."""

    variant: str
    seeds: list[int]
    folders: dict[tuple[int, str], Path]
    split: Any
    device: torch.device
    eval: Any                       # the params' eval section

    def run(self, progress: bool = False, log: Callable[[str], None] | None = None
            ) -> VariantEvaluation:
        """Evaluate every folder; ``log`` gets one line per model (metrics and seconds)."""
        from pfcvr.data.dataset import ImageDataset
        from pfcvr.model.io import load_model

        ev, models, gallery = self.eval, [], None
        for seed in self.seeds:
            for kind in CHECKPOINTS:
                t0 = time.perf_counter()
                model = load_model(self.folders[(seed, kind)], self.device)
                if gallery is None:  # same preprocessing for every seed of a variant
                    gallery = ImageDataset(self.split, model.image_size,
                                           model.image_size // model.grid_size)
                want_topk = not models and kind == "best"     # the first seed's best model
                res = evaluate_retrieval(model, self.split, batch_size=ev.batch_size,
                                         chunk_size=ev.chunk_size, device=self.device,
                                         part_fusion=ev.part_fusion, progress=progress,
                                         topk_queries=ev.topk_queries if want_topk else 0,
                                         gallery_dataset=gallery)
                models.append(EvaluatedModel(seed, kind, self.folders[(seed, kind)],
                                             dict(getattr(model, "extra", {}) or {}), res,
                                             dict(getattr(model, "config", {}) or {})))
                if log is not None:
                    scores = "  ".join(f"{m} {v:.2f}" for m, v in res.metrics().items())
                    log(f"evaluate@{self.variant} seed {seed} {kind}: {scores}  "
                        f"({time.perf_counter() - t0:.1f} s)")
                del model
        return VariantEvaluation(self.variant, list(self.seeds), ev.part_fusion, models,
                                 self.split)


def plan_evaluation(params, variant: str, models_dir: str | Path, prepared: str | Path,
                    parts: str | Path, split: str = "test") -> EvaluationPlan:
    """Check the device (``train.device``), every model folder of ``report.seeds`` and read
    ``split`` from ``prepared`` + ``parts``, before any model is loaded.

    Raises DeviceError, FileNotFoundError (missing model folders, all named), ValueError (split).
    """
    from pfcvr.data.dataset import load_split

    seeds = list(params.report.seeds)
    device = resolve_device(params.train.device, key="train.device")
    folders = model_folders(models_dir, variant, seeds)
    return EvaluationPlan(variant, seeds, folders, load_split(prepared, parts, split), device,
                          params.eval)


def publish(evaluation: VariantEvaluation, metrics: Path, cmc: Path, card: Path,
            cmc_figure: Path, topk_figure: Path) -> None:
    """Write the variant's outputs as one set (:class:`pfcvr.runtime.output_set.OutputSet`,
    primary ``metrics``): the CMC table, the model card, the two figures (optional: a figure
    that cannot be drawn is a warning and a placeholder) and, last, the metrics JSON that the
    report reads. A run killed before the renames leaves the previous set whole; one killed
    during them is finished by the next run, and readers refuse the set meanwhile
    (:func:`pfcvr.runtime.output_set.require_whole`)."""
    import json

    from pfcvr.report.cards import cmc_table
    from pfcvr.runtime.output_set import OutputSet

    with OutputSet(metrics) as outs:
        outs.file(cmc).write_text(cmc_table(evaluation.curves()))
        outs.file(card).write_text(evaluation.model_card())
        draw_cmc, draw_topk = figure_drawers(evaluation)
        outs.figure(cmc_figure, draw_cmc, f"evaluate@{evaluation.variant} CMC figure")
        outs.figure(topk_figure, draw_topk, f"evaluate@{evaluation.variant} top-k figure")
        outs.file(metrics).write_text(json.dumps(evaluation.metrics_document(), indent=2) + "\n")


def figure_drawers(evaluation: VariantEvaluation):
    """Two callables ``draw(path)``: reports/figures/cmc_<variant>.png (mean CMC per checkpoint,
    band = min..max over seeds) and topk_<variant>.png (the first seed's best checkpoint)."""
    from pfcvr.report.explain import topk_figure_items
    from pfcvr.report.figures.evaluation import cmc_figure, topk_figure

    v, n = evaluation.variant, len(evaluation.seeds)
    curves = {CURVE_LABELS[k.split("_")[0]] + (" + part fusion" if FUSED_SUFFIX in k else ""): c
              for k, c in evaluation.curves().items()}

    def draw_cmc(path: Path) -> None:
        cmc_figure(curves, path, title=f"CMC on the test split, variant {v} "
                                       f"(mean over {n} seed(s); band = min..max)")

    def draw_topk(path: Path) -> None:
        seed, items = evaluation.topk()
        topk_figure(topk_figure_items(items, evaluation.split), path,
                    title=f"Top-{len(items[0].gallery) if items else 5} test retrieval, "
                          f"variant {v}, seed {seed} best checkpoint: green frame = right "
                          "vehicle, red = wrong vehicle, blue = the image the caption describes")

    return draw_cmc, draw_topk

