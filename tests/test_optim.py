"""Optimiser parameter groups (lr multipliers, weight decay) and the warm-up + cosine schedule."""
import math

import pytest
import torch
from torch import nn

from pfcvr.config import load_params
from pfcvr.engine.optim import (WarmupCosine, build_optimizer, build_scheduler, param_groups,
                                param_rule)


class Named(nn.Module):
    """Parameters named like the PFCVR model's branches."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(4, 4)
        self.mlm = nn.ModuleDict({"cross_attn": nn.Linear(4, 4), "head": nn.Linear(4, 8)})
        self.classifier = nn.Linear(4, 3)
        self.mim = nn.ModuleDict({"cross_attn": nn.Linear(4, 4)})
        self.part_queries = nn.Parameter(torch.zeros(6, 4))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


@pytest.fixture(scope="module")
def cfg():
    return load_params("params.yaml", overrides={"train.lr": 1e-4, "train.lr_new_modules": 5.0,
                                                  "train.lr_bias": 2.0,
                                                  "train.weight_decay": 4e-5}).train


@pytest.mark.parametrize("name,new,bias", [
    ("mlm.cross_attn.in_proj_weight", True, False),
    ("mlm.head.2.bias", True, True),
    ("classifier.weight", True, False),
    ("classifier.bias", True, True),
    ("mim.blocks.0.cross_attn.qkv.weight", False, False),     # MIM stays at x1 (official)
    ("mim.pos_embed", False, False),
    ("part.pool_bias", False, True),
    ("part.layers.0.cross_attn.in_proj_bias", False, True),
    ("backbone.clip.vision_model.encoder.layers.0.mlp.fc1.bias", False, True),
])
def test_param_rule(name, new, bias):
    assert param_rule(name) == (new, bias)


def test_model_declares_its_new_modules(cfg):
    class Declared(Named):
        NEW_MODULES = ("mim",)
    names = {g["name"]: g["param_names"] for g in param_groups(Declared(), cfg)}
    assert names["new"] == ["mim.cross_attn.weight"]


def test_groups_lr_and_decay(cfg):
    model = Named()
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert set(groups) == {"base", "base_bias", "new", "new_bias"}
    assert groups["base"]["lr"] == pytest.approx(1e-4)
    assert groups["base_bias"]["lr"] == pytest.approx(2e-4)
    assert groups["new"]["lr"] == pytest.approx(5e-4)
    assert groups["new_bias"]["lr"] == pytest.approx(5e-4)
    assert groups["base"]["weight_decay"] == pytest.approx(4e-5)
    assert groups["new"]["weight_decay"] == pytest.approx(4e-5)
    assert groups["base_bias"]["weight_decay"] == 0.0 and groups["new_bias"]["weight_decay"] == 0.0
    assert set(groups["new"]["param_names"]) == {"mlm.cross_attn.weight", "mlm.head.weight",
                                                 "classifier.weight"}
    assert "mim.cross_attn.weight" in groups["base"]["param_names"]
    # every trainable parameter exactly once, frozen ones not at all
    ids = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(ids) == len(set(ids))


def test_optimizer_settings(cfg):
    opt = build_optimizer(Named(), cfg, "cpu")
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["eps"] == cfg.adam_eps and opt.defaults["betas"] == (0.9, 0.999)
    assert not opt.defaults.get("fused")


def test_weight_decay_is_l2_on_gradient(cfg):
    """Adam's decay adds wd * w to the gradient: with a zero loss gradient, a weight still moves."""
    model = nn.Linear(3, 3)
    opt = build_optimizer(model, cfg, "cpu")
    before_w, before_b = model.weight.detach().clone(), model.bias.detach().clone()
    (model.weight.sum() * 0 + model.bias.sum() * 0).backward()
    opt.step()
    assert not torch.equal(model.weight, before_w)       # decayed
    assert torch.equal(model.bias, before_b)             # bias: no decay


def test_official_per_epoch_schedule():
    """One iteration per epoch reproduces §5: 0.10, 0.28, 0.46, 0.64, 0.82, then cosine over 55."""
    f = WarmupCosine(total_steps=60, warmup_steps=5)
    assert [round(f(e), 2) for e in range(5)] == [0.10, 0.28, 0.46, 0.64, 0.82]
    assert f(5) == pytest.approx(1.0)
    assert f(59) == pytest.approx(0.5 * (1 + math.cos(math.pi * 54 / 55)))
    assert f(59) < 1e-3


def test_scheduler_stepped_per_iteration(cfg):
    cfg = load_params("params.yaml", overrides={"train.epochs": 3, "train.warmup_epochs": 0.5,
                                                 "train.lr": 1e-3}).train
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg, "cpu")
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs, ratios = [], []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        ratios.append(opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4)                            # 0.1 x base
    assert lrs[5] == pytest.approx(1e-3)                            # warm-up (5 iterations) done
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6]))            # linear rise
    assert all(a > b for a, b in zip(lrs[5:29], lrs[6:30]))         # cosine decay
    assert lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 24 / 25)))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)   # cosine ends at 0
    # the bias group follows the same factor
    assert ratios == pytest.approx([cfg.lr_bias] * 30)


def test_no_warmup_and_empty_loader(cfg):
    f = WarmupCosine(total_steps=4, warmup_steps=0)
    assert f(0) == 1.0 and f(2) == pytest.approx(0.5)
    opt = build_optimizer(nn.Linear(2, 2), cfg, "cpu")
    with pytest.raises(ValueError, match="train.batch_size"):
        build_scheduler(opt, cfg, steps_per_epoch=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_on_cuda(cfg):
    opt = build_optimizer(nn.Linear(2, 2).cuda(), cfg, "cuda")
    assert opt.defaults["fused"]


def test_groups_of_the_real_model():
    """On PFCVR itself: the MLM branch and the ID classifier are the new modules, nothing else."""
    from pfcvr.config import parse_params, read_raw, set_dotted
    from pfcvr.model import build_model, build_tokenizer
    from tests.support.train_helpers import TINY

    raw = read_raw("params.yaml")
    for k, v in TINY.items():
        set_dotted(raw, k, v)
    params = parse_params(raw)
    captions = [f"a {c} car with {w} wheels" for c in ("red", "blue", "white", "black")
                for w in ("black", "silver", "gold")] * 5
    model = build_model(params.model, 7, build_tokenizer(params.model, captions))
    groups = {g["name"]: g for g in param_groups(model, params.train)}
    new = groups["new"]["param_names"] + groups["new_bias"]["param_names"]
    base = groups["base"]["param_names"] + groups["base_bias"]["param_names"]
    assert new and all(n.split(".")[0] in ("mlm", "classifier") for n in new)
    assert {n for n, _ in model.named_parameters() if n.startswith(("mlm.", "classifier."))} == set(new)
    assert any(n.startswith("mim.") for n in base) and any(n.startswith("part.") for n in base)
    assert any(n.startswith("backbone.") for n in base)
    assert all(n.split(".")[-1].endswith("bias") for n in groups["base_bias"]["param_names"])
    lr = params.train.lr
    assert groups["new"]["lr"] == pytest.approx(lr * params.train.lr_new_modules)
    assert groups["base_bias"]["lr"] == pytest.approx(lr * params.train.lr_bias)
