"""The params contract: params.yaml <-> pydantic models, strict validation with exact messages."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pfcvr import config as C
from pfcvr.config import (ConfigError, Params, flatten, get_dotted, load_params, parse_params,
                          parse_section, read_raw, set_dotted)

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
    return ", ".join(sorted(cls.model_fields))


def _is_section(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


# ---------------------------------------------------------------------------------------------
# params.yaml <-> models
# ---------------------------------------------------------------------------------------------

def _leaves(tree: dict, cls, prefix: str = ""):
    """(dotted key, field) for every params.yaml leaf, descending only into model sections."""
    fields = cls.model_fields
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        assert k in fields, f"params.yaml key {key} has no model field in {cls.__name__}"
        if _is_section(fields[k].annotation):
            assert isinstance(v, dict), f"{key} must be a section"
            yield from _leaves(v, fields[k].annotation, key)
        else:
            yield key, fields[k]


def _fields(cls, prefix: str = ""):
    for name, info in cls.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if _is_section(info.annotation):
            yield from _fields(info.annotation, key)
        else:
            yield key


def _all_fields(cls):
    for info in cls.model_fields.values():
        yield info
        if _is_section(info.annotation):
            yield from _all_fields(info.annotation)


def test_every_params_yaml_leaf_is_a_model_field_and_back(raw):
    leaves = dict(_leaves(raw, Params))
    assert len(leaves) > 60
    # and nothing in the models is missing from params.yaml (the file documents every knob)
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


def test_defaults_live_in_params_yaml_only(raw):
    """No model field has a default: a key left out of params.yaml is an error naming it."""
    fields = list(_all_fields(Params))
    assert len(fields) > 70 and all(f.is_required() for f in fields)
    with pytest.raises(ConfigError, match=r"^seed: missing; add it to params\.yaml$"):
        parse_params({})
    bad = copy.deepcopy(raw)
    del bad["train"]["lr"]
    with pytest.raises(ConfigError, match=r"^train\.lr: missing; add it to params\.yaml$"):
        parse_params(bad)
    del bad["model"]["tiny"]
    with pytest.raises(ConfigError, match=r"^model\.tiny: missing; add it to params\.yaml$"):
        parse_params(bad)
    # one section alone (a saved model config, a test's small model) names keys below its prefix
    weights = {"sdm": 1.0, "id": 0.5, "mlm": 0.5, "mim": 0.5}
    with pytest.raises(ConfigError, match=r"^train\.weights\.part: missing; add it to params"):
        parse_section(C.TrainConfig, dict(raw["train"], weights=weights), "train")
    with pytest.raises(ConfigError) as info:
        parse_section(C.ModelConfig, dict(raw["model"], image_size=8), "model")
    assert str(info.value) == "model.image_size=8: must be in [16, 2048]"
    assert parse_section(C.LossWeights, dict(weights, part=0), "train.weights").part == 0.0


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
        "data.source='kitti': one of synthetic | t2i-veri | t2i-verw | cuhk-pedes | icfg-pedes | "
        "rstpreid")
    assert error_of(raw, {"data.on_error": "ignore"}) == "data.on_error='ignore': one of raise | skip"
    assert error_of(raw, {"train.precision": "fp8"}) == "train.precision='fp8': one of fp32 | bf16 | fp16"


def test_data_source_choices_are_the_readers_table():
    """`data.source` accepts exactly the embedded benchmark and the sources that
    pfcvr.data.sources has a layout (a reader) for: a reader is added in one place."""
    import typing

    from pfcvr.data.sources import LAYOUTS
    from pfcvr.params_schema import DataConfig

    allowed = typing.get_args(DataConfig.model_fields["source"].annotation)
    assert allowed == ("synthetic", *LAYOUTS)


def test_reference_variant_is_the_one_the_report_compares_with(raw):
    """`full` is written once (pfcvr.config.REFERENCE_VARIANT): report.variants must hold it."""
    assert C.REFERENCE_VARIANT == "full"
    message = error_of(raw, {"report.variants": ["no_part"]})
    assert message.startswith("report.variants=['no_part']: must include 'full'")


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
        "data.synthetic.split={'train': 0.8, 'val': 0.3, 'test': 0.14}: fractions must sum to 1 "
        "(got 1.24)")
    assert error_of(raw, {"data.synthetic.views": {"side_left": 0, "side_right": 0, "front": 0,
                                                   "rear": 0}}) == (
        "data.synthetic.views: at least one view weight must be positive")
    ok = load_params(PARAMS, overrides={"data.synthetic.split.val": 0.0,
                                        "data.synthetic.split.train": 0.86})
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


def test_variant_names_are_refused_up_front(raw):
    """Names are data (issue 23): a variant name becomes a DVC stage, folders, MLflow run,
    metric and model names, so one that is not valid in all of them is one line at once."""
    rule = ("a variant name must be 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (it becomes a DVC stage, a folder and MLflow run, metric and model "
            "names); rename the variant")
    for name in ("bob's", "a b", "x/y", "-x", ".hidden", "colon:x", "a@b", "é", "x" * 65,
                 "dot."):
        bad = copy.deepcopy(raw)
        bad["ablations"][name] = {"train": {"weights": {"part": 0.0}}}
        with pytest.raises(ConfigError) as info:
            parse_params(bad)
        assert str(info.value) == f"ablations.{name}: {rule}", name
    for name in ("pretrained", "zero_shot", "environment", "mde_R1"):
        assert error_of(raw, {f"ablations.{name}": {}}) == (
            f"ablations.{name}: the name is used by another stage's outputs (reserved: "
            "pretrained, zero_shot, paired, mde, mde_R1, environment); rename the variant")
    good = copy.deepcopy(raw)
    good["ablations"]["no-part.v2_B"] = {"train": {"weights": {"part": 0.0}}}
    assert parse_params(good, "no-part.v2_B").train.weights.part == 0.0


def test_heartbeat_grace_must_exceed_the_interval(raw):
    assert error_of(raw, {"tune.grace_period": 60, "tune.heartbeat_interval": 60}) == (
        "tune.grace_period=60: must be above tune.heartbeat_interval=60 (a live worker's trial "
        "would be failed between two heartbeats); e.g. ten heartbeats")
    assert parse_params(raw).tune.grace_period > parse_params(raw).tune.heartbeat_interval


# ---------------------------------------------------------------------------------------------
# tune.space
# ---------------------------------------------------------------------------------------------

def _space_error(raw: dict, space) -> str:
    bad = copy.deepcopy(raw)
    bad["tune"]["space"] = space
    with pytest.raises(ConfigError) as info:
        parse_params(bad)
    return str(info.value)


def test_tune_space_errors(raw):
    def space_error(space: dict) -> str:
        return _space_error(raw, space)

    assert space_error({"data": {"val_fraction": [0.1, 0.2]}}) == (
        "tune.space.data.val_fraction: only model.* and train.* parameters can be tuned")
    assert space_error({"train": {"nope": [0.1, 0.2]}}) == (
        "tune.space.train.nope: no such parameter")
    assert space_error({"train": {"precision": [0, 1]}}) == (
        "tune.space.train.precision: train.precision is not numeric and cannot be searched")
    assert space_error({"train": {"flip_masks": [0, 1]}}) == (
        "tune.space.train.flip_masks: train.flip_masks is not numeric and cannot be searched")
    assert space_error({"train": {"lr": [0.1, 0.01]}}) == (
        "tune.space.train.lr=[0.1, 0.01]: must be [low, high] with low < high")
    assert space_error({"train": {"lr": [0.1]}}) == (
        "tune.space.train.lr=[0.1]: must be [low, high] with low < high")
    assert space_error({"train": {"mask_ratio": [0.3, 1.5]}}) == (
        "tune.space.train.mask_ratio: bound 1.5 is invalid "
        "(train.mask_ratio=1.5: must be in [0.0, 1.0))")
    assert space_error({"train": {"mask_ratio": "wide"}}) == (
        "tune.space.train.mask_ratio='wide': must be a list")


def test_tune_space_is_the_params_tree_with_dotted_names_inside(raw):
    """params.yaml's space is nested (so each leaf is an ordinary `-S tune.space.<key>` key);
    the code reads it flat, with the dotted names of the searched params, in the file's order."""
    p = load_params(PARAMS)
    assert p.tune.space == {"train": {"weights": {"mlm": [0.0, 1.0], "mim": [0.0, 1.0],
                                                  "part": [0.0, 1.0]},
                                      "mask_ratio": [0.3, 0.9], "text_mask_ratio": [0.05, 0.3]}}
    assert list(p.tune.ranges.items()) == [
        ("train.weights.mlm", [0.0, 1.0]), ("train.weights.mim", [0.0, 1.0]),
        ("train.weights.part", [0.0, 1.0]), ("train.mask_ratio", [0.3, 0.9]),
        ("train.text_mask_ratio", [0.05, 0.3])]
    tree = copy.deepcopy(raw)
    tree["tune"]["space"] = {"model": {"part_decoder": {"dropout": [0, 0.3]}},
                             "train": {"batch_size": [4, 16], "weights": {}}}
    assert parse_params(tree).tune.ranges == {"model.part_decoder.dropout": [0.0, 0.3],
                                              "train.batch_size": [4.0, 16.0]}
    tree["tune"]["space"] = {}
    assert parse_params(tree).tune.ranges == {}


def test_tune_space_tree_errors(raw):
    assert _space_error(raw, {"train.mask_ratio": [0.3, 0.9]}) == (
        "tune.space.train.mask_ratio: a dotted key; write tune.space as the params tree, "
        "`train: {mask_ratio: [low, high]}`, the form that "
        "`dvc exp run -S tune.space.train.mask_ratio=[low,high]` sets")
    assert _space_error(raw, {"train": {"weights.mlm": [0, 1]}}) == (
        "tune.space.train.weights.mlm: a dotted key; write tune.space as the params tree, "
        "`train: {weights: {mlm: [low, high]}}`, the form that "
        "`dvc exp run -S tune.space.train.weights.mlm=[low,high]` sets")
    assert _space_error(raw, {"train": None}) == (
        "tune.space.train: empty (null); write [low, high] or the searched parameters below "
        "it, or remove it (-S '~tune.space.train')")
    assert _space_error(raw, {"train": {"lr": [1e-5, float("nan")]}}) == (
        "tune.space.train.lr[1]=nan: must be a finite number")
    assert _space_error(raw, {"train": {"lr": [True, 1]}}) == (
        "tune.space.train.lr[0]=True: must be a number")
    assert _space_error(raw, {"train": {"lr": {"low": [0.1, 0.2]}}}) == (
        "tune.space.train.lr.low: no such parameter")
    assert _space_error(raw, {"train": {"weights": [0, 1]}}) == (
        "tune.space.train.weights: train.weights is not numeric and cannot be searched")
    assert _space_error(raw, {"seed": [0, 10]}) == (
        "tune.space.seed: only model.* and train.* parameters can be tuned")
    assert _space_error(raw, {"train": {"batch_size": [0, 16]}}) == (
        "tune.space.train.batch_size: bound 0 is invalid (train.batch_size=0: must be in "
        "[2, 65536])")
    assert _space_error(raw, {"train": {"batch_size": [4, 16.5]}}) == (
        "tune.space.train.batch_size: bound 16.5 is invalid (train.batch_size is an integer)")


def test_tune_space_of_params_yaml_is_valid(raw):
    p = load_params(PARAMS)
    for key, (lo, hi) in p.tune.ranges.items():
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


def test_a_mapping_override_merges_into_its_section():
    p = load_params(PARAMS, overrides={"train.weights": {"part": 0.0}})
    assert p.train.weights.part == 0.0 and p.train.weights.sdm == 1.0 and p.train.weights.mlm == 0.5


# ---------------------------------------------------------------------------------------------
# YAML 1.2, as `dvc exp run -S` writes params.yaml back (issue 12)
# ---------------------------------------------------------------------------------------------

def write_params(tmp_path: Path, lines: dict[str, str]) -> Path:
    """A copy of params.yaml with some lines rewritten (each ``old`` occurs exactly once)."""
    text = PARAMS.read_text()
    for old, new in lines.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_small_floats_are_floats_as_in_yaml_1_2(tmp_path):
    """DVC writes 1e-5 as `1e-05`; YAML 1.1 (PyYAML) would read that as the string '1e-05'."""
    path = write_params(tmp_path, {"  lr: 3.0e-4 ": "  lr: 1e-05   ",
                                   "  weight_decay: 4.0e-5\n": "  weight_decay: 4e-05\n",
                                   "  adam_eps: 1.0e-8 ": "  adam_eps: 1e-08  "})
    raw = read_raw(path)
    assert raw["train"]["lr"] == 1e-05 and type(raw["train"]["lr"]) is float
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "1e-05"   # the PyYAML bug
    p = load_params(path)
    assert (p.train.lr, p.train.weight_decay, p.train.adam_eps) == (1e-05, 4e-05, 1e-08)


def test_yaml_1_1_booleans_are_strings(tmp_path):
    path = write_params(tmp_path, {"  flip_masks: true ": "  flip_masks: yes  "})
    assert read_raw(path)["train"]["flip_masks"] == "yes"
    with pytest.raises(ConfigError, match=r"^train\.flip_masks='yes': must be true or false$"):
        load_params(path)


def test_conv_stem_needs_a_patch_size_divisible_by_4(raw):
    assert error_of(raw, {"model.patch_size": 6}) == (
        "model.patch_size=6: model.tiny.stem=conv needs a patch size divisible by 4 (set "
        "model.tiny.stem: patch, or a patch size such as 8, 12 or 16)")
    assert error_of(raw, {"model.tiny.stem": "hybrid"}) == "model.tiny.stem='hybrid': one of conv | patch"
    ok = load_params(PARAMS, overrides={"model.patch_size": 6, "model.image_size": 96,
                                        "model.tiny.stem": "patch"})
    assert ok.model.tiny.stem == "patch"


def test_read_raw_returns_plain_containers(tmp_path):
    raw = read_raw(PARAMS)
    assert type(raw) is dict and type(raw["train"]["weights"]) is dict
    assert type(raw["report"]["seeds"]) is list and raw["report"]["seeds"] == [0, 1, 2, 3]
    dup = tmp_path / "params.yaml"
    dup.write_text("seed: 0\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML"):
        read_raw(dup)


# (`dvc exp run -S` argument, the line DVC writes, dotted key, the value read or the error)
DVC_SET = [
    ("train.lr=1e-5", "lr: 1e-05", "train.lr", 1e-05),
    ("train.weight_decay=4e-5", "weight_decay: 4e-05", "train.weight_decay", 4e-05),
    ("tune.timeout=1e3", "timeout: 1000.0", "tune.timeout", 1000.0),
    ("train.epochs=10", "epochs: 10", "train.epochs", 10),
    ("report.seeds=[0,1]", "- 1", "report.seeds", [0, 1]),
    ("train.flip_masks=false", "flip_masks: false", "train.flip_masks", False),
    ("train.weights.part=0", "weights: {sdm: 1.0, id: 0.5, mlm: 0.5, mim: 0.5, part: 0}",
     "train.weights.part", 0.0),
    ("train.weights={mlm:0}", "weights: {sdm: 1.0, id: 0.5, mlm: 0, mim: 0.5, part: 0.2}",
     "train.weights.mlm", 0.0),
    ("data.annotations='0.5'", "annotations: '0.5'", "data.annotations", "0.5"),
    ("train.lr='0.5'", "lr: '0.5'", "train.lr", "train.lr='0.5': must be a number"),
    ("train.epochs='10'", "epochs: '10'", "train.epochs", "train.epochs='10': must be an integer"),
    ("train.hflip=yes", "hflip: yes", "train.hflip", "train.hflip='yes': must be a number"),
    ("data.root=null", "root:", "data.root", "data.root=None: must be a string"),
    ("train.mask_ratio=null", "mask_ratio:", "train.mask_ratio",
     "train.mask_ratio=None: must be a number"),
    ("model.backbone=1e-3", "backbone: 0.001", "model.backbone",
     "model.backbone=0.001: must be a string"),
    ("model.tiny=null", "tiny:", "model.tiny",
     "model.tiny: empty (null) section; write its keys in params.yaml"),
]


@pytest.mark.parametrize("override,line,key,expected", DVC_SET, ids=[c[0] for c in DVC_SET])
def test_every_dvc_set_param_form(tmp_path, override, line, key, expected):
    """DVC's own `-S` writer (Hydra override grammar, ruamel YAML 1.2 dump) then our reader."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text())
    hydra.apply_overrides(path, [override])
    written = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    assert line in written, f"DVC no longer writes {line!r} for {override}"
    if isinstance(expected, str) and expected.startswith(key):
        with pytest.raises(ConfigError) as info:
            load_params(path)
        assert str(info.value) == expected
    else:
        value = get_dotted(load_params(path), key)
        assert value == expected and type(value) is type(expected)


# ---------------------------------------------------------------------------------------------
# Null sections (issue 12): never a silent reset to built-in defaults
# ---------------------------------------------------------------------------------------------

def test_a_null_section_is_an_error_naming_it(raw):
    empty = "empty (null) section; write its keys in params.yaml"
    assert error_of(raw, {"train": None}) == f"train: {empty}"
    assert error_of(raw, {"train.weights": None}) == f"train.weights: {empty}"
    assert error_of(raw, {"data.synthetic.split": None}) == f"data.synthetic.split: {empty}"
    assert error_of(raw, {"ablations": None}) == f"ablations: {empty}"
    assert error_of(raw, {"tune.space": None}) == f"tune.space: {empty}"


def test_a_null_variant_section_overrides_nothing(raw, tmp_path):
    # `train:` of a variant with everything below commented out reads as null
    path = write_params(tmp_path, {"    train: {weights: {part: 0.0}}\n":
                                   "    train:\n    #  weights: {part: 0.0}\n"})
    assert read_raw(path)["ablations"]["no_part"]["train"] is None
    p = load_params(path, variant="no_part")
    assert p.train.weights.part == 0.2 and p.train.lr == 0.0003     # the file's own values
    assert p.description == "without part-level alignment"
    # a null sub-mapping or a null variant overrides nothing either; other keys still apply
    tree = copy.deepcopy(raw)
    tree["ablations"]["x"] = {"train": {"weights": None, "lr": 0.01}, "model": None}
    tree["ablations"]["empty"] = None
    x = parse_params(tree, "x")
    assert x.train.weights.part == 0.2 and x.train.lr == 0.01 and x.model.part_context == "caption"
    empty = parse_params(tree, "empty")
    assert empty.train == x.train.model_copy(update={"lr": 0.0003}) and empty.description == "empty"


def test_a_null_leaf_in_a_variant_is_an_error(raw):
    assert error_of(raw, {"ablations.bad": {"train": {"lr": None}}}) == (
        "ablations.bad: train.lr=None: must be a number")


# ---------------------------------------------------------------------------------------------
# Strict types beyond the basics
# ---------------------------------------------------------------------------------------------

def test_no_string_to_number_coercion(raw):
    assert error_of(raw, {"train.epochs": "1"}) == "train.epochs='1': must be an integer"
    assert error_of(raw, {"train.lr": "0.001"}) == "train.lr='0.001': must be a number"
    assert error_of(raw, {"train.flip_masks": 1}) == "train.flip_masks=1: must be true or false"
    assert error_of(raw, {"train.lr": float("inf")}) == "train.lr=inf: must be in (0.0, 1.0]"
    bad = copy.deepcopy(raw)
    bad["tune"]["space"] = {"train": {"lr": [1e-5, "1e-3"]}}
    with pytest.raises(ConfigError) as info:
        parse_params(bad)
    assert str(info.value) == "tune.space.train.lr[1]='1e-3': must be a number"


def test_readme_examples(raw):
    assert error_of(raw, {"train.weights.prt": 0}) == (
        "train.weights.prt: unknown parameter; allowed keys of train.weights: "
        "id, mim, mlm, part, sdm")


def test_a_typo_is_reported_before_the_key_it_misses(raw):
    bad = copy.deepcopy(raw)
    bad["trian"] = bad.pop("train")
    with pytest.raises(ConfigError, match=r"^trian: unknown parameter; allowed keys of params"):
        parse_params(bad)


def test_variant_and_description(raw):
    p = load_params(PARAMS, variant="no_mim")
    assert (p.variant, p.description) == ("no_mim", "without masked image recovery")
    assert C.variant_description(p, "no_mim") == "without masked image recovery"
    base = load_params(PARAMS)
    assert (base.variant, base.description) == (None, None)
    assert C.variant_description(base, "baseline") == "sdm + id only (CLIP fine-tuning)"
    assert "variant" not in flatten(p) and "description" not in C.to_dict(p)


def test_params_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    """A binary (or Latin-1) params file names the file and the fix, not a codec traceback."""
    bad = tmp_path / "binary.yaml"
    bad.write_bytes(b"\xff\xfeseed: 0\n")
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    assert str(err.value) == (f"{bad}: not valid UTF-8 text (invalid start byte at byte 0); "
                              "save it as UTF-8")


def test_report_variants_must_be_defined_once_and_include_full(raw):
    """Issue 10: `report.variants` picks what dvc repro runs; the other ablations stay defined."""
    p = parse_params(raw)
    assert p.report.variants == ["full", "baseline", "no_part", "no_mim", "no_mlm"]
    assert {"image_context", "random_mim", "no_recovery"} <= set(p.ablations)
    assert error_of(raw, {"report.variants": ["full", "no_such"]}) == (
        "report.variants[1]='no_such': no such variant; defined in ablations: full, no_part, "
        "no_mim, no_mlm, no_recovery, baseline, image_context, random_mim")
    assert error_of(raw, {"report.variants": ["baseline", "no_part"]}) == (
        "report.variants=['baseline', 'no_part']: must include 'full', the reference every "
        "variant is compared with")
    assert error_of(raw, {"report.variants": ["full", "no_part", "no_part"]}) == (
        "report.variants=['full', 'no_part', 'no_part']: 'no_part' is listed more than once")
    extra = parse_params(dict(raw, report=dict(raw["report"], variants=["full", "image_context"])))
    assert extra.report.variants == ["full", "image_context"]
