"""One module per DVC stage, each the stage's work: ``dvc.yaml`` stage ``<name>`` runs
``stages/<name>.py``, which only does the I/O around one call into ``pfcvr.pipeline.<name>``.

prepare, parts, pretrain, zero_shot, train, evaluate, report, tune. The mechanisms they call live
below: :mod:`pfcvr.data`, :mod:`pfcvr.model`, :mod:`pfcvr.engine`, :mod:`pfcvr.report`,
:mod:`pfcvr.tracking`, :mod:`pfcvr.tuning` and :mod:`pfcvr.runtime`. Nothing is imported here, so
a stage depends only on the modules its own pipeline module imports.
"""
