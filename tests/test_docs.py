"""The documentation holds together: README.md is the index of docs/, links resolve, the README
stays short, and the method sections the code cites exist.

Other tests read the documented commands from every page listed here (``documentation``), e.g.
tests/test_readme_overrides.py runs each `-S` line through DVC.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages of docs/ (issue 20). A page missing here or on disk fails test_the_docs_pages_exist.
DOC_PAGES = ("results", "data", "model", "method", "training", "evaluation", "experiments",
             "tracking", "troubleshooting", "development", "design")
BENCHMARKS = ROOT / "benchmarks" / "README.md"
README_MAX_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def documentation() -> list[Path]:
    """README.md, every docs/*.md page and benchmarks/README.md: where commands are documented.

    Raises AssertionError when a page of DOC_PAGES is missing, so a reader of the documentation
    never silently reads less than it should."""
    missing = [p for p in DOC_PAGES if not (ROOT / "docs" / f"{p}.md").is_file()]
    assert not missing, f"docs pages missing: {', '.join(f'docs/{p}.md' for p in missing)}"
    return [README, *sorted((ROOT / "docs").glob("*.md")), BENCHMARKS]


def committed_markdown() -> list[Path]:
    """Every Markdown file git tracks (all *.md outside hidden folders when git is unavailable)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "*.md"], cwd=ROOT, check=True,
                             capture_output=True, text=True, timeout=30).stdout
        files = [ROOT / f for f in out.split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in ROOT.rglob("*.md")
                 if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    return [f for f in files if f.is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(m) for m in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)}


def test_the_docs_pages_exist():
    pages = documentation()
    assert {p.stem for p in pages if p.parent.name == "docs"} >= set(DOC_PAGES)
    assert BENCHMARKS.is_file()


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.split("#")[0]).resolve()
              for target in LINK.findall(README.read_text()) if "://" not in target}
    pages = [*sorted((ROOT / "docs").glob("*.md")), BENCHMARKS]
    unlinked = [str(p.relative_to(ROOT)) for p in pages if p.resolve() not in linked]
    assert not unlinked, f"not linked from README.md: {unlinked}"


def test_the_readme_fits_on_a_few_screens():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_relative_links_resolve():
    broken = []
    for page in documentation():
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_no_committed_markdown_mentions_the_old_design_document():
    """The design document lives in the repository (docs/design.md); nothing may point at a
    DESIGN.md that a user of the repository does not have."""
    pages = committed_markdown() + [p for p in documentation() if p not in committed_markdown()]
    offenders = [str(p.relative_to(ROOT)) for p in pages if "DESIGN.md" in p.read_text()]
    assert not offenders, f"mention DESIGN.md: {offenders}"


def test_the_method_sections_the_code_cites_exist():
    """Every `docs/method.md §X` (or `method §X`) in the code, tests and benchmarks is a numbered
    heading of docs/method.md."""
    text = (ROOT / "docs" / "method.md").read_text()
    sections = set(re.findall(r"^#{2,4} +(\d+(?:\.\d+)*)\.? ", text, flags=re.M))
    assert {"1.9", "3", "3.1", "3.2", "3.3", "3.4", "3.5", "3.8", "4", "4.1", "4.2", "4.3", "4.4",
            "4.5", "5", "6", "8.2.1"} <= sections
    cited: dict[str, set[str]] = {}
    for folder in ("pfcvr", "stages", "tests", "benchmarks"):
        for py in (ROOT / folder).rglob("*.py"):
            for line in py.read_text().splitlines():
                if re.search(r"method(?:\.md| document)?\s*§", line):
                    for number in re.findall(r"§\s*(\d+(?:\.\d+)*)", line):
                        cited.setdefault(number, set()).add(str(py.relative_to(ROOT)))
    assert cited, "no method citation found: the pattern no longer matches the code's"
    missing = {n: sorted(f) for n, f in cited.items() if n not in sections}
    assert not missing, f"cited but not a section of docs/method.md: {missing}"
