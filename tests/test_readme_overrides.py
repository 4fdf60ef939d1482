"""Every `-S` line of the documentation (README.md, every docs/*.md page, benchmarks/README.md)
and of the params.yaml comments does what the documentation says.

DVC parses `-S` with Hydra's override grammar, so a line can fail in DVC before our config sees
it. Each line's overrides are applied to a copy of params.yaml by DVC's own code
(`dvc.utils.hydra.apply_overrides`, what `dvc exp run -S` and `--queue` call) and the result is
validated by `pfcvr.config.load_params`: every line must load, except the error examples of the
Parameters section (docs/experiments.md), whose printed output is compared with what the real
`dvc exp run` prints in a scratch git + DVC project. A documentation page that is missing fails
(tests/test_docs.py `documentation`).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pfcvr.config import ConfigError, load_params, to_dict
from tests.test_docs import documentation

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PLACEHOLDERS = ("...", "key=value")


def fragments(markdown: str) -> list[str]:
    """Lines of fenced blocks (shell continuations joined) and inline code spans (may wrap)."""
    out = []
    for i, part in enumerate(re.split(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)):
        if i % 2:
            out += part.replace("\\\n", " ").splitlines()
        else:
            out += [m.replace("\n", " ") for m in re.findall(r"`([^`]+)`", part)]
    return out


def overrides(fragment: str) -> list[str]:
    """The `-S` values of one command line, as the shell passes them ([] for placeholders)."""
    line = fragment.strip().removeprefix("$ ")
    if "-S" not in line.split():
        return []
    words = shlex.split(line, comments=True)
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-S"]
    return [] if any(p in v for v in values for p in PLACEHOLDERS) else values


def documented_lines() -> list[list[str]]:
    docs = [line for page in documentation() for line in fragments(page.read_text())]
    comments = [line.split("#", 1)[1] for line in (ROOT / "params.yaml").read_text().splitlines()
                if "#" in line]
    return [o for o in map(overrides, docs + [f"`{c}`" for c in comments]) if o]


def error_examples() -> list[tuple[str, list[str]]]:
    """(command, printed lines) of the one `$ dvc exp run` block of the documentation (the
    Parameters section of docs/experiments.md)."""
    blocks = [block for page in documentation() for block in
              re.findall(r"^```\n(\$ dvc exp run .*?)^```", page.read_text(), flags=re.S | re.M)]
    assert len(blocks) == 1, f"expected one block of -S error examples in the docs, found {len(blocks)}"
    out: list[tuple[str, list[str]]] = []
    for line in blocks[0].splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            out[-1][1].append(line)
    return out


def apply(tmp_path: Path, values: list[str]) -> Path:
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, values)
    return params


def test_the_docs_have_the_lines_this_test_runs():
    lines = documented_lines()
    assert ["train.weights.part=0.5"] in lines and ["train.cpu_threads=0"] in lines
    assert any("train.warmup_epochs=5" in o for o in lines)     # the multi-line real-data run
    assert len(lines) >= 12
    assert [cmd for cmd, _ in error_examples()] == [
        "dvc exp run -S train.mask_ratio=1.5", "dvc exp run -S train.weights.prt=0",
        "dvc exp run -S +train.weights.prt=0", "dvc exp run -S \"train.lr='1e-5'\""]


def test_every_documented_line_is_accepted_by_dvc_and_the_config(tmp_path):
    errors = {tuple(overrides(cmd)) for cmd, _ in error_examples()}
    checked = 0
    for k, values in enumerate(documented_lines()):
        if tuple(values) in errors:
            continue
        folder = tmp_path / f"line{k}"
        folder.mkdir()
        params = load_params(apply(folder, values))
        for value in values:   # and the value arrived as written
            key, _, text = value.partition("=")
            if key.startswith("~"):          # deleted, unless a later value puts it back
                if not any(v.lstrip("+").startswith(f"{key[1:]}=") for v in values):
                    parent, _, leaf = key[1:].rpartition(".")
                    assert leaf not in to_dict(value_at(params, parent)), value
                continue
            got = value_at(params, key.lstrip("+"))
            if isinstance(got, (list, dict)):
                assert got == yaml12(text), (value, got)
            else:
                assert str(got) == text or float(got) == float(text), (value, got)
        checked += 1
    assert checked >= 10


def value_at(params, key: str):
    """The value of a dotted key in loaded params (models by attribute, mappings by item)."""
    got = params
    for part in key.split("."):
        got = got[part] if isinstance(got, dict) else getattr(got, part)
    return got


def yaml12(text: str):
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def ranges_after(tmp_path: Path, values: list[str]) -> dict:
    return load_params(apply(tmp_path, values)).tune.ranges


DEFAULT_RANGES = {"train.weights.mlm": [0.0, 1.0], "train.weights.mim": [0.0, 1.0],
                  "train.weights.part": [0.0, 1.0], "train.mask_ratio": [0.3, 0.9],
                  "train.text_mask_ratio": [0.05, 0.3]}


def test_tune_space_ranges_take_ordinary_overrides(tmp_path):
    """Issue 13: each range of tune.space is a plain `-S` key, through DVC's own override code."""
    from dvc.exceptions import InvalidArgumentError

    def after(name: str, *values: str) -> dict:
        folder = tmp_path / name
        folder.mkdir()
        return ranges_after(folder, list(values))

    lines = documented_lines()   # the documentation and params.yaml show each form
    for line in (["tune.space.train.mask_ratio=[0.2,0.8]"], ["~tune.space.train.text_mask_ratio"],
                 ["+tune.space.train.lr=[1e-5,1e-3]"]):
        assert line in lines
    assert after("default") == DEFAULT_RANGES
    assert after("set", "tune.space.train.mask_ratio=[0.2,0.8]") == {
        **DEFAULT_RANGES, "train.mask_ratio": [0.2, 0.8]}                    # replaced, not merged
    assert after("weight", "tune.space.train.weights.mim=[0.5,1]") == {
        **DEFAULT_RANGES, "train.weights.mim": [0.5, 1.0]}
    less = dict(DEFAULT_RANGES)
    del less["train.text_mask_ratio"]
    assert after("drop", "~tune.space.train.text_mask_ratio") == less
    assert after("drop_weights", "~tune.space.train.weights") == {
        "train.mask_ratio": [0.3, 0.9], "train.text_mask_ratio": [0.05, 0.3]}
    assert after("add", "+tune.space.train.lr=[1e-5,1e-3]") == {
        **DEFAULT_RANGES, "train.lr": [1e-5, 1e-3]}
    assert after("add_model", "+tune.space.model.part_decoder.dropout=[0,0.3]") == {
        **DEFAULT_RANGES, "model.part_decoder.dropout": [0.0, 0.3]}
    assert after("only", "~tune.space", "+tune.space={train: {lr: [1e-5, 1e-3]}}") == {
        "train.lr": [1e-5, 1e-3]}
    # a mapping value merges into the ranges already there (Hydra), it does not replace them
    assert after("merge", "tune.space.train={mask_ratio: [0.2, 0.8]}") == {
        **DEFAULT_RANGES, "train.mask_ratio": [0.2, 0.8]}
    # a new key without `+`: DVC itself refuses the line, before params.yaml is touched
    for value in ("tune.space.train.lr=[1e-5,1e-3]", "tune.space.train={lr: [1e-5, 1e-3]}"):
        with pytest.raises(InvalidArgumentError) as info:
            apply(tmp_path, [value])
        cause = info.value.__cause__
        assert "To append to your config use +" in str(cause), cause


def test_config_error_examples_print_what_the_docs_show(tmp_path):
    for k, (cmd, printed) in enumerate(error_examples()):
        if not printed[0].startswith("ConfigError: "):
            continue
        folder = tmp_path / f"ex{k}"
        folder.mkdir()
        with pytest.raises(ConfigError) as err:
            load_params(apply(folder, overrides(cmd)))
        assert printed == [f"ConfigError: {err.value}"]


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory) -> tuple[Path, dict]:
    """A git + DVC project with the real params.yaml and a stage that validates it."""
    repo = tmp_path_factory.mktemp("overrides")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "check.py").write_text(
        "import sys\nfrom pfcvr.config import ConfigError, load_params\n"
        "try:\n    load_params('params.yaml')\nexcept ConfigError as err:\n"
        "    sys.exit(f'ConfigError: {err}')\n")
    (repo / "dvc.yaml").write_text("stages:\n  check:\n    cmd: python check.py\n"
                                   "    deps: [check.py]\n    params: [train]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "PYTEST_"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT), GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def test_dvc_itself_refuses_an_unknown_key_as_the_docs_show(scratch_repo):
    repo, env = scratch_repo
    cmd, printed = next((c, p) for c, p in error_examples() if p[0].startswith("ERROR: "))
    words = shlex.split(cmd)
    out = subprocess.run([str(BIN / "dvc"), *words[1:]], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert out.stderr.rstrip("\n").splitlines() == printed, out.stderr
    assert subprocess.run(["git", "diff", "--quiet"], cwd=repo).returncode == 0   # untouched


def test_config_error_examples_through_dvc_exp_run(scratch_repo):
    repo, env = scratch_repo
    for cmd, printed in error_examples():
        if not printed[0].startswith("ConfigError: "):
            continue
        out = subprocess.run([str(BIN / "dvc"), *shlex.split(cmd)[1:]], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=300)
        subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=repo, check=True)
        assert out.returncode != 0 and printed[0] in out.stdout + out.stderr, out.stderr
