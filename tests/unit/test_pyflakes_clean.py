"""The tree stays free of what pyflakes finds: unused imports and names, undefined names,
f-strings without placeholders (pyflakes comes with `make venv`). Imports kept only for
their side effect are written with importlib.import_module, which says so."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.repo import REPO


def test_pyflakes_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "pyflakes", "qpopper", "tests", "bench",
                             "fuzz"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr
