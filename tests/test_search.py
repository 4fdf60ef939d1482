"""`pfcvr search` end to end on a tiny randomly initialised model: ranking, cache, bad input."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pfcvr.cli import main as cli
from pfcvr.config import load_params
from pfcvr.search import SearchError, run_search
from tests.support.eval_helpers import REPO, build_tiny_model, make_split_data, write_params


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from pfcvr.data.dataset import load_split
    from pfcvr.model.io import save_model

    root = tmp_path_factory.mktemp("search")
    params = load_params(write_params(root / "params.yaml", {}))
    prepared, parts = make_split_data(root, params)
    captions = [c for r in load_split(prepared, parts, "train").records for c in r["captions"]]
    for seed in (0, 1):
        save_model(build_tiny_model(params, captions, seed=seed),
                   root / "models" / "full" / f"seed{seed}" / "best", {"seed": seed})
    gallery = root / "gallery"
    shutil.copytree(prepared / "images", gallery)
    return {"root": root, "prepared": prepared, "gallery": gallery,
            "model": root / "models" / "full" / "seed0" / "best", "variant": root / "models" / "full"}


def test_ranking_equals_direct_cosine_and_second_query_hits_cache(env, tmp_path):
    from pfcvr.model.io import load_model

    cache = tmp_path / "cache"
    first = run_search(env["variant"], env["gallery"], "yellow suv with chrome wheels", top_k=4,
                       cache_dir=cache)
    assert first.model == env["model"]                  # models/full -> seed0/best
    assert not first.index.cache_hit and first.index.encoded == len(first.index.paths) == 32
    assert len(list(cache.glob("gallery-*.pt"))) == 1
    # scores and order equal a direct computation with the model
    model = load_model(env["model"])
    from pfcvr.data.dataset import ImageStore, normalize

    store = ImageStore(first.index.paths, model.image_size, cache=False)
    imgs = normalize(torch.stack([torch.from_numpy(np.array(store.decode(i))).permute(2, 0, 1)
                                  for i in range(len(store))]))
    with torch.no_grad():
        g = F.normalize(model.encode_image(imgs), dim=-1)
        q = F.normalize(model.encode_text(model.tokenizer(["yellow suv with chrome wheels"])), dim=-1)
    scores, order = torch.topk((q @ g.t())[0], 4)
    assert [h.path for h in first.hits] == [first.index.paths[i] for i in order.tolist()]
    assert [h.score for h in first.hits] == pytest.approx(scores.tolist(), abs=1e-5)
    assert [h.rank for h in first.hits] == [1, 2, 3, 4]

    second = run_search(env["model"], env["gallery"], "  green   hatchback ", top_k=2, cache_dir=cache)
    assert second.index.cache_hit and second.index.encoded == 0
    assert second.query == "green hatchback" and len(second.hits) == 2
    torch.testing.assert_close(second.index.features, first.index.features)


def test_cache_key_follows_gallery_and_model(env, tmp_path):
    cache = tmp_path / "cache"
    gallery = tmp_path / "g"
    shutil.copytree(env["gallery"] / "00001", gallery)
    a = run_search(env["model"], gallery, "red van", cache_dir=cache)
    assert not a.index.cache_hit and len(a.index.paths) == 2
    shutil.copy(env["gallery"] / "00002" / "00002_00.png", gallery / "extra.png")
    b = run_search(env["model"], gallery, "red van", cache_dir=cache)
    assert not b.index.cache_hit and len(b.index.paths) == 3          # new file: re-encoded
    c = run_search(env["variant"] / "seed1" / "best", gallery, "red van", cache_dir=cache)
    assert not c.index.cache_hit                                      # other weights
    d = run_search(env["model"], gallery, "red van", cache_dir=cache)
    assert d.index.cache_hit
    e = run_search(env["model"], gallery, "red van", cache_dir=None)
    assert not e.index.cache_hit


def test_cli_prints_ranked_images_and_writes_grid(env, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    rc = cli(["search", "--model", str(env["model"]), "--gallery", str(env["prepared"] / "manifest.json"),
              "--split", "test", "--top-k", "3", "--grid", str(grid), "--cache-dir", str(tmp_path / "c"),
              "white", "SUV", "with", "a", "black", "roof", "rack"])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'query:   "white SUV with a black roof rack"' in out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3 and all("(id " in r and ".png" in r for r in rows)
    assert "8 images; 8 images encoded" in out                       # the test split only
    assert grid.read_bytes()[:4] == b"\x89PNG"


def test_unreadable_images_are_skipped_and_counted(env, tmp_path, capsys):
    gallery = tmp_path / "g"
    shutil.copytree(env["gallery"] / "00003", gallery)
    (gallery / "broken.png").write_bytes(b"not an image at all")
    (gallery / "notes.txt").write_text("ignored: not an image suffix")
    rc = cli(["search", "--model", str(env["model"]), "--gallery", str(gallery), "--cache-dir",
              str(tmp_path / "c"), "blue sedan"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "warning: skipped 1 unreadable gallery image(s)" in captured.err
    assert "broken.png" in captured.err and "broken.png" not in captured.out
    assert "2 images, 1 unreadable skipped" in captured.out
    # the count survives a cache hit
    rc = cli(["search", "--model", str(env["model"]), "--gallery", str(gallery), "--cache-dir",
              str(tmp_path / "c"), "blue sedan"])
    captured = capsys.readouterr()
    assert rc == 0 and "embeddings from cache" in captured.out and "skipped 1" in captured.err


def _bad(args, capsys, cache_dir):
    """Run `pfcvr search` expecting bad input: exit code 2 and one stderr line (no traceback)."""
    rc = cli(["search", "--cache-dir", str(cache_dir), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_gives_one_line_errors(env, tmp_path, capsys):
    model, gallery, cache = str(env["model"]), str(env["gallery"]), tmp_path / "c"

    def bad(*args):
        return _bad(list(args), capsys, cache)

    err = bad("--model", str(tmp_path / "nope"), "--gallery", gallery, "car")
    assert err.startswith("pfcvr search: error: model folder") and "does not exist" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    err = bad("--model", str(partial), "--gallery", gallery, "car")
    assert "incomplete" in err and "model.safetensors" in err and "tokenizer/" in err
    empty_folder = tmp_path / "empty"
    (empty_folder / "sub").mkdir(parents=True)
    (empty_folder / "sub" / "readme.txt").write_text("x")
    assert "contains no images" in bad("--model", model, "--gallery", str(empty_folder), "car")
    assert "query is empty" in bad("--model", model, "--gallery", gallery, "   ")
    assert "does not exist" in bad("--model", model, "--gallery", str(tmp_path / "x"), "car")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\x00\x01")
    assert "none of its 1 images could be read" in bad("--model", model, "--gallery", str(broken),
                                                       "car")
    assert "--top-k 0" in bad("--model", model, "--gallery", gallery, "--top-k", "0", "car")
    bad_json = tmp_path / "m.json"
    bad_json.write_text("{not json")
    assert "not valid JSON" in bad("--model", model, "--gallery", str(bad_json), "car")
    with pytest.raises(SearchError, match="--split only applies"):
        run_search(model, gallery, "car", split="test", cache_dir=cache)


def test_corrupt_weights_are_reported(env, tmp_path, capsys):
    broken = tmp_path / "m"
    shutil.copytree(env["model"], broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    err = _bad(["--model", str(broken), "--gallery", str(env["gallery"]), "car"], capsys,
               tmp_path / "c")
    assert "cannot be loaded" in err


@pytest.mark.slow
def test_module_entry_point_runs_end_to_end(env, tmp_path):
    """`python -m pfcvr.search` in a fresh process, with the cache in the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "pfcvr.search", "--model", str(env["model"]), "--gallery",
           str(env["gallery"]), "--top-k", "2", "silver pickup truck"]
    envvars = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=envvars, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(".png") == 2 and "32 images encoded" in out.stdout
    assert list((work / ".cache" / "pfcvr").glob("gallery-*.pt"))
    bad = subprocess.run([*cmd[:-1], ""], cwd=work, capture_output=True, text=True, env=envvars,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("query is empty: describe the "
                                                                "vehicle, e.g. \"white SUV with a "
                                                                "black roof rack\"")
    assert Path(shutil.which("pfcvr", path=str(Path(sys.executable).parent)) or "").name == "pfcvr"


# ----------------------------------------------------------------------------------------------
# issue 12: no silent truncation; cache keys that cover every input; images ranked once
# ----------------------------------------------------------------------------------------------

LONG = "a white suv with a black roof rack and chrome wheels " * 100          # 5,300 characters


def test_a_query_longer_than_the_context_says_how_much_was_used(env, tmp_path, capsys):
    import json

    from pfcvr.model.io import load_model

    assert len(LONG) == 5300
    tok = load_model(env["model"]).tokenizer
    total = tok.count_tokens([LONG])[0]
    assert tok.context_length == 32 and total == 2102      # 21 BPE pieces x 100 + start + end
    cache = str(tmp_path / "c")
    base = ["search", "--model", str(env["model"]), "--gallery", str(env["gallery"]),
            "--cache-dir", cache]
    assert cli([*base, LONG]) == 0
    captured = capsys.readouterr()
    warning = ('warning: the query is 2102 tokens long but the model reads 32 (its context length): '
               'only 32 tokens are used, up to "... suv with a black roof r"; the rest does not '
               'change the ranking, so shorten the query to what matters most')
    assert captured.err.strip() == warning
    assert ("tokens:  32 of 2102 used (the model's context length is 32; the rest of the query "
            "was cut)") in captured.out
    # two queries that differ only after the cut rank identically (that is why it is said)
    other = LONG + " but it was actually a red bus"
    assert cli([*base, "--json", other]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["tokens"] == {"tokens": 2120, "used": 32, "context_length": 32, "truncated": True,
                             "kept_text": tok.kept_text(LONG)}
    assert doc["warnings"] == [warning.removeprefix("warning: ").replace("2102", "2120")]
    with pytest.warns(UserWarning, match="the query is 2102 tokens long"):
        first = run_search(env["model"], env["gallery"], LONG, cache_dir=tmp_path / "c")
    assert [h["path"] for h in doc["hits"]] == [str(h.path) for h in first.hits]
    # a query that fits says nothing about tokens
    assert cli([*base, "--json", "red van"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tokens"]["truncated"] is False and doc["tokens"]["used"] == doc["tokens"]["tokens"]
    assert doc["warnings"] == []


def test_gallery_cache_is_not_reused_when_an_input_of_the_embeddings_changes(env, tmp_path,
                                                                              monkeypatch):
    import os

    from pfcvr.search import index as I
    from pfcvr.search.gallery import load_gallery

    cache = tmp_path / "cache"
    gallery = tmp_path / "g"
    shutil.copytree(env["gallery"] / "00001", gallery)

    def hit() -> bool:
        return run_search(env["model"], gallery, "red van", cache_dir=cache).index.cache_hit

    assert not hit() and hit()
    # the image-encoding code changed (decode, resize, normalise, the image tower)
    extra = tmp_path / "encode_extra.py"
    extra.write_text("# v1\n")
    monkeypatch.setattr(I, "ENCODER_SOURCES", (*I.ENCODER_SOURCES, extra))
    assert not hit() and hit()
    extra.write_text("# v2: another resize filter\n")
    assert not hit()
    # a gallery image rewritten with other pixels but its old size and modification time
    import io

    from PIL import Image

    img = sorted(gallery.glob("*.png"))[0]
    st = img.stat()
    red = io.BytesIO()
    Image.new("RGB", (48, 48), (255, 0, 0)).save(red, format="PNG")
    assert len(red.getvalue()) < st.st_size            # padded after IEND: still a valid PNG
    assert hit()
    img.write_bytes(red.getvalue().ljust(st.st_size, b"\0"))
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert img.stat().st_size == st.st_size and img.stat().st_mtime_ns == st.st_mtime_ns
    again = run_search(env["model"], gallery, "red van", cache_dir=cache)
    assert not again.index.cache_hit and again.index.skipped == []
    # another torch release, another device type: other keys
    g = load_gallery(gallery)
    key = I.cache_key("m", 48, g, "cpu")
    assert I.cache_key("m", 48, g, "cuda") != key
    real = I.versions
    monkeypatch.setattr(I, "versions", lambda *names: {**real(*names), "torch": "99.0"})
    assert I.cache_key("m", 48, g, "cpu") != key


def test_model_digest_memo_notices_weights_rewritten_with_old_size_and_mtime(tmp_path):
    import os

    from pfcvr.search.models import model_fingerprint

    folder, memo = tmp_path / "m", tmp_path / "memo"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"A" * 64)
    before = model_fingerprint(folder, memo)
    assert model_fingerprint(folder, memo) == before and list(memo.glob("digest-*"))
    st = weights.stat()
    weights.write_bytes(b"B" * 64)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model_fingerprint(folder, memo) != before


def test_a_manifest_gallery_ranks_an_image_listed_twice_once(env, tmp_path):
    import json

    from pfcvr.search.gallery import load_gallery

    prepared = tmp_path / "prepared"
    shutil.copytree(env["prepared"], prepared)
    records = json.loads((prepared / "manifest.json").read_text())
    doubled = [r for rec in records for r in (rec, dict(rec, captions=["again"]))]
    (prepared / "manifest.json").write_text(json.dumps(doubled))
    g = load_gallery(prepared / "manifest.json", "test")
    assert len(g.paths) == len(set(g.paths)) == sum(r["split"] == "test" for r in records) == 8
    doubled[1]["id"] = doubled[0]["id"] + 1
    (prepared / "manifest.json").write_text(json.dumps(doubled))
    with pytest.raises(SearchError, match=r"image .* is record 0 and record 1 with different ids"):
        load_gallery(prepared / "manifest.json")


def test_query_that_is_not_utf8_is_one_line():
    """Bytes the terminal could not decode arrive as surrogate escapes (``\\udcff``): one line
    saying so, not a tokenizer TypeError."""
    from pfcvr.search.errors import SearchError
    from pfcvr.search.query import check_query

    with pytest.raises(SearchError) as err:
        check_query("\udcff\udcfe red car", 5)
    assert str(err.value) == ("the query is not valid UTF-8 text: set the terminal's encoding to "
                              "UTF-8 (e.g. LANG=C.UTF-8) or retype it")
    assert check_query("  red   car ", 5) == "red car"
