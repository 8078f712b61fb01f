"""children.exited_within and reap (qpopper/server/children.py): the bounded wait for a child
the monitor and the TLS user session use, with pidfd_open and without it (an old kernel, a
seccomp profile), where it looks every EXIT_POLL_S and leaves the child waitable."""

from __future__ import annotations

import errno
import io
import os
import select
import signal
import socket
import syslog
import time

import pytest

from qpopper.log import PRELOGIN_PREFIX, ForwardedRecords, Logger
from qpopper.server import children
from tests.helpers.forked import forked


def child(body) -> int:
    return forked(body, status=7)


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


def test_a_child_blocked_sending_log_records_is_served_while_waited_for(watching):
    """A pre-login process blocks when its monitor's queue of records is full; the monitor
    reads them while it waits for the process to end (ForwardedRecords), so the wait ends
    with every record logged."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    records = []

    def chatter():
        ours.close()
        logger = Logger(stream=io.StringIO())
        logger.forward_to(theirs)
        for i in range(2000):                      # far more than the queue holds
            logger(syslog.LOG_INFO, f"record {i}")
    pid = child(chatter)
    theirs.close()
    forwarded = ForwardedRecords(ours, lambda priority, text: records.append(text), debug=True)
    try:
        assert children.exited_within(pid, 0.5) is False      # blocked: nobody reads
        assert children.exited_within(pid, 30, forwarded) is True
        assert children.reap(pid) == 7
        while len(records) < 2000 and select.select([forwarded], [], [], 0)[0]:
            forwarded.forward()                               # a batch at a time
    finally:
        if not children.exited_within(pid, 0):
            os.kill(pid, signal.SIGKILL)
        children.reap(pid)
        forwarded.close()
    assert records == [f"{PRELOGIN_PREFIX}record {i}" for i in range(2000)]
