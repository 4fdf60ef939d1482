"""The one device resolver (pfcvr.runtime.device) and the places that use it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pfcvr.runtime.device import DeviceError, resolve_device

PFCVR = Path(__file__).resolve().parents[1] / "pfcvr"
CPU = torch.device("cpu")


def test_there_is_one_resolve_device():
    defining = sorted(str(p.relative_to(PFCVR)) for p in PFCVR.rglob("*.py")
                      if "def resolve_device(" in p.read_text())
    assert defining == ["runtime/device.py"]
    from pfcvr.engine import distributed as D

    assert D.resolve_device is resolve_device and D.DeviceError is DeviceError


def test_names_and_devices():
    assert resolve_device("cpu") == CPU
    gpu1 = torch.device("cuda", 1)
    assert resolve_device(gpu1) is gpu1          # a torch.device is taken as it is
    with pytest.raises(DeviceError, match=r"parts.device=.gpu.: must be one of auto \| cpu"):
        resolve_device("gpu", key="parts.device")
    with pytest.raises(TypeError):               # key is keyword-only: never a local rank
        resolve_device("cpu", 0, "train.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda():
    assert resolve_device("auto") == CPU and resolve_device("auto", 3) == CPU
    with pytest.raises(DeviceError, match="train.device=cuda but CUDA is not available"):
        resolve_device("cuda")


def test_search_reports_a_bad_device_as_a_search_error(tmp_path):
    from pfcvr.search import SearchError, run_search

    with pytest.raises(SearchError, match="--device='gpu'"):
        run_search(tmp_path / "model", tmp_path / "gallery", "white SUV", device="gpu",
                   cache_dir=None)
