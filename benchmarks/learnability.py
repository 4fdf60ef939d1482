"""What the embedded benchmark asks a model to learn, and how much of it the tiny backbone learns.

Three measurements on a prepared synthetic benchmark (``dvc repro parts`` first), printed as
tables and ratios:

1. **Attribute-subset oracles** (val and test): the Rank-1 of the attribute oracle
   (:mod:`pfcvr.data.oracle`) when it may use only some of the facts a caption states:
   type + colour (the report's oracle), colours only (body colour, every part colour and the
   window tint, no type), type + colours, all. Each as a ratio to the type + colour oracle: a model
   at 2x that oracle must have learned part attributes, and this says which ones suffice.
2. **Supervised probe** (capacity): the vision tower of ``model.tiny`` (same width, depth, stem,
   patch and image size as params.yaml, random initialisation) trained with one linear head per attribute
   (cross-entropy, a part's attributes only where the part is visible) on the train images for
   ``--steps`` steps, then its val accuracy per attribute next to the majority-class rate. This is
   the most the architecture learns from the train split when it is told every attribute.
3. With ``--model FOLDER`` (a trained ``pfcvr.load`` folder, e.g. ``models/full/seed0/best``): for
   each kind of stated fact, how often the model's top-1 val image satisfies it, next to the rate
   of a wrong image with the caption's type and colour (what a model that knew only type and
   colour would score).

    python benchmarks/learnability.py                        # oracles + a 2,000-step probe
    python benchmarks/learnability.py --steps 0 --model models/full/seed0/best
    python benchmarks/learnability.py --model models/full/seed0/best \
        --figure reports/figures/learnability.png    # all three, and a figure of them

The probe runs with ``train.cpu_threads`` torch threads, as training does. Nothing is asserted
on its accuracies in tests (tests/test_learnability.py checks the arithmetic on a tiny benchmark).
Source: issue 10 (why the default run does not reach 2x the type + colour oracle).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pfcvr import paths  # noqa: E402
from pfcvr.config import load_params  # noqa: E402
from pfcvr.data.oracle import GLOBAL, has_ground_truth, oracle_similarity, visible_categories  # noqa: E402
from pfcvr.engine.ranking import retrieval_metrics  # noqa: E402

COLOUR_ATTRIBUTES = ("colour", "tint")     # body colour, part colours, window tint
SUBSETS = {                                # oracle name -> which stated facts it may use
    "type+colour": lambda f: f["category"] == GLOBAL,
    "colours only": lambda f: f["attribute"] in COLOUR_ATTRIBUTES,
    "type+colours": lambda f: f["category"] == GLOBAL or f["attribute"] in COLOUR_ATTRIBUTES,
    "all": lambda f: True,
}
PROBE_BATCH = 64


def split_records(records: list[dict], split: str) -> list[dict]:
    """The records of ``split``; ValueError when there are none or they carry no ground truth."""
    out = [r for r in records if r["split"] == split]
    if not out or not has_ground_truth(out):
        raise ValueError(f"split {split!r}: no records with synthetic ground truth (attributes, "
                         "caption_facts); learnability needs data.source: synthetic")
    return out


def subset_oracles(records: list[dict], split: str) -> dict[str, float]:
    """Rank-1 (%) of the attribute oracle of ``split`` restricted to each of ``SUBSETS``."""
    gallery = split_records(records, split)
    facts = [fs for r in gallery for fs in r["caption_facts"]]
    qids = np.array([r["id"] for r in gallery for _ in r["caption_facts"]])
    gids = np.array([r["id"] for r in gallery])
    out = {}
    for name, keep in SUBSETS.items():
        sim = oracle_similarity(gallery, [[f for f in fs if keep(f)] for fs in facts], "all")
        out[name] = retrieval_metrics(sim, qids, gids)["R1"]
    return out


def visible_attributes(record: dict) -> dict[str, str]:
    """``{"type": .., "colour": .., "<part>.<attribute>": ..}`` of what one image shows."""
    out = {k: str(v) for k, v in record["attributes"][GLOBAL].items()}
    for cat in visible_categories(record) - {GLOBAL}:
        out.update({f"{cat}.{a}": str(v) for a, v in (record["attributes"].get(cat) or {}).items()})
    return out


def _labels(shown: list[dict[str, str]], keys: list[str], values: dict[str, list[str]]
            ) -> torch.Tensor:
    """long [N, len(keys)]: value index per attribute of each image's ``visible_attributes``,
    -100 where the part is not visible."""
    return torch.tensor([[values[k].index(a[k]) if k in a else -100 for k in keys] for a in shown],
                        dtype=torch.long)


def supervised_probe(params, data: dict, steps: int, seed: int = 0,
                     progress: bool = False) -> dict[str, tuple[float, float]]:
    """Val accuracy (%) per attribute of ``model.tiny``'s vision tower (random init) trained
    supervised on the train images for ``steps`` AdamW steps of ``PROBE_BATCH`` images (horizontal
    flips at ``train.hflip``): ``{attribute: (accuracy, majority-class rate)}``. ``data``: the
    ``train`` and ``val`` SplitData (``pfcvr.data.dataset.load_split``)."""
    from tqdm.auto import tqdm
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from pfcvr.data.dataset import normalize
    from pfcvr.engine.optim import WarmupCosine
    from pfcvr.model.backbone import install_stem, tiny_vision_config

    m = params.model
    attrs = {s: [visible_attributes(r) for r in d.records] for s, d in data.items()}
    keys = sorted({k for a in attrs["train"] for k in a})
    values = {k: sorted({a[k] for s in attrs for a in attrs[s] if k in a}) for k in keys}
    labels = {s: _labels(attrs[s], keys, values) for s in data}
    images = {s: torch.from_numpy(np.stack([d.image_store(m.image_size)[i] for i in range(len(d))]))
              .permute(0, 3, 1, 2) for s, d in data.items()}
    torch.manual_seed(seed)
    width = m.tiny.vision_width
    tower = install_stem(CLIPVisionModel(CLIPVisionConfig(**tiny_vision_config(m))))
    heads = torch.nn.ModuleList(torch.nn.Linear(width, len(values[k])) for k in keys)
    opt = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(steps, max(1, steps // 10)))
    g = torch.Generator().manual_seed(seed)
    n = len(images["train"])
    for _ in tqdm(range(steps), desc="probe", unit="step", disable=not progress):
        idx = torch.randint(n, (PROBE_BATCH,), generator=g)
        x = images["train"][idx]
        flip = torch.rand(PROBE_BATCH, generator=g) < params.train.hflip
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        feats = tower(pixel_values=normalize(x)).pooler_output
        y = labels["train"][idx]
        loss = sum(F.cross_entropy(h(feats), y[:, j], ignore_index=-100)
                   for j, h in enumerate(heads) if (y[:, j] >= 0).any())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    tower.eval()
    with torch.no_grad():
        feats = torch.cat([tower(pixel_values=normalize(images["val"][i:i + 256])).pooler_output
                           for i in range(0, len(images["val"]), 256)])
    out = {}
    for j, k in enumerate(keys):
        y = labels["val"][:, j]
        seen = y >= 0
        if not seen.any():
            continue
        acc = (heads[j](feats[seen]).argmax(1) == y[seen]).float().mean().item()
        out[k] = (100 * acc, 100 * y[seen].bincount().max().item() / int(seen.sum()))
    return out


def fact_agreement(records: list[dict], top: list[int]) -> dict[str, tuple[float, float, int]]:
    """Per kind of stated fact (``type``, ``roof.colour`` ...) of the captions of ``records`` (one
    split, queries in record then caption order), given each query's top-1 gallery index ``top``
    into ``records``: the share (%) of those facts that the top-1 image shows (visible and true),
    the same share averaged over the wrong images that have the caption's true type and colour,
    and the number of facts in the first share: ``{kind: (top-1 %, same type+colour %, n)}``.
    A fact about a part an image does not show counts in neither share for that image."""
    shown = [visible_attributes(r) for r in records]
    by_tc = defaultdict(list)
    for i, r in enumerate(records):
        by_tc[(r["attributes"][GLOBAL]["type"], r["attributes"][GLOBAL]["colour"])].append(i)
    queries = [(i, fs) for i, r in enumerate(records) for fs in r["caption_facts"]]
    if len(top) != len(queries):
        raise ValueError(f"{len(top)} top-1 indices for {len(queries)} captions")
    hits, base = defaultdict(list), defaultdict(list)
    for (i, fs), t in zip(queries, top):
        true = records[i]["attributes"][GLOBAL]
        wrong = [j for j in by_tc[(true["type"], true["colour"])]
                 if records[j]["id"] != records[i]["id"]]
        for f in fs:
            kind = f["attribute"] if f["category"] == GLOBAL else f"{f['category']}.{f['attribute']}"
            value = str(f["value"])
            if kind in shown[t]:
                hits[kind].append(shown[t][kind] == value)
            rates = [shown[j][kind] == value for j in wrong if kind in shown[j]]
            if rates:
                base[kind].append(float(np.mean(rates)))
    return {k: (100 * float(np.mean(hits[k])), 100 * float(np.mean(base[k])) if base[k] else
                float("nan"), len(hits[k])) for k in sorted(hits)}


def top1_agreement(model_folder: Path, data, batch_size: int = 128
                   ) -> dict[str, tuple[float, float, int]]:
    """:func:`fact_agreement` of a trained model (a ``pfcvr.load`` folder) on the SplitData
    ``data``: every caption ranks the split's images by the global cosine, as evaluation does."""
    from pfcvr.data.dataset import ImageDataset
    from pfcvr.engine.encode import encode_gallery, encode_queries
    from pfcvr.model.io import load_model

    model = load_model(model_folder)
    records = split_records(data.records, data.split)
    images = ImageDataset(data, model.image_size, model.image_size // model.grid_size)
    gallery = encode_gallery(model, images, batch_size, "cpu")
    queries = encode_queries(model, data.captions()[0], batch_size, "cpu")
    return fact_agreement(records, (queries.features @ gallery.features.T).argmax(1).tolist())


def _dumbbell(ax, rows: dict[str, tuple[float, float]], labels: tuple[str, str], title: str) -> None:
    """One row per key: a filled dot (first value) joined to an open one (second value)."""
    keys = sorted(rows, key=lambda k: rows[k][0] - rows[k][1])
    y = range(len(keys))
    first, second = [rows[k][0] for k in keys], [rows[k][1] for k in keys]
    ax.hlines(y, second, first, color="lightgrey", zorder=1)
    ax.scatter(second, y, facecolors="white", edgecolors="grey", label=labels[1], zorder=2,
               clip_on=False)
    ax.scatter(first, y, color="tab:blue", label=labels[0], zorder=3, clip_on=False)
    ax.set_yticks(list(y), keys, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_title(f"{title} (%)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, frameon=False)


def learnability_figure(oracles: dict[str, dict[str, float]], path: Path,
                        probe: dict[str, tuple[float, float]] | None = None,
                        top1: dict[str, tuple[float, float, int]] | None = None) -> None:
    """One PNG: the attribute-subset oracles per split (``{split: {subset: R1}}``) with 2x the
    type+colour oracle dashed; then, when given, the probe's val accuracy against the majority
    rate and the model's top-1 facts against a wrong image of the same type and colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pfcvr.runtime.atomic import save_figure

    panels = 1 + (probe is not None) + (top1 is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.6), squeeze=False)
    ax = axes[0][0]
    names = list(SUBSETS)
    width = 0.8 / len(oracles)
    for i, (split, r1) in enumerate(oracles.items()):
        xs = [j + (i - (len(oracles) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, [r1[n] for n in names], width, label=split, color=f"C{i}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.axhline(2 * r1["type+colour"], color=f"C{i}", ls="--", lw=1,
                   label=f"{split}: 2x type+colour")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("oracle Rank-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("what the benchmark asks for", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    k = 1
    if probe is not None:
        _dumbbell(axes[0][k], probe, ("val accuracy", "majority class"),
                  "supervised probe of model.tiny's vision tower")
        k += 1
    if top1 is not None:
        _dumbbell(axes[0][k], {a: (h, b) for a, (h, b, _) in top1.items()},
                  ("model's top-1 image", "wrong image, same type+colour"),
                  "stated facts shown by the top-1 val image")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--params", default=str(paths.PARAMS),
                    help="params.yaml of the run (model.tiny, train.hflip, cpu_threads, seed)")
    ap.add_argument("--prepared", default=str(paths.PREPARED),
                    help="prepared benchmark folder (the prepare stage's output)")
    ap.add_argument("--parts", default=str(paths.PARTS), help="the parts stage's parts.json")
    ap.add_argument("--steps", type=int, default=2000, help="supervised probe steps (0: skip)")
    ap.add_argument("--model", default=None,
                    help="trained model folder for the top-1 table, e.g. models/full/seed0/best")
    ap.add_argument("--figure", default=None, help="also draw the three tables in this PNG")
    args = ap.parse_args(argv)
    from pfcvr.engine.loader import set_cpu_threads
    from pfcvr.runtime.atomic import read_json

    if args.steps < 0:
        ap.error(f"--steps {args.steps}: must be 0 (no probe) or more")
    figure = Path(args.figure) if args.figure else None
    if figure is not None and (figure.suffix.lower() != ".png" or figure.is_dir()):
        ap.error(f"--figure {figure}: must name a .png file")
    if not Path(args.params).is_file():
        raise FileNotFoundError(f"{args.params} not found; run from the repository root or pass "
                                "--params")
    params = load_params(args.params)
    set_cpu_threads(params.train.cpu_threads)
    manifest = Path(args.prepared) / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; prepare the benchmark first "
                                "(dvc repro parts)")
    records = read_json(manifest)
    if args.model:   # fail now, not after the probe's minutes
        from pfcvr.model.io import resolve_model_folder

        resolve_model_folder(args.model)
    if figure is not None:
        try:
            figure.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--figure {figure}: its folder cannot be created ({err})") from None

    print("attribute-subset oracles, Rank-1 % (ratio to type+colour)")
    oracles, probe, top1 = {}, None, None
    for split in ("val", "test"):
        r1 = oracles[split] = subset_oracles(records, split)
        ref = r1["type+colour"]
        print(f"  {split:5s}" + "".join(f"  {k} {v:5.1f} ({v / ref:.2f}x)" for k, v in r1.items()))
    splits = {}                  # SplitData read once for the probe and the top-1 table
    if args.steps > 0 or args.model:
        from pfcvr.data.dataset import load_split

        splits = {s: load_split(args.prepared, args.parts, s)
                  for s in (("train", "val") if args.steps > 0 else ("val",))}
    if args.steps > 0:
        t0 = time.perf_counter()
        probe = supervised_probe(params, splits, args.steps, params.seed,
                                 progress=sys.stderr.isatty())
        print(f"supervised probe: model.tiny vision tower, {args.steps} steps of {PROBE_BATCH} "
              f"train images, {time.perf_counter() - t0:.0f} s; val accuracy % (majority class)")
        for k, (acc, maj) in probe.items():
            print(f"  {k:16s} {acc:5.1f}  ({maj:5.1f})  ratio {acc / maj:.2f}")
    if args.model:
        print(f"top-1 val image of {args.model}: share % showing each stated fact "
              "(a wrong image of the same type and colour; facts)")
        top1 = top1_agreement(Path(args.model), splits["val"])
        for k, (hit, base, n) in top1.items():
            print(f"  {k:16s} {hit:5.1f}  ({base:5.1f}; {n})")
    if figure is not None:
        learnability_figure(oracles, figure, probe, top1)
        print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    from pfcvr.runtime.stage import run_stage

    sys.exit(run_stage("learnability", main))
