"""Which of this process's descriptors are open on a file: what the brakes tests check
before and after a connection is handed to the user (auth/brakes.py)."""

from __future__ import annotations

import os


def descriptors_on(path: str) -> list[str]:
    """This process's descriptors open on `path` (or its SQLite journal)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(path):
            found.append(target)
    return found
