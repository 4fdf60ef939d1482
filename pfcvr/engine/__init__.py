"""Engine: the training loop, its seeds and resume, and retrieval evaluation."""
