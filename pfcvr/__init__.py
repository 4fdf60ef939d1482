"""PFCVR: part-level fine-grained perception for text-to-image vehicle retrieval.

The heavy pieces (torch, transformers) are imported lazily so that ``import pfcvr`` stays cheap:
it loads neither torch nor the model package (tests/test_imports.py checks it).
"""
import importlib

from pfcvr.config import load_params
from pfcvr.data.categories import PART_CATEGORIES

__all__ = ["PART_CATEGORIES", "load_params", "load"]


def load(path, device="cpu"):
    """Restore a trained model folder (weights, config, tokenizer) offline. See pfcvr.model.io."""
    # By name, not by an import statement: this file runs before every module of the package, and
    # the DVC deps of a stage are the files its import statements reach (tests/support/
    # import_graph.py, which counts imports inside functions too), so an import of pfcvr.model
    # here would make every stage, the data stages included, depend on the model and loss code.
    # `pfcvr.load` is the entry point for people; the project's own code imports
    # pfcvr.model.io.load_model, a dependency the graph sees (tests/test_dvc_deps.py checks that
    # no stage code calls pfcvr.load).
    return importlib.import_module("pfcvr.model.io").load_model(path, device=device)
