"""Engine: the training loop, the seed pool, checkpoints and resume, encoding, ranking and
retrieval evaluation. The stages' loops over variants and seeds are in pfcvr.pipeline."""
