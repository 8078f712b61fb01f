"""The README's Layout section is the tree: every module of qpopper/ is listed where it lives,
and everything listed exists. A module added, moved or removed without the map changing fails."""

from __future__ import annotations

import re
from tests.helpers.repo import REPO



def layout_block() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n## Layout"):]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return block.splitlines()


def listed_paths() -> list[str]:
    """Paths named in the tree; two spaces of indent per level, directories end with '/'."""
    stack: list[tuple[int, str]] = []
    paths = []
    for line in layout_block():
        match = re.match(r"( *)(\S+)", line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        if not (name.endswith("/") or name.endswith(".py")):
            continue                          # a continuation of the previous description
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(part for _, part in stack) + name
        paths.append(path)
        if name.endswith("/"):
            stack.append((indent, name))
    return paths


def test_every_module_is_listed_and_everything_listed_exists():
    listed = listed_paths()
    modules = sorted(str(path.relative_to(REPO)) for path in (REPO / "qpopper").rglob("*.py")
                     if path.name != "__init__.py")
    assert sorted(p for p in listed if p.startswith("qpopper/") and p.endswith(".py")) == modules
    assert [p for p in listed if not (REPO / p).exists()] == []


def test_the_parser_reads_nesting():
    paths = listed_paths()
    assert "qpopper/pop3/protocol.py" in paths and "qpopper/server/master.py" in paths
    assert "qpopper/options.py" in paths and "docs/" in paths
