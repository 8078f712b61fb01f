"""Pipelining (RFC 2449 §6.6, which CAPA advertises): a whole session's commands sent at once,
or cut at every awkward byte boundary, get exactly the bytes the same commands get one at a
time. Each run works on its own fresh copy of the spool."""

from __future__ import annotations

import pytest

from qpopper import limits
from tests.helpers.transaction_spool import SPOOL
from tests.transcripts.harness import (LOCALTIME, Exchange, Spool, awkward_chunkings, parse,
                                       run_lockstep, run_pipelined)


def probe(tmp_path) -> tuple[list[int], list[str], bytes, bytes]:
    """Sizes, UIDs, RETR 1 and TOP 2 1 replies of the test spool, from a session that leaves
    it untouched (RETR/TOP bytes themselves are checked in test_protocol_transaction.py)."""
    spool = Spool(tmp_path / "probe")
    spool.write("alice", SPOOL)
    pop = spool.session(update_on_abort=False)
    pop.login("alice")
    listing = pop.send("LIST").split(b"\r\n")[1:-2]
    uidl = pop.send("UIDL").split(b"\r\n")[1:-2]
    retr1 = pop.send("RETR 1")
    top2 = pop.send("TOP 2 1")
    pop.proto.eof()
    spool.close()
    sizes = [int(line.split()[1]) for line in listing]
    uids = [line.split()[1].decode() for line in uidl]
    return sizes, uids, retr1, top2


def whole_session(tmp_path) -> list[Exchange]:
    (s1, s2, s3), (u1, u2, u3), retr1, top2 = probe(tmp_path)
    total = s1 + s2 + s3
    long_line = "X" * 300
    exchanges = parse(f"""
        S: +OK Qpopper (version 4.1.0) at mail.example.org starting.  <TS>
        C: CAPA
        S: +OK Capability list follows
        S: TOP
        S: USER
        S: EXPIRE NEVER
        S: UIDL
        S: RESP-CODES
        S: AUTH-RESP-CODE
        S: PIPELINING
        S: X-LOCALTIME {LOCALTIME}
        S: IMPLEMENTATION Qpopper-version-4.1.0
        S: .
        C: USER mallory
        S: +OK Password required for mallory.
        C: PASS guess
        S: -ERR [AUTH] Password supplied for "mallory" is incorrect.
        C: STAT
        S: -ERR Unknown command: "STAT".
        C: user alice
        S: +OK Password required for alice.
        C: PASS wonderland
        S: +OK alice has 3 visible messages (0 hidden) in {total} octets.
        C: STAT
        S: +OK 3 {total}
        C: LIST
        S: +OK 3 visible messages ({total} octets)
        S: 1 {s1}
        S: 2 {s2}
        S: 3 {s3}
        S: .
        C: UIDL
        S: +OK uidl command accepted.
        S: 1 {u1}
        S: 2 {u2}
        S: 3 {u3}
        S: .
        C: {long_line}
        S: -ERR Line too long (more than 255 octets).
        C: DELE 2
        S: +OK Message 2 has been deleted.
        C: LIST 2
        S: -ERR Message 2 has been deleted.
        C: RETR +1
        S: -ERR Parameter must be a number between 1 and 3
        C: NOOP\x00
        S: -ERR NUL byte in command.
        C: \u00dcSER alice
        S: -ERR Invalid command: a command is an ASCII keyword.
        C: LAST
        S: +OK 2 is the last read message.
        C: RSET
        S: +OK Maildrop has 3 visible messages ({total} octets)
        C: DELE 3
        S: +OK Message 3 has been deleted.
        C: NOOP
        S: +OK
    """)
    after_rset = [e.client for e in exchanges].index(b"RSET\r\n") + 1
    exchanges[after_rset:after_rset] = [Exchange(b"RETR 1\r\n", retr1),
                                        Exchange(b"TOP 2 1\r\n", top2)]
    exchanges.append(Exchange(b"noop\n", b"+OK\r\n"))               # bare LF
    exchanges += parse("""
        C: QUIT
        S: +OK Pop server at mail.example.org signing off.
        C: STAT
        C: DELE 1
    """)
    return exchanges


def fresh(tmp_path, name: str) -> Spool:
    spool = Spool(tmp_path / name)
    spool.write("alice", SPOOL)
    return spool


def check_outcome(spool: Spool, uids: list[str]) -> None:
    """QUIT committed exactly DELE 3 (DELE 2 was undone by RSET; nothing after QUIT ran)."""
    pop = spool.session()
    assert pop.login("alice").startswith(b"+OK alice has 2 visible messages")
    listing = pop.send("UIDL").split(b"\r\n")[1:-2]
    assert [line.split()[1].decode() for line in listing] == uids[:2]
    pop.send("QUIT")


@pytest.fixture
def session_script(tmp_path):
    exchanges = whole_session(tmp_path)
    uidl = next(e for e in exchanges if e.client == b"UIDL\r\n")
    uids = [line.split()[1].decode() for line in uidl.server.split(b"\r\n")[1:-2]]
    assert len(uids) == 3
    return exchanges, uids


@pytest.fixture
def alice_spool(tmp_path):
    """A fresh copy of the spool the session script runs against, closed also on failure."""
    spool = fresh(tmp_path, "session")
    yield spool
    spool.close()


@pytest.mark.parametrize("run", [run_lockstep, run_pipelined], ids=["lockstep", "one-packet"])
def test_whole_session(alice_spool, session_script, run):
    exchanges, uids = session_script
    run(alice_spool.session(), exchanges)
    check_outcome(alice_spool, uids)


@pytest.mark.parametrize("chunks", awkward_chunkings(), ids=lambda c: "-".join(map(str, c)))
def test_whole_session_split_at_awkward_boundaries(alice_spool, session_script, chunks):
    exchanges, uids = session_script
    run_pipelined(alice_spool.session(), exchanges, chunks)
    check_outcome(alice_spool, uids)


def test_every_crlf_split_point_of_a_short_pipeline(tmp_path):
    """Two reads, cut at every byte position: CR and LF in different reads, the verb cut in
    half, the cut right after a line end."""
    stream = b"USER alice\r\nPASS wonderland\r\nSTAT\r\nNOOP\r\nQUIT\r\n"
    expected = None
    for cut in range(len(stream) + 1):
        spool = fresh(tmp_path, f"cut{cut}")
        pop = spool.session()
        pop.greet()
        pop.proto.feed(stream[:cut])
        pop.proto.feed(stream[cut:])
        out = pop.env.take()
        expected = expected or out
        assert out == expected, cut
        assert out.endswith(b"+OK\r\n+OK Pop server at mail.example.org signing off.\r\n")
        spool.close()


def test_over_long_line_cut_anywhere_gets_one_err(tmp_path):
    spool = fresh(tmp_path, "long")
    line = b"LIST " + b"9" * (3 * limits.MAX_COMMAND_OCTETS) + b"\r\n"
    stream = b"USER alice\r\n" + line + b"USER bob\r\n"
    for cut in range(0, len(stream), 37):
        pop = spool.session()
        pop.greet()
        pop.proto.feed(stream[:cut])
        pop.proto.feed(stream[cut:])
        assert pop.env.take() == (b"+OK Password required for alice.\r\n"
                                  b"-ERR Line too long (more than 255 octets).\r\n"
                                  b"+OK Password required for bob.\r\n"), cut
    spool.close()


def test_retr_of_every_message_pipelined(tmp_path):
    """A client downloading everything in one go (fetchmail with PIPELINING)."""
    spool = fresh(tmp_path, "fetch")
    one_by_one = spool.session(update_on_abort=False)
    one_by_one.login("alice")
    expected = b"".join(one_by_one.send(f"RETR {n}") for n in (1, 2, 3))
    one_by_one.proto.eof()
    pop = spool.session()
    pop.login("alice")
    assert pop.send(b"RETR 1\r\nRETR 2\r\nRETR 3\r\n") == expected
    pop.send("QUIT")
    spool.close()


@pytest.mark.parametrize("gone", [False, True])
def test_commands_after_a_write_that_found_the_client_gone_are_not_acted_on(tmp_path, gone):
    """RETR 1, DELE 1 and QUIT in one read; RETR's reply cannot be written (the client
    reset the connection): DELE and QUIT are not acted on, the session ends as at an EOF
    (update-on-abort off, as the packaged config has it: nothing deleted). The control:
    the same batch with the client there deletes the message."""
    spool = Spool(tmp_path)
    spool.write("alice", SPOOL)
    pop = spool.session(update_on_abort=False)
    pop.login("alice")
    write = pop.env.write

    def write_or_find_gone(data: bytes) -> None:
        if gone:                                      # RETR's reply finds it gone
            pop.env.client_gone = True
            return
        write(data)
    pop.env.write = write_or_find_gone
    pop.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    spool.close()
    assert pop.proto.closed
    assert (spool.read("alice") == SPOOL) is gone
    assert any("gone during a reply" in text for _, text in pop.env.logs) is gone
    assert pop.proto.client_went is gone                # the session's Timing says error


def test_after_a_write_found_the_client_gone_no_dele_is_marked(tmp_path):
    """The same batch with update-on-abort on (Qpopper's default: an abort commits the
    deletions marked before it): DELE 1 came after the failed reply, so it was never marked
    and the abort deletes nothing (the abort rewrites Status headers: count messages)."""
    spool = Spool(tmp_path)
    spool.write("alice", SPOOL)
    pop = spool.session(update_on_abort=True)
    pop.login("alice")

    def gone(data: bytes) -> None:
        pop.env.client_gone = True
    pop.env.write = gone
    pop.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    spool.close()
    assert pop.proto.closed
    assert spool.read("alice").count(b"\nFrom ") == SPOOL.count(b"\nFrom ")


def test_a_quit_whose_earlier_replies_find_the_client_gone_updates_nothing(tmp_path):
    """RETR 1, DELE 1 and QUIT in one read: RETR's reply is only collected until QUIT
    writes what was collected, and finds the client gone (it reset the connection): no
    update (update-on-abort off), the message stays."""
    spool = Spool(tmp_path)
    spool.write("alice", SPOOL)
    pop = spool.session(update_on_abort=False)
    pop.login("alice")
    collected = []
    pop.env.write = collected.append                 # collected, as the session does

    def flush() -> None:
        if collected:
            pop.env.client_gone = True                # the flush of RETR's reply fails
    pop.env.flush = flush
    pop.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    spool.close()
    assert pop.proto.closed and collected             # RETR's reply was collected
    assert spool.read("alice") == SPOOL
    assert any("gone during a reply" in text for _, text in pop.env.logs)
