"""Optimiser and learning-rate schedule (docs/method.md §5, adapted).

Official rules, per parameter name: "cross" -> lr x5; "bias" -> lr x2 and no weight decay
(overriding x5); "classifier"/"mlm_head" -> lr x5. In the official code that puts x5 on the MLM
branch (cross-attention, its transformer, its head) and on the ID classifier, and x1 on everything
else, the new part and MIM modules included.

Adapted rule (one function, :func:`param_rule`): a parameter of a *new module* (the MLM branch or
the ID classifier: the model's ``NEW_MODULES``, see :data:`DEFAULT_NEW_MODULES`) gets
``train.lr_new_modules``, its biases included; any other bias gets ``train.lr_bias``; biases
never decay. The only difference to the
official order is that the MLM cross-attention biases get x5 instead of x2 (their weights get x5
in both). Adam's weight decay is the L2 term added to the gradient, as in the official code.

Schedule: linear warm-up from 0.1x over ``train.warmup_epochs``, then cosine to 0, evaluated per
*iteration* so that runs of a few epochs behave like the official 5 + 55 epoch recipe.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# Top-level modules trained at lr x lr_new_modules when the model does not say otherwise; a model
# declares its own with a ``NEW_MODULES`` class attribute (pfcvr.model.PFCVR: the MLM branch `mlm`
# and the ID classifier `classifier`). The MIM decoder also has cross-attention but stays at x1,
# as in the official code, whose rule only catches the MLM cross-attention.
DEFAULT_NEW_MODULES = ("mlm", "classifier")

WARMUP_START = 0.1  # the official warm-up starts at 0.1x the base lr


def param_rule(name: str, new_modules: tuple[str, ...] = DEFAULT_NEW_MODULES) -> tuple[bool, bool]:
    """(is_new_module, is_bias) for a name from ``model.named_parameters()``.

    New: the first dotted component is one of ``new_modules``. Bias: the last component ends
    with "bias" (``bias``, ``in_proj_bias``, ``pool_bias``; the official rule is "contains").
    """
    parts = name.split(".")
    return parts[0] in new_modules, parts[-1].endswith("bias")


def param_groups(model: nn.Module, cfg) -> list[dict]:
    """Adam parameter groups for ``model`` from the ``train`` params section ``cfg``.

    Returns at most four groups (base, base biases, new modules, new-module biases), each with
    ``name``, ``params``, ``lr``, ``weight_decay`` and ``param_names`` (for inspection).
    """
    base_lr, new_mult, bias_mult, wd = cfg.lr, cfg.lr_new_modules, cfg.lr_bias, cfg.weight_decay
    new_modules = tuple(getattr(model, "NEW_MODULES", DEFAULT_NEW_MODULES))
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new, bias = param_rule(name, new_modules)
        key = ("new" if new else "base") + ("_bias" if bias else "")
        if new:
            lr = base_lr * new_mult
        else:
            lr = base_lr * (bias_mult if bias else 1.0)
        g = groups.setdefault(key, {"name": key, "params": [], "param_names": [], "lr": lr,
                                    "weight_decay": 0.0 if bias else wd})
        g["params"].append(p)
        g["param_names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    order = ("base", "base_bias", "new", "new_bias")
    return [groups[k] for k in order if k in groups]


def build_optimizer(model: nn.Module, cfg, device: torch.device | str = "cpu") -> torch.optim.Adam:
    """Adam (betas 0.9/0.999, eps ``train.adam_eps``, L2 decay per group); fused on CUDA."""
    groups = param_groups(model, cfg)
    fused = torch.device(device).type == "cuda"
    # param_names is bookkeeping only; Adam keeps unknown group keys, and state_dict saves them.
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps,
                            fused=fused or None)


class WarmupCosine:
    """lr factor at iteration ``step`` (0-based): warm-up 0.1 -> 1, then cosine 1 -> 0.

    ``factor(s) = 0.1 + 0.9 * s / W`` for ``s < W``, then ``0.5 * (1 + cos(pi * (s - W) / (T - W)))``
    with W warm-up and T total iterations; the official per-epoch schedule is the case of one
    iteration per epoch (W = 5, T = 60).
    """

    def __init__(self, total_steps: int, warmup_steps: int):
        if total_steps < 1:
            raise ValueError(f"schedule needs at least one step, got total_steps={total_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(max(warmup_steps, 0), total_steps - 1))

    def __call__(self, step: int) -> float:
        w, t = self.warmup_steps, self.total_steps
        if step < w:
            return WARMUP_START + (1.0 - WARMUP_START) * step / w
        return 0.5 * (1.0 + math.cos(math.pi * min(step - w, t - w) / (t - w)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int,
                    epochs: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration warm-up + cosine over ``epochs`` (default ``train.epochs``) epochs."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: the training loader yields no batch "
                         "(train.batch_size larger than the training split?)")
    epochs = cfg.epochs if epochs is None else epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    fn = WarmupCosine(epochs * steps_per_epoch, warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
