"""Training throughput of the paper configuration through the real training engine.

ViT-B/16 CLIP at 384 x 384 with the official head sizes (random weights, pfcvr/model/presets.py),
all five losses, trained by pfcvr.engine.train.Trainer exactly as `stages.train` does: the lr
groups, fused Adam, bf16 autocast with fp32 master weights (a GradScaler for fp16), gradient
clipping, the per-iteration schedule and the per-step non-finite check. Batches are random and
already on the device, so this measures the GPU, not the loader (benchmarks/loader_speed.py does).

One command prints everything (samples/s, ms/step, peak memory) per batch size and precision:

    python benchmarks/train_gpu.py                      # GPU: paper config, bf16, batch 5 and 32
    python benchmarks/train_gpu.py --batch-sizes 5 32 64 --precisions bf16 fp32
    python benchmarks/train_gpu.py --config tiny --device cpu --steps 3   # smoke test on a CPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from pfcvr.config import load_params, parse_params, to_dict  # noqa: E402
from pfcvr.data.tokenizer import Tokenizer  # noqa: E402
from pfcvr.engine.train import EpochLoader, Trainer, forward_kwargs, set_cpu_threads  # noqa: E402
from pfcvr.model import build_model  # noqa: E402
from pfcvr.model.presets import PAPER  # noqa: E402
from train_step import random_batch, random_corpus  # noqa: E402  (the model benchmark's inputs)


class _Indices(torch.utils.data.Dataset):
    """Stand-in dataset: the Trainer needs a loader to size its schedule; batches come from memory."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def measure(model_cfg_raw: dict, tok, n_classes: int, batch_size: int, precision: str,
            device: torch.device, warmup: int, steps: int, profile: bool = False) -> dict:
    raw = to_dict(load_params("params.yaml"))
    raw["model"] = model_cfg_raw
    raw["train"].update({"precision": precision, "batch_size": batch_size, "epochs": 1,
                         "lr": 1e-5, "warmup_epochs": 0.0})
    params = parse_params(raw)
    torch.manual_seed(0)
    model = build_model(params.model, n_classes, tok)
    loader = EpochLoader(_Indices(batch_size * (warmup + steps)), lambda x: x,
                         batch_size=batch_size, seed=0)
    trainer = Trainer(model, loader, cfg=params.train, forward_kwargs=forward_kwargs(params.train),
                      device=device, out_dir=Path("/tmp/pfcvr_bench_unused"), seed=0,
                      progress=False)
    batch = random_batch(trainer.model, batch_size, n_classes, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    if profile:
        for i in range(warmup):
            trainer._step(batch, 1, i + 1, "none")
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=acts) as prof:
            for i in range(steps):
                trainer._step(batch, 1, warmup + i + 1, "none")
            if cuda:
                torch.cuda.synchronize()
        key = "cuda_time_total" if cuda else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25), flush=True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        trainer._step(batch, 1, i + 1, "none")      # includes the loss sync of the real loop
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    out = {"batch": batch_size, "precision": precision, "ms_per_step": ms,
           "samples_per_s": batch_size / (ms / 1000),
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if cuda:
        out["peak_alloc_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_reserved_GiB"] = torch.cuda.max_memory_reserved(device) / 2**30
    del trainer, model, batch
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("paper", "tiny"), default=None,
                    help="paper: ViT-B/16 at 384 px (default on a GPU); tiny: the model section of "
                    "params.yaml (default without a GPU, e.g. under `make bench`)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[5, 32])
    ap.add_argument("--precisions", nargs="+", choices=("bf16", "fp16", "fp32"), default=None,
                    help="default bf16 on a GPU, fp32 on a CPU (CPU bf16 is emulated and slow)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table first")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    set_cpu_threads(load_params("params.yaml").train.cpu_threads)
    if args.precisions is None:
        args.precisions = ["bf16"] if device.type == "cuda" else ["fp32"]
    if args.config is None:
        args.config = "paper" if device.type == "cuda" else "tiny"
        if device.type != "cuda":
            print("no GPU: timing the tiny config (ask for --config paper to run ViT-B/16 at 384 "
                  "px on this CPU; it takes minutes per step)", flush=True)
            args.batch_sizes, args.warmup, args.steps = [32], 1, 3
    if args.config == "paper":
        model_raw, n_classes = dict(PAPER), 1257       # ~70 % of T2I-VeRW's ids
    else:
        model_raw, n_classes = to_dict(load_params("params.yaml").model), 100
    vocab, ctx = model_raw["tiny"]["vocab_size"], model_raw["tiny"]["context_length"]
    t0 = time.perf_counter()
    tok = Tokenizer.train(random_corpus(20_000 if vocab > 5000 else 2_000), vocab, ctx)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"== {args.config} config on {device} ({name}), torch {torch.__version__}; "
          f"tokenizer ({tok.vocab_size} tokens) in {time.perf_counter() - t0:.1f} s; "
          f"{args.warmup} warm-up + {args.steps} timed steps (median), all five losses",
          flush=True)
    print(f"{'precision':>9s}{'batch':>7s}{'params':>9s}{'ms/step':>10s}{'samples/s':>11s}"
          f"{'peak alloc':>12s}{'peak reserved':>15s}", flush=True)
    for precision in args.precisions:
        for bs in args.batch_sizes:
            try:
                r = measure(model_raw, tok, n_classes, bs, precision, device, args.warmup,
                            args.steps, args.profile)
            except torch.OutOfMemoryError:
                print(f"{precision:>9s}{bs:7d}  out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            mem = (f"{r['peak_alloc_GiB']:10.2f} GB{r['peak_reserved_GiB']:12.2f} GB"
                   if "peak_alloc_GiB" in r else f"{'-':>12s}{'-':>15s}")
            print(f"{precision:>9s}{bs:7d}{r['params_M']:8.1f}M{r['ms_per_step']:10.1f}"
                  f"{r['samples_per_s']:11.1f}{mem}", flush=True)


if __name__ == "__main__":
    main()
