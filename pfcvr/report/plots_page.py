"""Build the HTML template that makes `dvc plots show` / `dvc plots diff` pages draw offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN (dvc_render's
``VegaRenderer.SCRIPTS``), so on an offline machine or a cluster node the charts stay blank. The
committed ``.dvc/config`` points ``plots.html_template`` at the file this module writes
(:data:`pfcvr.paths.PLOTS_TEMPLATE`, git-ignored): the same page with the three libraries inlined.

Source: the npm registry, by exact version and sha512 (:data:`PACKAGES`), fetched with
``npm pack`` (one tarball each, no dependency tree: each ``build/*.min.js`` is a self-contained
UMD bundle, the files the CDN serves). Each package's LICENSE file is copied into the page (vega's
tarball has none; its package.json licence, BSD-3-Clause, and author then). The major versions are those dvc_render's CDN tags use (vega 5, vega-lite 5, vega-embed 6),
because DVC writes vega-lite v5 specs.

Template contract (dvc_render.html.HTML): it must contain ``{plot_divs}``; ``{refresh_tag}`` is
filled for ``--refresh``; ``{scripts}`` is left out on purpose, since that is where DVC would put
the CDN ``<script src=...>`` tags.

Run as ``python -m pfcvr.report.plots_page`` (``make setup`` does, only when this file changed).
Without npm it writes DVC's own default page instead (:data:`FALLBACK`, CDN scripts through
``{scripts}``), so `dvc plots show` still works where the internet is reachable, and says how to
get the offline one.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pfcvr.paths import PLOTS_TEMPLATE
from pfcvr.runtime.atomic import atomic_path

# name -> (exact version, npm "integrity" of the tarball, bundle inside the tarball)
PACKAGES = {
    "vega": ("5.33.1", "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
             "package/build/vega.min.js"),
    "vega-lite": ("5.23.0", "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
                  "package/build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
                   "package/build/vega-embed.min.js"),
}
# Placeholders dvc_render substitutes anywhere in the page: a bundle must not contain them.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
<!--
Built by pfcvr/report/plots_page.py: {versions}, inlined so that the page draws offline.
{licences}
-->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


# dvc_render's default page (dvc_render.html.PAGE_HTML): the CDN tags go where {scripts} is.
FALLBACK = PAGE.format(versions="npm was not found; this is DVC's default page, charts load from a CDN",
                       licences="", scripts="{scripts}")


class TemplateBuildError(RuntimeError):
    pass


def integrity(path: Path) -> str:
    """npm's Subresource-Integrity string (``sha512-<base64>``) of a file."""
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(workdir: Path) -> dict[str, Path]:
    """``npm pack`` each pinned package into ``workdir``; checks the sha512 of every tarball.

    Returns name -> tarball path. Raises TemplateBuildError when npm fails or a hash differs.
    """
    specs = [f"{name}@{version}" for name, (version, _, _) in PACKAGES.items()]
    # --prefer-offline: a tarball already in npm's cache is not downloaded again.
    out = subprocess.run(["npm", "pack", "--prefer-offline", "--ignore-scripts",
                          "--pack-destination", str(workdir), *specs],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise TemplateBuildError(f"npm pack {' '.join(specs)} failed: {out.stderr[-2000:]}")
    tarballs = {}
    for name, (version, expected, _) in PACKAGES.items():
        path = workdir / f"{name}-{version}.tgz"
        got = integrity(path)
        if got != expected:
            raise TemplateBuildError(f"{path.name}: sha512 {got} != pinned {expected}")
        tarballs[name] = path
    return tarballs


def _member(tarball: Path, member: str) -> str:
    with tarfile.open(tarball) as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise TemplateBuildError(f"{tarball.name} has no file {member}")
        return handle.read().decode("utf-8")


def _licence(name: str, tarball: Path) -> str:
    """The package's LICENSE text; vega's tarball ships none, so its package.json fields then."""
    try:
        return _member(tarball, "package/LICENSE").strip()
    except KeyError:
        meta = json.loads(_member(tarball, "package/package.json"))
        author = meta.get("author")
        author = author.get("name") if isinstance(author, dict) else author
        return (f"License: {meta.get('license')} (from package.json; the npm tarball has no "
                f"LICENSE file). Author: {author}. Home: {meta.get('homepage') or meta.get('repository')}")


def _inline_script(name: str, code: str) -> str:
    # The source-map comment would make devtools fetch a file that is not there.
    code = "\n".join(line for line in code.splitlines()
                     if not line.startswith("//# sourceMappingURL="))
    # Inside an inline <script>, "</script" ends the element and "<!--" changes how the HTML
    # parser reads it; neither may appear in the bundle.
    for bad in ("</script", "<!--", *PLACEHOLDERS):
        if bad in code:
            raise TemplateBuildError(f"{name} bundle contains {bad!r}; cannot inline it")
    return f"    <script>/* {name} {PACKAGES[name][0]} */\n{code}\n    </script>"


def render(tarballs: dict[str, Path]) -> str:
    """The template text from the fetched tarballs (bundles in load order: vega first)."""
    scripts, licences = [], []
    for name, (version, _, bundle) in PACKAGES.items():
        scripts.append(_inline_script(name, _member(tarballs[name], bundle)))
        text = _licence(name, tarballs[name])
        if "-->" in text:
            raise TemplateBuildError(f"{name} licence cannot sit in an HTML comment")
        licences.append(f"=== {name} {version} (npm) ===\n{text}\n")
    versions = ", ".join(f"{name} {version}" for name, (version, _, _) in PACKAGES.items())
    page = PAGE.format(versions=versions, licences="\n".join(licences), scripts="\n".join(scripts))
    if "{plot_divs}" not in page:  # dvc_render refuses a template without it
        raise TemplateBuildError("template lost its {plot_divs} placeholder")
    return page


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:  # utf-8 whatever the locale: DVC reads the template as utf-8
        tmp.write_text(text, encoding="utf-8")


def build(dest: Path = PLOTS_TEMPLATE) -> Path:
    """Fetch the pinned packages and write the template to ``dest`` (atomically). Returns ``dest``."""
    with tempfile.TemporaryDirectory(prefix="pfcvr-vega-") as tmp:
        page = render(fetch(Path(tmp)))
    _write(dest, page)
    return dest


def main() -> int:
    if shutil.which("npm") is None:
        _write(PLOTS_TEMPLATE, FALLBACK)
        print(f"note: npm not found: {PLOTS_TEMPLATE} is DVC's default page, whose charts load "
              f"from the internet; install Node.js + npm, delete it and rerun `make setup` for "
              f"the offline one", file=sys.stderr)
        return 0
    dest = build()
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB: "
          + ", ".join(f"{n} {v}" for n, (v, _, _) in PACKAGES.items()) + " inline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
