"""What the ablation report's inputs hold, stated from them, and where they disagree with the params.

The report states what its numbers were measured on: the data, the backbone and input size, the
epochs and training recipe, the seeds of each variant, the splits, the pretraining. Each fact
comes from a file the report read, never from ``params.yaml``:

- the evaluate stage's ``reports/metrics/<variant>.json``: ``seeds``, ``variant``,
  ``data_source`` and ``models`` (backbone, image size, epochs per seed, recipe), which it read
  from the model folders it evaluated (:meth:`pfcvr.pipeline.evaluate.VariantEvaluation.provenance`);
- ``reports/metrics/zero_shot.json``: the backbone of the zero-shot row;
- the prepare stage's ``reports/data/stats.json``: the splits and the attribute oracle;
- the pretrain stage's ``reports/pretrain/stats.json``: the pretraining corpus and run.

:func:`disagreements` compares those facts with the params the report was asked for: a metrics
file that holds other seeds than ``report.seeds`` (e.g. an earlier run with one seed), another
backbone, other epochs, ... Each disagreement is one warning line; the report stage prints it and
puts it at the top of ``reports/ablation.md`` (the numbers are those of the inputs, as stated).
A metrics file that names another variant than its file name is an error: its numbers would be
reported under the wrong name.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfcvr.config import get_dotted
from pfcvr.paths import ZERO_SHOT
from pfcvr.runtime.atomic import read_json


@dataclass
class Measured:
    """Facts of one variant's metrics file (None: the file does not record it, e.g. written by
    an older evaluate stage)."""

    path: Path
    seeds: list[int]
    data_source: str | None = None
    backbone: Any = None
    image_size: Any = None
    epochs: list[Any] | None = None
    train: dict | None = None


@dataclass
class Inputs:
    """Every fact the report states: ``variants`` (in report order, a :class:`Measured` each),
    ``zero_shot_backbone`` (None without a zero-shot file), ``data`` (the prepare stage's stats,
    may be empty) and ``pretrain`` (the pretrain stage's stats, may be empty)."""

    variants: dict[str, Measured]
    zero_shot_backbone: str | None = None
    zero_shot_path: Path | None = None
    data: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)

    def common(self, name: str) -> Any:
        """The value of fact ``name`` shared by every variant, or None when they differ or
        none records it."""
        values = [getattr(m, name) for m in self.variants.values()]
        known = [v for v in values if v is not None]
        return known[0] if known and len(known) == len(values) and \
            all(v == known[0] for v in known) else None

    @property
    def backbone(self) -> Any:
        return self.common("backbone")


def read_inputs(variants: list[str], metrics_dir: str | Path, data_stats: str | Path,
                pretrain_stats: str | Path | None = None) -> Inputs:
    """Read the facts of the report's inputs (see the module docstring); a missing stats file
    reads as empty. Raises ValueError naming a metrics file whose ``variant`` is not its name."""
    measured = {}
    for v in variants:
        path = Path(metrics_dir) / f"{v}.json"
        doc = read_json(path)
        if doc.get("variant", v) != v:
            raise ValueError(f"{path}: holds the metrics of variant {doc['variant']!r}, not "
                             f"{v!r} (a file copied or renamed by hand); rerun `dvc repro "
                             f"evaluate@{v}`")
        models = doc.get("models") or {}
        runs = ((doc.get("best") or {}).get("R1") or {}).get("runs") or []
        seeds = doc.get("seeds", range(len(runs)))   # as pfcvr.report.ablation.collect reads it
        measured[v] = Measured(path, [int(s) for s in seeds], doc.get("data_source"),
                               models.get("backbone"), models.get("image_size"),
                               models.get("epochs"), models.get("train"))
    zs = Path(metrics_dir) / f"{ZERO_SHOT}.json"
    stats = Path(data_stats)
    pre = Path(pretrain_stats) if pretrain_stats else None
    return Inputs(measured, read_json(zs).get("backbone") if zs.is_file() else None, zs,
                  read_json(stats) if stats.is_file() else {},
                  read_json(pre) if pre is not None and pre.is_file() else {})


def _seeds(seeds: list[int]) -> str:
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def _per_variant(inputs: Inputs, name: str, fmt=str) -> str:
    """``full: a; baseline: b`` for a fact the variants do not share."""
    return "; ".join(f"`{v}` {fmt(getattr(m, name)) if getattr(m, name) is not None else '?'}"
                     for v, m in inputs.variants.items())


def _epochs(epochs: list | None) -> str:
    if not epochs:
        return "? epochs"
    known = sorted({e for e in epochs if e is not None})
    if len(known) == 1:
        return f"{known[0]} epoch{'s' * (known[0] != 1)}"
    return f"{known[0]}–{known[-1]} epochs" if known else "? epochs"


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_environment() -> dict[str, Any]:
    """What makes floating-point results differ between machines: CPU model, core count, OS,
    Python, torch, numpy and transformers versions (reports/ablation.json ``environment``)."""
    import os

    import numpy
    import torch
    import transformers

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__,
            "transformers": transformers.__version__}


def setup_lines(inputs: Inputs) -> list[str]:
    """The report's setup section, every fact from ``inputs`` (see the module docstring)."""
    data = inputs.common("data_source") or inputs.data.get("source") or "unknown"
    if inputs.backbone is not None and inputs.common("image_size") is not None:
        size = inputs.common("image_size")
        model = f"model backbone `{inputs.backbone}` at {size}x{size} px"
    else:
        model = ("model backbone and input size per variant: "
                 + "; ".join(f"`{v}` `{m.backbone}` at {m.image_size} px"
                             for v, m in inputs.variants.items()))
    epochs = {v: _epochs(m.epochs) for v, m in inputs.variants.items()}
    recipe = inputs.common("train")
    seeds = {v: m.seeds for v, m in inputs.variants.items()}
    first = next(iter(seeds.values()), [])
    if len(set(epochs.values())) == 1:
        training = next(iter(epochs.values()))
    else:
        training = "epochs per variant: " + "; ".join(f"`{v}` {e}" for v, e in epochs.items())
    if recipe:
        training += (f", batch {recipe.get('batch_size')}, lr {recipe.get('lr'):g}, precision "
                     f"{recipe.get('precision')}")
    elif any(m.train for m in inputs.variants.values()):
        training += ", recipe per variant: " + _per_variant(
            inputs, "train", lambda t: f"batch {t['batch_size']}, lr {t['lr']:g}, "
                                       f"{t['precision']}")
    else:
        training += " (batch, lr and precision not recorded by the evaluated models)"
    if all(s == first for s in seeds.values()):
        n = len(first)
        training += (f"; {n} seed{'s' if n != 1 else ''} per variant "
                     f"({', '.join(map(str, first))})")
    else:
        training += "; seeds per variant: " + "; ".join(f"`{v}` {_seeds(s)}"
                                                         for v, s in seeds.items())
    env = machine_environment()
    lines = [f"- data: `{data}`; {model}", f"- training: {training}",
             f"- report written on: {env['cpu']} ({env['cores']} cores, {env['machine']}, "
             f"{env['system']}), Python {env['python']}, torch {env['torch']}, numpy "
             f"{env['numpy']}, transformers {env['transformers']}; floating-point results differ "
             f"between CPU models and library versions, so compare verdicts across machines and "
             f"digits on one (docs/results.md)"]
    splits = inputs.data.get("splits", {})
    if splits:
        desc = "; ".join(f"{s}: " + ", ".join(f"{v} {k}" for k, v in c.items()
                                              if isinstance(v, (int, float)))
                         for s, c in splits.items() if isinstance(c, dict))
        lines.append(f"- splits: {desc}")
    oracle = {k: v for k, v in inputs.data.items() if k.startswith("oracle") and
              isinstance(v, (int, float))}
    if oracle:
        lines.append("- attribute oracle on test (calibration: docs/data.md): " +
                     ", ".join(f"{k} = {v:.1f}" for k, v in oracle.items()))
    lines += pretrain_lines(inputs)
    return lines


def pretrain_lines(inputs: Inputs) -> list[str]:
    """The pretraining corpus and run, from the pretrain stage's stats; none when the stats are
    missing or the metrics show that no evaluated model (nor the zero-shot row) used the
    pretrained backbone."""
    stats = inputs.pretrain
    used = [m.backbone for m in inputs.variants.values()] + [inputs.zero_shot_backbone]
    known = [b for b in used if b is not None]      # older files do not record it
    if not stats or (known and "pretrained" not in known):
        return []
    shared = stats.get("shared_full_attribute_sets_with_benchmark")
    disjoint = (f"{shared} full attribute sets shared with the benchmark's identities"
                if stats.get("identity_disjoint_check") == "checked"
                else "identity overlap with the benchmark not checkable (no attribute annotations)")
    return [f"- pretraining (`model.backbone: pretrained`): {stats['n_images']} corpus images of "
            f"{stats['n_ids']} vehicles with coarse alt-text captions ({disjoint}); "
            f"{stats['steps']} steps of batch {stats['batch_size']} in {stats['seconds']:.0f} s; "
            f"zero-shot val R1 {stats['final_val_R1']:.1f}"]


def _expected(params, variant: str, key: str) -> Any:
    """``key`` (dotted) of ``variant``'s params: its ``ablations`` patch, else the base value."""
    node: Any = params.ablations.get(variant) or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return get_dotted(params, key)
        node = node[part]
    return node


def disagreements(inputs: Inputs, params) -> list[str]:
    """One line per fact of the inputs that the params would state otherwise (``params``: the
    base params the report stage read). Facts a file does not record are not compared."""
    out = []
    want_seeds = list(params.report.seeds)
    for v, m in inputs.variants.items():
        if m.seeds != want_seeds:
            out.append(f"{m.path} holds {_seeds(m.seeds)}, but report.seeds lists "
                       f"{', '.join(map(str, want_seeds))}: the numbers are over the seeds the "
                       "file holds; rerun the pipeline (`dvc repro`) to evaluate the others")
        checks = [("model.backbone", m.backbone), ("model.image_size", m.image_size)]
        if m.epochs:
            checks += [("train.epochs", e) for e in sorted({e for e in m.epochs if e is not None})]
        if m.train:
            checks += [(f"train.{k}", m.train.get(k)) for k in ("epochs", "batch_size", "lr",
                                                                 "precision")]
        seen = set()
        for key, value in checks:
            want = _expected(params, v, key)
            if value is None or value == want or (key, value) in seen:
                continue
            seen.add((key, value))
            out.append(f"{m.path} was measured with {key} = {value}, but the "
                       f"params say {want}: rerun the pipeline (`dvc repro`) for the params' "
                       "setting")
    if inputs.zero_shot_backbone is not None and inputs.zero_shot_backbone != \
            params.model.backbone:
        out.append(f"{inputs.zero_shot_path} was measured with model.backbone = "
                   f"{inputs.zero_shot_backbone}, but the params say {params.model.backbone}: "
                   "rerun `dvc repro zero_shot`")
    want = params.data.source
    other = {v: m.data_source for v, m in inputs.variants.items()
             if m.data_source and m.data_source != want}
    if other:
        out.append("the metrics of " + ", ".join(f"`{v}` were measured on data `{s}`"
                                                 for v, s in other.items())
                   + f", but data.source is `{want}`: rerun the pipeline (`dvc repro`)")
    stats_source = inputs.data.get("source")
    if stats_source and stats_source != want:
        out.append(f"reports/data/stats.json describes data `{stats_source}`, but data.source is "
                   f"`{want}`: rerun `dvc repro prepare`")
    return out
