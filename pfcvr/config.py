"""Typed, strict parameters: read, merge and validate params.yaml, which holds every default.

Every stage calls :func:`load_params` first. It validates the *whole* file (every ablation variant
and the tuning space included) before any work starts, so a typo in a `dvc exp run -S` override
fails at once with a one-line :class:`ConfigError` naming the dotted key, the value and what is
allowed, e.g. ``train.mask_ratio=1.5: must be in [0.0, 1.0)``.

Rules (the models of :mod:`pfcvr.params_schema` declare them and pydantic checks them; this
module reads the file, merges variants and words the errors):

- **No defaults in code.** Every value comes from params.yaml; a missing key is an error
  (``train.lr: missing; add it to params.yaml``). The models are closed (``extra="forbid"``) and
  strict: ``"1"`` is not 1, a bool is not a number, an int is accepted for a float (and stored as
  one), NaN and infinity are rejected.
- **YAML 1.2**, as ``dvc exp run -S`` writes the file back: ``1e-05`` is a float, ``yes``/``on``
  are strings, not booleans (:func:`read_raw`).
- **Null sections.** A section or sub-section written empty (``train:`` with everything below
  commented out reads as YAML null) is an error naming its key; it never means "built-in
  defaults", as there are none. Inside an ablation variant, which is a sparse patch over
  ``model``/``train``, a null mapping (``train:``, ``weights:``, or the whole variant) overrides
  nothing; a null *leaf* (``lr:``) is an error naming the key once merged.
- ``tune.space`` is the ``model``/``train`` tree with a ``[low, high]`` list at each searched
  leaf, so every range is an ordinary ``dvc exp run -S tune.space.<key>`` key; the code reads it
  by dotted name (``TuneConfig.ranges``: ``{'train.mask_ratio': [0.3, 0.9], ...}``).
- Overrides (``load_params(..., overrides=)``) merge over the file's values (a mapping merges into
  its section, as ``dvc exp run -S`` does), then all is validated.
"""
from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

# The models are part of this module's API: the rest of the code imports them from here.
from pfcvr.params_schema import (  # noqa: F401
    DataConfig, EvalConfig, LossWeights, MIMDecoderConfig, MLMDecoderConfig, ModelConfig, Params,
    PartDecoderConfig, PartsConfig, ReportConfig, Section, SplitFractions, SyntheticConfig,
    TinyBackbone, TrackingConfig, TrainConfig, TuneConfig, ViewMix, space_ranges)


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type, or out of range."""


# Sections an ablation variant may override (besides its free-text description).
VARIANT_SECTIONS = ("model", "train")


# ----------------------------------------------------------------------------------------------
# pydantic's ValidationError -> one line naming the dotted key
# ----------------------------------------------------------------------------------------------

_TYPE_WORDS = {"int_type": "must be an integer", "int_parsing": "must be an integer",
               "int_from_float": "must be an integer", "float_type": "must be a number",
               "float_parsing": "must be a number", "bool_type": "must be true or false",
               "bool_parsing": "must be true or false", "string_type": "must be a string",
               "list_type": "must be a list"}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                 "finite_number"}
_MAPPING_ERRORS = {"model_type", "model_attributes_type", "dict_type"}


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_at(cls: type[BaseModel], loc: tuple) -> tuple[Any, list]:
    """(annotation, constraint metadata) of the value at ``loc`` below the model ``cls``."""
    ann, meta = cls, []
    for part in loc:
        if _is_model(ann):
            info = ann.model_fields.get(part)
            if info is None:
                return None, []
            ann, meta = info.annotation, list(info.metadata)
        else:  # an item of a list or a value of a dict
            args = typing.get_args(ann)
            ann, meta = (args[-1] if args else None), []
    return ann, meta


def _describe_range(meta: list) -> str:
    lo = hi = None
    left, right = "[", "]"
    for m in meta:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, left = m.gt, "("
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi, right = m.lt, ")"
    return f"must be in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def _wording(error: dict, root: type[BaseModel], prefix: str) -> str:
    """One error of pydantic's ``errors()`` as ``<dotted key>[=<value>]: <what is allowed>``."""
    loc = tuple(error["loc"])
    key = _dotted(((prefix,) if prefix else ()) + loc) or "params.yaml"
    ann, meta = _field_at(root, loc)
    value = error["input"]
    if ann is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # shown as the float it is once accepted
    kind = error["type"]
    if kind == "missing":
        return f"{key}: missing; add it to params.yaml"
    if kind == "extra_forbidden":
        parent, _ = _field_at(root, loc[:-1])
        where = _dotted(((prefix,) if prefix else ()) + loc[:-1]) or "params.yaml"
        names = ", ".join(sorted(parent.model_fields)) if _is_model(parent) else "(none)"
        return f"{key}: unknown parameter; allowed keys of {where}: {names}"
    if kind in _MAPPING_ERRORS:
        if value is None:
            return f"{key}: empty (null) section; write its keys in params.yaml"
        return f"{key}: must be a mapping, got {value!r}"
    if kind in _RANGE_ERRORS:
        return f"{key}={value!r}: {_describe_range(meta)}"
    if kind == "literal_error":
        return f"{key}={value!r}: one of " + " | ".join(map(str, typing.get_args(ann)))
    if kind in _TYPE_WORDS:
        return f"{key}={value!r}: {_TYPE_WORDS[kind]}"
    if kind == "value_error":  # a model validator above: its message continues the key
        return f"{key}{error['ctx']['error']}"
    return f"{key}={value!r}: {error['msg']}"


def parse_section(cls: type[BaseModel], raw: Any, prefix: str = "") -> Any:
    """Validate one section alone, e.g. ``parse_section(ModelConfig, saved, "model")``.

    ``prefix`` is the section's dotted key, used only in messages. Raises :class:`ConfigError`
    worded for the first problem (an unknown key before the rest: it usually explains them).
    """
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        errors = sorted(err.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
        raise ConfigError(_wording(errors[0], cls, prefix)) from None


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


def to_dict(params: Any) -> Any:
    """Params (or a section) as plain nested dicts (the variant and description left out)."""
    if isinstance(params, BaseModel):
        return params.model_dump()
    if isinstance(params, dict):
        return {k: to_dict(v) for k, v in params.items()}
    if isinstance(params, list):
        return [to_dict(v) for v in params]
    return params


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten params (model or dict) to ``{'train.weights.mim': 0.5, ...}`` for logging."""
    out: dict[str, Any] = {}
    for k, v in to_dict(obj).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def _without_null_mappings(patch: dict, base: dict) -> dict:
    """``patch`` less its null values that stand where ``base`` has a mapping (no override)."""
    out = {}
    for k, v in patch.items():
        if isinstance(base.get(k), dict):
            if v is None:
                continue
            if isinstance(v, dict):
                v = _without_null_mappings(v, base[k])
        out[k] = v
    return out


def _merge_variant(raw: dict, name: str) -> dict:
    variants = raw.get("ablations") or {}
    if name not in variants:
        known = ", ".join(sorted(variants)) or "(none)"
        raise ConfigError(f"ablations.{name}: no such variant; defined variants: {known}")
    variant = variants[name] if variants[name] is not None else {}   # null: overrides nothing
    if not isinstance(variant, dict):
        raise ConfigError(f"ablations.{name}={variant!r}: must be a mapping")
    extra = sorted(set(variant) - set(VARIANT_SECTIONS) - {"description"})
    if extra:
        raise ConfigError(f"ablations.{name}.{extra[0]}: a variant may only override "
                          f"{', '.join(VARIANT_SECTIONS)} (plus a description)")
    if "description" in variant and not isinstance(variant["description"], str):
        raise ConfigError(f"ablations.{name}.description: must be a string")
    overrides = {k: v for k, v in variant.items() if k in VARIANT_SECTIONS}
    return deep_merge(raw, _without_null_mappings(overrides, raw))


def _validate_space(raw: dict, base: dict) -> None:
    """Each leaf of the ``tune.space`` tree names a numeric model/train param; both bounds are
    valid values of it. (Its shape, a tree of lists of numbers, is checked by the schema.)"""
    for key, bounds in space_ranges(base["tune"]["space"]).items():
        where = f"tune.space.{key}"
        if key.split(".")[0] not in VARIANT_SECTIONS:
            raise ConfigError(f"{where}: only model.* and train.* parameters can be tuned")
        try:
            current = get_dotted(base, key)
        except (AttributeError, KeyError, TypeError):   # TypeError: below a leaf
            raise ConfigError(f"{where}: no such parameter") from None
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise ConfigError(f"{where}: {key} is not numeric and cannot be searched")
        if len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise ConfigError(f"{where}={bounds!r}: must be [low, high] with low < high")
        for bound in bounds:  # both ends must themselves be valid values of the parameter
            if isinstance(current, int):   # sampled as integers: a fraction is no value of it
                if not float(bound).is_integer():
                    raise ConfigError(f"{where}: bound {bound!r} is invalid ({key} is an "
                                      "integer)")
                bound = int(bound)
            probe = copy.deepcopy(raw)
            set_dotted(probe, key, bound)
            try:
                parse_section(Params, probe)
            except ConfigError as err:
                raise ConfigError(f"{where}: bound {bound!r} is invalid ({err})") from None


SEED_MAX = 2**31 - 1   # as the top-level `seed`
REFERENCE_VARIANT = "full"   # the variant every other one is compared with (report, figures, checks)


def _validate_seeds(seeds: list[int]) -> None:
    """``report.seeds``: at least one, each in [0, SEED_MAX], none twice (each seed trains the
    folder ``models/<variant>/seed<k>``: a repeat would train it twice, then fail)."""
    if not seeds:
        raise ConfigError("report.seeds is empty: list at least one training seed, "
                          "e.g. report.seeds=[0, 1, 2]")
    for i, seed in enumerate(seeds):
        if not 0 <= seed <= SEED_MAX:
            raise ConfigError(f"report.seeds[{i}]={seed}: must be in [0, {SEED_MAX}] "
                              "(a seed is a non-negative integer)")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"report.seeds={seeds}: seed {twice[0]} is listed more than once; "
                          "list each seed once")


def _validate_variants(variants: list[str], defined: dict) -> None:
    """``report.variants``: the variants the pipeline trains, evaluates and reports (dvc.yaml's
    foreach list); each defined in ``ablations``, none twice, ``full`` (the reference of every
    comparison) among them."""
    if REFERENCE_VARIANT not in variants:
        raise ConfigError(f"report.variants={variants}: must include {REFERENCE_VARIANT!r}, the "
                          "reference every variant is compared with")
    for i, name in enumerate(variants):
        if name not in defined:
            raise ConfigError(f"report.variants[{i}]={name!r}: no such variant; defined in "
                              f"ablations: {', '.join(defined)}")
    twice = sorted({v for v in variants if variants.count(v) > 1})
    if twice:
        raise ConfigError(f"report.variants={variants}: {twice[0]!r} is listed more than once")


def parse_params(raw: dict, variant: str | None = None) -> Params:
    """Validate a raw params mapping completely, then return it (merged for ``variant``).

    Every ablation variant and the tuning space are checked whatever ``variant`` is, so a bad
    entry stops every stage. The checks here read plain dicts, never the returned models'
    attributes, so they do not count as reads of a stage (tests/record_params).
    Raises :class:`ConfigError` naming the dotted key.
    """
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: must be a mapping of sections")
    base = parse_section(Params, raw)
    for name in raw["ablations"]:
        try:
            parse_section(Params, _merge_variant(raw, name))
        except ConfigError as err:
            raise ConfigError(f"ablations.{name}: {err}") from None
    _validate_space(raw, base.model_dump())
    _validate_seeds(list(raw["report"]["seeds"]))
    _validate_variants(list(raw["report"]["variants"]), raw["ablations"])
    steps, warmup = raw["pretrain"]["steps"], raw["pretrain"]["warmup_steps"]
    if warmup >= steps:
        raise ConfigError(f"pretrain.warmup_steps={warmup}: must be below pretrain.steps={steps} "
                          "(the warm-up would never end); lower it, e.g. to a tenth of the steps")
    if variant is None:
        return base
    merged = parse_section(Params, _merge_variant(raw, variant))
    merged._variant = variant
    merged._description = (raw["ablations"][variant] or {}).get("description", variant)
    return merged


def read_raw(path: str | Path = "params.yaml") -> dict:
    """The file as plain dicts and lists, read with YAML 1.2 as `dvc exp run -S` writes it.

    The pure-Python loader: ruamel's optional C loader follows YAML 1.1 (``1e-05`` a string).
    Raises :class:`ConfigError` if the file is missing, not UTF-8 or not YAML.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start}); "
                          "save it as UTF-8") from None
    try:
        raw = YAML(typ="safe", pure=True).load(text)
    except YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML{yaml_problem(err, text)}") from None
    return {} if raw is None else raw


def yaml_problem(err: Exception, text: str) -> str:
    """`` at line L, column C: <problem>`` of a ruamel parse error, on one line (ruamel's own
    message spans five lines); a tab says what to do."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or not problem:
        return f": {' '.join(str(err).split())}"
    where, lines = f" at line {mark.line + 1}, column {mark.column + 1}", text.splitlines() + [""]
    if "'\\t'" in problem or lines[mark.line][mark.column:mark.column + 1] == "\t":
        return f"{where}: a tab character; YAML allows only spaces there, replace it with spaces"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start.line != mark.line:
        problem = f"{problem} ({context} that starts at line {start.line + 1})"
    return f"{where}: {' '.join(str(problem).split())}"


def load_params(path: str | Path = "params.yaml", variant: str | None = None,
                overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml, apply ``overrides`` (dotted keys), validate it all, merge ``variant``.

    A mapping override merges into the file's mapping, as `dvc exp run -S key={a: 1}` does.
    """
    raw = read_raw(path)
    for key, value in (overrides or {}).items():
        try:
            current = get_dotted(raw, key)
        except (KeyError, TypeError, AttributeError):
            current = None
        if isinstance(value, dict) and isinstance(current, dict):
            value = deep_merge(current, value)
        set_dotted(raw, key, value)
    return parse_params(raw, variant)


def variant_description(params: Params, variant: str) -> str:
    """The description of ``variant`` (its name if it has none)."""
    if params.variant == variant:
        return params.description
    return str((params.ablations.get(variant) or {}).get("description", variant))
