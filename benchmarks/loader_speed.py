"""Does the data loader keep up? Training steps/s with the real loader vs batches already in memory.

Builds the default configuration (params.yaml, variant `full`) on the prepared data
(data/prepared + data/parts; generated into a temporary folder when absent), then times the same
N training steps (forward, backward, Adam) twice on one model:
  1. "loader": batches drawn from the training DataLoader (decode/flip/collate/tokenise included);
  2. "memory": the very same batches, collated beforehand and replayed from a list.
It prints both rates and their ratio (target >= 0.9), plus the loader alone (batches/s). The image
store decodes each image once and keeps it (data/dataset.py), so a first, cold epoch is also shown.

    python benchmarks/loader_speed.py                 # default config, 20 steps
    python benchmarks/loader_speed.py --steps 40 --workers 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pfcvr.config import load_params  # noqa: E402
from pfcvr.data.dataset import ImageTextDataset, load_split, pid_map  # noqa: E402
from pfcvr.engine.loader import EpochLoader, seed_everything, set_cpu_threads  # noqa: E402
from pfcvr.engine.train import forward_kwargs  # noqa: E402
from pfcvr.engine.trainer import Trainer  # noqa: E402
from pfcvr.losses import Criterion  # noqa: E402
from pfcvr.model import build_model, build_tokenizer  # noqa: E402


def ensure_data(params, root: Path) -> Path:
    """The repository's prepared data, or a freshly generated copy in a temporary folder."""
    if (root / "data/prepared/manifest.json").is_file() and (root / "data/parts/parts.json").is_file():
        return root
    from pfcvr.data.parts import build_parts
    from pfcvr.data.synthetic import generate
    from pfcvr.runtime.atomic import write_json

    tmp = Path(tempfile.mkdtemp(prefix="pfcvr_bench_"))
    print(f"no prepared data in {root}/data: generating the default synthetic set in {tmp} ...",
          flush=True)
    recs = generate(params.data.synthetic, params.seed, tmp / "data/prepared/images")
    write_json(tmp / "data/prepared/manifest.json", recs)
    write_json(tmp / "data/prepared/meta.json", {"source": "synthetic", "images_root": "images"})
    write_json(tmp / "data/parts/parts.json", build_parts(recs, "annotations")[0])
    return tmp


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per mode")
    ap.add_argument("--workers", type=int, default=None, help="default: train.num_workers")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variant", default="full")
    args = ap.parse_args(argv)
    params = load_params(args.params, variant=args.variant)
    cfg = params.train
    workers = cfg.num_workers if args.workers is None else args.workers
    set_cpu_threads(cfg.cpu_threads)
    data = ensure_data(params, ROOT)
    train = load_split(data / "data/prepared", data / "data/parts/parts.json", "train")
    tok = build_tokenizer(params.model, train.captions()[0])
    labels = pid_map(train.ids)
    seed_everything(0)
    model = build_model(params.model, len(labels), tok)
    ds = ImageTextDataset(train, tok, model.image_size, model.image_size // model.grid_size,
                          train=True, hflip=cfg.hflip, flip_masks=cfg.flip_masks, pid_map=labels)
    loader = EpochLoader(ds, ds.collate, batch_size=cfg.batch_size, seed=0, num_workers=workers)
    n = min(args.steps, len(loader))
    device = torch.device("cpu")
    trainer = Trainer(model, loader, cfg=cfg, criterion=Criterion(cfg.weights),
                      forward_kwargs=forward_kwargs(cfg), device=device,
                      out_dir=Path(tempfile.mkdtemp()), seed=0, progress=False)
    print(f"default config: {len(ds)} training pairs, batch {cfg.batch_size}, {workers} loader "
          f"worker(s), {torch.get_num_threads()} torch thread(s), {n} steps per mode", flush=True)

    def loader_only(epoch: int) -> float:
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        for i, _ in enumerate(loader, 1):
            if i == n:
                break
        return n / (time.perf_counter() - t0)

    cold = loader_only(1)        # first pass decodes the images (cached afterwards)
    warm = loader_only(2)
    trainer._step(next(iter(loader)), 1, 0, "none")     # warm-up step (allocator, kernels)

    loader.set_epoch(3)
    batches = []
    t0 = time.perf_counter()
    for i, batch in enumerate(loader, 1):
        trainer._step(batch, 3, i, "none")
        batches.append(batch)
        if i == n:
            break
    with_loader = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i, batch in enumerate(batches, 1):
        trainer._step(batch, 3, i, "none")
    in_memory = n / (time.perf_counter() - t0)
    print(f"loader alone: {cold:.1f} batches/s cold (first epoch, decoding), {warm:.1f} warm")
    print(f"training with the real loader: {with_loader:.3f} steps/s "
          f"({with_loader * cfg.batch_size:.1f} samples/s)")
    print(f"training on in-memory batches: {in_memory:.3f} steps/s "
          f"({in_memory * cfg.batch_size:.1f} samples/s)")
    print(f"ratio loader / in-memory: {with_loader / in_memory:.3f} (target >= 0.9)")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
