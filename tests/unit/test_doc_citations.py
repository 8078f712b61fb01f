"""Code cites the design in docs/ by file and heading, and nothing outside the repository.

A citation is `docs/FILE.md` or `docs/FILE.md, "Heading"`: the heading's title as written in
the file, at any level, without the parenthesis that may follow it (`## Spool (qpopper/spool/)`
is cited as "Spool"). RFCs are public and cited as `RFC n §m`. What a newcomer who cloned the repo
cannot follow fails here: a docs/ file or heading that does not exist, a numbered point of a
document outside the repo ("reference P27", "decision §7.13", a bare "§2.6"), an issue, or a
path outside the checkout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.helpers.repo import REPO

SOURCES = sorted((REPO / "qpopper").rglob("*.py"))
CITATION = re.compile(r'docs/([\w.-]+\.md)(?:,? \(?"([^"\n]*)("?))?')
OUTSIDE = [
    (re.compile(r"[Rr]eference (§|[A-Z]\d)"), "a numbered point of a document outside the repo"),
    (re.compile(r"\b[Dd]ecision §"), "a numbered decision outside the repo"),
    (re.compile(r"DESIGN\.md|DESIGN invariant|STYLE\.md|\.\./shared|/work/|shared notes"), "a file outside the repo"),
    (re.compile(r"\bthe [\w-]+ issue\b|\bissue #?\d+"), "an issue"),
    (re.compile(r"(?<![\w.-])[PSLABT][0-9]{1,2}(?:-[PSLABT]?[0-9]{1,2})?(?=[):;,]|$| [A-Za-z(])"
                r"(?<!\bRFC [0-9])"), "a numbered point of a document outside the repo"),
]


def headings(doc: Path) -> set[str]:
    return {line.lstrip("#").strip().split(" (")[0] for line in doc.read_text().splitlines()
            if line.startswith("#")}


def problems_in(text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in CITATION.finditer(line):
            name, heading, closed = match.groups()
            doc = REPO / "docs" / name
            if not doc.is_file():
                found.append(f"line {number}: docs/{name} does not exist")
            elif heading is not None and not closed:
                found.append(f"line {number}: keep the cited heading on one line")
            elif heading is not None and heading not in headings(doc):
                found.append(f'line {number}: docs/{name} has no heading "{heading}"')
        for pattern, what in OUTSIDE:
            if pattern.search(line):
                found.append(f"line {number}: cites {what}: {line.strip()}")
        if "§" in line and "RFC" not in line:
            found.append(f"line {number}: a § outside an RFC citation: {line.strip()}")
    return found


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_citations_point_into_the_repo(source):
    assert problems_in(source.read_text()) == []


def test_the_check_finds_each_kind_of_bad_citation():
    bad = ('"""See docs/nowhere.md.\n'
           'docs/design.md, "No Such Heading" and docs/design.md, "Layers" is fine.\n'
           'reference P27, decision §7.13, the SASL issue, ../shared/DESIGN.md, §2.6\n'
           'RFC 1939 §3 is fine.\n'
           'check-hash-dir (S5): and B4: too."""\n')
    found = problems_in(bad)
    assert [line.split(":")[0] for line in found] == \
        ["line 1", "line 2", "line 3", "line 3", "line 3", "line 3", "line 3", "line 3", "line 5"]
    assert 'has no heading "No Such Heading"' in found[1]


def test_every_docs_page_is_reachable_from_the_design_map():
    design = (REPO / "docs" / "design.md").read_text()
    pages = sorted(path.name for path in (REPO / "docs").glob("*.md"))
    assert [page for page in pages if f"docs/{page}" not in design] == []
