"""Rooms a newcomer can walk: no module of qpopper/ over ~600 lines and no class over 300
(docs/design.md). A module that grows past it is split by job, as spool/ and server/ were."""

from __future__ import annotations

import ast

import pytest

from tests.helpers.repo import REPO

MAX_MODULE_LINES = 620          # "about 600"
MAX_CLASS_LINES = 300
SOURCES = sorted((REPO / "qpopper").rglob("*.py"))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_classes_stay_small(source):
    text = source.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    big = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
           for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ClassDef)
           and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert big == []
