"""How long the user session waits for its TLS relay after the session ended
(server/monitor_handover.py, _relay_ended; docs/privsep.md, "The TLS relay"): one wait of
`timeout` + RELAY_LAST_WORDS_S, renewed while the relay still takes the session's output
(a client reading its last replies slowly), and no longer once it takes nothing for a whole
wait. A forked stand-in relay reads a real socket pair at a set pace; the waits are shrunk
so the test takes seconds."""

from __future__ import annotations

import os
import socket
import time
import types

import pytest

from qpopper.server import monitor_handover
from qpopper.server.monitor_handover import BecomingTheSession

WINDOW_S = 0.3
QUEUED = 64 * 1024


def stand_in_relay(end: socket.socket, pace_s: float | None) -> int:
    """A child that reads `end` 4 KiB every `pace_s` until EOF, then exits; None: it never
    reads (a relay stuck on a client that stopped reading)."""
    pid = os.fork()
    if pid == 0:
        try:
            while pace_s is not None and end.recv(4096):
                time.sleep(pace_s)
            if pace_s is None:
                time.sleep(30)
        finally:
            os._exit(0)
    return pid


@pytest.fixture
def session_end(monkeypatch):
    monkeypatch.setattr(monitor_handover, "RELAY_LAST_WORDS_S", 0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, QUEUED)
    ours.setblocking(False)
    try:
        while True:
            ours.send(b"x" * 4096)                   # the session's last replies, queued
    except BlockingIOError:
        pass
    ours.setblocking(True)
    yield ours, theirs
    ours.close()
    theirs.close()


def waiter(pid: int) -> BecomingTheSession:
    session = BecomingTheSession()
    session.cfg = types.SimpleNamespace(timeout=WINDOW_S)
    session.prelogin_pid = pid
    session.records = None
    return session


def run(session_end, pace_s):
    ours, theirs = session_end
    pid = stand_in_relay(theirs, pace_s)
    try:
        ours.shutdown(socket.SHUT_RDWR)               # as after the session: EOF after it all
        began = time.monotonic()
        ended = waiter(pid)._relay_ended(ours)
        return ended, time.monotonic() - began
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_relay_still_taking_output_is_waited_for_past_one_wait(session_end):
    # 64 KiB+ at 4 KiB per 0.05 s: about a second, three waits or more
    ended, took = run(session_end, 0.05)
    assert ended
    assert took > 2 * WINDOW_S


def test_a_relay_that_takes_nothing_for_a_whole_wait_is_given_up(session_end):
    ended, took = run(session_end, None)
    assert not ended
    assert WINDOW_S <= took < 2 * WINDOW_S + 1


def test_the_waits_are_renewed_at_most_relay_max_windows_times(session_end, monkeypatch):
    monkeypatch.setattr(monitor_handover, "RELAY_MAX_WINDOWS", 2)
    ended, took = run(session_end, 0.05)
    assert not ended
    assert 2 * WINDOW_S <= took < 3 * WINDOW_S + 1
