"""The prepare stage killed with SIGKILL: no temporaries pile up, and its three outputs
(data/prepared, stats, figure) never stay a mix of two runs once the next run starts."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from pfcvr.config import load_params
from pfcvr.pipeline.prepare import prepare
from pfcvr.runtime.output_set import pending_outputs
from tests.test_io_atomic import dot_entries, kill9, run_until
from tests.test_prepare import outputs, write_params


def prepare_in_subprocess(tmp_path: Path, params: Path, patch: str) -> str:
    out, stats, fig = outputs(tmp_path)
    return f"""
        import os, signal, time
        from pathlib import Path
        import pfcvr.pipeline.prepare as P
        import pfcvr.runtime.output_set as S
        from pfcvr.config import load_params
        READY = Path({str(tmp_path / 'ready')!r})
{patch}
        P.prepare(load_params({str(params)!r}), {str(out)!r}, {str(stats)!r}, {str(fig)!r}, workers=1)
    """


def test_a_killed_prepare_leaves_one_temp_set_that_the_next_run_removes(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    out, stats, fig = outputs(tmp_path)
    hang = """
        real = P.save_manifest
        def save_manifest(records, path):        # inside the data temp folder: hang there
            real(records, path)
            READY.write_text(str(path))
            time.sleep(600)
        P.save_manifest = save_manifest
"""
    for _ in range(2):
        proc = run_until(prepare_in_subprocess(tmp_path, params, hang), tmp_path / "ready")
        kill9(proc)
        (tmp_path / "ready").unlink()
        # one temporary per output, whatever the number of killed attempts (each attempt
        # removed the previous attempt's)
        assert [n.split("-")[0] for n in dot_entries(out.parent)] == [".prepared.tmp"]
        assert [n.split("-")[0] for n in dot_entries(stats.parent)] == [".fig.png.tmp",
                                                                       ".stats.json.tmp"]
        assert not out.exists() and not stats.exists()
    prepare(load_params(params), out, stats, fig, workers=1)
    assert dot_entries(out.parent) == [] and dot_entries(stats.parent) == []
    assert json.loads(stats.read_text())["total"]["images"] == 24


def test_prepare_killed_after_the_data_swap_is_finished_by_the_next_run(tmp_path):
    from pfcvr.pipeline.parts import PartsJob

    out, stats, fig = outputs(tmp_path)
    first = load_params(write_params(tmp_path / "a.yaml"))
    prepare(first, out, stats, fig, workers=1)
    assert json.loads(stats.read_text())["total"]["images"] == 24          # 12 ids x 2
    figure_before = fig.read_bytes()
    bigger = write_params(tmp_path / "b.yaml", **{"data.synthetic.n_ids": 18})
    die_after_data = """
        real = S._place
        def place(kind, temp, final):
            real(kind, temp, final)
            if kind == "dir":                    # data/prepared swapped; figure, stats not yet
                READY.write_text("swapped")
                os.kill(os.getpid(), signal.SIGKILL)
        S._place = place
"""
    proc = run_until(prepare_in_subprocess(tmp_path, bigger, die_after_data), tmp_path / "ready")
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # the visible files are a mix: the new data with the old stats and figure ...
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest) == 36 and json.loads(stats.read_text())["total"]["images"] == 24
    assert fig.read_bytes() == figure_before
    # ... a reader can tell, and the parts stage refuses to read it
    assert pending_outputs(out) == [out, fig, stats]
    with pytest.raises(ValueError, match=r"prepare stage was interrupted while publishing its "
                                         r"outputs .*rerun it: dvc repro prepare"):
        PartsJob.from_params(first, out, tmp_path / "cache")
    # the next prepare run first finishes the interrupted set, then publishes its own
    prepare(load_params(bigger), out, stats, fig, workers=1)
    assert pending_outputs(out) == []
    assert json.loads(stats.read_text())["total"]["images"] == 36 == len(
        json.loads((out / "manifest.json").read_text()))
    assert fig.read_bytes() != figure_before
    assert dot_entries(out.parent) == [] and dot_entries(stats.parent) == []
