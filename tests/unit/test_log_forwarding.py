"""A pre-login process's log records go through its monitor (qpopper/log.py, Logger.forward_to
and ForwardedRecords; docs/privsep.md, "The pre-login process's log records"): after
forward_to the process holds no syslog socket and no tracefile and never reopens them, and
the monitor logs what it sent as its own record, PRELOGIN_PREFIX first, cleaned, at no
higher priority than LOG_CRIT, up to MAX_FORWARDED_RECORDS."""

from __future__ import annotations

import io
import os
import socket
import syslog

import pytest

from qpopper import log as log_mod
from qpopper.log import PRELOGIN_PREFIX, ForwardedRecords, Logger
from tests.helpers.descriptors import descriptors_on


class Sink(list):
    def __call__(self, priority, text):
        self.append((priority, text))


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.fixture
def syslog_listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "syslog.sock"))
    sock.settimeout(0.3)
    yield sock
    sock.close()


def received(listener) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(listener.recv(65536))
        except TimeoutError:
            return out


def test_after_forward_to_records_go_only_to_the_monitor(pair, syslog_listener):
    ours, theirs = pair
    logger = Logger(socket_path=syslog_listener.getsockname())
    logger.open()
    logger(syslog.LOG_NOTICE, "the monitor's own")
    logger.forward_to(theirs)
    logger(syslog.LOG_NOTICE, "a pre-login record")
    logger(syslog.LOG_DEBUG, "not sent: no -d")
    logger.close()                       # the process's end of the pair
    logger(syslog.LOG_NOTICE, "after close: nowhere, syslog is not reopened")
    records = Sink()
    ForwardedRecords(ours, records).forward()
    assert records == [(syslog.LOG_NOTICE, f"{PRELOGIN_PREFIX}a pre-login record")]
    sent = received(syslog_listener)
    assert len(sent) == 1 and sent[0].endswith(b": the monitor's own"), sent


def test_forward_to_closes_the_tracefile(pair, tmp_path):
    ours, theirs = pair
    trace = str(tmp_path / "trace")
    logger = Logger(tracefile=trace)
    assert descriptors_on(trace) != []
    logger.forward_to(theirs)
    assert descriptors_on(trace) == []
    logger(syslog.LOG_NOTICE, "to the monitor")
    assert os.path.getsize(trace) == 0
    records = Sink()
    ForwardedRecords(ours, records).forward()
    assert records == [(syslog.LOG_NOTICE, f"{PRELOGIN_PREFIX}to the monitor")]


def test_a_hostile_record_is_cleaned_and_capped_at_crit(pair):
    """What a process the client took over could send on the socket itself: any priority
    byte, any octets. LOG_EMERG and LOG_ALERT would reach every terminal; a line break
    would start a record of its own."""
    ours, theirs = pair
    for priority, text in [(0, b"emerg"), (1, b"alert"), (2, b"crit"), (6, b"info"),
                           (200, b"odd"), (5, b"x\nLOGIN FAILED, ip=[198.51.100.7]\x1b[2J\xff")]:
        theirs.send(bytes((priority,)) + text)
    stream = io.StringIO()
    records = Sink()
    ForwardedRecords(ours, records).forward()
    assert [priority for priority, _ in records] == [syslog.LOG_CRIT] * 3 + [
        syslog.LOG_INFO, syslog.LOG_DEBUG, syslog.LOG_NOTICE]
    # through the monitor's real Logger: one line, the prefix first, no control octets
    theirs.send(bytes((5,)) + b"x\nLOGIN FAILED, ip=[198.51.100.7]\x1b[2J\xff")
    ForwardedRecords(ours, Logger(stream=stream)).forward()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(f"]: {PRELOGIN_PREFIX}x LOGIN FAILED, ip=[198.51.100.7] [2J\ufffd")


@pytest.mark.parametrize("debug", [False, True])
def test_past_the_limit_the_process_is_ended_and_the_rest_dropped(pair, monkeypatch, debug):
    """A process a client took over must not spend the journal's rate limit (it would hide
    the other connections' failures from fail2ban): past its limit its monitor ends it."""
    monkeypatch.setattr(log_mod, "MAX_FORWARDED_RECORDS", 3)
    monkeypatch.setattr(log_mod, "MAX_FORWARDED_TRACE_RECORDS", 5)
    limit = 5 if debug else 3
    ours, theirs = pair
    records, ended = Sink(), []
    forwarded = ForwardedRecords(ours, records, debug=debug, who="192.0.2.7",
                                 end_process=lambda: ended.append(True))
    for i in range(limit + 3):
        theirs.send(bytes((syslog.LOG_INFO,)) + f"record {i}".encode())
    forwarded.forward()
    theirs.send(bytes((syslog.LOG_INFO,)) + b"one more")
    forwarded.forward()
    assert [text for _, text in records] == [
        *(f"{PRELOGIN_PREFIX}record {i}" for i in range(limit)),
        f"pre-login for 192.0.2.7 sent more than {limit} log records; ending it"]
    assert ended == [True]
    with pytest.raises(BlockingIOError):
        ours.recv(100)                   # the dropped ones were read: nobody is held up


def test_empty_datagrams_count_towards_the_limit(pair, monkeypatch):
    """An empty datagram logs nothing, but reading it costs the monitor as much as a record:
    a process that sends nothing else is ended at the same limit, not read from for ever."""
    monkeypatch.setattr(log_mod, "MAX_FORWARDED_RECORDS", 3)
    ours, theirs = pair
    records, ended = Sink(), []
    forwarded = ForwardedRecords(ours, records, who="192.0.2.7",
                                 end_process=lambda: ended.append(True))
    theirs.send(bytes((syslog.LOG_INFO,)) + b"said")
    for _ in range(5):
        theirs.send(b"")
    forwarded.forward()
    assert [text for _, text in records] == [
        f"{PRELOGIN_PREFIX}said",
        "pre-login for 192.0.2.7 sent more than 3 log records; ending it"]
    assert ended == [True]


def test_records_a_forked_process_forwarded_count_towards_the_limit(pair, monkeypatch):
    """The authentication process forwards records while it answers requests, and may die
    (a PAM module that crashed) without telling its monitor how many: the count is shared,
    so the monitor's limit still counts them (docs/privsep.md, "The authentication
    process")."""
    monkeypatch.setattr(log_mod, "MAX_FORWARDED_RECORDS", 4)
    ours, theirs = pair
    records, ended = Sink(), []
    forwarded = ForwardedRecords(ours, records, who="192.0.2.7",
                                 end_process=lambda: ended.append(True))
    for i in range(3):
        theirs.send(bytes((syslog.LOG_INFO,)) + f"r{i}".encode())
    pid = os.fork()
    if pid == 0:                             # the authentication process: forwards, dies
        try:
            forwarded.log = lambda priority, text: None
            forwarded.forward()
        finally:
            os._exit(0 if forwarded.count == 3 else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert forwarded.count == 3 and records == []
    for i in range(3, 5):
        theirs.send(bytes((syslog.LOG_INFO,)) + f"r{i}".encode())
    forwarded.forward()
    assert [text for _, text in records] == [
        f"{PRELOGIN_PREFIX}r3", "pre-login for 192.0.2.7 sent more than 4 log records; ending it"]
    assert ended == [True]


def test_one_forward_takes_a_batch_so_waits_keep_their_deadlines(pair, monkeypatch):
    monkeypatch.setattr(log_mod, "FORWARD_BATCH", 3)
    ours, theirs = pair
    records = Sink()
    forwarded = ForwardedRecords(ours, records)
    for i in range(5):
        theirs.send(bytes((syslog.LOG_INFO,)) + f"r{i}".encode())
    forwarded.forward()
    assert len(records) == 3
    forwarded.forward()
    assert len(records) == 5


def test_once_the_process_has_ended_every_record_it_left_is_logged(pair, monkeypatch):
    """Its last words may be more than one batch (a raised net.unix.max_dgram_qlen)."""
    monkeypatch.setattr(log_mod, "FORWARD_BATCH", 3)
    ours, theirs = pair
    records = Sink()
    for i in range(7):
        theirs.send(bytes((syslog.LOG_INFO,)) + f"r{i}".encode())
    ForwardedRecords(ours, records).finish()
    assert [text for _, text in records] == [f"{PRELOGIN_PREFIX}r{i}" for i in range(7)]
    assert ours.fileno() == -1


def test_records_past_the_limit_after_the_end_end_nobody(pair, monkeypatch):
    """The last words are read after the process was reaped: a limit they cross ends
    nothing (the pid may be another process's), it is only logged."""
    monkeypatch.setattr(log_mod, "MAX_FORWARDED_RECORDS", 3)
    ours, theirs = pair
    records, ended = Sink(), []
    forwarded = ForwardedRecords(ours, records, who="192.0.2.7",
                                 end_process=lambda: ended.append(True))
    forwarded.count = 2                       # what was forwarded while the process lived
    for i in range(3):
        theirs.send(bytes((syslog.LOG_INFO,)) + f"r{i}".encode())
    forwarded.finish()
    assert ended == []
    assert [text for _, text in records] == [
        f"{PRELOGIN_PREFIX}r0", "pre-login for 192.0.2.7 sent more than 3 log records; ending it"]


def test_a_monitor_gone_costs_the_record_only(pair):
    ours, theirs = pair
    logger = Logger(stream=io.StringIO())
    logger.forward_to(theirs)
    ours.close()
    logger(syslog.LOG_ERR, "nobody reads this")       # ECONNREFUSED: dropped, no exception
    assert theirs.gettimeout() == log_mod.FORWARD_WAIT_S
