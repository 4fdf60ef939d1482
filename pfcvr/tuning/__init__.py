"""Hyper-parameter search with Optuna: the study (``study``), its shared storage (``storage``) and
its web dashboard (``dashboard``, ``python -m pfcvr.tuning.dashboard``, `make tune-ui`). The
``tune`` stage's work is :mod:`pfcvr.pipeline.tune`.
"""
