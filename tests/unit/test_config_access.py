"""Options are read as plain `cfg.name`: Config has every option, so a misspelt name fails
loudly (AttributeError) instead of silently taking a made-up default that may disagree with
the option table (max-children once fell back to 0, unlimited, instead of the table's 200).
Checked on the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from qpopper.config import Config
from qpopper.options import BY_NAME
from tests.helpers.repo import REPO

PACKAGE_DIR = REPO / "qpopper"
MODULES = sorted(PACKAGE_DIR.rglob("*.py"))
CONFIG_API = {name for name in vars(Config) if not name.startswith("_")}

# Modules that read options only as plain attributes (no getattr with a default).
PLAIN_ACCESS = ["master.py", "log.py", "demo.py", "config.py", "protocol.py", "capa.py",
                "auth", "extensions", "pop_", "session.py"]


def _is_cfg(node: ast.AST) -> bool:
    """`cfg`, `self.cfg`, `proto.cfg`, `ex.proto.cfg`, `base_cfg`, ..."""
    if isinstance(node, ast.Name):
        return node.id == "cfg" or node.id.endswith("_cfg")
    return isinstance(node, ast.Attribute) and node.attr == "cfg"


def _relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE_DIR))


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_every_cfg_attribute_is_an_option(path):
    tree = ast.parse(path.read_text(), str(path))
    wrong = [f"{_relative(path)}:{node.lineno}: cfg.{node.attr}"
             for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and _is_cfg(node.value)
             and node.attr not in CONFIG_API and node.attr.replace("_", "-") not in BY_NAME]
    assert wrong == []


def _plain_access_modules() -> list[Path]:
    return [path for path in MODULES
            if any(_relative(path) == rule or _relative(path).startswith(rule)
                   for rule in PLAIN_ACCESS)]


@pytest.mark.parametrize("path", _plain_access_modules(), ids=_relative)
def test_no_option_is_read_with_a_fallback_default(path):
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id == "getattr_option" or (
                node.func.id == "getattr" and node.args and _is_cfg(node.args[0])):
            found.append(f"{_relative(path)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_plain_access_fails_loudly_for_a_misspelt_option():
    with pytest.raises(AttributeError):
        Config.defaults().max_childern          # noqa: B018 (the misspelling is the point)
    assert Config.defaults().max_children == BY_NAME["max-children"].default == 200
