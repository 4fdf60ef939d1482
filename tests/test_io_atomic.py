"""Atomic outputs: temporaries name their owner, a killed writer's leftovers are removed by the
next writer, and an output set (pfcvr.runtime.output_set) is published together or finished later."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pfcvr.runtime import atomic
from pfcvr.runtime.output_set import OutputSet, journal_path, pending_outputs, recover

ROOT = Path(__file__).resolve().parents[1]


def run_until(code: str, ready: Path, timeout: float = 60.0) -> subprocess.Popen:
    """Start ``python -c code`` and wait until it creates ``ready`` (then it is still running)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                 "MLFLOW_DISABLE_TELEMETRY": "true"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the writer ended early: {proc.stderr.read().decode()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("the writer never got ready")
        time.sleep(0.05)
    return proc


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)          # reaped: a zombie would still count as a live owner
    assert proc.returncode == -signal.SIGKILL


def dot_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_temp_names_carry_host_and_pid_and_only_dead_owners_are_stale(tmp_path):
    out = tmp_path / "prepared"
    tmp = atomic.temp_name(out)
    assert tmp.name.startswith(f".prepared.tmp-{atomic.HOST}-{os.getpid()}-")
    mine = tmp_path / f".prepared.tmp-{atomic.HOST}-{os.getpid()}-abcd1234"
    other_host = tmp_path / f".prepared.tmp-{'0' * 8 if atomic.HOST != '0' * 8 else '1' * 8}-999999-ab"
    legacy = tmp_path / ".prepared.k3j2h1.tmp"            # an older naming: owner unknown
    lookalike = tmp_path / f".prepared_old.tmp-{atomic.HOST}-999999-ab"   # another output's
    for p in (mine, other_host, legacy, lookalike):
        p.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".prepared.tmp-{atomic.HOST}-{dead}-00ff"
    stale.mkdir()
    (stale / "manifest.json").write_text("[]")
    stale_file = tmp_path / f".prepared.old-{atomic.HOST}-{dead}-01"
    stale_file.write_text("x")
    assert atomic.stale_temps(out) == sorted([stale, stale_file])
    assert atomic.remove_stale_temps(out) == sorted([stale, stale_file])
    assert dot_entries(tmp_path) == sorted(p.name for p in (mine, other_host, legacy, lookalike))


def test_killed_atomic_dir_writers_leave_one_temp_each_and_the_next_run_removes_them(tmp_path):
    out = tmp_path / "data" / "prepared"
    code = f"""
        import time
        from pathlib import Path
        from pfcvr.runtime.atomic import atomic_dir
        with atomic_dir({str(out)!r}) as tmp:
            (tmp / "manifest.json").write_text("[1]")
            Path({str(tmp_path / 'ready')!r}).write_text(str(tmp))
            time.sleep(600)
    """
    seen = []
    for attempt in (1, 2, 3):
        proc = run_until(code, tmp_path / "ready")
        kill9(proc)
        (tmp_path / "ready").unlink()
        leftovers = dot_entries(out.parent)
        # each attempt removed the previous attempt's leftover: one, not one per attempt
        assert len(leftovers) == 1 and leftovers[0] not in seen
        assert leftovers[0].startswith(f".prepared.tmp-{atomic.HOST}-{proc.pid}-")
        seen.append(leftovers[0])
    with atomic.atomic_dir(out) as tmp:
        (tmp / "manifest.json").write_text("[2]")
    assert dot_entries(out.parent) == []                      # the last leftover removed too
    assert (out / "manifest.json").read_text() == "[2]"


def test_atomic_dir_replaces_a_folder_as_a_whole(tmp_path):
    out = tmp_path / "prepared"
    for n in (1, 2):
        with atomic.atomic_dir(out) as tmp:
            (tmp / f"v{n}.txt").write_text(str(n))
    assert sorted(p.name for p in out.iterdir()) == ["v2.txt"]
    assert dot_entries(tmp_path) == []
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "v3.txt").write_text("3")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["v2.txt"] and dot_entries(tmp_path) == []


def test_read_json_accepts_a_byte_order_mark(tmp_path):
    f = tmp_path / "m.json"
    f.write_bytes(b"\xef\xbb\xbf" + b'[{"a": 1}]')
    assert atomic.read_json(f) == [{"a": 1}]


# ----------------------------------------------------------------------------------------------
# output sets
# ----------------------------------------------------------------------------------------------

def write_set(root: Path, version: int) -> None:
    with OutputSet(root / "data" / "prepared") as outs:
        data = outs.dir(root / "data" / "prepared")
        fig = outs.file(root / "reports" / "fig.png")
        stats = outs.file(root / "reports" / "stats.json")
        (data / "manifest.json").write_text(f"v{version}")
        fig.write_text(f"v{version}")
        stats.write_text(f"v{version}")


def versions(root: Path) -> list[str]:
    return [(root / "data" / "prepared" / "manifest.json").read_text(),
            (root / "reports" / "fig.png").read_text(), (root / "reports" / "stats.json").read_text()]


def test_an_output_set_is_published_together_or_not_at_all(tmp_path):
    write_set(tmp_path, 1)
    assert versions(tmp_path) == ["v1", "v1", "v1"]
    with pytest.raises(RuntimeError):
        with OutputSet(tmp_path / "data" / "prepared") as outs:
            outs.dir(tmp_path / "data" / "prepared")
            outs.file(tmp_path / "reports" / "stats.json").write_text("v2")
            raise RuntimeError("the figure failed")
    assert versions(tmp_path) == ["v1", "v1", "v1"]
    assert dot_entries(tmp_path / "data") == [] and dot_entries(tmp_path / "reports") == []
    write_set(tmp_path, 2)
    assert versions(tmp_path) == ["v2", "v2", "v2"]
    assert pending_outputs(tmp_path / "data" / "prepared") == []


def test_a_set_killed_between_its_renames_is_visible_as_pending_and_finished_next_time(tmp_path):
    write_set(tmp_path, 1)
    # the second publication dies right after the data folder is swapped (SIGKILL, no cleanup)
    code = f"""
        import os, signal
        from pathlib import Path
        import pfcvr.runtime.output_set as S
        from tests.test_io_atomic import write_set
        real = S._place
        def place(kind, temp, final):
            real(kind, temp, final)
            if kind == "dir":
                Path({str(tmp_path / 'ready')!r}).write_text("swapped")
                os.kill(os.getpid(), signal.SIGKILL)
        S._place = place
        write_set(Path({str(tmp_path)!r}), 2)
    """
    proc = run_until(code, tmp_path / "ready")
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert versions(tmp_path) == ["v2", "v1", "v1"]           # inconsistent on disk ...
    primary = tmp_path / "data" / "prepared"
    assert journal_path(primary).is_file()                    # ... and a reader can tell
    assert pending_outputs(primary) == [primary, tmp_path / "reports" / "fig.png",
                                        tmp_path / "reports" / "stats.json"]
    assert recover(primary) == [tmp_path / "reports" / "fig.png", tmp_path / "reports" / "stats.json"]
    assert versions(tmp_path) == ["v2", "v2", "v2"]           # finished from the journal
    assert pending_outputs(primary) == []
    assert dot_entries(tmp_path / "reports") == [] and dot_entries(tmp_path / "data") == []
