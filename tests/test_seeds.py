"""The seed loop of `train@<variant>` in-process (pfcvr.pipeline.train): skip finished seeds, resume
an interrupted one, refuse results written for other params, assemble models/<variant>.

The subprocess kill-and-restart check of the whole stage is tests/test_resume.py (slow).
"""
import csv
import json

import pytest

from pfcvr.config import load_params
from pfcvr.pipeline import train as train_stage
from tests.support.tmpfs import mounted_tmpfs
from tests.support.train_helpers import make_project

REAL_TRAIN_MODEL = train_stage.train_model


class Interrupted(Exception):
    """Stands for a kill: raised from the epoch callback after a checkpoint was written."""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    make_project(root, {"train.epochs": 2, "report.seeds": [0, 1]})
    return root


def _layout(root):
    return {"prepared": root / "data/prepared", "parts": root / "data/parts/parts.json",
            "models": root / "models/full", "reports": root / "reports/train/full",
            "figure": root / "reports/figures/train_full.png", "cache": root / ".cache/train/full"}


def _spy(monkeypatch, calls, interrupt_seed=None):
    """Wrap the real train_model: record (seed, result) and optionally 'kill' a seed after its
    first epoch."""
    real = REAL_TRAIN_MODEL

    def train_model(params, tr, val, out_dir, seed, *args, on_epoch=None, **kw):
        def epoch_hook(row):
            on_epoch(row)
            if seed == interrupt_seed:
                raise Interrupted(f"seed {seed} epoch {row['epoch']}")
        result = real(params, tr, val, out_dir, seed, *args, on_epoch=epoch_hook, **kw)
        calls.append((seed, result.resumed_from))
        return result
    monkeypatch.setattr(train_stage, "train_model", train_model)


def test_interrupted_run_skips_finished_seed_and_resumes(project, monkeypatch, capsys):
    lay = _layout(project)
    params = load_params(project / "params.yaml", variant="full")
    base = load_params(project / "params.yaml")

    calls: list = []
    _spy(monkeypatch, calls, interrupt_seed=1)
    with pytest.raises(Interrupted):
        train_stage.train_variant(params, "full", base=base, progress=False, **lay)
    assert calls == [(0, 0)]                              # seed 0 finished, seed 1 was killed
    assert not lay["models"].exists()                      # assembled only when every seed is done
    seed0 = lay["cache"] / "seed0"
    first = json.loads((seed0 / "result.json").read_text())
    weights0 = {p.relative_to(seed0): p.read_bytes() for p in seed0.rglob("*")
                if p.is_file() and p.parent.name in ("best", "final")}
    assert weights0 and (lay["cache"] / "seed1/checkpoint.pt").is_file()

    calls.clear()
    _spy(monkeypatch, calls)
    out = train_stage.train_variant(params, "full", base=base, progress=False, **lay)
    assert calls == [(1, 1)]                # seed 0 not retrained; seed 1 resumed after epoch 1
    assert "seed 0: already finished, skipped" in capsys.readouterr().out
    stored = json.loads((lay["models"] / "seed0/result.json").read_text())
    assert stored == {k: v for k, v in first.items() if k not in ("history", "out_dir")}
    for rel, data in weights0.items():                    # the very files seed 0 wrote
        assert (lay["models"] / "seed0" / rel).read_bytes() == data
    assert out.summary["seeds"] == [0, 1] and out.summary["seed0/best_val_R1"] == first["best"]["R1"]
    with open(lay["reports"] / "history.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["seed"], r["epoch"]) for r in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    assert json.loads((lay["reports"] / "summary.json").read_text())["seeds"] == [0, 1]
    assert "# Model card: `full`" in (lay["models"] / "MODEL_CARD.md").read_text()
    assert lay["figure"].read_bytes()[:4] == b"\x89PNG"
    assert not lay["cache"].exists()                      # removed after success


def test_finished_result_needs_same_fingerprint(tmp_path):
    work = tmp_path / "seed0"
    (work / "best").mkdir(parents=True)
    (work / "result.json").write_text(json.dumps({"seed": 0, "fingerprint": "abc"}))
    assert train_stage.finished_result(work, "abc") is None      # no final/ yet: not finished
    (work / "final").mkdir()
    assert train_stage.finished_result(work, "abc") == {"seed": 0, "fingerprint": "abc"}
    assert train_stage.finished_result(work, "other") is None    # written for other params or data


def test_fingerprint_covers_what_decides_training(tmp_path):
    data = tmp_path / "manifest.json"
    data.write_text("[1]")
    p = load_params("params.yaml")
    fp = train_stage.fingerprint(p, 0, 1, [data])
    assert len(fp) == 16
    cosmetic = load_params("params.yaml", overrides={"report.seeds": [7], "train.log_every": 3,
                                                     "tracking.required": False})
    assert train_stage.fingerprint(cosmetic, 0, 1, [data]) == fp
    assert train_stage.fingerprint(load_params("params.yaml", overrides={"train.lr": 1e-5}), 0, 1,
                             [data]) != fp
    assert train_stage.fingerprint(p, 1, 1, [data]) != fp
    assert train_stage.fingerprint(p, 0, 2, [data]) != fp        # another world size
    data.write_text("[2]")
    assert train_stage.fingerprint(p, 0, 1, [data]) != fp        # other data


def test_join_world_refuses_empty_seeds():
    with pytest.raises(ValueError, match="report.seeds is empty"):
        train_stage.join_world(load_params("params.yaml", overrides={"report.seeds": []}))


# ----------------------------------------------------------------------------------------------
# Issue 12: everything checkable is checked before the first step; keys cover the image files
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    ([0, 0], "report.seeds=[0, 0]: seed 0 is listed more than once; list each seed once"),
    ([-1], "report.seeds[0]=-1: must be in [0, 2147483647] (a seed is a non-negative integer)"),
    ([], "report.seeds is empty: list at least one training seed, e.g. report.seeds=[0, 1, 2]"),
])
def test_bad_seeds_are_config_errors_naming_report_seeds(value, message):
    from pfcvr.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_params("params.yaml", overrides={"report.seeds": value})
    assert str(caught.value) == message


@pytest.fixture
def stage_copy(project, tmp_path, monkeypatch):
    import shutil

    work = tmp_path / "proj"
    shutil.copytree(project, work, ignore=shutil.ignore_patterns(".cache", "models", "reports"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return work


def _set_params(root, **values):
    import yaml

    from pfcvr.config import read_raw, set_dotted
    raw = read_raw(root / "params.yaml")
    for key, value in values.items():
        set_dotted(raw, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _run_train_stage(variant="full"):
    import functools

    from pfcvr.runtime.stage import run_stage
    from stages import train as stage
    return run_stage("train", functools.partial(stage.main, ["--variant", variant]))


def test_duplicate_seeds_stop_the_stage_before_any_work(stage_copy, capsys):
    """`report.seeds: [0, 0]` used to train seed 0 fully, then fail with FileExistsError."""
    _set_params(stage_copy, **{"report.seeds": [0, 0]})
    assert _run_train_stage() == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "train: error: report.seeds=[0, 0]: seed 0 is listed more than once; list each seed once")
    assert not any((stage_copy / d).exists() for d in ("models", ".cache", "reports", "mlflow.db"))


def test_indivisible_ddp_batch_is_one_line_before_joining(stage_copy, monkeypatch, capsys):
    """train.batch_size=8 over 3 torchrun processes: named before the ranks join (no rendezvous
    is attempted: no MASTER_ADDR is set), printed by rank 0 only."""
    from pfcvr.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError) as caught:
        train_stage.join_world(load_params("params.yaml"))
    assert str(caught.value) == (
        "train.batch_size=8 is not divisible by the world size 3 (torchrun processes); it is the "
        "global batch: use a multiple of 3 (e.g. 6) or a process count that divides 8 (2, 4, 8)")
    assert _run_train_stage() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train: error: {caught.value}"]
    monkeypatch.setenv("RANK", "2")                        # the same error on another rank: silent
    assert _run_train_stage() == 1
    assert capsys.readouterr().err == ""
    assert not (stage_copy / "models").exists()


def test_unwritable_output_folder_is_named_before_training(stage_copy, capsys):
    (stage_copy / "models").write_text("a file where the models folder should be")
    assert _run_train_stage() == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "train: error: output folder models/full cannot be created: "
        f"{stage_copy / 'models'} is a file, not a folder; move or delete it")
    assert not (stage_copy / ".cache").exists() and not (stage_copy / "reports").exists()


def test_read_only_output_folder_is_named(tmp_path):
    """A read-only mount stops root too (permission bits do not); skipped where mount is denied."""
    from pfcvr.runtime.storage import WriteError, check_writable

    with mounted_tmpfs(tmp_path / "ro", "ro,size=1M") as ro:
        with pytest.raises(WriteError) as caught:
            check_writable([tmp_path / "ok", ro / "models" / "full"])
        assert str(caught.value) == (f"output folder {ro / 'models' / 'full'} is not writable (its "
                                     f"existing parent {ro}): Read-only file system; fix its "
                                     "permissions or mount, or free it")


def test_replaced_image_restarts_the_seed_instead_of_resuming(project, tmp_path, monkeypatch):
    """The example of issue 12: images replaced under an interrupted run. Before, the resume
    fingerprint covered the manifest only and seed 0 resumed from epoch 1 (trained on the old
    images); now it starts again from epoch 0. Without the replacement it resumes from epoch 1."""
    import shutil

    from pfcvr.data.dataset import load_split

    root = tmp_path / "proj"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns(".cache", "models", "reports"))
    lay = _layout(root)
    params = load_params(root / "params.yaml", overrides={"report.seeds": [0]}, variant="full")
    base = load_params(root / "params.yaml")
    calls: list = []
    _spy(monkeypatch, calls, interrupt_seed=0)
    with pytest.raises(Interrupted):
        train_stage.train_variant(params, "full", base=base, progress=False, **lay)
    assert (lay["cache"] / "seed0/checkpoint.pt").is_file()

    split = load_split(lay["prepared"], lay["parts"], "train")
    image = split.paths[0]
    other = split.paths[-1]
    assert image.read_bytes() != other.read_bytes()
    before = (lay["prepared"] / "manifest.json").read_bytes()
    shutil.copyfile(other, image)                          # same name, other picture
    assert (lay["prepared"] / "manifest.json").read_bytes() == before

    calls.clear()
    _spy(monkeypatch, calls)
    train_stage.train_variant(params, "full", base=base, progress=False, **lay)
    assert calls == [(0, 0)]                               # trained again from scratch
