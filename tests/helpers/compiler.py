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


def assert_built_and_used(compiled, in_use, module: str, fallback: str) -> None:
    """Where this Python can build extensions, the accelerator `module` was built (`compiled`
    is not None) and is what the server calls (`in_use`); elsewhere skip: `fallback` serves."""
    import pytest
    missing = compiler_and_headers()
    if missing:
        pytest.skip(f"{missing}: {fallback}")
    assert compiled is not None, (f"a compiler and Python.h are here but {module} was not "
                                  "built: `make venv` (pip install -e .) builds it in place")
    assert in_use is compiled
