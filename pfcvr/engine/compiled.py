"""The training loss of one batch as one function, eager or compiled with ``torch.compile``.

:func:`training_loss` is what :class:`pfcvr.engine.trainer.Trainer` runs inside autocast at every
step: the model's forward, the criterion, and the loss values it logs, stacked into one tensor so
that reading them back costs one copy. With ``train.compile: true`` the trainer runs
:func:`compile_training_loss`'s compiled version of the same function instead: one graph (forward
and loss; AOTAutograd derives the backward graph), with no graph break for PFCVR when the model is
asked for static shapes (``PFCVR.forward(static_shapes=True)``, added to the forward arguments by
:func:`pfcvr.engine.train.forward_kwargs`). Shapes are static (``dynamic=False``): the training
loader drops incomplete batches and pads captions to the tokenizer's width, so one graph serves the
whole run.

Compiled graphs are cached on disk by inductor (its FX-graph and AOTAutograd caches, on by default),
so a second process skips the code generation. Their default folder is
``/tmp/torchinductor_<user>``, which a reboot or a tmp cleaner empties; :func:`use_inductor_cache`
(called by :func:`compile_training_loss`) moves it to ``.cache/inductor`` under the working
directory (the repository root for the stages; git-ignored), unless ``TORCHINDUCTOR_CACHE_DIR``
names a folder already. Measured on 2 shared CPU cores with the small test model: a cold compile
of forward + backward about 110-130 s, the same graph from the warm cache under 7 s.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from pfcvr.paths import INDUCTOR_CACHE

# torch.compile modes that capture CUDA graphs (the step must then be marked, see the Trainer).
CUDAGRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


def training_loss(model, batch: dict, criterion, forward_kwargs: dict
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """One batch's total loss and the values the trainer logs.

    ``model(batch, **forward_kwargs)`` must return an output whose ``terms()`` gives the computed
    loss terms {name: scalar tensor []}; ``criterion(output)`` the total. Returns ``(loss,
    values, names)``: the total loss [] (attached to the graph), its detached fp32 values
    [1 + T] (total first, then the terms), and their names ``("loss", *terms)``.
    """
    out = model(batch, **forward_kwargs)
    loss = criterion(out)
    terms = out.terms()
    values = torch.stack([v.detach().float().reshape(()) for v in (loss, *terms.values())])
    return loss, values, ("loss", *terms)


def use_inductor_cache(folder: str | Path = INDUCTOR_CACHE) -> Path:
    """Point inductor's on-disk cache at ``folder`` (made absolute), unless
    ``TORCHINDUCTOR_CACHE_DIR`` names another folder than torch's default already (a user's
    choice wins). Importing ``torch._inductor.config`` writes torch's default into that variable,
    so the default value is taken as "not chosen"; inductor's memoised paths are then cleared.
    Returns the folder in use."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    from torch._inductor.utils import clear_caches

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        return Path(current)
    path = Path(folder).resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    clear_caches()
    return path


def compile_training_loss(mode: str = "default", *, fullgraph: bool = True,
                          backend: str | Callable = "inductor") -> Callable:
    """:func:`training_loss` under ``torch.compile`` (``dynamic=False``), called with the batch
    of the model's ``static_batch(batch)`` when it has one (PFCVR pads captions to one width there,
    so that batches of other caption widths do not recompile).

    mode: ``train.compile_mode`` (default | reduce-overhead | max-autotune-no-cudagraphs |
    max-autotune; the CUDA-graph modes only capture graphs on a GPU). fullgraph: fail on any graph
    break instead of running the rest eagerly: True for one process; False under DDP, whose forward
    dynamo deliberately leaves to run eagerly (it then compiles the wrapped module's forward with
    its DDP optimizer, which splits the graph at the gradient buckets). backend: ``inductor``, or
    for tests any ``torch.compile`` backend (``eager`` traces without generating code).
    """
    if backend != "inductor":   # modes are inductor settings
        core = torch.compile(training_loss, fullgraph=fullgraph, dynamic=False, backend=backend)
    else:
        use_inductor_cache()
        core = torch.compile(training_loss, mode=None if mode == "default" else mode,
                             fullgraph=fullgraph, dynamic=False)

    def compiled_training_loss(model, batch: dict, criterion, forward_kwargs: dict):
        # Outside the graph: its input shapes are what dynamo guards on.
        static_batch = getattr(getattr(model, "module", model), "static_batch", None)
        return core(model, batch if static_batch is None else static_batch(batch), criterion,
                    forward_kwargs)

    return compiled_training_loss
