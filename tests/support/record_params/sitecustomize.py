"""Test tool: record which params.yaml keys a DVC stage process reads (not part of the library).

tests/test_pipeline.py puts this folder on the PYTHONPATH of `dvc repro` and sets
``PFCVR_RECORD_PARAMS=<file>``. Python imports ``sitecustomize`` at start-up, so in every stage
process (``DVC_STAGE`` set, or run as ``python -m stages.<name>``) this module waits for
``pfcvr.config`` to be imported, then hooks attribute reads of its params models. At exit it
appends one ``<stage>\\t<dotted key>`` line per key read.

What counts as a read: a leaf field of a ``Params`` object, or of a section reached from one
(``params.train.weights.mim`` -> ``train.weights.mim``; reaching ``params.train`` is not a read).
``params.description`` of a merged variant counts as ``ablations.<variant>``. Not reads: pydantic
validation and ``model_dump`` (flatten, to_dict, logging), and sections not reached from a
``Params`` (a model config restored from a saved model folder).
"""
from __future__ import annotations

import atexit
import os
import sys

RECORD = os.environ.get("PFCVR_RECORD_PARAMS")
READS: set[str] = set()
_PATHS: dict[int, tuple[object, str]] = {}   # id(section) -> (section kept alive, its dotted key)


def _stage() -> str | None:
    """The DVC stage this process runs (``train@full``), or None outside a stage."""
    if os.environ.get("DVC_STAGE"):
        return os.environ["DVC_STAGE"]
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        if module.startswith("stages."):
            return module.split(".", 1)[1]
    return None


def install(config) -> None:
    """Hook ``config.Section`` (base of every params model) so that leaf reads are recorded."""
    params_cls = config.Params

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        cls = type(self)
        if cls is params_cls:
            path = ""
        else:
            entry = _PATHS.get(id(self))
            if entry is None or entry[0] is not self:
                return value   # not reached from a Params: not a params.yaml read
            path = entry[1]
        if name in cls.model_fields:
            key = f"{path}.{name}" if path else name
            if isinstance(value, config.Section):
                _PATHS[id(value)] = (value, key)
            else:
                READS.add(key)
        elif name == "description" and cls is params_cls and self.variant is not None:
            READS.add(f"ablations.{self.variant}")
        return value

    config.Section.__getattribute__ = __getattribute__


def _write(stage: str) -> None:
    if READS:
        with open(RECORD, "a") as fh:
            fh.writelines(f"{stage}\t{key}\n" for key in sorted(READS))


class _HookConfig:
    """Meta-path finder: when ``pfcvr.config`` is loaded, run :func:`install` on it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "pfcvr.config":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_install(module):
            exec_module(module)
            install(module)

        spec.loader.exec_module = exec_and_install   # this spec's own loader instance
        return spec


if RECORD and (_STAGE := _stage()):
    sys.meta_path.insert(0, _HookConfig())
    atexit.register(_write, _STAGE)
