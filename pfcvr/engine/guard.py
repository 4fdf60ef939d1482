"""The per-step guard against a non-finite loss or gradient, with or without a host sync per step.

Training must never update the weights with a NaN/inf loss or gradient, and must stop saying where
it happened. Checking a value on the host waits for the device to compute it: one sync per step,
free on a CPU, a stall of the launch queue on a GPU. :class:`StepGuard` does it one of two ways:

* ``immediate`` (CPU, and any optimizer without the fused kernels' ``found_inf`` input): the loss
  values are copied to the host before the backward; a non-finite one raises at once, as does a
  non-finite gradient norm after clipping (fp32/bf16; fp16's GradScaler skips those steps itself).
* ``deferred`` (the fused Adam on CUDA, without an fp16 GradScaler): nothing waits. A flag computed
  on the device (any loss value or the clipped gradient norm not finite) goes to the fused Adam
  as its ``found_inf`` input, which skips the whole update of that step on the device (weights,
  moments and step count untouched, as when GradScaler finds an overflow); the values are copied
  to pinned host memory without blocking and read at the next step, after its backward has been
  queued, before its update. So the guarantee is the same (no update ever uses a non-finite
  value, and the weights when training stops are those before the bad step); what changes is
  that the error is raised one step later (one more forward/backward is computed and discarded),
  that the lr schedule has advanced one step by then (it is not saved), and that progress lines
  show the loss of the previous step.
"""
from __future__ import annotations

import math

import torch


class NonFiniteLossError(FloatingPointError):
    """The loss (or a gradient) became NaN/inf; training stopped before updating the weights."""


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """True for optimizers that skip their update on the device given a ``found_inf`` flag
    (the fused Adam/AdamW/SGD implementations, as GradScaler uses them)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class StepGuard:
    """Checks each step's loss values (and gradient norm) for NaN/inf; see the module docstring.

    ``deferred``: the mode (True needs :func:`supports_found_inf`). Per step the trainer calls
    :meth:`loss_values` after the forward, :meth:`before_update` after the backward and clipping,
    right before ``optimizer.step()``; and :meth:`flush` after the last step of an epoch, before
    anything is saved. ``last_loss`` is the latest total loss read on the host (None before the
    first one is read). Errors raised: :class:`NonFiniteLossError`, naming the epoch, the step,
    the first non-finite term and the last good checkpoint.
    """

    def __init__(self, deferred: bool, device: torch.device, world_size: int = 1):
        self.deferred, self.device, self.world_size = deferred, device, world_size
        self.last_loss: float | None = None
        self._pending = None          # deferred: (host copy, event, names, where, last_good)
        self._values = None

    # -- both modes --------------------------------------------------------------------------
    def loss_values(self, values: torch.Tensor, names: list[str], where: str,
                    last_good: str) -> None:
        """values [1 + T]: the step's total loss then its terms (summed over ranks), ``names``
        theirs; ``where``: "epoch e, step s". Immediate mode: reads them (the one sync per step)
        and raises if one is not finite."""
        if not self.deferred:
            host = values.cpu()
            self.last_loss = float(host[0]) / self.world_size
            self._raise_if_bad(host, None, names, where, last_good)
            self._values = (host, names, where, last_good)
            return
        self._values = (values, names, where, last_good)

    def before_update(self, optimizer: torch.optim.Optimizer, norm: torch.Tensor | None,
                      check_norm: bool) -> None:
        """After the backward (and clipping: ``norm`` the total gradient norm, or None), before
        ``optimizer.step()``. ``check_norm``: whether a non-finite norm is an error (not under
        fp16's GradScaler, which skips such steps itself). Immediate mode: raises for a non-finite
        norm (one more sync). Deferred mode: raises for the *previous* step if it was bad, then
        arms this step's on-device skip and starts reading its values."""
        if not self.deferred:
            if check_norm and norm is not None and not torch.isfinite(norm):
                host, names, where, last_good = self._values
                self._raise_if_bad(host, norm, names, where, last_good)
            return
        self.flush()
        values, names, where, last_good = self._values
        bad = ~torch.isfinite(values).all()
        if check_norm and norm is not None:
            bad = bad | ~torch.isfinite(norm)
            values = torch.cat([values, norm.detach().float().reshape(1)])
        optimizer.found_inf = bad.float().reshape(())        # read by the fused step, on device
        host = torch.empty(values.shape, dtype=values.dtype, device="cpu",
                           pin_memory=self.device.type == "cuda")
        host.copy_(values, non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._pending = (host, event, names, where, last_good)

    def flush(self) -> None:
        """Deferred mode: wait for the pending step's values and raise if it was bad. A no-op in
        immediate mode or when nothing is pending."""
        if self._pending is None:
            return
        host, event, names, where, last_good = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        self.last_loss = float(host[0]) / self.world_size
        norm = host[len(names)] if host.numel() > len(names) else None
        self._raise_if_bad(host[:len(names)], norm, names, where, last_good)

    # -- the error ---------------------------------------------------------------------------
    def _raise_if_bad(self, host: torch.Tensor, norm, names, where: str, last_good: str) -> None:
        later = (" (detected at the next step; the update of this one was skipped on the "
                 "device)" if self.deferred else "")
        if not torch.isfinite(host).all():
            bad = [n for n, v in zip(names, host.tolist()) if not math.isfinite(v)]
            term = next((n for n in bad if n != "loss"), bad[0])
            raise NonFiniteLossError(
                f"non-finite loss at {where}: term '{term}' = {host[names.index(term)].item()} "
                f"(total loss {host[0].item()}){later}; training stopped before updating the "
                f"weights; last good checkpoint: {last_good}")
        if norm is not None and not math.isfinite(float(norm)):
            raise NonFiniteLossError(
                f"non-finite gradient norm at {where} (loss {host[0].item()}){later}; training "
                f"stopped before updating the weights; last good checkpoint: {last_good}")
