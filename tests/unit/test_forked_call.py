"""children.ForkedCall: the forked helper behind the mbox scan's second part and the
pre-login process's reverse lookup, on real processes and pipes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from qpopper.server.children import ForkedCall

pytestmark = pytest.mark.timeout(30)


def soon(seconds: float = 20.0) -> float:
    return time.monotonic() + seconds


def assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_the_answer_comes_back_and_the_child_is_reaped():
    call = ForkedCall.start(lambda: (True, [(1, b"x", "y")] * 1000, 2 ** 40))
    assert call.result(soon()) == (True, [(1, b"x", "y")] * 1000, 2 ** 40)
    assert_reaped(call.pid)


def test_without_reap_the_child_keeps_its_pid_as_a_zombie():
    """The pre-login process may kill its reverse-lookup helper's pid (its system-call
    filter names it): reaped, that pid could become another connection's process."""
    for work in (lambda: "answered", lambda: time.sleep(60)):
        call = ForkedCall.start(work, reap=False)
        call.result(time.monotonic() + 0.5)
        os.kill(call.pid, 0)                          # still its own pid
        assert os.waitpid(call.pid, 0)[0] == call.pid  # left for this process to reap
        assert_reaped(call.pid)


def test_the_child_keeps_no_descriptor_but_its_pipe_and_what_it_is_told(tmp_path):
    held = os.open(tmp_path / "held", os.O_CREAT | os.O_RDWR, 0o600)   # a lock, a socket
    kept_r, kept_w = os.pipe()
    try:
        call = ForkedCall.start(lambda: sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
                                keep=(kept_r,))
        fds = call.result(soon())
    finally:
        for fd in (held, kept_r, kept_w):
            os.close(fd)
    assert held not in fds and kept_w not in fds
    assert kept_r in fds
    assert len([fd for fd in fds if fd > 2]) == 3     # kept_r, its pipe, the listing's own


def test_the_child_takes_default_signals():
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        call = ForkedCall.start(lambda: signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
        assert call.result(soon()) is True
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("work", [lambda: os._exit(3), lambda: 1 / 0, lambda: object()],
                         ids=["dies", "raises", "cannot-be-marshalled"])
def test_no_whole_answer_is_none(work):
    call = ForkedCall.start(work)
    assert call.result(soon()) is None
    assert_reaped(call.pid)


def test_past_the_deadline_the_child_is_killed_and_reaped():
    call = ForkedCall.start(lambda: os.pause())
    assert call.result(time.monotonic() + 0.2) is None
    assert_reaped(call.pid)


def test_a_discarded_child_is_killed_and_reaped_once():
    call = ForkedCall.start(lambda: os.pause())
    call.discard()
    assert_reaped(call.pid)
    call.discard()                                      # the caller's second word: harmless
    assert call.result(soon()) is None


def test_a_raw_answer_is_the_bytes_as_they_are_and_never_unmarshalled():
    crafted = b"\xda\x05hello"                      # a marshal record, left as it is
    call = ForkedCall.start(lambda: crafted, raw=True)
    assert call.result(soon()) == crafted
    call = ForkedCall.start(lambda: "not bytes", raw=True)
    assert call.result(soon()) is None


def test_an_answer_longer_than_max_octets_is_none_and_the_child_is_reaped():
    call = ForkedCall.start(lambda: b"x" * 5000, raw=True, max_octets=4096)
    assert call.result(soon()) is None
    assert_reaped(call.pid)
    call = ForkedCall.start(lambda: b"x" * 4096, raw=True, max_octets=4096)
    assert call.result(soon()) == b"x" * 4096


def test_descriptors_0_to_2_become_dev_null_in_the_child():
    """In inetd mode 0 and 1 are the client's socket: the child must not hold them."""
    import socket
    a, b = socket.socketpair()
    saved = os.dup(0)
    os.dup2(a.fileno(), 0)
    try:
        call = ForkedCall.start(lambda: [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        a.close()
        b.close()
    assert call.result(soon()) == [os.devnull] * 3
