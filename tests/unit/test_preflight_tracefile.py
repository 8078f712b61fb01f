"""preflight.check_tracefile (qpopper/server/preflight.py): -t is checked as the log opens it
(append, created 0600, never through a symbolic link), without creating it: a regular file,
a FIFO or a character device such as /dev/null are written to; a directory, a symbolic
link or a missing directory are refused in one line."""

from __future__ import annotations

import os

import pytest

from qpopper.config import Config
from qpopper.server import preflight


def check(path: str) -> None:
    preflight.check_tracefile(Config.defaults().replace(tracefile=path))


def test_what_the_log_can_open_passes_and_nothing_is_created(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "trace").write_text("")
    for path in ("/dev/null", str(fifo), str(tmp_path / "trace"), str(tmp_path / "new")):
        check(path)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("make, problem", [
    (lambda d: str(d), "is not a file this server can write"),
    (lambda d: (os.symlink(os.devnull, d / "link"), str(d / "link"))[1],
     "is a symbolic link"),
    (lambda d: str(d / "missing" / "trace"), "is not a directory"),
])
def test_what_the_log_cannot_open_is_one_line(tmp_path, make, problem):
    with pytest.raises(preflight.PreflightError, match=problem):
        check(make(tmp_path))
