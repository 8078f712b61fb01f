"""children.exited_within and reap (qpopper/server/children.py): the bounded wait for a child
the monitor and the TLS user session use, with pidfd_open and without it (an old kernel, a
seccomp profile), where it looks every EXIT_POLL_S and leaves the child waitable."""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from qpopper.server import children


def child(body) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(7)
    return pid


@pytest.fixture(params=["pidfd", "polling"])
def watching(request, monkeypatch):
    if request.param == "polling":
        def no_pidfd(pid):
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
        monkeypatch.setattr(children.os, "pidfd_open", no_pidfd)
    return request.param


def test_a_child_that_stays_is_not_taken_for_ended(watching):
    pid = child(lambda: time.sleep(60))
    try:
        assert children.exited_within(pid, 0.3) is False
    finally:
        os.kill(pid, signal.SIGKILL)
    assert children.exited_within(pid, 10) is True
    assert children.reap(pid) == 0                  # killed by a signal: no exit status
    assert children.reap(pid) == 0                  # reaped already


def test_an_ended_child_is_seen_and_its_status_kept_for_reap(watching):
    pid = child(lambda: None)
    assert children.exited_within(pid, 10) is True
    assert children.reap(pid) == 7                  # WNOWAIT left it waitable
