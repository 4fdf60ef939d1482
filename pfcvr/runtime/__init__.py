"""What every stage runs on: atomic file output (``atomic``, ``output_set``), free-space and
write checks (``storage``), the device (``device``, the only one that imports torch), how a stage
ends on an error (``stage``), whether the process that wrote something is still alive
(``process``) and the files of the shared sqlite stores (``sqlite_store``).
"""
