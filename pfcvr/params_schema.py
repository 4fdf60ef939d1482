"""The params.yaml schema: one pydantic model per section, with constraints and no defaults.

Only declarations live here; :mod:`pfcvr.config` reads the file, merges ablation variants and
words pydantic's errors as one line naming the dotted key. Each ``Field(...)`` carries only
constraints: every field is required, because every default lives in params.yaml.
"""
from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from pfcvr.data.sources import SOURCES

# data.source: "synthetic" or a dataset that pfcvr.data.sources has a reader layout for. Built from
# that table, so a new reader is one entry there (tests/test_config.py checks the two agree).
DataSource = Literal[SOURCES]


class Section(BaseModel):
    """Base of every params section: closed, strict, finite floats, no defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# One model per params.yaml section, same names, same order.

class SplitFractions(Section):
    train: float = Field(gt=0.0, le=1.0)
    val: float = Field(ge=0.0, le=1.0)
    test: float = Field(gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self):  # the message continues the key that the error wording prepends
        parts = dict(self.__dict__)
        if abs(sum(parts.values()) - 1.0) > 1e-6:
            raise ValueError(f"={parts}: fractions must sum to 1 (got {sum(parts.values()):g})")
        return self


class ViewMix(Section):
    side_left: float = Field(ge=0.0)
    side_right: float = Field(ge=0.0)
    front: float = Field(ge=0.0)
    rear: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _one_positive(self):
        if sum(self.__dict__.values()) <= 0:
            raise ValueError(": at least one view weight must be positive")
        return self


class SyntheticConfig(Section):
    n_ids: int = Field(ge=6, le=100_000)
    images_per_id: int = Field(ge=1, le=100)
    captions_per_image: int = Field(ge=1, le=20)
    image_size: int = Field(ge=32, le=1024)
    split: SplitFractions
    views: ViewMix
    family_size: int = Field(ge=1, le=1000)
    caption_error_rate: float = Field(ge=0.0, le=0.5)


class DataConfig(Section):
    source: DataSource
    root: str
    annotations: str
    val_fraction: float = Field(ge=0.0, lt=1.0)
    on_error: Literal["raise", "skip"]
    synthetic: SyntheticConfig


class PartsConfig(Section):
    source: Literal["annotations", "groundingdino", "prior"]
    detector: str
    prompt: str
    box_threshold: float = Field(ge=0.0, le=1.0)
    text_threshold: float = Field(ge=0.0, le=1.0)
    batch_size: int = Field(ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda"]
    unknown_category: Literal["error", "ignore"]


class TinyBackbone(Section):
    vision_width: int = Field(ge=8, le=4096)
    vision_layers: int = Field(ge=1, le=64)
    vision_heads: int = Field(ge=1, le=64)
    text_width: int = Field(ge=8, le=4096)
    text_layers: int = Field(ge=1, le=64)
    text_heads: int = Field(ge=1, le=64)
    context_length: int = Field(ge=8, le=512)
    vocab_size: int = Field(ge=516, le=100_000)   # >= 4 specials + 2 x 256 bytes
    stem: Literal["conv", "patch"]


class PartDecoderConfig(Section):
    layers: int = Field(ge=1, le=24)
    heads: int = Field(ge=1, le=64)
    ffn_dim: int = Field(ge=8, le=16384)
    dropout: float = Field(ge=0.0, lt=1.0)


class MLMDecoderConfig(Section):
    layers: int = Field(ge=1, le=24)
    heads: int = Field(ge=1, le=64)


class MIMDecoderConfig(Section):
    layers: int = Field(ge=1, le=24)
    heads: int = Field(ge=1, le=64)
    head_dim: int = Field(ge=4, le=512)
    ffn_dim: int = Field(ge=8, le=16384)


class ModelConfig(Section):
    backbone: str
    image_size: int = Field(ge=16, le=2048)
    patch_size: int = Field(ge=2, le=64)
    embed_dim: int = Field(ge=8, le=4096)
    tiny: TinyBackbone
    temperature: float = Field(gt=0.0, le=10.0)
    part_context: Literal["caption", "image"]
    cls_pos_quirk: bool
    part_decoder: PartDecoderConfig
    mlm_decoder: MLMDecoderConfig
    mim_decoder: MIMDecoderConfig

    @model_validator(mode="after")
    def _stem_fits_patch(self):  # the message continues the key ``model``
        if self.tiny.stem == "conv" and self.patch_size % 4:
            raise ValueError(f".patch_size={self.patch_size}: model.tiny.stem=conv needs a patch "
                             f"size divisible by 4 (set model.tiny.stem: patch, or a patch size "
                             f"such as 8, 12 or 16)")
        return self


class LossWeights(Section):
    sdm: float = Field(ge=0.0, le=100.0)
    id: float = Field(ge=0.0, le=100.0)
    mlm: float = Field(ge=0.0, le=100.0)
    mim: float = Field(ge=0.0, le=100.0)
    part: float = Field(ge=0.0, le=100.0)


class TrainConfig(Section):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=2, le=65_536)
    lr: float = Field(gt=0.0, le=1.0)
    lr_new_modules: float = Field(gt=0.0, le=1000.0)
    lr_bias: float = Field(gt=0.0, le=1000.0)
    weight_decay: float = Field(ge=0.0, le=1.0)
    adam_eps: float = Field(gt=0.0, le=1.0)
    warmup_epochs: float = Field(ge=0.0, le=10_000.0)
    grad_clip: float = Field(ge=0.0)
    precision: Literal["fp32", "bf16", "fp16"]
    device: Literal["auto", "cpu", "cuda"]
    num_workers: int = Field(ge=0, le=256)
    cpu_threads: int = Field(ge=0, le=1024)
    seed_workers: int = Field(ge=1, le=1024)
    compile: bool
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs",
                          "max-autotune"]
    eval_every: int = Field(ge=1, le=10_000)
    log_every: int = Field(ge=0, le=10_000_000)
    hflip: float = Field(ge=0.0, le=1.0)
    flip_masks: bool
    mask_ratio: float = Field(ge=0.0, lt=1.0)
    text_mask_ratio: float = Field(ge=0.0, lt=1.0)
    mim_mask: Literal["part", "random"]
    weights: LossWeights


class PretrainConfig(Section):
    n_ids: int = Field(ge=1, le=10_000_000)
    images_per_id: int = Field(ge=1, le=100)
    captions_per_image: int = Field(ge=1, le=20)
    part_rate: float = Field(ge=0.0, le=1.0)
    steps: int = Field(ge=1, le=100_000_000)
    warmup_steps: int = Field(ge=0, le=100_000_000)
    batch_size: int = Field(ge=2, le=65_536)
    lr: float = Field(gt=0.0, le=1.0)
    weight_decay: float = Field(ge=0.0, le=10.0)
    hflip: float = Field(ge=0.0, le=1.0)
    eval_every: int = Field(ge=1, le=100_000_000)


class EvalConfig(Section):
    batch_size: int = Field(ge=1, le=65_536)
    chunk_size: int = Field(ge=1, le=10_000_000)
    part_fusion: float = Field(ge=0.0, le=100.0)
    topk_queries: int = Field(ge=1, le=100)


class ReportConfig(Section):
    variants: list[str]
    seeds: list[int]


class TuneConfig(Section):
    n_trials: int = Field(ge=1, le=100_000)
    timeout: float = Field(gt=0.0)
    epochs: int = Field(ge=1, le=10_000)
    sampler_seed: int = Field(ge=0)
    heartbeat_interval: int = Field(ge=1, le=86_400)   # s between a running trial's heartbeats
    grace_period: int = Field(ge=2, le=604_800)        # s without one before the trial is failed
    space: dict[str, Any]             # the model/train tree, leaves [low, high] (see _space_tree)

    @model_validator(mode="after")
    def _grace_above_heartbeat(self):  # the message continues the key ``tune``
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f".grace_period={self.grace_period}: must be above "
                             f"tune.heartbeat_interval={self.heartbeat_interval} (a live worker's "
                             "trial would be failed between two heartbeats); e.g. ten heartbeats")
        return self

    @field_validator("space")
    @classmethod
    def _space_tree(cls, space: dict) -> dict:
        """The shape of `tune.space` (nested mappings, leaves lists of finite numbers, stored as
        floats); which parameters the leaves name and their bounds are checked by
        ``pfcvr.config.parse_params``. The messages continue the key ``tune.space``."""
        return _check_space_node(space, "")

    @property
    def ranges(self) -> dict[str, list[float]]:
        """`space` flattened to dotted names, ``{'train.mask_ratio': [0.3, 0.9], ...}``, in the
        file's order: the names of the Optuna params, of the trials' MLflow params and of the
        `dvc exp run -S` line that applies a trial's values."""
        return space_ranges(self.space)


class TrackingConfig(Section):
    required: bool


# A variant's name becomes a DVC stage name (train@<name>), folder and file names
# (models/<name>, reports/metrics/<name>.json), MLflow run names, metric keys (<name>/R1) and the
# registered model pfcvr-<name>. These characters are valid in all of them, so a name is refused
# here, in one line, instead of failing late in one of them (names are data; issue 23).
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Names that other stages already use in the same folders (models/pretrained,
# reports/metrics/zero_shot.json), and the keys reports/ablation.json writes next to the variants.
RESERVED_VARIANTS = ("pretrained", "zero_shot", "paired", "mde", "mde_R1", "environment")


class Params(Section):
    seed: int = Field(ge=0, le=2**31 - 1)
    data: DataConfig
    parts: PartsConfig
    model: ModelConfig
    pretrain: PretrainConfig
    train: TrainConfig
    eval: EvalConfig
    ablations: dict[str, Any]         # variant -> sparse patch; checked by parse_params
    report: ReportConfig
    tune: TuneConfig
    tracking: TrackingConfig
    # Not params.yaml keys: set by parse_params for a merged ablation variant.
    _variant: str | None = PrivateAttr(default=None)
    _description: str | None = PrivateAttr(default=None)

    @field_validator("ablations")
    @classmethod
    def _variant_names(cls, ablations: dict) -> dict:
        """Every variant name is usable (:data:`VARIANT_NAME`) and not reserved; the messages
        continue the key ``ablations``. The variants' contents are checked by parse_params."""
        for name in ablations:
            text = str(name)
            if not VARIANT_NAME.fullmatch(text) or text.endswith("."):
                raise ValueError(
                    f".{text}: a variant name must be 1-64 letters, digits, '_', '-' or '.', "
                    "starting with a letter or digit (it becomes a DVC stage, a folder and "
                    "MLflow run, metric and model names); rename the variant")
            if text in RESERVED_VARIANTS:
                raise ValueError(f".{text}: the name is used by another stage's outputs "
                                 f"(reserved: {', '.join(RESERVED_VARIANTS)}); rename the variant")
        return ablations

    @property
    def variant(self) -> str | None:
        """The ablation variant these params were merged for (None: the base params)."""
        return self._variant

    @property
    def description(self) -> str | None:
        """The merged variant's description (its name if it has none); None for the base."""
        return self._description


# ----------------------------------------------------------------------------------------------
# tune.space: a tree of [low, high] leaves
# ----------------------------------------------------------------------------------------------

def _nested_form(key: str) -> str:
    """``train.weights.mlm`` -> ``train: {weights: {mlm: [low, high]}}`` (for messages)."""
    text = "[low, high]"
    for part in reversed(key.split(".")[1:]):
        text = f"{{{part}: {text}}}"
    return f"{key.split('.')[0]}: {text}"


def _check_space_node(node: dict, path: str) -> dict:
    """``node`` of `tune.space` checked and copied, leaves as float lists; ValueError worded as
    the rest of a message that starts with ``tune.space``."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        where = f"{path}.{key}"
        if not isinstance(key, str):
            raise ValueError(f"{where}: a key must be a parameter name")
        if "." in key:   # the form before the tree: `dvc exp run -S` cannot address it
            raise ValueError(f"{where}: a dotted key; write tune.space as the params tree, "
                             f"`{_nested_form(where[1:])}`, the form that `dvc exp run -S "
                             f"tune.space{where}=[low,high]` sets")
        if isinstance(value, dict):
            out[key] = _check_space_node(value, where)
        elif value is None:
            raise ValueError(f"{where}: empty (null); write [low, high] or the searched "
                             f"parameters below it, or remove it (-S '~tune.space{where}')")
        elif not isinstance(value, list):
            raise ValueError(f"{where}={value!r}: must be a list")
        else:
            for i, bound in enumerate(value):
                if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                    raise ValueError(f"{where}[{i}]={bound!r}: must be a number")
                if not math.isfinite(bound):
                    raise ValueError(f"{where}[{i}]={bound!r}: must be a finite number")
            out[key] = [float(b) for b in value]
    return out


def space_ranges(space: dict, prefix: str = "") -> dict[str, list[float]]:
    """A `tune.space` tree (as checked by ``TuneConfig``) as ``{dotted name: [low, high]}``."""
    out: dict[str, list[float]] = {}
    for key, value in space.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(space_ranges(value, name))
        else:
            out[name] = value
    return out

