"""XTND XMIT and XTND XLST (reference P24, P25, §2.3) as transcripts: the real Protocol and
Maildrop over a spool in tmp_path, and for XMIT a real mail-command — an executable script
that records its argv, uid and stdin (the MTA interface is exactly that). The end-to-end run
through the real server, as a real user, is tests/test_xtnd_server.py."""

from __future__ import annotations

import errno
import os
import stat
import syslog
import time

import pytest

from qpopper import limits
from qpopper.extensions import submit
from tests.transcripts.harness import (CLIENT_HOST, extended_login, extended_session, parse,
                                       run_lockstep, run_pipelined, spool_fixture)

pytestmark = pytest.mark.timeout(30)

SPOOL = (b"From a@example.org Mon Nov  2 10:00:00 2026\n"
         b"From: Alice <alice@example.org>\n"
         b"Subject: first\n"
         b"\n"
         b"one\n"
         b"\n"
         b"From b@example.org Mon Nov  2 10:01:00 2026\n"
         b"From: Bob\n"
         b"Subject: second,\n"
         b"\tfolded\n"
         b"X-Other: x\n"
         b"\n"
         b"two\n"
         b"\n"
         b"From c@example.org Mon Nov  2 10:02:00 2026\n"
         b"From: Carol\n"
         b"\n"
         b"three, no subject\n"
         b"\n")

RECORDER = """#!/bin/sh
# A stand-in MTA: records how it was run, then exits with the status given below.
{{ for arg in "$0" "$@"; do printf '%s\\n' "$arg"; done; id -u; pwd; }} > {out}.argv
cat > {out}.stdin
exit {status}
"""


def make_mta(directory, status=0, body=None) -> tuple[str, str]:
    """(path of an executable mail-command, prefix of the files it records into)."""
    out = os.path.join(directory, "mta-record")
    path = os.path.join(directory, f"fake-sendmail-{status}")
    with open(path, "w") as f:
        f.write(body if body is not None else RECORDER.format(out=out, status=status))
    os.chmod(path, 0o755)
    return path, out


spool = spool_fixture(alice=SPOOL)


def xmit_leftovers(spool) -> list[str]:
    return [name for name in os.listdir(spool.dir) if name.startswith(".xmit")]


# --- XMIT ----------------------------------------------------------------------------------------
def test_xmit_submits_through_mail_command(spool, tmp_path):
    mta, record = make_mta(str(tmp_path))
    pop = extended_login(spool, mail_command=mta)
    run_lockstep(pop, parse("""
        C: XTND XMIT
        S: +OK Start sending message.
        C: From: alice@example.org
        C: To: bob@example.org
        C: Subject: sent through POP
        C:
        C: ..a line that began with a dot
        C: QUIT
        C: DELE 1
        C: .
        S: +OK Message sent successfully
        C: STAT
        S: +OK 3 %d
    """ % sum(m.octets for m in pop.proto.trans.messages)))
    with open(record + ".argv") as f:
        assert f.read().split("\n")[:-1] == [mta, "-t", "-i", "-oem", str(os.getuid()), "/"]
    with open(record + ".stdin", "rb") as f:
        assert f.read() == (b"From: alice@example.org\nTo: bob@example.org\n"
                            b"Subject: sent through POP\n\n.a line that began with a dot\n"
                            b"QUIT\nDELE 1\n")
    assert (syslog.LOG_NOTICE, f'Pop transmit from "alice" on "{CLIENT_HOST}"') in pop.env.logs
    assert xmit_leftovers(spool) == []
    assert pop.proto.trans.deleted == set()


def test_xmit_pipelined_with_commands_after_the_message(spool, tmp_path):
    """The whole session in one packet, and cut byte by byte: the same replies."""
    mta, record = make_mta(str(tmp_path))
    extended_login(spool).send("QUIT")              # the update writes the UIDs: sizes settle
    first = extended_login(spool)
    octets = sum(m.octets for m in first.proto.trans.messages)
    first.send("QUIT")
    for chunks in (None, [1], [7, 3]):
        pop = extended_session(spool, mail_command=mta)
        run_pipelined(pop, parse(f"""
            S: +OK Qpopper (version 4.1.0) at mail.example.org starting.  <TS>
            C: USER alice
            S: +OK Password required for alice.
            C: PASS wonderland
            S: +OK alice has 3 visible messages (0 hidden) in {octets} octets.
            C: XTND XMIT
            S: +OK Start sending message.
            C: To: bob@example.org
            C:
            C: hello
            C: .
            S: +OK Message sent successfully
            C: NOOP
            S: +OK
            C: QUIT
            S: +OK Pop server at mail.example.org signing off.
        """), chunks)
        with open(record + ".stdin", "rb") as f:
            assert f.read() == b"To: bob@example.org\n\nhello\n"
        os.unlink(record + ".stdin")


def test_xtnd_is_a_transaction_command(spool):
    pop = extended_session(spool)
    pop.greet()
    assert pop.send("XTND XMIT") == b'-ERR Unknown command: "XTND".\r\n'


def test_xmit_switched_off_is_a_disabled_command(spool, tmp_path):
    """xtnd-xmit reset: no temporary file, no MTA, nothing read as a message; the next line
    is a command again and XLST still works."""
    mta, record = make_mta(str(tmp_path))
    pop = extended_login(spool, mail_command=mta, xtnd_xmit=False)
    run_lockstep(pop, parse("""
        C: XTND XMIT
        S: -ERR Command not enabled
        C: NOOP
        S: +OK
        C: XTND XLST subject 1
        S: +OK xlst command accepted; headers coming.
        S: 1 Subject: first
        S: .
    """))
    assert not os.path.exists(record + ".argv")
    assert xmit_leftovers(spool) == []


def test_mta_failure_is_an_err(spool, tmp_path):
    mta, record = make_mta(str(tmp_path), status=75)
    pop = extended_login(spool, mail_command=mta)
    run_lockstep(pop, parse("""
        C: XTND XMIT
        S: +OK Start sending message.
        C: To: nobody
        C: .
        S: -ERR Unable to send message
        C: NOOP
        S: +OK
    """))
    assert os.path.exists(record + ".stdin")
    assert any("exited with status 75" in text for _, text in pop.env.logs)
    assert xmit_leftovers(spool) == []


def test_missing_mail_command(spool, tmp_path):
    pop = extended_login(spool, mail_command=str(tmp_path / "no-such-sendmail"))
    assert pop.send("XTND XMIT") == b"+OK Start sending message.\r\n"
    assert pop.send("To: x\r\n.") == b"-ERR Unable to send message\r\n"
    assert any("no-such-sendmail" in text for _, text in pop.env.logs)


def test_too_large_message_is_read_to_its_end_and_refused(spool, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_XMIT_OCTETS", 100)
    mta, record = make_mta(str(tmp_path))
    pop = extended_login(spool, mail_command=mta)
    pop.send("XTND XMIT")
    for n in range(20):
        assert pop.send(f"line {n} of a message that is too long; DELE 1") == b""
    assert pop.send(".") == b"-ERR Message too large (more than 100 octets); not sent\r\n"
    assert not os.path.exists(record + ".stdin")       # the MTA never ran
    assert pop.send("NOOP") == b"+OK\r\n" and pop.proto.trans.deleted == set()


@pytest.mark.parametrize("pieces", [1, 7])
def test_over_long_message_line_is_drained_never_read_as_commands(spool, tmp_path, monkeypatch,
                                                                   pieces):
    """A line over the XMIT line limit makes the message too large; every line after it up
    to the `.` is still message text: `DELE 1` and `QUIT` in the body do nothing."""
    monkeypatch.setattr(limits, "MAX_XMIT_OCTETS", 100)
    mta, record = make_mta(str(tmp_path))
    pop = extended_login(spool, mail_command=mta)
    assert pop.send("XTND XMIT") == b"+OK Start sending message.\r\n"
    assert pop.send("To: x") == b""
    long_line = b"x" * 300 + b"\r\n"
    size = -(-len(long_line) // pieces)
    for start in range(0, len(long_line), size):      # the line may arrive in pieces
        pop.proto.feed(long_line[start:start + size])
    assert pop.env.take() == b""
    for command in ("DELE 1", "DELE 2", "RSET", "QUIT"):
        assert pop.send(command) == b""
    assert pop.send(".") == b"-ERR Message too large (more than 100 octets); not sent\r\n"
    assert not os.path.exists(record + ".stdin")       # the MTA never ran
    assert pop.send("NOOP") == b"+OK\r\n"
    assert pop.proto.trans.deleted == set() and not pop.proto.closed
    assert pop.proto.bad_commands == 0


def test_hung_mta_is_killed_after_the_timeout(spool, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "XMIT_TIMEOUT_S", 1)
    mta, _ = make_mta(str(tmp_path), body="#!/bin/sh\nexec sleep 30\n")
    pop = extended_login(spool, mail_command=mta)
    pop.send("XTND XMIT")
    started = time.monotonic()
    assert pop.send("To: x\r\n.") == b"-ERR Unable to send message\r\n"
    assert time.monotonic() - started < 10
    assert any("took over 1 s; killed" in text for _, text in pop.env.logs)


def test_draft_is_a_private_anonymous_file_never_left(spool, tmp_path):
    """While the message arrives the draft is a memfd of mode 0600 (memfd_create(2)): no
    directory is needed (a Maildir session may write none), nothing in the spool directory
    to find, nothing left if the session dies mid-message."""
    mta, _ = make_mta(str(tmp_path))
    pop = extended_login(spool, mail_command=mta)
    pop.send("XTND XMIT")
    pop.send("Subject: secret")
    targets = {}
    for fd in os.listdir(f"/proc/{os.getpid()}/fd"):
        try:
            targets[fd] = os.readlink(f"/proc/{os.getpid()}/fd/{fd}")
        except FileNotFoundError:
            pass                              # listdir's own descriptor
    drafts = [(fd, t) for fd, t in targets.items() if t.startswith("/memfd:xmit")]
    assert len(drafts) == 1 and drafts[0][1].endswith(" (deleted)")
    fd, _ = drafts[0]
    assert stat.S_IMODE(os.stat(f"/proc/{os.getpid()}/fd/{fd}").st_mode) == 0o600
    assert xmit_leftovers(spool) == []
    pop.proto.eof()                           # the client vanished mid-message
    assert xmit_leftovers(spool) == []


def test_no_draft_is_a_sys_temp_refusal(spool, tmp_path, monkeypatch):
    mta, record = make_mta(str(tmp_path))
    pop = extended_login(spool, mail_command=mta)

    def no_memory(name, flags):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
    monkeypatch.setattr(submit.os, "memfd_create", no_memory)
    assert pop.send("XTND XMIT") == b"-ERR [SYS/TEMP] Unable to create temporary file\r\n"
    assert any("temporary file" in text and "memory" in text for _, text in pop.env.logs)
    assert pop.send("NOOP") == b"+OK\r\n"          # no message is being read


@pytest.mark.parametrize("command, reply", [
    ("XTND", "-ERR Too few arguments for the XTND command."),
    ("XTND XMIT now", "-ERR Too many arguments for the XTND XMIT command."),
    ("XTND XLST", "-ERR Too few arguments for the XTND XLST command."),
    ("XTND XLST subject 1 2", "-ERR Too many arguments for the XTND XLST command."),
    ("XTND XSENDER", '-ERR Unknown XTND command: "XSENDER".'),
    ("xtnd frob", '-ERR Unknown XTND command: "frob".'),
])
def test_xtnd_refusals(spool, command, reply):
    pop = extended_login(spool)
    assert pop.send(command) == reply.encode() + b"\r\n"
    assert pop.send("NOOP") == b"+OK\r\n"


def test_xmit_is_not_in_capa(spool):
    pop = extended_login(spool)
    capa = pop.send("CAPA")
    assert b"XMIT" not in capa and b"XTND" not in capa
    assert b"\r\nX-MANGLE\r\nX-MACRO\r\n" in capa


# --- XLST ----------------------------------------------------------------------------------------
def test_xlst_lists_one_header_of_each_message(spool):
    pop = extended_login(spool)
    run_lockstep(pop, parse("""
        C: XTND XLST Subject
        S: +OK xlst command accepted; headers coming.
        S: 1 Subject: first
        S: 2 Subject: second,
        S: \tfolded
        S: .
        C: XTND XLST from: 3
        S: +OK xlst command accepted; headers coming.
        S: 3 From: Carol
        S: .
        C: XTND XLST subject 3
        S: +OK xlst command accepted; headers coming.
        S: .
        C: DELE 1
        S: +OK Message 1 has been deleted.
        C: XTND XLST SUBJECT
        S: +OK xlst command accepted; headers coming.
        S: 2 Subject: second,
        S: \tfolded
        S: .
        C: XTND XLST subject 1
        S: -ERR Message 1 has been deleted.
        C: XTND XLST subject 4
        S: -ERR Message 4 does not exist.
        C: XTND XLST subject x
        S: -ERR Parameter must be a number between 1 and 3
        C: XTND XLST x-uidl 2
        S: +OK xlst command accepted; headers coming.
        S: 2 X-UIDL: %s
        S: .
    """ % pop.proto.trans.messages[1].uid))


def test_xlst_bounds_a_huge_header(spool, tmp_path):
    spool.write("alice", b"From a@b Mon Nov  2 10:00:00 2026\nSubject: "
                + b"s" * 100_000 + b"\n\nbody\n")
    pop = extended_login(spool)
    reply = pop.send("XTND XLST subject")
    assert reply.startswith(b"+OK xlst command accepted; headers coming.\r\n1 Subject: sss")
    assert len(reply) < limits.MAX_XLST_HEADER_OCTETS + 100


def test_in_an_mbox_too_xlst_and_euidl_take_a_lone_cr_line_as_top_does(spool):
    """A header line of a lone CR (CR CR LF) is content for TOP; XLST and EUIDL read TOP's
    data and end the header where it does (docs/maildir.md, "What a message is")."""
    spool.write("alice", b"From a@b Mon Nov  2 10:00:00 2026\nSubject: s\n\r\r\n"
                         b"From: late@example.org\nX-Late: y\n\nbody\n")
    pop = extended_login(spool)
    assert b"\r\r\nFrom: late@example.org\r\nX-Late: y\r\n" in pop.send("TOP 1 0")
    assert pop.send("XTND XLST X-Late") == (b"+OK xlst command accepted; headers coming.\r\n"
                                            b"1 X-Late: y\r\n.\r\n")
    assert pop.send("EUIDL 1").endswith(b" late@example.org\r\n")
