"""Data: the synthetic benchmark, real-format readers and their layouts, part pairs, the torch
Dataset, the part categories. The stages' work on data is pfcvr.pipeline.prepare / .parts."""
