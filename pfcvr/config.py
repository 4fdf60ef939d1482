"""Typed, strict parameters: dataclasses mirroring params.yaml.

Every stage calls :func:`load_params` first. It validates the *whole* file (every ablation variant
and the tuning space included) before any work starts, so a typo in a `dvc exp run -S` override
fails at once with a message naming the dotted key, the value and what is allowed.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PART_CATEGORIES = ("windows", "lights", "wheels", "mirrors", "roof", "doors")


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type, or out of range."""


# ----------------------------------------------------------------------------------------------
# Access recording: with PFCVR_RECORD_PARAMS=<file>, every parameter a process reads is appended to
# that file at exit (one dotted key per line). The pipeline test uses it to prove that every key of
# params.yaml is read by some stage and that each dvc.yaml stage lists the params it reads.
# ----------------------------------------------------------------------------------------------
_RECORD_FILE = os.environ.get("PFCVR_RECORD_PARAMS")
_ACCESSED: set[str] = set()
_PAUSED = [0]


def _write_accessed() -> None:
    if _ACCESSED and _RECORD_FILE:
        stage = os.environ.get("DVC_STAGE", "")
        with open(_RECORD_FILE, "a") as fh:
            fh.writelines(f"{stage}\t{k}\n" for k in sorted(_ACCESSED))


if _RECORD_FILE:
    atexit.register(_write_accessed)


@contextlib.contextmanager
def _not_recorded():
    """Reads inside this block (logging all params, repr) do not count as consumption."""
    _PAUSED[0] += 1
    try:
        yield
    finally:
        _PAUSED[0] -= 1


class _Section:
    """Base of every params dataclass: records which keys are read (see above)."""

    _path = ""

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        fields = object.__getattribute__(self, "__dataclass_fields__")
        if _RECORD_FILE and not _PAUSED[0] and name in fields and \
                not fields[name].metadata.get("internal"):
            path = object.__getattribute__(self, "_path")
            if not isinstance(value, _Section):
                _ACCESSED.add(f"{path}.{name}" if path else name)
        return value


def _field(default, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=None):
    """A dataclass field with a range or a set of allowed values checked by the loader."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _describe_range(meta: dict) -> str:
    if meta.get("choices"):
        return "one of " + " | ".join(map(str, meta["choices"]))
    lo, hi = meta.get("lo"), meta.get("hi")
    left = "(" if meta.get("lo_open") else "["
    right = ")" if meta.get("hi_open") else "]"
    return f"must be in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def _in_range(value: float, meta: dict) -> bool:
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        return False
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Sections (one dataclass per params.yaml section, same names, same order)
# ----------------------------------------------------------------------------------------------

@dataclass
class SplitFractions(_Section):
    train: float = _field(0.6, lo=0.0, hi=1.0, lo_open=True)
    val: float = _field(0.15, lo=0.0, hi=1.0)
    test: float = _field(0.25, lo=0.0, hi=1.0, lo_open=True)

    def __post_init__(self):  # object.__getattribute__: validation is not consumption
        parts = {k: object.__getattribute__(self, k) for k in ("train", "val", "test")}
        if abs(sum(parts.values()) - 1.0) > 1e-6:
            raise ConfigError(f"data.synthetic.split={parts}: fractions must sum to 1 "
                              f"(got {sum(parts.values()):g})")


@dataclass
class ViewMix(_Section):
    side_left: float = _field(0.3, lo=0.0)
    side_right: float = _field(0.3, lo=0.0)
    front: float = _field(0.2, lo=0.0)
    rear: float = _field(0.2, lo=0.0)

    def __post_init__(self):
        if sum(object.__getattribute__(self, k) for k in ("side_left", "side_right", "front", "rear")) <= 0:
            raise ConfigError("data.synthetic.views: at least one view weight must be positive")


@dataclass
class SyntheticConfig(_Section):
    n_ids: int = _field(200, lo=6, hi=100_000)
    images_per_id: int = _field(6, lo=1, hi=100)
    captions_per_image: int = _field(2, lo=1, hi=20)
    image_size: int = _field(96, lo=32, hi=1024)
    split: SplitFractions = field(default_factory=SplitFractions)
    views: ViewMix = field(default_factory=ViewMix)
    family_size: int = _field(4, lo=1, hi=1000)
    caption_error_rate: float = _field(0.05, lo=0.0, hi=0.5)


@dataclass
class DataConfig(_Section):
    source: str = _field("synthetic", choices=("synthetic", "t2i-veri", "t2i-verw", "cuhk-pedes"))
    root: str = _field("")
    annotations: str = _field("")
    val_fraction: float = _field(0.15, lo=0.0, hi=1.0, hi_open=True)
    on_error: str = _field("raise", choices=("raise", "skip"))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class PartsConfig(_Section):
    source: str = _field("annotations", choices=("annotations", "groundingdino", "prior"))
    detector: str = _field("")
    prompt: str = _field("car window. car light. car wheel. car mirror. car roof. car door.")
    box_threshold: float = _field(0.3, lo=0.0, hi=1.0)
    text_threshold: float = _field(0.25, lo=0.0, hi=1.0)
    batch_size: int = _field(8, lo=1, hi=4096)
    device: str = _field("auto", choices=("auto", "cpu", "cuda"))


@dataclass
class TinyBackbone(_Section):
    vision_width: int = _field(64, lo=8, hi=4096)
    vision_layers: int = _field(2, lo=1, hi=64)
    vision_heads: int = _field(2, lo=1, hi=64)
    text_width: int = _field(64, lo=8, hi=4096)
    text_layers: int = _field(2, lo=1, hi=64)
    text_heads: int = _field(2, lo=1, hi=64)
    context_length: int = _field(48, lo=8, hi=512)
    vocab_size: int = _field(1024, lo=516, hi=100_000)   # >= 4 specials + 2 x 256 bytes


@dataclass
class PartDecoderConfig(_Section):
    layers: int = _field(1, lo=1, hi=24)
    heads: int = _field(2, lo=1, hi=64)
    ffn_dim: int = _field(128, lo=8, hi=16384)
    dropout: float = _field(0.1, lo=0.0, hi=1.0, hi_open=True)


@dataclass
class MLMDecoderConfig(_Section):
    layers: int = _field(1, lo=1, hi=24)
    heads: int = _field(2, lo=1, hi=64)


@dataclass
class MIMDecoderConfig(_Section):
    layers: int = _field(1, lo=1, hi=24)
    heads: int = _field(2, lo=1, hi=64)
    head_dim: int = _field(32, lo=4, hi=512)
    ffn_dim: int = _field(128, lo=8, hi=16384)


@dataclass
class ModelConfig(_Section):
    backbone: str = _field("tiny")
    image_size: int = _field(96, lo=16, hi=2048)
    patch_size: int = _field(12, lo=2, hi=64)
    embed_dim: int = _field(64, lo=8, hi=4096)
    tiny: TinyBackbone = field(default_factory=TinyBackbone)
    temperature: float = _field(0.07, lo=0.0, hi=10.0, lo_open=True)
    part_context: str = _field("caption", choices=("caption", "image"))
    cls_pos_quirk: bool = _field(False)
    part_decoder: PartDecoderConfig = field(default_factory=PartDecoderConfig)
    mlm_decoder: MLMDecoderConfig = field(default_factory=MLMDecoderConfig)
    mim_decoder: MIMDecoderConfig = field(default_factory=MIMDecoderConfig)


@dataclass
class LossWeights(_Section):
    sdm: float = _field(1.0, lo=0.0, hi=100.0)
    id: float = _field(0.5, lo=0.0, hi=100.0)
    mlm: float = _field(0.5, lo=0.0, hi=100.0)
    mim: float = _field(0.5, lo=0.0, hi=100.0)
    part: float = _field(0.2, lo=0.0, hi=100.0)


@dataclass
class TrainConfig(_Section):
    epochs: int = _field(3, lo=1, hi=10_000)
    batch_size: int = _field(32, lo=2, hi=65_536)
    lr: float = _field(1e-3, lo=0.0, hi=1.0, lo_open=True)
    lr_new_modules: float = _field(5.0, lo=0.0, hi=1000.0, lo_open=True)
    lr_bias: float = _field(2.0, lo=0.0, hi=1000.0, lo_open=True)
    weight_decay: float = _field(4e-5, lo=0.0, hi=1.0)
    adam_eps: float = _field(1e-8, lo=0.0, hi=1.0, lo_open=True)
    warmup_epochs: float = _field(1.0, lo=0.0, hi=10_000.0)
    grad_clip: float = _field(5.0, lo=0.0)
    precision: str = _field("fp32", choices=("fp32", "bf16", "fp16"))
    device: str = _field("auto", choices=("auto", "cpu", "cuda"))
    num_workers: int = _field(0, lo=0, hi=256)
    cpu_threads: int = _field(1, lo=0, hi=1024)
    eval_every: int = _field(1, lo=1, hi=10_000)
    log_every: int = _field(50, lo=0, hi=10_000_000)
    hflip: float = _field(0.5, lo=0.0, hi=1.0)
    flip_masks: bool = _field(True)
    mask_ratio: float = _field(0.75, lo=0.0, hi=1.0, hi_open=True)
    text_mask_ratio: float = _field(0.15, lo=0.0, hi=1.0, hi_open=True)
    mim_mask: str = _field("part", choices=("part", "random"))
    weights: LossWeights = field(default_factory=LossWeights)


@dataclass
class EvalConfig(_Section):
    batch_size: int = _field(128, lo=1, hi=65_536)
    chunk_size: int = _field(1024, lo=1, hi=10_000_000)
    part_fusion: float = _field(0.0, lo=0.0, hi=100.0)
    topk_queries: int = _field(6, lo=1, hi=100)


@dataclass
class ReportConfig(_Section):
    seeds: list[int] = _field([0, 1, 2])


@dataclass
class TuneConfig(_Section):
    n_trials: int = _field(4, lo=1, hi=100_000)
    timeout: float = _field(900.0, lo=0.0, lo_open=True)
    epochs: int = _field(2, lo=1, hi=10_000)
    sampler_seed: int = _field(0, lo=0)
    space: dict[str, list[float]] = _field({})


@dataclass
class TrackingConfig(_Section):
    required: bool = _field(True)


@dataclass
class Params(_Section):
    seed: int = _field(0, lo=0, hi=2**31 - 1)
    data: DataConfig = field(default_factory=DataConfig)
    parts: PartsConfig = field(default_factory=PartsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablations: dict[str, dict] = _field({})
    report: ReportConfig = field(default_factory=ReportConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Not a params.yaml key: the ablation variant these params were merged for (None = base).
    variant: str | None = field(default=None, compare=False, metadata={"internal": True})


# Sections an ablation variant may override (besides its free-text description).
VARIANT_SECTIONS = ("model", "train")


# ----------------------------------------------------------------------------------------------
# Generic strict builder
# ----------------------------------------------------------------------------------------------

def _check_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: must be a string")
        return value
    raise TypeError(f"unsupported parameter type {tp} for {key}")


def _build_value(value: Any, tp: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: must be a list")
        return [_build_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: must be a mapping")
        if val_tp is dict:
            return {k: copy.deepcopy(v) for k, v in value.items()}
        return {k: _build_value(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    return _check_scalar(value, tp, key)


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "params.yaml"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    public = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    names = {f.name for f in public}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{key}: unknown parameter; allowed keys of {where}: {', '.join(sorted(names))}")
    kwargs = {}
    for f in public:
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in data:
            continue
        value = _build_value(data[f.name], hints[f.name], key)
        meta = f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{key}={value!r}: {_describe_range(meta)}")
        if (meta.get("lo") is not None or meta.get("hi") is not None):
            items = value if isinstance(value, list) else [value]
            for v in items:
                if not _in_range(v, meta):
                    raise ConfigError(f"{key}={v!r}: {_describe_range(meta)}")
        kwargs[f.name] = value
    obj = cls(**kwargs)
    object.__setattr__(obj, "_path", prefix)
    return obj


# ----------------------------------------------------------------------------------------------
# Dotted keys
# ----------------------------------------------------------------------------------------------

def set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set ``tree['a']['b']['c'] = value`` for ``key='a.b.c'``, creating mappings on the way."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: '{p}' is not a section")
    node[parts[-1]] = value


def get_dotted(obj: Any, key: str) -> Any:
    """Read a dotted key from a Params object or a nested dict."""
    node = obj
    for p in key.split("."):
        node = node[p] if isinstance(node, dict) else getattr(node, p)
    return node


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` with ``override`` merged in recursively (override wins)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten params (dataclass or dict) to ``{'train.weights.mim': 0.5, ...}`` for logging."""
    if dataclasses.is_dataclass(obj):
        with _not_recorded():
            obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                   if not f.metadata.get("internal")}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if dataclasses.is_dataclass(v) or (isinstance(v, dict) and v):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def to_dict(params: Any) -> dict:
    """Params (or a section) as plain nested dicts, without internal fields."""
    if dataclasses.is_dataclass(params):
        with _not_recorded():
            items = [(f.name, getattr(params, f.name)) for f in dataclasses.fields(params)
                     if not f.metadata.get("internal")]
        return {k: to_dict(v) for k, v in items}
    if isinstance(params, dict):
        return {k: to_dict(v) for k, v in params.items()}
    if isinstance(params, list):
        return [to_dict(v) for v in params]
    return params


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def _merge_variant(raw: dict, name: str) -> dict:
    variant = raw.get("ablations", {}).get(name)
    if variant is None:
        known = ", ".join(sorted(raw.get("ablations", {}))) or "(none)"
        raise ConfigError(f"ablations.{name}: no such variant; defined variants: {known}")
    if not isinstance(variant, dict):
        raise ConfigError(f"ablations.{name}={variant!r}: must be a mapping")
    extra = sorted(set(variant) - set(VARIANT_SECTIONS) - {"description"})
    if extra:
        raise ConfigError(f"ablations.{name}.{extra[0]}: a variant may only override "
                          f"{', '.join(VARIANT_SECTIONS)} (plus a description)")
    if "description" in variant and not isinstance(variant["description"], str):
        raise ConfigError(f"ablations.{name}.description: must be a string")
    overrides = {k: v for k, v in variant.items() if k in VARIANT_SECTIONS}
    return deep_merge(raw, overrides)


def _validate_space(raw: dict, p: Params) -> None:
    for key, bounds in p.tune.space.items():
        where = f"tune.space.{key}"
        if key.split(".")[0] not in VARIANT_SECTIONS:
            raise ConfigError(f"{where}: only model.* and train.* parameters can be tuned")
        try:
            current = get_dotted(p, key)
        except (AttributeError, KeyError):
            raise ConfigError(f"{where}: no such parameter") from None
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise ConfigError(f"{where}: {key} is not numeric and cannot be searched")
        if len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise ConfigError(f"{where}={bounds!r}: must be [low, high] with low < high")
        for bound in bounds:  # both ends must themselves be valid values of the parameter
            probe = copy.deepcopy(raw)
            set_dotted(probe, key, int(bound) if isinstance(current, int) else float(bound))
            try:
                _build(Params, probe, "")
            except ConfigError as err:
                raise ConfigError(f"{where}: bound {bound!r} is invalid ({err})") from None


def parse_params(raw: dict, variant: str | None = None) -> Params:
    """Validate a raw params mapping completely, then return it (merged for ``variant``)."""
    with _not_recorded():  # validation is not consumption
        return _parse_params(raw, variant)


def _parse_params(raw: dict, variant: str | None) -> Params:
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: must be a mapping of sections")
    base = _build(Params, raw, "")
    for name in base.ablations:
        try:
            _build(Params, _merge_variant(raw, name), "")
        except ConfigError as err:
            raise ConfigError(f"ablations.{name}: {err}") from None
    _validate_space(raw, base)
    if variant is None:
        return base
    merged = _build(Params, _merge_variant(raw, variant), "")
    merged.variant = variant
    return merged


def read_raw(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return raw or {}


def load_params(path: str | Path = "params.yaml", variant: str | None = None,
                overrides: dict[str, Any] | None = None) -> Params:
    """Read, override (dotted keys) and validate params.yaml; merge ``variant`` if given."""
    raw = read_raw(path)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return parse_params(raw, variant)


def variant_description(params: Params, variant: str) -> str:
    return str(params.ablations.get(variant, {}).get("description", variant))
