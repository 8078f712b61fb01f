"""The rules every client line passes before any verb sees it (RFC 1939 §3, RFC 2449 §4):
line ends, the 255-octet limit, NUL bytes, ASCII keywords, argument counts, the bad-command
budget, and what happens to input after the session closed. Transcripts read like the RFC."""

from __future__ import annotations

import ast

import pytest

from qpopper import limits
from tests.transcripts.harness import parse, run_lockstep, spool_fixture
from tests.helpers.repo import REPO

PASSWORD_REQUIRED_ALICE = b"+OK Password required for alice.\r\n"
LINE_TOO_LONG = b"-ERR Line too long (more than 255 octets).\r\n"
NUL_IN_COMMAND = b"-ERR NUL byte in command.\r\n"
INVALID_VERB = b"-ERR Invalid command: a command is an ASCII keyword.\r\n"
NULL_COMMAND = b"-ERR Null command.\r\n"
TOO_MANY_BAD = b"-ERR Too many bad commands\r\n"
SIGNING_OFF = b"+OK Pop server at mail.example.org signing off.\r\n"


spool = spool_fixture()


@pytest.fixture
def pop(spool):
    session = spool.session()
    session.greet()
    return session


def test_keywords_are_case_insensitive(spool):
    run_lockstep(spool.session(), parse("""
        S: +OK Qpopper (version 4.1.0) at mail.example.org starting.  <TS>
        C: user alice
        S: +OK Password required for alice.
        C: uSeR alice
        S: +OK Password required for alice.
        C: qUIt
        S: +OK Pop server at mail.example.org signing off.
    """))


def test_bare_lf_ends_a_line_like_crlf(pop):
    assert pop.send(b"USER alice\n") == PASSWORD_REQUIRED_ALICE
    assert pop.send(b"USER alice\r\n") == PASSWORD_REQUIRED_ALICE


def test_line_of_exactly_255_octets_is_a_command(pop):
    name = "a" * (limits.MAX_COMMAND_OCTETS - len("USER \r\n"))
    line = f"USER {name}\r\n".encode()
    assert len(line) == 255
    # Accepted as a command (the name itself is refused later, at PASS, being over 64 octets).
    assert pop.send(line) == f"+OK Password required for {name}.\r\n".encode()


def test_line_of_256_octets_gets_one_err(pop):
    line = b"USER " + b"a" * 249 + b"\r\n"
    assert len(line) == 256
    assert pop.send(line + b"USER alice\r\n") == LINE_TOO_LONG + PASSWORD_REQUIRED_ALICE


def test_over_long_line_split_over_many_feeds_gets_exactly_one_err(pop):
    replies = b"".join(pop.send(b"X" * 100) for _ in range(30))   # 3000 octets, no line end yet
    assert replies == LINE_TOO_LONG
    assert pop.send(b"X" * 50 + b"\r") == b""                      # still the same line
    assert pop.send(b"\nUSER alice\r\n") == PASSWORD_REQUIRED_ALICE
    assert pop.proto.bad_commands == 1


def test_over_long_line_is_logged(pop):
    pop.send(b"Y" * 1000 + b"\r\n")
    assert any("Excessive input from client.example.net (127.0.0.1)" in text
               for _, text in pop.env.logs)


def test_nul_byte_in_a_command_is_refused(pop):
    assert pop.send(b"USER al\x00ice\r\n") == NUL_IN_COMMAND
    assert pop.proto.pending_user is None
    assert pop.send(b"\x00\r\n") == NUL_IN_COMMAND


@pytest.mark.parametrize("line", [
    "ÜSER alice",          # non-ASCII letter
    "US3R alice",          # digit in the keyword
    "USER-X alice",        # punctuation
    "\u0455ER alice",      # Cyrillic look-alike
    "ＵＳＥＲ alice",        # full-width letters
])
def test_keyword_must_be_ascii_letters(pop, line):
    assert pop.send(line) == INVALID_VERB


def test_non_utf8_bytes_in_keyword_are_refused(pop):
    assert pop.send(b"\xff\xfeUSER alice\r\n") == INVALID_VERB


def test_empty_line_is_a_null_command(pop):
    assert pop.send(b"\r\n") == NULL_COMMAND
    assert pop.send(b"   \t \r\n") == NULL_COMMAND


def test_unknown_keyword_is_named_in_the_reply(pop):
    assert pop.send("HELO there") == b'-ERR Unknown command: "HELO".\r\n'


def test_transaction_verbs_are_unknown_before_login(pop):
    # One table per state: STAT simply does not exist in AUTHORIZATION.
    for verb in ("STAT", "LIST", "RETR 1", "DELE 1", "RSET", "NOOP", "LAST", "UIDL", "TOP 1 1"):
        keyword = verb.split()[0]
        assert pop.send(verb) == f'-ERR Unknown command: "{keyword}".\r\n'.encode()


@pytest.mark.parametrize("line, reply", [
    ("USER", b"-ERR Too few arguments for the USER command.\r\n"),
    ("USER alice bob", b"-ERR Too many arguments for the USER command.\r\n"),
    ("APOP alice", b"-ERR Too few arguments for the APOP command.\r\n"),
    ("APOP a b c", b"-ERR Too many arguments for the APOP command.\r\n"),
    ("CAPA now", b"-ERR Too many arguments for the CAPA command.\r\n"),
    ("QUIT now", b"-ERR Too many arguments for the QUIT command.\r\n"),
    ("STLS now", b"-ERR Too many arguments for the STLS command.\r\n"),
    ("PASS", b"-ERR Too few arguments for the PASS command.\r\n"),
    ("USER a b c d e f g", b"-ERR Too many arguments for the USER command.\r\n"),
])
def test_argument_counts_are_checked_per_verb(pop, line, reply):
    assert pop.send(line) == reply
    assert pop.proto.bad_commands == 1


def test_spaces_and_tabs_between_words_are_separators(pop):
    assert pop.send(b"USER \t  alice   \r\n") == PASSWORD_REQUIRED_ALICE


def test_bad_command_budget_disconnects(pop):
    for n in range(limits.MAX_BAD_COMMANDS):
        assert pop.send("JUNK") == b'-ERR Unknown command: "JUNK".\r\n'
        assert not pop.proto.closed
    assert pop.send("JUNK") == TOO_MANY_BAD
    assert pop.proto.closed
    assert pop.send("USER alice") == b""          # nothing is read after the end


def test_good_commands_do_not_refill_the_budget(pop):
    good = ["CAPA", "AUTH", "USER alice", "PASS wrong", "USER alice"]
    for n in range(limits.MAX_BAD_COMMANDS):
        pop.send(b"\x00\r\n")
        if n < len(good):
            assert pop.send(good[n]).startswith((b"+OK", b"-ERR [AUTH]"))
    assert pop.proto.bad_commands == limits.MAX_BAD_COMMANDS
    assert pop.send(b"\xff\r\n") == TOO_MANY_BAD
    assert pop.proto.closed


def test_every_kind_of_malformed_line_counts_against_the_budget(pop):
    malformed = [b"X" * 300 + b"\r\n", b"US\x00ER\r\n", b"\xc3\x9cSER\r\n", b"\r\n",
                 b"FOO\r\n", b"USER\r\n", b"USER a b\r\n", b"CAPA x\r\n", b"QUIT x\r\n",
                 b"APOP x\r\n"]
    assert len(malformed) == limits.MAX_BAD_COMMANDS
    for line in malformed:
        assert pop.send(line).startswith(b"-ERR ")
    assert pop.send(b"BAR\r\n") == TOO_MANY_BAD


def test_budget_reached_inside_one_pipelined_packet(pop):
    stream = b"JUNK\r\n" * (limits.MAX_BAD_COMMANDS + 1) + b"USER alice\r\n"
    out = pop.send(stream)
    assert out == b'-ERR Unknown command: "JUNK".\r\n' * limits.MAX_BAD_COMMANDS + TOO_MANY_BAD


def test_quit_closes_and_later_input_is_ignored(pop):
    assert pop.send(b"QUIT\r\nUSER alice\r\n") == SIGNING_OFF
    assert pop.proto.closed
    assert pop.send(b"CAPA\r\n") == b""
    pop.proto.eof()
    pop.proto.timeout()
    assert pop.env.take() == b""


def test_partial_line_at_eof_is_dropped(pop):
    assert pop.send(b"USER ali") == b""
    pop.proto.eof()
    assert pop.proto.closed
    assert pop.env.take() == b""


def test_timeout_writes_nothing_and_closes(pop):
    # RFC 1939 §3: an autologout sends no response.
    pop.proto.timeout()
    assert pop.proto.closed
    assert pop.env.take() == b""


# --- purity: the protocol layer never touches the system itself ------------------------------------
# The whole qpopper/pop3 package: a module added there is checked without editing this list.
PROTOCOL_DIR = REPO / "qpopper" / "pop3"
PROTOCOL_MODULES = sorted(path.name for path in PROTOCOL_DIR.glob("*.py"))
FORBIDDEN_IMPORTS = {"os", "socket", "subprocess", "select", "selectors", "signal", "pwd",
                     "qpopper.server", "qpopper.spool", "qpopper.log"}


@pytest.mark.parametrize("module", PROTOCOL_MODULES)
def test_protocol_modules_import_no_system_interfaces(module):
    source = PROTOCOL_DIR / module
    tree = ast.parse(source.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import (this check reads absolute ones)"
            base = node.module
            imported.add(base)
            imported.update(f"{base}.{alias.name}" for alias in node.names)
    bad = {name for name in imported
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS)}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", PROTOCOL_MODULES)
def test_protocol_never_dispatches_with_getattr(module):
    source = PROTOCOL_DIR / module
    tree = ast.parse(source.read_text())
    calls = [node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in ("getattr", "eval", "exec")]
    # The one getattr reads an optional attribute of an exception object, never client bytes.
    for call in calls:
        assert call.func.id == "getattr" and isinstance(call.args[1], ast.Constant), \
            ast.unparse(call)
