"""Training-step cost of PFCVR: baseline (SDM + ID), full (all five losses) and a plain CLIP.

For each configuration (``tiny`` = the model section of params.yaml, ``paper`` = ViT-B/16 at
384 px with the official head sizes, random weights: benchmarks/presets.py) it builds one model,
then times training steps (forward, backward, fused Adam step) on a random batch in the training
batch contract, with only the SDM and ID losses (baseline: the other branches are skipped, as a
zero weight does in training) and with all five (full); and the same steps of a minimal
plain-PyTorch CLIP of the same size trained with InfoNCE (reference: ``ReferenceCLIP``, no
transformers or PFCVR code). The timed steps alternate between the three runs, so that a shared
machine's load changes hit all alike, with ``train.cpu_threads`` torch threads (torch's default of
one per core spin-waits on a shared machine). It prints the median milliseconds per step with the
forward / backward / optimizer split, the peak memory of each run's warm-up (process RSS on CPU,
allocated CUDA memory on GPU), and the ratios. The last two lines are ``baseline/reference step
ratio: <x>`` and ``full/baseline step ratio: <x>`` for the tiny configuration (or the one
configuration asked for).

    python benchmarks/train_step.py                       # both configs, device auto
    python benchmarks/train_step.py --config tiny --steps 20
    python benchmarks/train_step.py --config paper --device cuda

The paper configuration on a CPU takes minutes (and ~10 GB): it defaults to 1 warm-up + 2 steps
there. Timings are never asserted in tests.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import string
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from pfcvr.config import load_params  # noqa: E402
from pfcvr.data.categories import PART_CATEGORIES  # noqa: E402
from pfcvr.engine.loader import set_cpu_threads  # noqa: E402
from pfcvr.losses import Criterion  # noqa: E402
from pfcvr.model import build_model  # noqa: E402
from pfcvr.model.tokenizer import Tokenizer  # noqa: E402
from presets import preset  # noqa: E402  (benchmarks/presets.py)

FULL = Criterion({"sdm": 1.0, "id": 0.5, "mlm": 0.5, "mim": 0.5, "part": 0.2})   # official weights
BASE = Criterion({"sdm": 1.0, "id": 0.5, "mlm": 0.0, "mim": 0.0, "part": 0.0})


def random_corpus(n_words: int, seed: int = 0) -> list[str]:
    """Captions of random letter words: enough distinct pairs for a large BPE vocabulary."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(7, 10)))
             for _ in range(n_words)]
    return [" ".join(words[i:i + 20]) for i in range(0, n_words, 20)]


def random_batch(model, batch_size: int, n_classes: int, device, seed: int = 0) -> dict:
    """A batch in the training contract: images, captions (25-59 words or as long as fits),
    pids with positives, part masks from random boxes on the patch grid, some parts absent."""
    g = torch.Generator().manual_seed(seed)
    tok, grid, size = model.tokenizer, model.grid_size, model.image_size
    ids = torch.zeros(batch_size, tok.context_length, dtype=torch.long)
    ordinary = torch.tensor([i for i in range(tok.vocab_size) if i not in tok.special_ids])
    hi = min(59, tok.context_length - 2)
    for b in range(batch_size):
        n = int(torch.randint(min(25, hi), hi + 1, (1,), generator=g))
        ids[b, 0] = tok.sot_id
        ids[b, 1:1 + n] = ordinary[torch.randint(len(ordinary), (n,), generator=g)]
        ids[b, 1 + n] = tok.eot_id
    k = len(PART_CATEGORIES)
    lo = torch.randint(0, grid // 2, (batch_size, k, 2), generator=g)
    span = torch.randint(1, grid // 2 + 1, (batch_size, k, 2), generator=g)
    ar = torch.arange(grid)
    rows = (ar >= lo[..., :1]) & (ar < lo[..., :1] + span[..., :1])       # [B, K, G]
    cols = (ar >= lo[..., 1:]) & (ar < lo[..., 1:] + span[..., 1:])
    masks = (rows.unsqueeze(-1) & cols.unsqueeze(-2)).flatten(2)            # [B, K, G*G]
    present = torch.rand(batch_size, k, generator=g) < 0.6
    present[:, 0] = True
    masks &= present.unsqueeze(-1)
    batch = {"images": torch.randn(batch_size, 3, size, size, generator=g),
             "caption_ids": ids,
             "pids": torch.arange(batch_size) // 2 % n_classes,
             "part_masks": masks, "part_present": present,
             "image_index": torch.arange(batch_size)}
    return {k: v.to(device) for k, v in batch.items()}


class PeakRSS:
    """Samples this process's resident memory every 20 ms while active."""

    def __init__(self):
        self.peak, self._stop, self._proc = 0, threading.Event(), psutil.Process(os.getpid())

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def timed_step(loss_fn, opt, device, precision) -> tuple[float, float, float]:
    """One training step of ``loss_fn() -> scalar loss``; seconds of (forward incl. loss,
    backward, optimizer). The loss is read on the host, as the training loop logs it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_fn()
    loss.item()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def train_step(model, opt, batch, criterion, device, precision) -> tuple[float, float, float]:
    """One PFCVR training step (all branches of ``criterion``), timed by :func:`timed_step`."""
    return timed_step(lambda: criterion(model(batch, terms=criterion.terms, mask_ratio=0.75,
                                              text_mask_ratio=0.15, mim_mask="part")),
                      opt, device, precision)


def trained_parameters(model, batch, criterion, device, precision) -> list:
    """The parameters a run with ``criterion`` trains (a skipped branch's get no gradient), so its
    fused Adam covers exactly those, as a model built without the branch would have."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        criterion(model(batch, terms=criterion.terms, mask_ratio=0.75, text_mask_ratio=0.15,
                        mim_mask="part")).backward()
    trained = [p for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return trained


class ReferenceCLIP(nn.Module):
    """A minimal plain-PyTorch CLIP of the same size as a PFCVR config, trained with InfoNCE.

    ViT (conv patch embedding, class token, learned positions, pre-LN ``nn.TransformerEncoderLayer``
    blocks with GELU MLP x4), causal text transformer over token + position embeddings, EOT
    pooling, linear projections to ``embed_dim``, symmetric InfoNCE at a learned logit scale. No
    transformers code, no PFCVR code: the yardstick for the baseline (SDM + ID) step.
    """

    def __init__(self, cfg, vocab_size: int, eot_id: int):
        super().__init__()
        t, d = cfg.tiny, cfg.embed_dim
        vw, tw, n = t.vision_width, t.text_width, (cfg.image_size // cfg.patch_size) ** 2

        def blocks(width, heads, layers):
            return nn.ModuleList(nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                norm_first=True) for _ in range(layers))

        self.eot_id = eot_id
        self.patch = nn.Conv2d(3, vw, cfg.patch_size, cfg.patch_size, bias=False)
        self.cls = nn.Parameter(torch.randn(vw) * vw ** -0.5)
        self.vpos = nn.Parameter(torch.randn(n + 1, vw) * vw ** -0.5)
        self.vln_pre, self.vln_post = nn.LayerNorm(vw), nn.LayerNorm(vw)
        self.vision = blocks(vw, t.vision_heads, t.vision_layers)
        self.vproj = nn.Linear(vw, d, bias=False)
        self.tok = nn.Embedding(vocab_size, tw)
        self.tpos = nn.Parameter(torch.randn(t.context_length, tw) * 0.01)
        self.text = blocks(tw, t.text_heads, t.text_layers)
        self.tln = nn.LayerNorm(tw)
        self.tproj = nn.Linear(tw, d, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W], ids [B, L] -> the InfoNCE loss []."""
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.vpos
        x = self.vln_pre(x)
        for block in self.vision:
            x = block(x)
        img = self.vproj(self.vln_post(x[:, 0]))
        length = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device)
        h = self.tok(ids) + self.tpos[:length]
        for block in self.text:
            h = block(h, src_mask=mask, is_causal=True)
        eot = (ids == self.eot_id).int().argmax(dim=1)
        txt = self.tproj(self.tln(h[torch.arange(len(ids), device=ids.device), eot]))
        logits = self.logit_scale.exp() * F.normalize(img.float(), dim=-1) \
            @ F.normalize(txt.float(), dim=-1).t()
        labels = torch.arange(len(ids), device=ids.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def reference_step(ref, opt, batch, device, precision) -> tuple[float, float, float]:
    """One InfoNCE training step of the reference CLIP, timed as PFCVR's."""
    return timed_step(lambda: ref(batch["images"], batch["caption_ids"]), opt, device, precision)


def measure(steppers: dict, device, warmup: int, steps: int) -> dict:
    """``steppers``: {label: (parameters, step(opt) -> (fwd, bwd, opt) seconds)}. Per run: peak
    memory over its warm-up steps (runs one after the other, each with only its own optimizer
    state alive), then median step times over ``steps`` steps taken alternately (baseline, full,
    reference, baseline, ...), so that all see the same machine load.

    Returns {label: (n_params, peak_bytes, [step_ms, fwd_ms, bwd_ms, opt_ms])}.
    """
    adam = dict(lr=1e-5, eps=1e-3, weight_decay=4e-5, fused=True)
    peaks = {}
    for label, (params, step) in steppers.items():
        opt = torch.optim.Adam(params, **adam)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as rss:
            for _ in range(max(warmup, 1)):
                step(opt)
        peaks[label] = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                        else rss.peak)
        del opt
    opts = {k: torch.optim.Adam(p, **adam) for k, (p, _) in steppers.items()}
    for label, (_, step) in steppers.items():      # allocates the Adam state: not timed
        step(opts[label])
    times = {k: [] for k in steppers}
    for _ in range(steps):
        for label, (_, step) in steppers.items():
            times[label].append(step(opts[label]))
    out = {}
    for label, rows in times.items():
        fwd, bwd, opt_s = (statistics.median(col) for col in zip(*rows))
        total = statistics.median(sum(r) for r in rows)
        n = sum(p.numel() for p in steppers[label][0])
        out[label] = (n, peaks[label], [1000 * x for x in (total, fwd, bwd, opt_s)])
    return out


def run_config(name: str, args, device) -> float:
    overrides = dict(_parse_set(item) for item in args.set)
    params = load_params(args.params, overrides=overrides)
    cfg = params.model if name == "tiny" else preset("paper")
    batch_size = args.batch_size or (params.train.batch_size if name == "tiny" else 5)
    on_cpu = device.type == "cpu"
    warmup = args.warmup if args.warmup is not None else (1 if name == "paper" and on_cpu else 3)
    steps = args.steps if args.steps is not None else (2 if name == "paper" and on_cpu else 10)
    precision = args.precision or ("fp32" if on_cpu else "bf16")
    t0 = time.perf_counter()
    if cfg.backbone not in ("tiny", "pretrained"):
        raise SystemExit(f"{args.params}: model.backbone={cfg.backbone!r}; this benchmark builds "
                         f"random-weight models through the tiny path only")
    # `pretrained` has the tiny architecture; a speed benchmark needs no trained weights
    cfg = cfg.model_copy(update={"backbone": "tiny"})
    vocab = cfg.tiny.vocab_size
    tok = Tokenizer.train(random_corpus(20_000 if vocab > 5000 else 2_000), vocab,
                          cfg.tiny.context_length)
    torch.manual_seed(0)
    n_classes = 1257 if name == "paper" else 100       # ~70 % of T2I-VeRW's ids, as the reference
    model = build_model(cfg, n_classes, tok).to(device).train()
    batch = random_batch(model, batch_size, n_classes, device)
    t = cfg.tiny
    print(f"== {name} config: vision {t.vision_width}x{t.vision_layers}, text "
          f"{t.text_width}x{t.text_layers}, {cfg.image_size} px / patch {cfg.patch_size} "
          f"({model.grid_size ** 2} patches), vocab {tok.vocab_size}, B={batch_size}, on {device} "
          f"({precision}, {torch.get_num_threads()} threads); built in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{'run':10s}{'losses':22s}{'params':>9s}{'step ms':>10s}{'fwd':>9s}{'bwd':>9s}"
          f"{'opt':>8s}{'peak mem':>11s}", flush=True)
    runs = {"baseline": BASE, "full": FULL}
    steppers = {label: (trained_parameters(model, batch, crit, device, precision),
                        lambda opt, crit=crit: train_step(model, opt, batch, crit, device,
                                                          precision))
                for label, crit in runs.items()}
    torch.manual_seed(0)
    ref = ReferenceCLIP(cfg, tok.vocab_size, tok.eot_id).to(device).train()
    steppers["reference"] = (list(ref.parameters()),
                             lambda opt: reference_step(ref, opt, batch, device, precision))
    results = measure(steppers, device, warmup, steps)
    losses = {**{label: "+".join(n for n in c.names if n in c.terms) for label, c in runs.items()},
              "reference": "InfoNCE (plain CLIP)"}
    for label in steppers:
        n_params, peak, (step, fwd, bwd, optm) = results[label]
        print(f"{label:10s}{losses[label]:22s}{n_params / 1e6:8.1f}M{step:10.0f}{fwd:9.0f}"
              f"{bwd:9.0f}{optm:8.0f}{peak / 2**30:9.2f} GB", flush=True)
    print(f"{name}: per run {max(warmup, 1)} warm-up (peak memory) + 1 untimed + {steps} timed "
          f"steps, timed steps alternating between the runs (medians)", flush=True)
    step_ms = {label: r[2][0] for label, r in results.items()}
    return step_ms["full"] / step_ms["baseline"], step_ms["baseline"] / step_ms["reference"]


def _parse_set(item: str):
    import yaml

    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("tiny", "paper", "both"), default="both")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; paper on "
                    "CPU 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; "
                    "paper on CPU 1)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: train.batch_size for tiny, 5 (official) for paper")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                    help="default fp32 on CPU, bf16 autocast on GPU")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params.yaml key for the tiny config, e.g. "
                         "--set model.mlm_decoder.layers=1 (repeatable)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    # tiny first: peak RSS is a process-wide high-water mark, so a config measured after a larger
    # one would report the larger one's peak.
    names = ("tiny", "paper") if args.config == "both" else (args.config,)
    # torch's default (one thread per core) spin-waits on a shared machine: use what training uses.
    set_cpu_threads(load_params(args.params).train.cpu_threads)
    ratios = {}
    for name in names:
        ratios[name] = run_config(name, args, device)
        print(f"{name} full/baseline step ratio: {ratios[name][0]:.2f}; baseline/reference step "
              f"ratio: {ratios[name][1]:.2f}", flush=True)
    print(f"baseline/reference step ratio: {ratios[names[0]][1]:.2f}")
    print(f"full/baseline step ratio: {ratios[names[0]][0]:.2f}")


if __name__ == "__main__":
    main()
