"""MDEF macros (reference P26): definition, use by RETR/TOP, every refusal, the per-session
table, the bound. Real Protocol and Maildrop over a spool in tmp_path (transcripts)."""

from __future__ import annotations

import pytest

from qpopper import limits
from tests.transcripts.harness import (extended_login, extended_session, parse, run_lockstep,
                                       spool_fixture)

pytestmark = pytest.mark.timeout(30)

MESSAGE = (b"From sender@example.org Mon Nov  2 10:00:00 2026\n"
           b"Subject: two parts\n"
           b"Content-Type: multipart/alternative; boundary=AB\n"
           b"\n"
           b"--AB\n"
           b"Content-Type: text/plain\n"
           b"\n"
           b"plain words\n"
           b"--AB\n"
           b"Content-Type: text/html\n"
           b"\n"
           b"<i>html words</i>\n"
           b"--AB--\n"
           b"\n")


spool = spool_fixture(alice=MESSAGE)


def mangled(pop, subtype: str) -> tuple[int, str]:
    """(octets, content) RETR 1 sends when mangled to text/<subtype>."""
    uid = pop.proto.trans.messages[0].uid
    body = "plain words" if subtype == "plain" else "<i>html words</i>"
    content = (f"Subject: two parts\r\nX-UIDL: {uid}\r\nContent-Type: text/{subtype}\r\n\r\n"
               f"{body}\r\n")
    return len(content.encode()), content


def test_define_and_use_a_macro(spool):
    pop = extended_login(spool)
    octets, content = mangled(pop, "plain")
    h_octets, h_content = mangled(pop, "html")
    lines = "\n".join(f"S: {line}" for line in content.split("\r\n")[:-1])
    h_lines = "\n".join(f"S: {line}" for line in h_content.split("\r\n")[:-1])
    run_lockstep(pop, parse(f"""
        C: MDEF plain(X-MANGLE(TEXT=PLAIN))
        S: +OK Macro "plain" accepted
        C: RETR 1 plain
        S: +OK {octets} octets
        {lines}
        S: .
        C: MDEF Web(TEXT=HTML)
        S: +OK Macro "Web" accepted
        C: RETR 1 WEB
        S: +OK {h_octets} octets
        {h_lines}
        S: .
        C: TOP 1 0 web
        S: +OK Message follows
        {h_lines.rsplit(chr(10), 1)[0]}
        S: .
        C: MDEF web(x-mangle(text=plain))
        S: +OK Macro "web" accepted
        C: RETR 1 web
        S: +OK {octets} octets
        {lines}
        S: .
    """))


@pytest.mark.parametrize("command, reply", [
    ("MDEF plain", "-ERR Syntax error"),
    ("MDEF (X-MANGLE(TEXT=PLAIN))", "-ERR Syntax error"),
    ("MDEF pl ain(TEXT=PLAIN)", "-ERR Syntax error"),
    ("MDEF plain(TEXT=PLAIN", "-ERR Syntax error"),
    ("MDEF plain(FOO=BAR)", "-ERR Syntax error"),
    ("MDEF plain(X-MANGLE(TEXT=))", "-ERR Syntax error"),
    ("MDEF x-mangle(TEXT=PLAIN)", "-ERR Syntax error"),
    ("MDEF na/me(TEXT=PLAIN)", "-ERR Syntax error"),
    ("MDEF " + "n" * (limits.MAX_MDEF_NAME_CHARS + 1) + "(TEXT=PLAIN)", "-ERR MDEF name too long"),
    ("MDEF", "-ERR Too few arguments for the MDEF command."),
])
def test_refusals(spool, command, reply):
    pop = extended_login(spool)
    assert pop.send(command) == reply.encode() + b"\r\n"
    assert pop.send("RETR 1 plain") == b'-ERR Unknown mangle macro "plain"\r\n'


def test_longest_name_is_accepted(spool):
    pop = extended_login(spool)
    name = "n" * limits.MAX_MDEF_NAME_CHARS
    assert pop.send(f"MDEF {name}(TEXT=PLAIN)") == f'+OK Macro "{name}" accepted\r\n'.encode()
    assert pop.send(f"RETR 1 {name}").startswith(b"+OK %d octets" % mangled(pop, "plain")[0])


def test_macro_count_is_bounded_and_redefinition_is_free(spool):
    pop = extended_login(spool)
    for n in range(limits.MAX_MDEF_MACROS):
        assert pop.send(f"MDEF m{n}(TEXT=PLAIN)").startswith(b"+OK")
    assert pop.send("MDEF one_more(TEXT=PLAIN)") == (
        b"-ERR Too many macros (at most %d)\r\n" % limits.MAX_MDEF_MACROS)
    assert pop.send("MDEF m0(TEXT=HTML)") == b'+OK Macro "m0" accepted\r\n'
    assert b"<i>html words</i>" in pop.send("RETR 1 m0")
    # refusals are ordinary -ERRs: the session goes on
    assert pop.send("NOOP") == b"+OK\r\n"


def test_macros_belong_to_one_session(spool):
    first = extended_login(spool)
    assert first.send("MDEF mine(TEXT=PLAIN)").startswith(b"+OK")
    first.send("QUIT")
    second = extended_login(spool)
    assert second.send("RETR 1 mine") == b'-ERR Unknown mangle macro "mine"\r\n'


def test_mdef_is_a_transaction_command(spool):
    pop = extended_session(spool)
    pop.greet()
    assert pop.send("MDEF plain(TEXT=PLAIN)") == b'-ERR Unknown command: "MDEF".\r\n'
