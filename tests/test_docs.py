"""The README and docs/ hold together: every relative link reaches a file (and
its #anchor a heading there), every page under docs/ is reachable from the
README, every repository path written in backticks exists, every `make`
target the README names is in the Makefile, and the README stays a
five-minute read."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
PATH_ROOTS = ("plugin/", "tests/", "bench/", "configs/", "kernels/", "docs/", ".ci/")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", page.read_text(), re.M)}


def _outside_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    bad = []
    for target in LINK.findall(_outside_fences(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue   # an external URL: not fetched (tests send loopback traffic only)
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor}")
    assert not bad, f"{page.relative_to(ROOT)}: {bad}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall((ROOT / "README.md").read_text())}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_repository_paths_in_backticks_exist(page):
    bad = []
    for code in CODE.findall(page.read_text()):
        for word in code.split():
            word = word.strip(",;:()").split("::")[0]
            if not word.startswith(PATH_ROOTS) or re.search(r"[*<>{}\[\]$]", word):
                continue
            if not (ROOT / word.split("#")[0]).exists():
                bad.append(word)
    assert not bad, f"{page.relative_to(ROOT)} names paths that do not exist: {sorted(set(bad))}"


def test_readme_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = set(re.findall(r"\bmake ([\w-]+)", (ROOT / "README.md").read_text()))
    assert named and named <= targets, named - targets


def test_readme_is_a_five_minute_read():
    words = len(_outside_fences((ROOT / "README.md").read_text()).split())
    assert words <= 1250, f"README is {words} words: about {words / 250:.0f} minutes at 250 words a minute"
