"""One place that turns a ``device`` parameter (``auto | cpu | cuda``) into a torch device.

Every user resolves its device here: the trainer (``train.device``, with torchrun's
LOCAL_RANK), evaluation (``train.device``), the GroundingDINO part detector (``parts.device``)
and ``pfcvr search`` (``--device``); ``key`` names the parameter in the error.
"""
from __future__ import annotations

import torch

CHOICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine, or is not a known name."""


def resolve_device(pref: str | torch.device, local_rank: int = 0, *,
                   key: str = "train.device") -> torch.device:
    """``auto | cpu | cuda`` (or a torch.device, returned as is) -> a torch device.

    ``auto`` picks ``cuda:<local_rank>`` when a GPU is visible, else the CPU; ``cuda`` gives
    ``cuda:<local_rank>``. ``local_rank``: torchrun's LOCAL_RANK (0 for one process). ``key``
    names the parameter in error messages (``train.device``, ``parts.device``, ``--device``).

    Raises DeviceError: ``cuda`` asked for without a visible GPU, a name outside
    ``auto | cpu | cuda``, or a ``local_rank`` beyond the visible GPUs.
    """
    if isinstance(pref, torch.device):
        return pref
    if pref == "cpu":
        return torch.device("cpu")
    if pref not in CHOICES:
        raise DeviceError(f"{key}={pref!r}: must be one of {' | '.join(CHOICES)}")
    if not torch.cuda.is_available():
        if pref == "cuda":
            raise DeviceError(f"{key}=cuda but CUDA is not available on this machine "
                              "(torch.cuda.is_available() is False); use auto or cpu")
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise DeviceError(f"LOCAL_RANK={local_rank} but only {n} CUDA device(s) are visible; "
                          "start torchrun with --nproc_per_node <= the number of GPUs")
    return torch.device("cuda", local_rank)
