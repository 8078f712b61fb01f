"""Whether this Python could build the C accelerators here (docs/accelerators.md): the tests
that insist on a built extension skip only where nothing could build it."""

from __future__ import annotations

import shlex
import shutil
import sysconfig
from pathlib import Path


def compiler_and_headers() -> str | None:
    """Why this Python cannot build extensions here, or None when it can."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.exists():
        return f"no {header} (python3-dev)"
    return None
