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
