"""Issue 23 §3: a stage's outputs are one set. A real `python -m stages.evaluate` killed with
SIGKILL part way (while evaluating, or between the renames of its outputs) never leaves its new
metrics beside the previous run's CMC table, model card and figures; the report refuses a set
caught half-published, and the next evaluate run makes it whole. A figure that cannot be drawn
never costs the set (a warning and a placeholder).
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pfcvr.runtime.output_set import (IncompleteOutputs, OutputSet, pending_outputs,
                                      require_whole)
from tests.support.eval_helpers import build_tiny_model
from tests.test_evaluate import SEEDS, _stage_args, tiny  # noqa: F401 (tiny is a fixture)
from tests.test_io_atomic import dot_entries

ROOT = Path(__file__).resolve().parents[1]


def _models(tiny, ws: Path, offset: int) -> None:   # noqa: F811
    """Write models/full/seed<k>/{best,final} with weights drawn from ``offset`` (a new set of
    models gives new metrics)."""
    from pfcvr.model.io import save_model

    for seed in SEEDS:
        for i, kind in enumerate(("best", "final")):
            model = build_tiny_model(tiny["params"], tiny["captions"], seed=offset + 10 * seed + i)
            save_model(model, ws / "models" / "full" / f"seed{seed}" / kind,
                       {"variant": "full", "seed": seed, "epoch": 2 + i, "description": "all"})


def _outputs(ws: Path) -> dict[str, Path]:
    return {"metrics": ws / "reports/metrics/full.json", "cmc": ws / "reports/eval/full/cmc.tsv",
            "card": ws / "reports/eval/full/model_card.md",
            "cmc_figure": ws / "reports/figures/cmc_full.png",
            "topk_figure": ws / "reports/figures/topk_full.png"}


def _snapshot(ws: Path) -> dict[str, bytes]:
    return {k: p.read_bytes() for k, p in _outputs(ws).items()}


def _one_run(ws: Path) -> None:
    """The metrics, the CMC table and the model card state the same best R1 (a mixture of two
    runs does not)."""
    out = _outputs(ws)
    doc = json.loads(out["metrics"].read_text())
    with open(out["cmc"]) as fh:
        first = next(csv.DictReader(fh, delimiter="\t"))
    assert float(first["best"]) == pytest.approx(doc["best"]["R1"]["mean"], abs=1e-4)
    assert f"| best | {doc['best']['R1']['mean']:.2f} ± " in out["card"].read_text()


def _env(ws: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{ws / 'mlflow.db'}",
               MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _evaluate(tiny, ws: Path, patch: str = "") -> subprocess.Popen:   # noqa: F811
    """`python -m stages.evaluate` in a subprocess (``patch``: code run first, e.g. a kill)."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        import pfcvr.runtime.output_set as S
        from pfcvr.runtime.stage import run_stage
        from stages import evaluate
    """) + textwrap.dedent(patch) + textwrap.dedent(f"""
        sys.exit(run_stage("evaluate", lambda: evaluate.main({_stage_args(tiny, ws)!r})))
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ws, env=_env(ws),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture
def ws(tiny, tmp_path):   # noqa: F811
    """A workspace with a complete first evaluation (models drawn from offset 0)."""
    _models(tiny, tmp_path, 0)
    _finish(_evaluate(tiny, tmp_path))
    _one_run(tmp_path)
    return tmp_path


@pytest.mark.slow   # three evaluate processes each (about 20 s apiece on 2 busy cores)
def test_evaluate_killed_while_evaluating_leaves_the_previous_set(tiny, ws):   # noqa: F811
    """The example of the issue: before, the metrics JSON of the new run could stand beside the
    previous run's CMC table, card and figures. Killed after its first model, nothing changed."""
    before = _snapshot(ws)
    _models(tiny, ws, 100)                                  # new models: new numbers
    proc = _evaluate(tiny, ws)
    deadline = time.time() + 300
    for line in proc.stdout:                                # a real kill -9, part way
        if line.startswith("evaluate@full seed 0 best:") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(ws) == before and pending_outputs(_outputs(ws)["metrics"]) == []
    _finish(_evaluate(tiny, ws))                            # the next run publishes its set
    after = _snapshot(ws)
    assert all(after[k] != before[k] for k in ("metrics", "cmc", "card"))
    _one_run(ws)
    for folder in ("reports/metrics", "reports/eval/full", "reports/figures"):
        assert dot_entries(ws / folder) == [], folder        # no temporary or journal left


@pytest.mark.slow
def test_evaluate_killed_between_renames_is_refused_then_finished(tiny, ws):   # noqa: F811
    """Killed after the first of its five renames: the visible files are a mixture, which the
    journal records; the report refuses the set (one line), the next evaluate run first finishes
    the interrupted set, then publishes its own, whole."""
    from pfcvr.config import load_params
    from pfcvr.pipeline.report import ablation_report

    out = _outputs(ws)
    before = _snapshot(ws)
    _models(tiny, ws, 100)
    die = """
        real = S._place
        def place(kind, temp, final):
            real(kind, temp, final)
            os.kill(os.getpid(), signal.SIGKILL)        # after the CMC table, before the rest
        S._place = place
    """
    proc = _evaluate(tiny, ws, die)
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    now = _snapshot(ws)
    assert now["cmc"] != before["cmc"] and now["metrics"] == before["metrics"]   # a mixture ...
    assert pending_outputs(out["metrics"]) == [out["cmc"], out["card"], out["cmc_figure"],
                                               out["topk_figure"], out["metrics"]]   # ... on record
    params = load_params(tiny["params_file"], overrides={"report.variants": ["full"]})
    with pytest.raises(IncompleteOutputs) as err:
        ablation_report(params, ws / "reports/metrics", ws / "none.json")
    assert str(err.value) == (
        f"{out['metrics']}: the evaluate@full stage was interrupted while publishing its outputs "
        f"({', '.join(map(str, pending_outputs(out['metrics'])))} may come from different runs); "
        "rerun it: dvc repro evaluate@full")
    _finish(_evaluate(tiny, ws))
    assert pending_outputs(out["metrics"]) == [] and _snapshot(ws)["metrics"] != before["metrics"]
    _one_run(ws)
    require_whole(out["metrics"], "evaluate@full")


def test_a_figure_that_cannot_be_drawn_is_a_warning_and_a_placeholder(tmp_path, monkeypatch):
    """An optional output never costs the set: the figure's error is one warning naming it, a
    placeholder PNG says why, the other outputs are published; without even a placeholder the
    previous figure is removed with the set, so no file of another run stays."""
    import pfcvr.runtime.output_set as S

    stats, fig = tmp_path / "stats.json", tmp_path / "fig.png"
    fig.write_bytes(b"the previous run's figure")

    def broken(path):
        raise ValueError("Image size of 70000x90 pixels is too large")

    with pytest.warns(UserWarning) as said, OutputSet(stats) as outs:
        assert outs.figure(fig, broken, "ablation figure") is False
        outs.file(stats).write_text("{}\n")
    assert [str(w.message) for w in said] == [
        f"ablation figure {fig} not drawn (ValueError: Image size of 70000x90 pixels is too "
        "large); a placeholder says so, the other outputs are complete"]
    assert stats.read_text() == "{}\n" and fig.read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    with Image.open(fig) as im:
        assert im.width == 640                              # the placeholder, not a figure

    def no_placeholder(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S, "placeholder_png", no_placeholder)
    with pytest.warns(UserWarning, match="not drawn"), OutputSet(stats) as outs:
        outs.figure(fig, broken, "ablation figure")
        outs.file(stats).write_text('{"run": 2}\n')
    assert stats.read_text() == '{"run": 2}\n' and not fig.exists()
    assert dot_entries(tmp_path) == []
    monkeypatch.setenv("PFCVR_DEBUG", "1")                   # debugging: the error itself
    with pytest.raises(ValueError, match="too large"), OutputSet(stats) as outs:
        outs.figure(fig, broken)
    assert stats.read_text() == '{"run": 2}\n'


def test_report_stage_publishes_without_its_figure(tmp_path):
    """The report stage (a real process) with a figure that fails: exit 0, one warning line
    naming the figure, and the report, its JSON and the comparison cells published."""
    from pfcvr.config import load_params
    from tests.test_report import _write

    params_file = ROOT / "params.yaml"
    variants = list(load_params(params_file).report.variants)
    for i, v in enumerate(variants):
        _write(tmp_path / "metrics", v, [50.0 - i, 52.0 - i, 54.0 - i], [30.0, 30.5, 31.0])
    out = tmp_path / "out"
    args = ["--params", str(params_file), "--metrics", str(tmp_path / "metrics"),
            "--data-stats", str(tmp_path / "none.json"), "--out-md", str(out / "a.md"),
            "--out-json", str(out / "a.json"), "--compare", str(out / "c.json"),
            "--figure", str(out / "a.png")]
    code = textwrap.dedent(f"""
        import sys
        import pfcvr.report.figures.ablation as F
        from pfcvr.runtime.stage import run_stage
        from stages import report
        def broken(*args, **kwargs):
            raise RuntimeError("the figure library failed")
        F.ablation_figure = broken
        sys.exit(run_stage("report", lambda: report.main({args!r})))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figure_lines = [line for line in done.stderr.splitlines() if "not drawn" in line]
    assert figure_lines == [f"report: warning: ablation figure {out / 'a.png'} not drawn "
                            "(RuntimeError: the figure library failed); a placeholder says so, "
                            "the other outputs are complete"]
    assert json.loads((out / "a.json").read_text())["full"]["R1"]["mean"] == pytest.approx(52.0)
    assert json.loads((out / "c.json").read_text())["test"]["full"] == "52.0 / 30.5"
    assert (out / "a.png").read_bytes()[:4] == b"\x89PNG" and "## Setup" in (out / "a.md").read_text()
