"""One thin entry point per DVC stage: `python -m stages.<name>`, I/O around one call into
pfcvr.pipeline.<name>."""
