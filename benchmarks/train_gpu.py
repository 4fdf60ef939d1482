"""Training throughput and model FLOP utilisation (MFU) through the real training engine.

The paper configuration (CLIP ViT-B/16 at 384 x 384, 77-token text, the official decoder sizes:
benchmarks/presets.py; random weights, no download) is trained by pfcvr.engine.trainer.Trainer
exactly as `stages.train` does it (lr groups, fused Adam on CUDA, autocast with fp32 master
weights, gradient clipping, the per-iteration schedule, the non-finite guard), eager
(`train.compile: false`) and compiled (`train.compile: true`), with all five losses (full) and
with SDM + ID only (baseline). Batches are random and already on the device: this measures the
chip, not the loader (benchmarks/loader_speed.py does).

Per batch size, precision, mode and run it prints ms/step (N steps timed back to back after the
warm-up, one sync at the end: the trainer's own syncs are part of the step), samples/s, peak
memory, the model TFLOP per step COUNTED with torch.utils.flop_counter.FlopCounterMode on one eager
step (forward + backward; attention counted too), the achieved TFLOP/s, the MFU (against the
chip's dense BF16 peak, from a small table of datasheet figures, printed with its source) and the
time of the first step (the compilation). Then the full/baseline step ratios, which attention
kernels SDPA picked, and last a line `paper full bf16 MFU: X%` (the best mode at the largest
batch measured; `n/a` when the run was not paper/bf16 on a known chip).

    python benchmarks/train_gpu.py                  # GPU: paper config, bf16, batch 64 then 5
    python benchmarks/train_gpu.py --smoke          # any machine: tiny config on the CPU, seconds
    python benchmarks/train_gpu.py --config paper --device cpu --flops-only --batch-sizes 5

Without a GPU the defaults are those of --smoke (tiny, batch 4, fp32, 1 + 2 steps, the compiled
column traced with dynamo's eager backend): inductor on a CPU takes minutes per graph.

The whole default GPU run is planned to fit 8 minutes: the largest batch first, compilations
skipped (and said so) once `--budget-s` is spent. The MFU counts the model FLOPs of the eager path
(MLM head at the corrupted positions only) for both modes, so the compiled path's extra head work
(every position, for static shapes) is shown but not credited.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pfcvr.config import load_params, parse_params, to_dict  # noqa: E402
from pfcvr.engine.loader import EpochLoader, set_cpu_threads  # noqa: E402
from pfcvr.engine.train import forward_kwargs  # noqa: E402
from pfcvr.engine.trainer import Trainer, autocast  # noqa: E402
from pfcvr.losses import Criterion  # noqa: E402
from pfcvr.model import build_model  # noqa: E402
from pfcvr.model.tokenizer import Tokenizer  # noqa: E402
from presets import PAPER  # noqa: E402  (benchmarks/presets.py)
from train_step import BASE, FULL, random_batch, random_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"baseline": BASE, "full": FULL}

# Dense BF16 tensor-core peaks (TFLOP/s) from NVIDIA's datasheets, matched in this order against
# torch.cuda.get_device_name (the datasheets print the 2:4-sparsity figure; dense is half of it).
PEAKS = (
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet, PCIe: 1,513 TFLOP/s BF16 with sparsity"),
    ("H100 NVL", 835.5, "NVIDIA H100 datasheet, NVL: 1,671 TFLOP/s BF16 with sparsity"),
    ("H200 NVL", 835.5, "NVIDIA H200 datasheet, NVL: 1,671 TFLOP/s BF16 with sparsity"),
    ("H100", 989.4, "NVIDIA H100 datasheet, SXM: 1,979 TFLOP/s BF16 with sparsity"),
    ("H200", 989.4, "NVIDIA H200 datasheet, SXM: 1,979 TFLOP/s BF16 with sparsity"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOP/s BF16 dense (624 with sparsity)"),
    ("L40S", 362.05, "NVIDIA L40S datasheet: 362.05 TFLOP/s BF16 dense (733 with sparsity)"),
)


def chip_peak(name: str) -> tuple[float | None, str]:
    """(dense BF16 TFLOP/s, source) for a device name; (None, why) when it is not in PEAKS."""
    for key, peak, source in PEAKS:
        if key in name:
            return peak, source
    return None, f"no dense BF16 peak known for {name!r}: MFU n/a (give --peak-tflops)"


class SDPACounter(TorchDispatchMode):
    """Counts the scaled-dot-product-attention kernels a step dispatches, by ATen op name."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name and "backward" not in name:
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def count_step(model, batch, criterion, kwargs, precision, device) -> int:
    """Model FLOPs of one training step (forward + backward, eager). Attention runs through
    SDPA's math backend while counting, on every device: its matrix products are the model's
    (the counter's formula for the fused kernels adds flash backward's recomputation of QK^T, and
    it has none for the CPU kernel), so CPU and GPU counts agree."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as flops, sdpa_kernel([SDPBackend.MATH]):
        with autocast(device, precision):
            loss = criterion(model(batch, **kwargs))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return flops.get_total_flops()


def sdpa_kernels(model, batch, criterion, kwargs, precision, device) -> dict[str, int]:
    """The attention kernels SDPA picks in one training forward, {ATen op: calls}."""
    sdpa = SDPACounter()
    with sdpa, autocast(device, precision):
        model(batch, **kwargs)
    return sdpa.counts


def tflop(flops: float) -> str:
    return f"{flops / 1e12:.3g}"


class _Indices(torch.utils.data.Dataset):
    """Stand-in dataset: the Trainer needs a loader to size its schedule; batches are in memory."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def train_params(model_raw: dict, run: str, batch_size: int, precision: str, compiled: bool,
                 compile_mode: str):
    raw = to_dict(load_params(ROOT / "params.yaml"))
    raw["model"] = model_raw
    raw["train"].update({"precision": precision, "batch_size": batch_size, "epochs": 1,
                         "lr": 1e-5, "warmup_epochs": 0.0, "compile": compiled,
                         "compile_mode": compile_mode, "weights": dict(RUNS[run].weights)})
    return parse_params(raw).train


def measure(model, batch, cfg, device, warmup: int, steps: int, backend: str,
            profile: bool) -> dict:
    """Time ``steps`` trainer steps after ``warmup`` (the first one compiles, timed apart)."""
    criterion = Criterion(cfg.weights)
    n_steps = warmup + steps
    loader = EpochLoader(_Indices(cfg.batch_size * n_steps), lambda x: x,
                         batch_size=cfg.batch_size, seed=0)
    trainer = Trainer(model, loader, cfg=cfg, criterion=criterion,
                      forward_kwargs=forward_kwargs(cfg), device=device,
                      out_dir=Path(tempfile.gettempdir()) / "pfcvr_bench_unused", seed=0,
                      progress=False, find_unused_parameters=not criterion.all_active,
                      compile_backend=backend)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    trainer._step(batch, 1, 1, "none")
    trainer.guard.flush()
    sync()
    first = time.perf_counter() - t0
    for i in range(1, warmup):
        trainer._step(batch, 1, i + 1, "none")
    trainer.guard.flush()
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        trainer._step(batch, 1, warmup + i + 1, "none")
    trainer.guard.flush()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    out = {"ms": 1000 * seconds, "first_s": first,
           "peak_GB": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None}
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=acts) as prof:
            for i in range(3):
                trainer._step(batch, 1, n_steps + i + 1, "none")
            trainer.guard.flush()
            sync()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        out["profile"] = prof.key_averages().table(sort_by=key, row_limit=15,
                                                   max_name_column_width=60)
    del trainer
    if cfg.compile:     # frees the compiled graphs (and CUDA-graph pools) of this run
        torch._dynamo.reset()
    gc.collect()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="CPU check in seconds: tiny config, batch 4, fp32, 1 warm-up + 2 steps, "
                    "the compiled column traced by dynamo with the eager backend (no code "
                    "generation; inductor is covered by tests/test_compile.py)")
    ap.add_argument("--config", choices=("paper", "tiny"), default=None,
                    help="paper (default on a GPU) | tiny: the model section of params.yaml")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="default 64 5 on a GPU (largest first), 4 otherwise")
    ap.add_argument("--precisions", nargs="+", choices=("bf16", "fp16", "fp32"), default=None,
                    help="default bf16 on a GPU, fp32 on a CPU (CPU bf16 is emulated and slow)")
    ap.add_argument("--modes", nargs="+", choices=("eager", "compiled"),
                    default=["eager", "compiled"])
    ap.add_argument("--compile-mode", default=None,
                    choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs",
                             "max-autotune"),
                    help="train.compile_mode of the compiled runs (default: reduce-overhead on a "
                    "GPU, i.e. CUDA graphs, default on a CPU)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; eager with --smoke)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="skip the remaining compiled runs once this many seconds have passed "
                    "and a compilation as long as the slowest so far would not fit")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the chip's dense BF16 peak, for a chip not in the table")
    ap.add_argument("--flops-only", action="store_true", help="count FLOPs, time nothing")
    ap.add_argument("--profile", action="store_true",
                    help="print a kernel table of the full run at the largest batch, per mode")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.smoke:
        args.device = "cpu"
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    if not cuda:        # `make bench` on a CPU: the smoke run unless asked otherwise
        args.config = args.config or "tiny"
        args.warmup = 1 if args.warmup is None else args.warmup
        args.steps = 2 if args.steps is None else args.steps
        args.compile_backend = args.compile_backend or "eager"
    set_cpu_threads(load_params(ROOT / "params.yaml").train.cpu_threads)
    args.config = args.config or ("paper" if cuda else "tiny")
    args.batch_sizes = sorted(args.batch_sizes or ([64, 5] if cuda else [4]), reverse=True)
    args.precisions = args.precisions or (["bf16"] if cuda else ["fp32"])
    args.compile_mode = args.compile_mode or ("reduce-overhead" if cuda else "default")
    backend = args.compile_backend or "inductor"
    warmup = 3 if args.warmup is None else max(args.warmup, 1)
    steps = 10 if args.steps is None else max(args.steps, 1)
    if hasattr(torch._dynamo.config, "recompile_limit"):  # one graph per run, batch, precision
        torch._dynamo.config.recompile_limit = 64
    if args.config == "paper":
        model_raw, n_classes = dict(PAPER), 1257       # ~70 % of T2I-VeRW's ids
    else:
        model_raw, n_classes = to_dict(load_params(ROOT / "params.yaml").model), 100
        model_raw["backbone"] = "tiny"    # `pretrained` is this architecture; speed needs no weights
    vocab, ctx = model_raw["tiny"]["vocab_size"], model_raw["tiny"]["context_length"]
    tok = Tokenizer.train(random_corpus(20_000 if vocab > 5000 else 2_000), vocab, ctx)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak, source = chip_peak(name) if cuda else (None, "CPU: MFU n/a")
    if args.peak_tflops:
        peak, source = args.peak_tflops, "--peak-tflops"
    torch.manual_seed(0)
    model = build_model(parse_params({**to_dict(load_params(ROOT / "params.yaml")),
                                      "model": model_raw}).model, n_classes, tok).to(device)
    print(f"== {args.config} config on {device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; built in "
          f"{time.perf_counter() - start:.1f} s; {warmup} warm-up + {steps} timed steps; "
          f"compiled = torch.compile backend {backend}, mode {args.compile_mode}",
          flush=True)
    print(f"{'mode':>9s}{'prec':>6s}{'batch':>6s}{'run':>9s}{'ms/step':>9s}{'samples/s':>10s}"
          f"{'peak GB':>9s}{'TFLOP/step':>11s}{'TFLOP/s':>9s}{'MFU':>7s}{'1st step s':>11s}",
          flush=True)
    results, notes, slowest_compile = {}, [], 0.0
    for precision in args.precisions:
        for bs in args.batch_sizes:
            batch = random_batch(model, bs, n_classes, device)
            flops = {}
            for run in RUNS:
                cfg = train_params(model_raw, run, bs, precision, False, "default")
                kw = forward_kwargs(cfg)
                flops[run] = count_step(model, batch, RUNS[run], kw, precision, device)
                if run == "full":
                    static = count_step(model, batch, RUNS[run], {**kw, "static_shapes": True},
                                        precision, device)
                    sdpa = sdpa_kernels(model, batch, RUNS[run], kw, precision, device)
                    notes.append(f"{precision} batch {bs}: model {tflop(flops[run])} TFLOP/step "
                                 f"full, {tflop(flops['baseline'])} baseline (ratio "
                                 f"{flops[run] / flops['baseline']:.2f}); static-shape path "
                                 f"(compiled) {tflop(static)} TFLOP (+"
                                 f"{100 * (static / flops[run] - 1):.1f}%, the MLM head at every "
                                 f"position); SDPA kernels per full step: "
                                 + ", ".join(f"{k} x{v}" for k, v in sorted(sdpa.items())))
            if args.flops_only:
                continue
            for mode in args.modes:
                for run in ("full", "baseline"):
                    label = f"{mode:>9s}{precision:>6s}{bs:6d}{run:>9s}"
                    left = args.budget_s - (time.perf_counter() - start)
                    if mode == "compiled" and backend == "inductor" \
                            and left < max(60.0, 1.2 * slowest_compile):
                        print(f"{label}  skipped: {left:.0f} s of --budget-s left, a compilation "
                              f"took up to {slowest_compile:.0f} s", flush=True)
                        continue
                    cfg = train_params(model_raw, run, bs, precision, mode == "compiled",
                                       args.compile_mode)
                    profile = args.profile and run == "full" and bs == args.batch_sizes[0]
                    try:
                        r = measure(model, batch, cfg, device, warmup, steps, backend, profile)
                    except Exception as err:  # one failed run must not cost the others (OOM ...)
                        print(f"{label}  failed: {type(err).__name__}: {str(err)[:300]}",
                              flush=True)
                        if cuda:
                            torch.cuda.empty_cache()
                        continue
                    if mode == "compiled":
                        slowest_compile = max(slowest_compile, r["first_s"])
                    tflops = flops[run] / (r["ms"] / 1000) / 1e12
                    mfu = (100 * tflops / peak) if peak and precision == "bf16" else None
                    results[(mode, precision, bs, run)] = {**r, "tflops": tflops, "mfu": mfu}
                    mem = f"{r['peak_GB']:9.2f}" if r["peak_GB"] is not None else f"{'-':>9s}"
                    print(f"{label}{r['ms']:9.1f}{bs / (r['ms'] / 1000):10.1f}{mem}"
                          f"{tflop(flops[run]):>11s}{tflops:9.3g}"
                          f"{(f'{mfu:.1f}%' if mfu is not None else 'n/a'):>7s}"
                          f"{r['first_s']:11.1f}", flush=True)
                    if "profile" in r:
                        print(f"-- profile: {mode} {precision} batch {bs} full, 3 steps\n"
                              f"{r['profile']}", flush=True)
    for line in notes:
        print(line, flush=True)
    for (mode, precision, bs, run), r in results.items():
        base = results.get((mode, precision, bs, "baseline"))
        if run == "full" and base:
            print(f"full/baseline step ratio ({mode}, {precision}, batch {bs}): "
                  f"{r['ms'] / base['ms']:.2f}", flush=True)
    print(f"peak assumed: {f'{peak:g} TFLOP/s dense BF16' if peak else 'none'} ({source}); "
          f"total {time.perf_counter() - start:.0f} s", flush=True)
    best = None
    if args.config == "paper":
        for (mode, precision, bs, run), r in results.items():
            if run == "full" and precision == "bf16" and r["mfu"] is not None \
                    and bs == max(b for (_, p, b, rn) in results if p == "bf16" and rn == "full"):
                if best is None or r["mfu"] > best[1]["mfu"]:
                    best = ((mode, bs), r)
    if best:
        (mode, bs), r = best
        print(f"best paper full bf16: {mode}, batch {bs}, {bs / (r['ms'] / 1000):.1f} samples/s, "
              f"{r['tflops']:.1f} TFLOP/s on {name}", flush=True)
    mfu = f"{best[1]['mfu']:.1f}%" if best else "n/a"
    print(f"paper full bf16 MFU: {mfu}", flush=True)


if __name__ == "__main__":
    main()
