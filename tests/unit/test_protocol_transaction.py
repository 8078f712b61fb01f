"""TRANSACTION and UPDATE states: every verb, every refusal, RSET/LAST bookkeeping, QUIT and
the abort paths, auto-delete, CAPA after login, the extension hooks.

Real Protocol, real Maildrop, spools written into tmp_path. Expected replies are constants or
RFC-style transcripts; `<UIDn>` stands for the UID the server reports for message n.
"""

from __future__ import annotations

import re

import pytest

from qpopper.pop3.command import Command, Extensions
from qpopper.pop3.protocol import State
from qpopper.pop3.trans_state import SessionStats
from qpopper.pop3.responses import ok
from tests.helpers.transaction_spool import MSG1, MSG2, SPOOL
from tests.transcripts.harness import LOCALTIME, parse, run_lockstep, spool_fixture

UID2 = "0123456789abcdef"

SIGNING_OFF = b"+OK Pop server at mail.example.org signing off.\r\n"
NOT_A_NUMBER = b"-ERR Parameter must be a number between 1 and 3\r\n"
LINE_COUNT = b"-ERR Line count must be a number between 0 and 2147483647\r\n"


def wire(data: bytes) -> bytes:
    """Spool text → what RETR sends (CRLF, dot-stuffed), for the hand-written expectations."""
    lines = data.split(b"\n")
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


def retr_body(msg: bytes, uid: str, *, drop=()) -> bytes:
    """Qpopper's RETR data for a From_ message: no separator line, the dropped header lines
    removed, `X-UIDL: <uid>` before Status: or at the end of the headers, CRLF line ends, and
    not the framing line that ends the message in the spool (docs/mbox.md, "The framing
    line")."""
    text = msg.split(b"\n", 1)[1]
    header, _, body = text.partition(b"\n\n")
    kept = [ln for ln in header.split(b"\n") if not any(ln.startswith(d) for d in drop)]
    status_at = [i for i, ln in enumerate(kept) if ln.startswith(b"Status:")]
    kept.insert(status_at[0] if status_at else len(kept), b"X-UIDL: " + uid.encode())
    if body.endswith(b"\n\n"):
        body = body[:-1]                    # the framing line
    content = b"\n".join(kept) + b"\n\n" + body
    return wire(content[:-1] if content.endswith(b"\n") else content)


def unstuff(data: bytes) -> bytes:
    return b"".join(ln[1:] if ln.startswith(b"..") else ln
                    for ln in data.splitlines(keepends=True))


spool = spool_fixture(alice=SPOOL)


def logged_in(spool, **kw):
    pop = spool.session(**kw)
    reply = pop.login("alice")
    assert reply.startswith(b"+OK alice has 3 visible messages (0 hidden) in "), reply
    return pop


@pytest.fixture
def pop(spool):
    return logged_in(spool)


def uids(pop) -> list[str]:
    listing = pop.send("UIDL").split(b"\r\n")
    return [line.split()[1].decode() for line in listing[1:-2]]


def sizes(pop) -> list[int]:
    listing = pop.send("LIST").split(b"\r\n")
    return [int(line.split()[1]) for line in listing[1:-2]]


def retr(pop, n: int) -> tuple[bytes, bytes]:
    """(status line, unstuffed message data) of RETR n."""
    out = pop.send(f"RETR {n}")
    status, _, rest = out.partition(b"\r\n")
    assert rest.endswith(b"\r\n.\r\n"), out[-40:]
    return status, unstuff(rest[:-3])


# --- the sizes a client sees are the octets it gets ---------------------------------------------------
def test_list_stat_and_retr_agree_to_the_octet_on_a_never_updated_spool(pop):
    listed = sizes(pop)
    count, total = pop.send("STAT").split()[1:3]
    assert int(count) == 3 and int(total) == sum(listed)
    for n, size in enumerate(listed, 1):
        assert pop.send(f"LIST {n}") == f"+OK {n} {size}\r\n".encode()
        status, data = retr(pop, n)
        assert status == f"+OK {size} octets".encode()
        assert len(data) == size, (n, data)
    # Messages 1 and 3 have no X-UIDL in the spool: it was inserted, and counted.
    assert b"X-UIDL: " in retr(pop, 1)[1] and b"X-UIDL: " in retr(pop, 3)[1]


def test_login_reply_octets_equal_stat(pop, spool):
    second = spool.session()
    pop.send("QUIT")
    login = second.login("alice")
    total = int(second.send("STAT").split()[2])
    assert login == f"+OK alice has 3 visible messages (0 hidden) in {total} octets.\r\n".encode()


def test_retr_sends_the_message_exactly(pop):
    u1, u2, u3 = uids(pop)
    assert u2 == UID2
    assert pop.send("RETR 1") == (f"+OK {len(unstuff(retr_body(MSG1, u1)))} octets\r\n".encode()
                                  + retr_body(MSG1, u1) + b".\r\n")
    assert pop.send("RETR 2") == (f"+OK {len(retr_body(MSG2, u2, drop=[b'X-UIDL']))} octets\r\n"
                                  .encode() + retr_body(MSG2, u2, drop=[b"X-UIDL"]) + b".\r\n")


def test_retr_of_message_without_final_newline_ends_with_crlf_and_drops_content_length(pop):
    u3 = uids(pop)[2]
    expected = (b"From: carol@example.org\r\nSubject: three\r\nX-UIDL: " + u3.encode() +
                b"\r\n\r\nThird\r\n")
    assert pop.send("RETR 3") == f"+OK {len(expected)} octets\r\n".encode() + expected + b".\r\n"


def test_top_sends_headers_and_n_body_lines(pop):
    u1 = uids(pop)[0]
    head = (b"From: Alice <alice@example.org>\r\nSubject: one\r\nX-UIDL: " + u1.encode() +
            b"\r\n\r\n")
    assert pop.send("TOP 1 0") == b"+OK Message follows\r\n" + head + b".\r\n"
    assert pop.send("TOP 1 2") == (b"+OK Message follows\r\n" + head +
                                   b"Hello.\r\n..a line with a leading dot\r\n.\r\n")
    assert pop.send("TOP 1 1000") == b"+OK Message follows\r\n" + retr_body(MSG1, u1) + b".\r\n"


# --- transcripts of every verb --------------------------------------------------------------------------
def test_stat_list_uidl_noop_transcript(pop):
    s1, s2, s3 = sizes(pop)
    u1, u2, u3 = uids(pop)
    total = s1 + s2 + s3
    run_lockstep(pop, parse(f"""
        C: STAT
        S: +OK 3 {total}
        C: LIST
        S: +OK 3 visible messages ({total} octets)
        S: 1 {s1}
        S: 2 {s2}
        S: 3 {s3}
        S: .
        C: LIST 2
        S: +OK 2 {s2}
        C: UIDL
        S: +OK uidl command accepted.
        S: 1 {u1}
        S: 2 {u2}
        S: 3 {u3}
        S: .
        C: UIDL 3
        S: +OK 3 {u3}
        C: NOOP
        S: +OK
        C: noop
        S: +OK
    """))


def test_dele_and_what_follows_for_the_deleted_message(pop):
    s1, s2, s3 = sizes(pop)
    u1, u2, u3 = uids(pop)
    run_lockstep(pop, parse(f"""
        C: DELE 2
        S: +OK Message 2 has been deleted.
        C: DELE 2
        S: -ERR Message 2 has already been deleted.
        C: RETR 2
        S: -ERR Message 2 has been deleted.
        C: TOP 2 0
        S: -ERR Message 2 has been deleted.
        C: LIST 2
        S: -ERR Message 2 has been deleted.
        C: UIDL 2
        S: -ERR Message 2 has been marked for deletion.
        C: STAT
        S: +OK 2 {s1 + s3}
        C: LIST
        S: +OK 2 visible messages ({s1 + s3} octets)
        S: 1 {s1}
        S: 3 {s3}
        S: .
        C: UIDL
        S: +OK uidl command accepted.
        S: 1 {u1}
        S: 3 {u3}
        S: .
        C: LAST
        S: +OK 2 is the last read message.
        C: RSET
        S: +OK Maildrop has 3 visible messages ({s1 + s2 + s3} octets)
        C: LAST
        S: +OK 0 is the last read message.
        C: LIST 2
        S: +OK 2 {s2}
    """))


def test_last_tracks_the_highest_message_touched(pop):
    assert pop.send("LAST") == b"+OK 0 is the last read message.\r\n"
    pop.send("TOP 2 0")
    assert pop.send("LAST") == b"+OK 2 is the last read message.\r\n"
    pop.send("RETR 1")
    assert pop.send("LAST") == b"+OK 2 is the last read message.\r\n"
    pop.send("RETR 3")
    assert pop.send("LAST") == b"+OK 3 is the last read message.\r\n"
    pop.send("LIST 1")
    pop.send("UIDL 1")
    assert pop.send("LAST") == b"+OK 3 is the last read message.\r\n"


def test_singular_rset_and_list_texts(spool):
    spool.write("alice", MSG1)
    pop = spool.session()
    assert pop.login("alice").startswith(b"+OK alice has 1 visible message (0 hidden) in ")
    size = sizes(pop)[0]
    assert pop.send("LIST").startswith(f"+OK 1 visible message ({size} octets)\r\n".encode())
    assert pop.send("RSET") == f"+OK Maildrop has 1 visible message ({size} octets)\r\n".encode()


def test_empty_maildrop(spool):
    spool.write("alice", b"")
    pop = spool.session()
    assert pop.login("alice") == b"+OK alice has 0 visible messages (0 hidden) in 0 octets.\r\n"
    run_lockstep(pop, parse("""
        C: STAT
        S: +OK 0 0
        C: LIST
        S: +OK 0 visible messages (0 octets)
        S: .
        C: UIDL
        S: +OK uidl command accepted.
        S: .
        C: RETR 1
        S: -ERR Message 1 does not exist.
        C: UIDL 1
        S: -ERR Message 1 out of range.
        C: RETR x
        S: -ERR Parameter must be a number between 1 and 0
        C: QUIT
        S: +OK Pop server at mail.example.org signing off.
    """))


# --- strict message numbers -----------------------------------------------------------------------------
@pytest.mark.parametrize("line, reply", [
    ("LIST 4294967297", b"-ERR Message 4294967297 does not exist.\r\n"),
    ("LIST 18446744073709551617", b"-ERR Message 18446744073709551617 does not exist.\r\n"),
    ("RETR 4", b"-ERR Message 4 does not exist.\r\n"),
    ("DELE 0", b"-ERR Message 0 does not exist.\r\n"),
    ("TOP 9 1", b"-ERR Message 9 does not exist.\r\n"),
    ("UIDL 4", b"-ERR Message 4 out of range.\r\n"),
    ("UIDL 0", b"-ERR Message 0 out of range.\r\n"),
    ("RETR +1", NOT_A_NUMBER),
    ("RETR -1", NOT_A_NUMBER),
    ("RETR 1.0", NOT_A_NUMBER),
    ("RETR 0x1", NOT_A_NUMBER),
    ("RETR one", NOT_A_NUMBER),
    ("RETR \u0661", NOT_A_NUMBER),                  # ARABIC-INDIC DIGIT ONE
    ("RETR \u00b9", NOT_A_NUMBER),                  # SUPERSCRIPT ONE
    ("DELE 1,2", NOT_A_NUMBER),
    ("LIST 1e3", NOT_A_NUMBER),
    ("UIDL +2", NOT_A_NUMBER),
    ("TOP x 1", NOT_A_NUMBER),
    ("RETR 1 junk", b"-ERR Too many arguments for the RETR command.\r\n"),
    ("DELE 1 2", b"-ERR Too many arguments for the DELE command.\r\n"),
    ("LIST 1 2", b"-ERR Too many arguments for the LIST command.\r\n"),
    ("UIDL 1 2", b"-ERR Too many arguments for the UIDL command.\r\n"),
    ("TOP 1 2 3", b"-ERR Too many arguments for the TOP command.\r\n"),
    ("TOP 1", b"-ERR Too few arguments for the TOP command.\r\n"),
    ("RETR", b"-ERR Too few arguments for the RETR command.\r\n"),
    ("DELE", b"-ERR Too few arguments for the DELE command.\r\n"),
    ("STAT 1", b"-ERR Too many arguments for the STAT command.\r\n"),
    ("NOOP x", b"-ERR Too many arguments for the NOOP command.\r\n"),
    ("RSET x", b"-ERR Too many arguments for the RSET command.\r\n"),
    ("LAST x", b"-ERR Too many arguments for the LAST command.\r\n"),
    ("TOP 1 -1", LINE_COUNT),
    ("TOP 1 +1", LINE_COUNT),
    ("TOP 1 2147483648", LINE_COUNT),
    ("TOP 1 99999999999999999999", LINE_COUNT),
    ("TOP 1 x", LINE_COUNT),
])
def test_strict_arguments(pop, line, reply):
    assert pop.send(line) == reply


def test_leading_zeros_are_still_a_number(pop):
    assert pop.send("LIST 001") == pop.send("LIST 1")


def test_top_with_the_largest_line_count_is_the_whole_message(pop):
    u1 = uids(pop)[0]
    assert pop.send("TOP 1 2147483647") == (b"+OK Message follows\r\n" + retr_body(MSG1, u1)
                                            + b".\r\n")


def test_malformed_numbers_count_as_bad_commands_but_missing_messages_do_not(pop):
    pop.send("RETR 9")
    pop.send("DELE 1")
    pop.send("DELE 1")
    assert pop.proto.bad_commands == 0
    pop.send("RETR +1")
    pop.send("TOP 1 -1")
    assert pop.proto.bad_commands == 2


def test_authorization_verbs_are_unknown_after_login(pop):
    for line in ("USER alice", "PASS wonderland", "APOP alice 0123", "AUTH PLAIN"):
        keyword = line.split()[0]
        assert pop.send(line) == f'-ERR Unknown command: "{keyword}".\r\n'.encode()


# --- EUIDL (reference P21) -------------------------------------------------------------------------------
def test_euidl_lists_uid_size_and_from(pop):
    s1, s2, s3 = sizes(pop)
    u1, u2, u3 = uids(pop)
    run_lockstep(pop, parse(f"""
        C: EUIDL
        S: +OK uidl command accepted.
        S: 1 {u1} {s1} Alice <alice@example.org>
        S: 2 {u2} {s2} Bob <bob@example.org>
        S: 3 {u3} {s3} carol@example.org
        S: .
        C: EUIDL 2
        S: +OK 2 {u2} {s2} Bob <bob@example.org>
        C: DELE 1
        S: +OK Message 1 has been deleted.
        C: EUIDL 1
        S: -ERR Message 1 has been marked for deletion.
        C: EUIDL 4
        S: -ERR Message 4 out of range.
    """))


def test_euidl_from_is_cut_at_128_characters_and_cleaned(spool):
    long_from = b"x" * 200
    spool.write("alice", b"From a@b Tue Nov 14 22:13:20 2023\nFrom: " + long_from +
                b"\x01\nSubject: s\n\nbody\n")
    pop = spool.session()
    pop.login("alice")
    uid, size = uids(pop)[0], sizes(pop)[0]
    assert pop.send("EUIDL 1") == f"+OK 1 {uid} {size} {'x' * 128}\r\n".encode()


def test_euidl_without_from_header(spool):
    spool.write("alice", b"From a@b Tue Nov 14 22:13:20 2023\nSubject: s\n\nFrom: not a header\n")
    pop = spool.session()
    pop.login("alice")
    uid, size = uids(pop)[0], sizes(pop)[0]
    assert pop.send("EUIDL 1") == f"+OK 1 {uid} {size}\r\n".encode()


# --- CAPA after login ------------------------------------------------------------------------------------
TRANSACTION_CAPA = (b"+OK Capability list follows\r\nTOP\r\nUSER\r\nEXPIRE NEVER\r\nUIDL\r\n"
                    b"RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nX-LOCALTIME " +
                    LOCALTIME.encode() + b"\r\nIMPLEMENTATION Qpopper-version-4.1.0\r\n.\r\n")


def test_capa_in_transaction(pop):
    assert pop.send("CAPA") == TRANSACTION_CAPA


def test_capa_in_transaction_shows_implementation_even_when_shy(spool):
    pop = logged_in(spool, shy=True)
    assert pop.send("CAPA") == TRANSACTION_CAPA


def test_capa_in_transaction_never_lists_stls(spool):
    pop = logged_in(spool, start_tls=lambda: True)
    assert pop.send("CAPA") == TRANSACTION_CAPA


# --- QUIT and UPDATE -------------------------------------------------------------------------------------
def test_quit_commits_deletions(pop, spool):
    u1, u2, u3 = uids(pop)
    pop.send("DELE 1")
    pop.send("DELE 3")
    assert pop.send("QUIT") == SIGNING_OFF
    assert pop.proto.closed and pop.proto.state == State.CLOSED
    after = spool.session()
    assert after.login("alice").startswith(b"+OK alice has 1 visible message (0 hidden)")
    assert uids(after) == [u2]


def test_quit_without_changes_keeps_every_message_and_uid(pop, spool):
    before = uids(pop)
    assert pop.send("QUIT") == SIGNING_OFF
    after = logged_in(spool)
    assert uids(after) == before


UPDATE_FAILED = (b"-ERR [SYS/TEMP] Error updating primary drop.  Mail left in temporary "
                 b"maildrop\r\n")


def test_quit_answers_the_update_failure_and_the_mail_stays(pop, spool):
    # The spool turned into a directory behind our back: the write-back cannot happen.
    (spool.dir / "alice").unlink()
    (spool.dir / "alice").mkdir()
    pop.send("DELE 1")
    assert pop.send("QUIT") == UPDATE_FAILED
    assert pop.proto.closed
    assert (spool.dir / ".alice.pop").read_bytes() == SPOOL      # nothing lost, nothing deleted


def test_update_failure_on_abort_is_logged(spool):
    pop = logged_in(spool, update_on_abort=True)
    (spool.dir / "alice").unlink()
    (spool.dir / "alice").mkdir()
    pop.proto.eof()
    assert pop.env.take() == b""
    assert any(text.startswith("ending the session of alice at client.example.net (127.0.0.1): "
                               "Error updating primary drop") for _, text in pop.env.logs)
    assert (spool.dir / ".alice.pop").read_bytes() == SPOOL


def test_rset_undeletes_before_quit(pop, spool):
    pop.send("DELE 1")
    pop.send("RSET")
    pop.send("QUIT")
    logged_in(spool)


def test_retrieved_message_is_marked_read_at_quit(pop, spool):
    pop.send("RETR 1")
    pop.send("QUIT")
    first = spool.read("alice").split(b"\nFrom bob@")[0]
    assert b"\nStatus: RO\n" in first


def test_rset_restores_the_retrieved_flags_of_login_time(pop, spool):
    pop.send("RETR 1")
    pop.send("RSET")
    pop.send("QUIT")
    first, rest = spool.read("alice").split(b"\nFrom bob@")
    assert b"Status: RO" not in first
    assert b"Status: RO" in rest.split(b"\nFrom carol@")[0]      # msg 2 was read before


def test_top_does_not_mark_retrieved(pop, spool):
    pop.send("TOP 1 5")
    pop.send("QUIT")
    assert b"Status: RO" not in spool.read("alice").split(b"\nFrom bob@")[0]


def test_stats_counters(pop):
    s1, s2, s3 = sizes(pop)
    assert pop.proto.stats() == SessionStats(0, 0, 3, s1 + s2 + s3)
    pop.send("DELE 2")
    assert pop.proto.stats() == SessionStats(1, s2, 2, s1 + s3)


def test_no_stats_before_login(spool):
    pop = spool.session()
    pop.greet()
    assert pop.proto.stats() is None


# --- aborts: EOF, timeout, too many bad commands -------------------------------------------------------------
@pytest.mark.parametrize("end", ["eof", "timeout", "bad commands"])
def test_abort_with_update_on_abort_commits_deletions(spool, end):
    pop = logged_in(spool, update_on_abort=True)
    pop.send("DELE 1")
    if end == "eof":
        pop.proto.eof()
        assert pop.env.take() == b""
    elif end == "timeout":
        pop.proto.timeout()
        assert pop.env.take() == b""
    else:
        pop.send(b"JUNK\r\n" * 11)
    assert pop.proto.closed
    after = spool.session()
    assert after.login("alice").startswith(b"+OK alice has 2 visible messages")


@pytest.mark.parametrize("end", ["eof", "timeout", "bad commands"])
def test_abort_without_update_on_abort_restores_everything(spool, end):
    pop = logged_in(spool, update_on_abort=False)
    before = uids(pop)
    pop.send("DELE 1")
    pop.send("RETR 2")
    if end == "eof":
        pop.proto.eof()
    elif end == "timeout":
        pop.proto.timeout()
    else:
        pop.send(b"JUNK\r\n" * 11)
    assert pop.proto.closed
    after = logged_in(spool)
    assert uids(after) == before


def test_eof_in_transaction_is_logged(pop):
    pop.proto.eof()
    assert any("EOF from alice at client.example.net (127.0.0.1)" in t for _, t in pop.env.logs)


# --- auto-delete and EXPIRE 0 --------------------------------------------------------------------------------
def test_auto_delete_removes_retrieved_messages_at_quit(spool):
    pop = logged_in(spool, auto_delete=True, update_on_abort=False)
    u1, u2, u3 = uids(pop)
    pop.send("RETR 3")
    pop.send("TOP 1 1")
    assert pop.send("QUIT") == SIGNING_OFF
    # Message 2 had Status: RO at login (Qpopper's retrieved flag, which took it too): a
    # header a sender can write, or a mail reader that never downloaded it. It stays.
    assert uids(logged_in_count(spool, 2)) == [u1, u2]


def test_auto_delete_also_applies_at_quit_when_update_on_abort_is_on(spool):
    pop = logged_in(spool, auto_delete=True, update_on_abort=True)
    u1, u2, _ = uids(pop)
    pop.send("RETR 3")
    pop.send("QUIT")
    assert uids(logged_in_count(spool, 2)) == [u1, u2]


def test_auto_delete_never_applies_to_an_aborted_session(spool):
    pop = logged_in(spool, auto_delete=True, update_on_abort=True)
    before = uids(pop)
    pop.send("RETR 1")
    pop.proto.eof()                     # cut off mid-download: the message must survive
    assert uids(logged_in(spool)) == before


def test_expire_zero_deletes_retrieved_messages_at_quit(spool):
    pop = logged_in(spool, announce_expire=0)
    u1, u2, _ = uids(pop)
    pop.send("RETR 3")
    pop.send("QUIT")
    assert uids(logged_in_count(spool, 2)) == [u1, u2]     # 2's Status: RO: not this session's


def logged_in_count(spool, count):
    pop = spool.session()
    reply = pop.login("alice")
    assert re.match(rb"\+OK alice has %d visible message" % count, reply), reply
    return pop


def test_without_auto_delete_retrieved_messages_stay(pop, spool):
    pop.send("RETR 1")
    pop.send("QUIT")
    logged_in(spool)


# --- extension hooks ---------------------------------------------------------------------------------------
class MangleRecorder:
    """A mangle hook that writes a recognisable reply and records what it was asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, proto, index, body_lines, args):
        self.calls.append((index, body_lines, list(args)))
        proto.reply_lines(ok("mangled"), [b"message %d" % (index + 1)])


def test_mangle_hook_takes_the_optional_argument(spool):
    hook = MangleRecorder()
    pop = logged_in(spool, extensions=Extensions(mangle=hook))
    assert pop.send("RETR 1 X-MANGLE(TEXT=PLAIN)") == b"+OK mangled\r\nmessage 1\r\n.\r\n"
    assert pop.send("TOP 2 3 X-MANGLE(TEXT=PLAIN)") == b"+OK mangled\r\nmessage 2\r\n.\r\n"
    assert hook.calls == [(0, None, ["X-MANGLE(TEXT=PLAIN)"]), (1, 3, ["X-MANGLE(TEXT=PLAIN)"])]
    assert pop.send("LAST") == b"+OK 2 is the last read message.\r\n"
    assert pop.send("RETR 1 a b") == b"-ERR Too many arguments for the RETR command.\r\n"
    plain = pop.send("RETR 1")
    assert re.match(rb"\+OK \d+ octets\r\n", plain)              # no argument: no mangling
    assert b"X-MANGLE" in pop.send("CAPA")


def test_no_mime_login_mangles_every_retr_and_top(spool):
    hook = MangleRecorder()
    pop = spool.session(extensions=Extensions(mangle=hook))
    pop.greet()
    pop.send("USER alice-no-mime")
    pop.send("PASS wonderland")
    pop.send("RETR 2")
    pop.send("TOP 1 0")
    assert hook.calls == [(1, None, ["X-MANGLE(TEXT=PLAIN)"]), (0, 0, ["X-MANGLE(TEXT=PLAIN)"])]


def test_mangle_hook_sees_only_messages_that_exist(spool):
    hook = MangleRecorder()
    pop = logged_in(spool, extensions=Extensions(mangle=hook))
    pop.send("DELE 1")
    assert pop.send("RETR 1 X-MANGLE(TEXT=PLAIN)") == b"-ERR Message 1 has been deleted.\r\n"
    assert pop.send("RETR 7 X-MANGLE(TEXT=PLAIN)") == b"-ERR Message 7 does not exist.\r\n"
    assert hook.calls == []


def test_xtnd_and_mdef_plug_into_the_transaction_table(spool):
    def cmd_xtnd(proto, args):
        proto.reply(ok("xtnd " + " ".join(args)))

    def cmd_mdef(proto, args):
        proto.reply(ok(f'Macro "{args[0]}" accepted'))

    ext = Extensions(transaction_verbs={"XTND": Command(cmd_xtnd, 1, 3),
                                        "MDEF": Command(cmd_mdef, 1, 1)})
    pop = spool.session(extensions=ext)
    pop.greet()
    assert pop.send("XTND XLST") == b'-ERR Unknown command: "XTND".\r\n'   # not before login
    pop.send("USER alice")
    pop.send("PASS wonderland")
    assert pop.send("xtnd XLST From") == b"+OK xtnd XLST From\r\n"
    assert pop.send("MDEF x(y)") == b'+OK Macro "x(y)" accepted\r\n'
    assert b"\r\nX-MACRO\r\n" in pop.send("CAPA")


def test_without_hooks_extension_verbs_are_unknown(pop):
    assert pop.send("XTND XMIT") == b'-ERR Unknown command: "XTND".\r\n'
    assert pop.send("MDEF a(b)") == b'-ERR Unknown command: "MDEF".\r\n'
