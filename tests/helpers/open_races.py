"""os.open with another process's step forced in right after it: the interleavings the lock
and open code must survive (a name unlinked or replaced between our open and our check)."""

from __future__ import annotations

import os


def open_then(path, after):
    """An os.open for monkeypatching: the first open of `path` succeeds, then after() runs
    (as another process would at that moment) before the caller sees the descriptor. Other
    opens, and later ones of `path`, are plain. `.done` tells whether after() ran."""
    real_open = os.open

    def opener(name, flags, mode=0o777):
        fd = real_open(name, flags, mode)
        if str(name) == str(path) and not opener.done:
            opener.done = True
            after()
        return fd
    opener.done = False
    return opener


def replace_with(path, content: bytes, mode: int = 0o644):
    """after() for open_then: a new file renamed over `path`, as a writer that takes no lock
    would do it."""
    def replace():
        new = f"{path}.new"
        with open(new, "wb") as f:
            f.write(content)
        os.chmod(new, mode)
        os.rename(new, path)
    return replace
