"""Manual pages as `man` shows them, for the tests that read what a page says."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


def rendered(path: Path) -> str:
    """The page as `man` shows it (plain text, no hyphenation surprises: MANWIDTH wide)."""
    env = dict(os.environ, MANWIDTH="200", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="0")
    result = subprocess.run(["man", "--warnings", "-l", str(path)], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"{path.name}: roff warnings:\n{result.stderr}"
    return re.sub(r".\x08", "", result.stdout)
