"""PFCVR: part-level fine-grained perception for text-to-image vehicle retrieval.

The heavy pieces (torch, transformers) are imported lazily so that ``import pfcvr`` stays cheap:
it loads neither torch nor the model package (tests/test_imports.py checks it).
"""
from pfcvr.config import PART_CATEGORIES, load_params

__all__ = ["PART_CATEGORIES", "load_params", "load"]


def load(path, device="cpu"):
    """Restore a trained model folder (weights, config, tokenizer) offline. See pfcvr.model.io."""
    from pfcvr.model.io import load_model

    return load_model(path, device=device)
