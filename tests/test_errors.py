"""How a stage ends on an error (pfcvr.runtime.stage.run_stage): one line, exit 1; bugs keep tracebacks."""
import errno

import pytest

from pfcvr.config import ConfigError
from pfcvr.runtime.stage import run_stage
from pfcvr.runtime.storage import DiskSpaceError


def _raise(err):
    def main():
        raise err
    return main


def test_user_errors_are_one_line_and_exit_1(capsys):
    assert run_stage("train", lambda: None) == 0
    assert run_stage("train", _raise(ConfigError("train.lr=2.0: must be in (0.0, 1.0]"))) == 1
    assert capsys.readouterr().err == "train: error: train.lr=2.0: must be in (0.0, 1.0]\n"
    assert run_stage("tune", _raise(ValueError("the training split has 90 samples,\n fewer"))) == 1
    assert capsys.readouterr().err == "tune: error: the training split has 90 samples, fewer\n"
    assert run_stage("train", _raise(DiskSpaceError("disk full while writing x"))) == 1
    assert capsys.readouterr().err == "train: error: disk full while writing x\n"
    assert run_stage("report", _raise(FileNotFoundError("reports/metrics/full.json: file not "
                                                        "found"))) == 1
    assert capsys.readouterr().err == "report: error: reports/metrics/full.json: file not found\n"


def test_a_bug_keeps_its_traceback_and_debug_keeps_all(monkeypatch):
    with pytest.raises(KeyError):
        run_stage("train", _raise(KeyError("a bug")))
    monkeypatch.setenv("PFCVR_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_stage("train", _raise(ConfigError("x")))


def test_ranks_and_cleanup(monkeypatch, capsys):
    cleaned = []
    monkeypatch.setenv("RANK", "1")
    assert run_stage("train", _raise(ConfigError("same on every rank")),
                     cleanup=lambda: cleaned.append(1)) == 1
    assert capsys.readouterr().err == ""                  # rank 0 prints it
    assert run_stage("train", _raise(OSError(errno.EIO, "rank 1 only")),
                     cleanup=lambda: cleaned.append(2)) == 1
    assert capsys.readouterr().err == "[rank 1] train: error: [Errno 5] rank 1 only\n"
    assert cleaned == [1, 2]


def test_out_of_gpu_memory_says_what_to_lower(capsys):
    import torch

    assert run_stage("train", _raise(torch.OutOfMemoryError("CUDA out of memory. Tried to "
                                                            "allocate 2.00 GiB"))) == 1
    assert capsys.readouterr().err == (
        "train: error: out of GPU memory; lower train.batch_size (training) or eval.batch_size "
        "(evaluation), or use train.precision bf16 (CUDA out of memory. Tried to allocate 2.00 "
        "GiB)\n")


def test_interrupt(capsys):
    assert run_stage("train", _raise(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "train: interrupted\n"



def test_a_tab_in_params_yaml_is_one_line_naming_line_and_column(tmp_path, capsys):
    """Issue 23 §8: a tab in params.yaml ended `prepare` with ruamel's five-line message. Every
    stage now prints one line naming the line and column and what to do."""
    import importlib
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "params.yaml").read_text().replace("\n  source: synthetic",
                                                      "\n\tsource: synthetic")
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    line = text[:text.index("\tsource")].count("\n") + 1
    expected = (f"{bad}: not valid YAML at line {line}, column 1: a tab character; YAML allows "
                "only spaces there, replace it with spaces")
    out = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(bad)],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr) == (1, f"prepare: error: {expected}\n")
    for stage in ("parts", "pretrain", "zero_shot", "train", "evaluate", "report", "tune"):
        main = importlib.import_module(f"stages.{stage}").main
        args = ["--params", str(bad)] + (["--variant", "full"] if stage in ("train", "evaluate")
                                         else [])
        assert run_stage(stage, lambda: main(args)) == 1
        assert capsys.readouterr().err == f"{stage}: error: {expected}\n"
