"""qpopper.log: syslog records as syslog(3) frames them, tracefile, debug records, line formats."""

import os
import re
import socket
import syslog

import pytest

from qpopper import QPOPPER_VERSION
from qpopper.config import Config
from qpopper.log import (Logger, facility_code, log_login_line, stats_line, timeout_line,
                         timing_line)

pytestmark = pytest.mark.timeout(30)

RECORD_RE = re.compile(r"<(?P<pri>\d+)>(?P<stamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) "
                       r"popper\[(?P<pid>\d+)\]: (?P<text>.*)", re.S)


@pytest.fixture
def syslog_listener(tmp_path):
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def receive(sock) -> re.Match:
    data = sock.recv(65536).decode()
    match = RECORD_RE.fullmatch(data)
    assert match, data
    return match


def test_record_is_framed_like_syslog3_with_facility_pid_and_ident(syslog_listener):
    path, sock = syslog_listener
    log = Logger(facility=syslog.LOG_MAIL, socket_path=path)
    try:
        log(syslog.LOG_NOTICE, "hello")
    finally:
        log.close()
    rec = receive(sock)
    assert int(rec["pri"]) == syslog.LOG_MAIL | syslog.LOG_NOTICE == 21
    assert int(rec["pid"]) == os.getpid()
    assert rec["text"] == "hello"


def test_facility_from_config_name(syslog_listener):
    path, sock = syslog_listener
    log = Logger(facility=facility_code("local3"), socket_path=path)
    try:
        log(syslog.LOG_INFO, "x")
    finally:
        log.close()
    assert int(receive(sock)["pri"]) == (19 << 3) | 6
    with pytest.raises(ValueError):
        facility_code("kern-nope")


def test_reconfigured_takes_the_options_and_keeps_the_destination(syslog_listener, tmp_path):
    """The master's log on HUP: debug and log-facility from the new configuration, the same
    syslog socket (here a test listener, not /dev/log) and ident."""
    path, sock = syslog_listener
    old = Logger(socket_path=path)
    new = old.reconfigured(Config.defaults().replace(debug=True, log_facility="local5"))
    try:
        old(syslog.LOG_DEBUG, "hidden")
        new(syslog.LOG_DEBUG, "debug shown")
    finally:
        old.close()
        new.close()
    record = receive(sock)
    assert record["text"] == "debug shown"
    assert int(record["pri"]) == syslog.LOG_LOCAL5 | syslog.LOG_DEBUG
    with pytest.raises(OSError):
        old.reconfigured(Config.defaults().replace(tracefile=str(tmp_path / "no" / "trace")))


def test_debug_records_only_with_debug(syslog_listener):
    path, sock = syslog_listener
    quiet = Logger(socket_path=path)
    loud = Logger(socket_path=path, debug=True)
    try:
        quiet(syslog.LOG_DEBUG, "hidden")
        quiet(syslog.LOG_INFO, "shown")
        loud(syslog.LOG_DEBUG, "debug shown")
    finally:
        quiet.close()
        loud.close()
    assert receive(sock)["text"] == "shown"
    assert receive(sock)["text"] == "debug shown"


def test_newlines_and_nul_cannot_forge_records(syslog_listener):
    path, sock = syslog_listener
    log = Logger(socket_path=path)
    try:
        log(syslog.LOG_NOTICE, "user evil\n<13>Jan  1 00:00:00 popper[1]: forged\0x")
    finally:
        log.close()
    text = receive(sock)["text"]
    assert "\n" not in text and "\0" not in text
    assert text.startswith("user evil <13>")


def test_terminal_escapes_and_every_control_character_are_replaced(syslog_listener, tmp_path):
    """A client-chosen name (AUTH PLAIN's authcid goes into sasl-log-login as %4) carrying ESC
    sequences must not reach syslog or the tracefile: whoever reads the log with tail, less -R
    or journalctl would have their screen cleared and lines rewritten. Every C0 control, DEL
    and C1 control becomes a space; printable text, UTF-8 included, is kept."""
    path, sock = syslog_listener
    controls = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0)]))
    hostile = "alice@\x1b[2J\x1b[1Apopper[1]: fake\x9b31m\tgr\u00fcn\x07" + controls + "end"
    log = Logger(socket_path=path)
    trace = tmp_path / "trace"
    traced = Logger(tracefile=str(trace))
    try:
        log(syslog.LOG_NOTICE, f'sasl "{hostile}" with PLAIN')
        traced(syslog.LOG_NOTICE, hostile)
    finally:
        log.close()
        traced.close()
    text = receive(sock)["text"]
    assert text == ('sasl "alice@ [2J [1Apopper[1]: fake 31m gr\u00fcn ' + " " * len(controls)
                    + 'end" with PLAIN')
    assert not any(ch in text for ch in controls)
    assert trace.read_text().rstrip("\n").endswith("alice@ [2J [1Apopper[1]: fake 31m gr\u00fcn "
                                                    + " " * len(controls) + "end")


def test_reconnects_after_syslog_restarts(tmp_path):
    path = str(tmp_path / "log.sock")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(path)
    log = Logger(socket_path=path)
    try:
        log(syslog.LOG_INFO, "one")
        assert first.recv(4096).endswith(b"one")
        first.close()
        os.unlink(path)
        log(syslog.LOG_INFO, "lost while syslog is down")   # must not raise
        second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        second.bind(path)
        second.settimeout(5)
        try:
            log(syslog.LOG_INFO, "two")
            assert second.recv(4096).endswith(b"two")
        finally:
            second.close()
    finally:
        log.close()


def test_no_syslog_socket_is_not_an_error(tmp_path):
    log = Logger(socket_path=str(tmp_path / "absent.sock"))
    log(syslog.LOG_ERR, "nobody listens")
    log.close()


def test_socket_path_from_environment(syslog_listener, monkeypatch):
    path, sock = syslog_listener
    monkeypatch.setenv("QPOPPER_SYSLOG_SOCKET", path)
    log = Logger()
    try:
        log(syslog.LOG_INFO, "via env")
    finally:
        log.close()
    assert receive(sock)["text"] == "via env"


def test_tracefile_gets_everything_instead_of_syslog(tmp_path, syslog_listener):
    path, sock = syslog_listener
    trace = tmp_path / "trace"
    log = Logger(socket_path=path, tracefile=str(trace), debug=True)
    try:
        log(syslog.LOG_NOTICE, "first")
        log(syslog.LOG_DEBUG, "second")
    finally:
        log.close()
    lines = trace.read_text().splitlines()
    pattern = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3} \d{4} \[%d\] %s"
    assert re.fullmatch(pattern % (os.getpid(), "first"), lines[0]), lines[0]
    assert re.fullmatch(pattern % (os.getpid(), "second"), lines[1]), lines[1]
    assert oct(trace.stat().st_mode & 0o777) == "0o600"
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_tracefile_refuses_a_symlink(tmp_path):
    target = tmp_path / "victim"
    target.write_text("")
    (tmp_path / "trace").symlink_to(target)
    with pytest.raises(OSError):
        Logger(tracefile=str(tmp_path / "trace"))


# --- formats ----------------------------------------------------------------------------------
def test_stats_line_format():
    assert (stats_line("randy", 0, 0, 1, 385, "randy.examp.org", "192.168.2.4")
            == "Stats: randy 0 0 1 385 randy.examp.org 192.168.2.4")


def test_timing_line_format():
    assert (timing_line("alice", "client.example", False, 1.9, 0.2, 3.0)
            == f"(v{QPOPPER_VERSION}) Timing for alice@client.example (normal) "
               "auth=1 init=0 clean=3")
    assert "(error)" in timing_line("alice", "h", True, 0, 0, 0)


def test_timeout_line_format():
    assert (timeout_line(120, "bob", "host.example", "10.0.0.5")
            == f"(v{QPOPPER_VERSION}) Timeout (120 secs) during nw read from bob "
               "at host.example (10.0.0.5)")


def test_log_login_expands_qpopper_escapes():
    template = '(v%0) POP login by user "%1" at (%2) %3'
    assert (log_login_line(template, "alice", "client.example", "10.1.2.3")
            == f'(v{QPOPPER_VERSION}) POP login by user "alice" at (client.example) 10.1.2.3')
    assert (log_login_line("%5 %4 %6 100%% %9 %", "u", "h", "i", authid="a",
                           mechanism="PLAIN", ssf=0) == "PLAIN a 0 100% %9 %")


def test_the_dialogue_trace_hides_secrets_and_lines_out_of_step():
    from qpopper.pop3 import trace as pop_trace
    verbs = {"USER", "PASS", "APOP", "AUTH", "CAPA", "QUIT"}
    assert pop_trace.received_command(b"USER alice", verbs) == "USER alice"
    assert pop_trace.received_command(b"pass my secret words", verbs) == "PASS <hidden>"
    assert pop_trace.received_command(b"APOP alice c4c9334bac560ecc979e58001b3e22fb",
                                      verbs) == "APOP alice <hidden>"
    assert pop_trace.received_command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", verbs) == \
        "AUTH PLAIN <hidden>"
    assert pop_trace.received_command(b"AUTH SCRAM-SHA-256", verbs) == "AUTH SCRAM-SHA-256"
    # a password sent as a line of its own by a client out of step is not shown
    assert pop_trace.received_command(b"Tr0ub4dor&3", verbs) == \
        "<hidden> (11 octets, not a command here)"
    assert pop_trace.received_command(b"RETR 1", verbs) == \
        "<hidden> (6 octets, not a command here)"
    assert pop_trace.received_continuation(b"dGVzdA==") == \
        "<hidden> (8 octets inside an exchange)"
    assert pop_trace.sent_first_line(b"+OK 2 messages\r\n1 120\r\n.\r\n") == "+OK 2 messages"


def test_tracefile_turns_debug_on_as_qpoppers_t_did(tmp_path):
    from qpopper.config import Config
    log = Logger.from_config(Config.defaults().replace(tracefile=str(tmp_path / "trace")))
    try:
        log(syslog.LOG_DEBUG, "debug into the trace")
    finally:
        log.close()
    assert (tmp_path / "trace").read_text().rstrip("\n").endswith("] debug into the trace")
