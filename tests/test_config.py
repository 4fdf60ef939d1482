"""The params contract: params.yaml <-> typed dataclasses, strict validation with exact messages."""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from pfcvr import config as C
from pfcvr.config import (ConfigError, Params, flatten, get_dotted, load_params, parse_params,
                          read_raw, set_dotted)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return read_raw(PARAMS)


def error_of(raw: dict, changes: dict, variant: str | None = None) -> str:
    """The ConfigError message of ``raw`` with dotted ``changes`` applied."""
    bad = copy.deepcopy(raw)
    for key, value in changes.items():
        set_dotted(bad, key, value)
    with pytest.raises(ConfigError) as info:
        parse_params(bad, variant)
    return str(info.value)


def allowed(cls) -> str:
    return ", ".join(sorted(f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")))


# ---------------------------------------------------------------------------------------------
# params.yaml <-> dataclasses
# ---------------------------------------------------------------------------------------------

def _leaves(tree: dict, cls, prefix: str = ""):
    """(dotted key, field) for every params.yaml leaf, descending only into dataclass sections."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        assert k in fields, f"params.yaml key {key} has no dataclass field in {cls.__name__}"
        if dataclasses.is_dataclass(hints[k]):
            assert isinstance(v, dict), f"{key} must be a section"
            yield from _leaves(v, hints[k], key)
        else:
            yield key, fields[k]


def _fields(cls, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], key)
        else:
            yield key


def test_every_params_yaml_leaf_is_a_dataclass_field_and_back(raw):
    leaves = dict(_leaves(raw, Params))
    assert len(leaves) > 60
    # and nothing in the dataclasses is missing from params.yaml (the file documents every knob)
    assert sorted(_fields(Params)) == sorted(leaves)


def test_loaded_values_equal_the_yaml_values(raw):
    p = load_params(PARAMS)
    for key, _ in _leaves(raw, Params):
        value = get_dotted(p, key)
        expected = get_dotted(raw, key)
        if isinstance(expected, int) and not isinstance(expected, bool) and isinstance(value, float):
            expected = float(expected)
        assert value == expected, key
    flat = flatten(p)
    assert flat["data.synthetic.split.train"] == raw["data"]["synthetic"]["split"]["train"]
    assert flat["train.weights.mim"] == raw["train"]["weights"]["mim"]


def test_defaults_of_the_dataclasses_match_params_yaml(raw):
    """The dataclass defaults are the documented defaults (a missing key means the default)."""
    p = parse_params({})
    for key, _ in _leaves(raw, Params):
        if key.startswith(("ablations", "tune.space")):
            continue
        assert get_dotted(p, key) == pytest.approx(get_dotted(raw, key)), key


# ---------------------------------------------------------------------------------------------
# Strictness: exact messages
# ---------------------------------------------------------------------------------------------

def test_unknown_keys(raw):
    assert error_of(raw, {"data.synthetic.split.trian": 0.6}) == (
        "data.synthetic.split.trian: unknown parameter; allowed keys of data.synthetic.split: "
        "test, train, val")
    assert error_of(raw, {"train.mask_rati": 0.3}) == (
        f"train.mask_rati: unknown parameter; allowed keys of train: {allowed(C.TrainConfig)}")
    assert error_of(raw, {"trian": {}}) == (
        f"trian: unknown parameter; allowed keys of params.yaml: {allowed(Params)}")


def test_out_of_range_values(raw):
    assert error_of(raw, {"train.mask_ratio": 1.5}) == "train.mask_ratio=1.5: must be in [0.0, 1.0)"
    assert error_of(raw, {"train.mask_ratio": 1.0}) == "train.mask_ratio=1.0: must be in [0.0, 1.0)"
    assert error_of(raw, {"data.val_fraction": -0.1}) == "data.val_fraction=-0.1: must be in [0.0, 1.0)"
    assert error_of(raw, {"data.synthetic.n_ids": 5}) == "data.synthetic.n_ids=5: must be in [6, 100000]"
    assert error_of(raw, {"data.synthetic.image_size": 4096}) == (
        "data.synthetic.image_size=4096: must be in [32, 1024]")
    assert error_of(raw, {"train.lr": 0}) == "train.lr=0.0: must be in (0.0, 1.0]"
    assert error_of(raw, {"train.lr": float("nan")}) == "train.lr=nan: must be in (0.0, 1.0]"
    assert error_of(raw, {"train.grad_clip": -1}) == "train.grad_clip=-1.0: must be in [0.0, inf]"


def test_choices(raw):
    assert error_of(raw, {"data.source": "kitti"}) == (
        "data.source='kitti': one of synthetic | t2i-veri | t2i-verw | cuhk-pedes")
    assert error_of(raw, {"data.on_error": "ignore"}) == "data.on_error='ignore': one of raise | skip"
    assert error_of(raw, {"train.precision": "fp8"}) == "train.precision='fp8': one of fp32 | bf16 | fp16"


def test_wrong_types(raw):
    assert error_of(raw, {"train.epochs": "ten"}) == "train.epochs='ten': must be an integer"
    assert error_of(raw, {"train.epochs": 2.5}) == "train.epochs=2.5: must be an integer"
    assert error_of(raw, {"train.epochs": True}) == "train.epochs=True: must be an integer"
    assert error_of(raw, {"train.lr": True}) == "train.lr=True: must be a number"
    assert error_of(raw, {"train.lr": "fast"}) == "train.lr='fast': must be a number"
    assert error_of(raw, {"train.flip_masks": "yes"}) == "train.flip_masks='yes': must be true or false"
    assert error_of(raw, {"data.root": 3}) == "data.root=3: must be a string"
    assert error_of(raw, {"report.seeds": [0, "a"]}) == "report.seeds[1]='a': must be an integer"
    assert error_of(raw, {"report.seeds": 3}) == "report.seeds=3: must be a list"
    assert error_of(raw, {"data": 3}) == "data: must be a mapping, got 3"
    assert error_of(raw, {"data.synthetic.split": [0.6, 0.4]}) == (
        "data.synthetic.split: must be a mapping, got [0.6, 0.4]")


def test_an_integer_is_accepted_for_a_float(raw):
    p = parse_params(dict(copy.deepcopy(raw), train=dict(raw["train"], lr=1)))
    assert p.train.lr == 1.0 and isinstance(p.train.lr, float)


def test_synthetic_split_fractions_must_sum_to_one(raw):
    assert error_of(raw, {"data.synthetic.split.val": 0.3}) == (
        "data.synthetic.split={'train': 0.6, 'val': 0.3, 'test': 0.25}: fractions must sum to 1 "
        "(got 1.15)")
    assert error_of(raw, {"data.synthetic.views": {"side_left": 0, "side_right": 0, "front": 0,
                                                   "rear": 0}}) == (
        "data.synthetic.views: at least one view weight must be positive")
    ok = load_params(PARAMS, overrides={"data.synthetic.split.val": 0.0,
                                        "data.synthetic.split.train": 0.75})
    assert ok.data.synthetic.split.val == 0.0


# ---------------------------------------------------------------------------------------------
# Ablation variants
# ---------------------------------------------------------------------------------------------

def test_variants_merge_over_train_and_model(raw):
    base = load_params(PARAMS)
    merged = load_params(PARAMS, variant="no_recovery")
    assert merged.variant == "no_recovery" and base.variant is None
    assert merged.train.weights.mlm == 0.0 and merged.train.weights.mim == 0.0
    assert merged.train.weights.sdm == base.train.weights.sdm
    assert load_params(PARAMS, variant="image_context").model.part_context == "image"


def test_variant_errors(raw):
    names = ", ".join(sorted(raw["ablations"]))
    with pytest.raises(ConfigError) as info:
        load_params(PARAMS, variant="nope")
    assert str(info.value) == f"ablations.nope: no such variant; defined variants: {names}"
    assert error_of(raw, {"ablations.bad": 3}) == "ablations.bad: ablations.bad=3: must be a mapping"
    assert error_of(raw, {"ablations.bad": {"data": {"root": "x"}}}) == (
        "ablations.bad: ablations.bad.data: a variant may only override model, train "
        "(plus a description)")
    assert error_of(raw, {"ablations.bad": {"description": 7}}) == (
        "ablations.bad: ablations.bad.description: must be a string")
    assert error_of(raw, {"ablations.bad": {"train": {"weights": {"foo": 1.0}}}}) == (
        "ablations.bad: train.weights.foo: unknown parameter; allowed keys of train.weights: "
        "id, mim, mlm, part, sdm")
    assert error_of(raw, {"ablations.bad": {"train": {"mask_ratio": 2.0}}}) == (
        "ablations.bad: train.mask_ratio=2.0: must be in [0.0, 1.0)")
    # a bad variant stops every stage, also those that load another variant
    assert error_of(raw, {"ablations.bad": {"train": {"mask_ratio": 2.0}}}, variant="full") == (
        "ablations.bad: train.mask_ratio=2.0: must be in [0.0, 1.0)")


# ---------------------------------------------------------------------------------------------
# tune.space
# ---------------------------------------------------------------------------------------------

def test_tune_space_errors(raw):
    def space_error(space: dict) -> str:
        bad = copy.deepcopy(raw)
        bad["tune"]["space"] = space
        with pytest.raises(ConfigError) as info:
            parse_params(bad)
        return str(info.value)

    assert space_error({"data.val_fraction": [0.1, 0.2]}) == (
        "tune.space.data.val_fraction: only model.* and train.* parameters can be tuned")
    assert space_error({"train.nope": [0.1, 0.2]}) == "tune.space.train.nope: no such parameter"
    assert space_error({"train.precision": [0, 1]}) == (
        "tune.space.train.precision: train.precision is not numeric and cannot be searched")
    assert space_error({"train.flip_masks": [0, 1]}) == (
        "tune.space.train.flip_masks: train.flip_masks is not numeric and cannot be searched")
    assert space_error({"train.lr": [0.1, 0.01]}) == (
        "tune.space.train.lr=[0.1, 0.01]: must be [low, high] with low < high")
    assert space_error({"train.lr": [0.1]}) == (
        "tune.space.train.lr=[0.1]: must be [low, high] with low < high")
    assert space_error({"train.mask_ratio": [0.3, 1.5]}) == (
        "tune.space.train.mask_ratio: bound 1.5 is invalid "
        "(train.mask_ratio=1.5: must be in [0.0, 1.0))")
    assert space_error({"train.mask_ratio": "wide"}) == (
        "tune.space.train.mask_ratio='wide': must be a list")


def test_tune_space_of_params_yaml_is_valid(raw):
    p = load_params(PARAMS)
    for key, (lo, hi) in p.tune.space.items():
        assert lo < hi and isinstance(get_dotted(p, key), (int, float)), key


# ---------------------------------------------------------------------------------------------
# Overrides and files
# ---------------------------------------------------------------------------------------------

def test_overrides_are_validated_like_the_file():
    p = load_params(PARAMS, overrides={"train.mask_ratio": 0.3, "seed": 5})
    assert p.train.mask_ratio == 0.3 and p.seed == 5
    with pytest.raises(ConfigError, match=r"^train\.mask_ratio=1\.5: must be in \[0\.0, 1\.0\)$"):
        load_params(PARAMS, overrides={"train.mask_ratio": 1.5})
    with pytest.raises(ConfigError, match=r"^train\.lr\.x: 'lr' is not a section$"):
        load_params(PARAMS, overrides={"train.lr.x": 1})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: parameter file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match=r"^params\.yaml: must be a mapping of sections$"):
        load_params(bad)
