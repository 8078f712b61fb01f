"""A body run in a forked child that always leaves through os._exit with a status of the
test's choosing: it never falls back into pytest, whatever it raises."""

from __future__ import annotations

import os
from typing import Callable


def forked(body: Callable[[], object], status: int = 0) -> int:
    """The pid of a child running `body()`, which then exits with `status`."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(status)
    return pid
