"""`dvc plots show` / `dvc plots diff` pages draw their charts offline (issue 15, part 3).

A temporary git + DVC repository holds the project's own dvc.yaml, params.yaml and .dvc/config, the
template `make setup` built (at the same relative path), and real outputs of the default pipeline
(reports/train/full/history.tsv, reports/eval/full/cmc.tsv; the no_part ones as the second revision of
the diff). The real `dvc` writes the pages; headless Chromium, with every host name unresolvable,
screenshots them; the chart area must hold the revision colours. DVC's own default page (CDN
scripts) is the control: the same check finds nothing on it.
"""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from dvc_render.vega import OPTIONAL_ANCHOR_RANGES

from pfcvr import paths
from pfcvr.report import plots_page
from tests.support.offline_browser import colour_pixels, require_chromium, screenshot

ROOT = Path(__file__).resolve().parents[1]
HISTORY = "reports/train/full/history.tsv"
CMC = "reports/eval/full/cmc.tsv"
# DVC colours revisions in this order: the workspace first, then the other revisions.
WORKSPACE_COLOUR, HEAD_COLOUR = OPTIONAL_ANCHOR_RANGES["color"][:2]
# The plot area: DVC's templates are 300 px wide after a ~50 px axis; the legend starts right of it.
CHART_AREA = (0, 0, 355, 760)


def _dvc() -> str:
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.exists() else "dvc"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("DVC_ROOT", None)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def _built_template() -> Path:
    path = ROOT / paths.PLOTS_TEMPLATE
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if "vega-embed 6.29.0" not in text or "{scripts}" in text:
        msg = f"{path} is missing or is the CDN fallback: run `make setup` (needs npm)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def test_dvc_config_points_at_the_built_template():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc" / "config")
    # DVC resolves a relative html_template against the .dvc folder.
    target = (ROOT / ".dvc" / cfg["plots"]["html_template"]).resolve()
    assert target == (ROOT / paths.PLOTS_TEMPLATE).resolve()
    assert str(paths.PLOTS_TEMPLATE).startswith(".cache/")  # git-ignored: built, not committed


def test_integrity_is_npm_sha512(tmp_path):
    f = tmp_path / "abc"
    f.write_bytes(b"abc")
    assert plots_page.integrity(f) == (
        "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==")


def _fake_package(tmp_path: Path, name: str, code: str, licence: str | None) -> Path:
    src = tmp_path / name / "package"
    (src / "build").mkdir(parents=True)
    (src / "build" / f"{name}.min.js").write_text(code)
    (src / "package.json").write_text('{"license": "BSD-3-Clause", "author": "IDL"}')
    if licence is not None:
        (src / "LICENSE").write_text(licence)
    tgz = tmp_path / f"{name}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src, arcname="package")
    return tgz


def test_render_inlines_bundles_in_order_with_licences(tmp_path, monkeypatch):
    names = ("vega", "vega-lite", "vega-embed")
    monkeypatch.setattr(plots_page, "PACKAGES", {
        n: ("1.0.0", "unused", f"package/build/{n}.min.js") for n in names})
    tarballs = {n: _fake_package(tmp_path, n, f"window.{n.replace('-', '_')}=1;\n"
                                 f"//# sourceMappingURL={n}.min.js.map", None if n == "vega" else
                                 f"Copyright {n} authors") for n in names}
    page = plots_page.render(tarballs)
    assert page.index("window.vega=1") < page.index("window.vega_lite=1") < page.index(
        "window.vega_embed=1")
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page and "<script src" not in page and "sourceMappingURL" not in page
    assert "Copyright vega-lite authors" in page and "License: BSD-3-Clause" in page

    tarballs["vega"] = _fake_package(tmp_path / "bad", "vega", "s='</script>'", None)
    with pytest.raises(plots_page.TemplateBuildError, match="</script"):
        plots_page.render(tarballs)


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory):
    """git repo, HEAD = variant `full`'s outputs; the workspace holds `no_part`'s in their place."""
    template = _built_template()
    repo = tmp_path_factory.mktemp("plots_repo")
    _run(["git", "init", "-q"], repo)
    _run([_dvc(), "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / paths.PLOTS_TEMPLATE).parent.mkdir(parents=True)
    shutil.copy(template, repo / paths.PLOTS_TEMPLATE)
    (repo / ".gitignore").write_text("/.cache/\n")
    for rel in (HISTORY, CMC):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "full"], repo)
    for rel in (HISTORY, CMC):
        shutil.copy(ROOT / rel.replace("/full/", "/no_part/"), repo / rel)
    return repo


def _page(repo: Path, out: str, *args: str) -> Path:
    _run([_dvc(), "plots", args[0], "-o", out, *args[1:]], repo)
    page = repo / out / "index.html"
    html = page.read_text(encoding="utf-8")
    assert "<script src" not in html, "the page still loads a script from elsewhere"
    return page


def test_plots_show_draws_each_chart_offline(plots_repo):
    require_chromium()
    counts = {}
    for rel in (HISTORY, CMC):
        page = _page(plots_repo, f"show_{Path(rel).stem}", "show", rel)
        png = screenshot(page.as_uri(), plots_repo / f"{Path(rel).stem}.png")
        counts[rel] = colour_pixels(png, WORKSPACE_COLOUR, CHART_AREA)
    # Measured: 45 (the committed default trains 1 epoch: four seeds' points at epoch 1, partly
    # overlapping; 180 with nine points of 3 epochs) and 825 (the CMC line); a blank page has 0.
    assert counts[HISTORY] >= 20, counts
    assert counts[CMC] >= 300, counts

    # Control: DVC's default page (vega from a CDN) draws nothing here, so the check can fail.
    fallback = plots_repo / "cdn_template.html"
    fallback.write_text(plots_page.FALLBACK, encoding="utf-8")
    _run([_dvc(), "plots", "show", CMC, "--html-template", str(fallback), "-o", "cdn"], plots_repo)
    assert "cdn.jsdelivr.net" in (plots_repo / "cdn" / "index.html").read_text()
    png = screenshot((plots_repo / "cdn" / "index.html").as_uri(), plots_repo / "cdn.png")
    assert colour_pixels(png, WORKSPACE_COLOUR, CHART_AREA) < 5


def test_plots_diff_draws_both_revisions_offline(plots_repo):
    require_chromium()
    page = _page(plots_repo, "diff", "diff", "--targets", HISTORY, CMC, "--", "HEAD")
    png = screenshot(page.as_uri(), plots_repo / "diff.png")
    # History chart above (1 epoch: a few points, at least 20 px each revision; a blank chart has
    # 0), CMC chart below (measured 238 / 829 px with the committed default's curves; blank: 0).
    for (y0, y1), least in (((0, 370), 20), ((370, 760), 150)):
        box = (0, y0, 355, y1)
        workspace, head = colour_pixels(png, WORKSPACE_COLOUR, box), colour_pixels(png, HEAD_COLOUR, box)
        assert workspace >= least and head >= least, (box, workspace, head)
