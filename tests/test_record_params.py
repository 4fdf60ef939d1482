"""The params-read recorder of tests/support/record_params (used by the slow pipeline test), tested fast.

Each case runs a fresh interpreter with the recorder's folder on PYTHONPATH, as `dvc repro` runs a
stage in tests/test_pipeline.py, and checks the recorded dotted keys exactly.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDER = ROOT / "tests" / "support" / "record_params"


def recorded(tmp_path: Path, code: str, stage: str | None = "teststage") -> list[str]:
    """The lines the recorder wrote for ``code`` run as DVC stage ``stage``."""
    record = tmp_path / "reads.tsv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(PYTHONPATH=os.pathsep.join([str(RECORDER), str(ROOT)]),
               PFCVR_RECORD_PARAMS=str(record), OMP_NUM_THREADS="1")
    if stage:
        env["DVC_STAGE"] = stage
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, check=True,
                   timeout=120)
    return record.read_text().splitlines() if record.is_file() else []


def test_records_exactly_the_leaves_read(tmp_path):
    lines = recorded(tmp_path, """
        from pfcvr.config import flatten, load_params, to_dict
        p = load_params("params.yaml")          # validation of the whole file: not a read
        flatten(p), to_dict(p.model), repr(p)   # logging and dumps: not reads
        train = p.train                         # reaching a section: not a read
        assert train.weights.mim == 0.5 and p.seed == 0
    """)
    assert lines == ["teststage\tseed", "teststage\ttrain.weights.mim"]


def test_a_variant_description_reads_its_ablations_entry(tmp_path):
    lines = recorded(tmp_path, """
        from pfcvr.config import load_params, variant_description
        p = load_params("params.yaml", variant="no_part")
        assert variant_description(p, "no_part") == "without part-level alignment"
        assert p.variant == "no_part"
    """, stage="train@no_part")
    assert lines == ["train@no_part\tablations.no_part"]


def test_sections_not_reached_from_params_are_not_reads(tmp_path):
    """A model config restored from a saved folder is not a params.yaml read."""
    lines = recorded(tmp_path, """
        from pfcvr.config import ModelConfig, load_params, parse_section, to_dict
        saved = to_dict(load_params("params.yaml").model)
        cfg = parse_section(ModelConfig, saved, "model")
        assert cfg.tiny.vocab_size == 1024 and cfg.part_context == "caption"
    """)
    assert lines == []


def test_nothing_is_recorded_outside_a_stage(tmp_path):
    lines = recorded(tmp_path, """
        from pfcvr.config import load_params
        assert load_params("params.yaml").seed == 0
    """, stage=None)
    assert lines == []
