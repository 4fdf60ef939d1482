"""Small stand-ins that follow the model and batch contracts, for the training-engine tests.

The real PFCVR model is exercised by the integration tests; these keep the engine tests (resume,
non-finite guard, DDP arithmetic) to a fraction of a second per epoch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pfcvr.config import load_params


class StandInModel(nn.Module):
    """``forward(batch, *, terms, mask_ratio, text_mask_ratio, mim_mask) -> PFCVROutput(id, mim)``,
    the unweighted terms named in ``terms`` (``id`` and/or ``mim``), as the real model.

    Uses the global RNG (random input masking, dropout) like the real model, so RNG handling
    matters for exact resume. ``nan_at`` makes the 'mim' term NaN at that forward call (1-based).
    ``randomness=False`` makes the per-sample loss a pure function of the sample (for DDP checks).
    """

    def __init__(self, n_in: int = 6, dim: int = 16, n_classes: int = 4, nan_at: int | None = None,
                 randomness: bool = True):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(n_in, dim), nn.GELU(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(0.2 if randomness else 0.0)
        self.id_classifier = nn.Linear(dim, n_classes)
        self.mim_head = nn.Linear(dim, n_in)
        self.nan_at, self.calls, self.randomness = nan_at, 0, randomness
        self.seen_dtype = None

    def forward(self, batch, *, terms, mask_ratio, text_mask_ratio, mim_mask):
        from pfcvr.model import PFCVROutput

        self.calls += 1
        x = batch["x"]
        if self.randomness:
            keep = (torch.rand(x.shape, device=x.device) >= mask_ratio * 0.2).to(x.dtype)
        else:
            keep = torch.ones_like(x)
        h = self.drop(self.backbone(x * keep))
        self.seen_dtype = h.dtype
        out = PFCVROutput()
        if "id" in terms:
            out.id = F.cross_entropy(self.id_classifier(h).float(), batch["pids"])
        if "mim" in terms:
            out.mim = F.mse_loss(self.mim_head(h).float(), x.float())
            if self.nan_at is not None and self.calls == self.nan_at:
                out.mim = out.mim * float("nan")
        return out


class StandInData(Dataset):
    """``n`` samples of 4 classes; ``__getitem__`` adds torch-RNG noise (an augmentation)."""

    def __init__(self, n: int = 48, n_in: int = 6, noise: float = 0.05, seed: int = 123):
        g = torch.Generator().manual_seed(seed)
        self.pids = torch.arange(n) % 4
        centers = torch.randn(4, n_in, generator=g)
        self.x = centers[self.pids] + 0.5 * torch.randn(n, n_in, generator=g)
        self.noise = noise

    def __len__(self):
        return len(self.pids)

    def __getitem__(self, i):
        x = self.x[i]
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return {"x": x, "pids": self.pids[i], "image_index": torch.tensor(i)}


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def nearest_center_eval(data: StandInData):
    """A val 'Rank-1': accuracy of the ID classifier on clean samples (percent)."""
    def evaluate(model: nn.Module) -> dict:
        model.eval()
        with torch.no_grad():
            h = model.backbone(data.x)
            acc = (model.id_classifier(h).argmax(1) == data.pids).float().mean().item() * 100
        return {"R1": acc, "mAP": acc / 2}
    return evaluate


def save_state(model: nn.Module, folder, extra: dict) -> None:
    torch.save({"model": model.state_dict(), "extra": extra}, folder / "weights.pt")


def train_cfg(**overrides):
    base = {"train.epochs": 3, "train.batch_size": 8, "train.lr": 1e-2, "train.warmup_epochs": 0.5,
            "train.eval_every": 1, "train.log_every": 2, "train.grad_clip": 5.0,
            "train.precision": "fp32", "train.device": "cpu", "train.num_workers": 0,
            "train.weights": {"sdm": 0.0, "id": 1.0, "mlm": 0.0, "mim": 0.5, "part": 0.0}}
    base.update({f"train.{k}" if not k.startswith("train.") else k: v for k, v in overrides.items()})
    return load_params("params.yaml", overrides=base)


def trainer_losses(params) -> dict:
    """The loss arguments of a Trainer from the params: ``criterion`` and ``forward_kwargs``."""
    from pfcvr.engine.train import forward_kwargs
    from pfcvr.losses import Criterion

    return {"criterion": Criterion(params.train.weights),
            "forward_kwargs": forward_kwargs(params.train)}


def join_world(rank: int, world: int, port: int):
    """One CPU process of a gloo world of ``world`` ranks (a world of one needs no rendezvous)."""
    import os

    from pfcvr.engine import distributed as D

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    info = D.env_info()
    D.init(torch.device("cpu"), info)
    return info

def ddp_worker(rank: int, world: int, port: int, workdir: str) -> None:
    """One rank of the two-process test (also world=1, rank=0 for the single-process reference).

    One optimisation step of the stand-in on 8 samples (global batch 8); saves the gradients of
    that step, the history and a weighted metric reduction to ``workdir/rank<r>_of<world>.pt``.
    """
    import os
    from pathlib import Path

    from pfcvr.engine import distributed as D
    from pfcvr.engine.loader import EpochLoader, seed_everything
    from pfcvr.engine.trainer import Trainer

    info = join_world(rank, world, port)
    try:
        params = train_cfg(epochs=1, batch_size=8, grad_clip=0.0)
        seed_everything(0)
        model = StandInModel(randomness=False)
        if rank:  # DDP must broadcast rank 0's initial weights
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        data = StandInData(n=8, noise=0.0)
        loader = EpochLoader(data, collate, batch_size=8, seed=0, info=info)
        seen = []
        orig = model.forward

        def spy(batch, **kw):
            seen.append(batch["image_index"].clone())
            return orig(batch, **kw)
        model.forward = spy
        trainer = Trainer(model, loader, cfg=params.train, **trainer_losses(params),
                          device=torch.device("cpu"), out_dir=Path(workdir) / f"out{world}",
                          seed=0, evaluate=nearest_center_eval(data), progress=False, info=info)
        res = trainer.fit()
        torch.save({"grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                    "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
                    "history": res.history, "seen": torch.cat(seen),
                    "reduced": D.reduce_metrics({"a": rank + 1.0, "b": 10.0 * rank},
                                                weight=rank + 1),
                    "summed": D.sum_scalar(rank + 1)},
                   Path(workdir) / f"rank{rank}_of{world}.pt")
    finally:
        D.destroy()


# ----------------------------------------------------------------------------------------------
# A tiny real project (params.yaml + synthetic data + parts) for the integration tests
# ----------------------------------------------------------------------------------------------

TINY = {
    "data.synthetic.n_ids": 24, "data.synthetic.images_per_id": 3,
    "data.synthetic.family_size": 3, "data.synthetic.image_size": 48,
    "model.backbone": "tiny",
    "model.image_size": 48, "model.patch_size": 12, "model.embed_dim": 32,
    "model.tiny": {"vision_width": 32, "vision_layers": 1, "vision_heads": 2, "text_width": 32,
                   "text_layers": 1, "text_heads": 2, "context_length": 32, "vocab_size": 600,
                   "stem": "conv"},
    "model.part_decoder": {"layers": 1, "heads": 2, "ffn_dim": 32, "dropout": 0.1},
    "model.mlm_decoder": {"layers": 1, "heads": 2},
    "model.mim_decoder": {"layers": 1, "heads": 2, "head_dim": 16, "ffn_dim": 32},
    "train.epochs": 3, "train.batch_size": 8, "train.lr": 1e-3, "train.device": "cpu",
    "train.log_every": 0, "report.seeds": [0, 1],
}


def make_project(root, overrides: dict | None = None) -> None:
    """Write ``root/params.yaml`` (TINY over the repo's params) and its prepared data + parts."""
    from pathlib import Path

    import yaml

    from pfcvr.config import parse_params, read_raw, set_dotted
    from pfcvr.data.parts import build_parts
    from pfcvr.data.synthetic import generate
    from pfcvr.runtime.atomic import write_json

    root = Path(root)
    raw = read_raw(Path(__file__).resolve().parents[2] / "params.yaml")
    for key, value in {**TINY, **(overrides or {})}.items():
        set_dotted(raw, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    records = generate(params.data.synthetic, params.seed, root / "data/prepared/images", workers=1)
    write_json(root / "data/prepared/manifest.json", records)
    write_json(root / "data/prepared/meta.json", {"source": "synthetic", "images_root": "images",
                                                  "num_records": len(records)})
    doc, _ = build_parts(records, "annotations")
    write_json(root / "data/parts/parts.json", doc)


def ddp_real_worker(rank: int, world: int, port: int, project: str, workdir: str) -> None:
    """The two-process check with the real PFCVR model on the tiny project.

    Losses that decompose over samples (ID + part; SDM compares a rank's own pairs only, MLM/MIM
    draw random masks), no dropout, no flip: then one step with two halves of a batch must give
    the gradients of one step with the whole batch. One step: a training subset of 8 pairs.
    """
    import os
    from pathlib import Path

    from torch.utils.data import Subset

    from pfcvr.config import load_params
    from pfcvr.data.dataset import ImageTextDataset, load_split, pid_map
    from pfcvr.engine import distributed as D
    from pfcvr.engine.loader import EpochLoader, seed_everything
    from pfcvr.engine.trainer import Trainer
    from pfcvr.model import build_model, build_tokenizer

    info = join_world(rank, world, port)
    try:
        root = Path(project)
        params = load_params(root / "params.yaml", overrides={
            "train.weights": {"sdm": 0.0, "id": 1.0, "mlm": 0.0, "mim": 0.0, "part": 0.5},
            "model.part_decoder.dropout": 0.0, "train.hflip": 0.0, "train.epochs": 1,
            "train.batch_size": 8, "train.grad_clip": 0.0})
        train = load_split(root / "data/prepared", root / "data/parts/parts.json", "train")
        seed_everything(0)
        tok = build_tokenizer(params.model, train.captions()[0])
        labels = pid_map(train.ids)
        model = build_model(params.model, len(labels), tok)
        ds = ImageTextDataset(train, tok, model.image_size, model.image_size // model.grid_size,
                              train=True, hflip=0.0, pid_map=labels)
        loader = EpochLoader(Subset(ds, range(8)), ds.collate, batch_size=8, seed=0, info=info)
        losses = trainer_losses(params)
        trainer = Trainer(model, loader, cfg=params.train, **losses,
                          device=torch.device("cpu"), out_dir=Path(workdir) / f"real{world}",
                          seed=0, progress=False, info=info,
                          find_unused_parameters=not losses["criterion"].all_active)
        res = trainer.fit()
        torch.save({"grads": {n: p.grad.clone() for n, p in model.named_parameters()
                              if p.grad is not None},
                    "history": res.history}, Path(workdir) / f"real_rank{rank}_of{world}.pt")
    finally:
        D.destroy()
