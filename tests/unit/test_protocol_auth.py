"""AUTHORIZATION state: the greeting, USER/PASS, APOP, AUTH and STLS hooks, CAPA, QUIT.

Transcripts against the real Protocol and the real Maildrop on spools in tmp_path; the
authenticator is the table one of tests/transcripts/harness.py (real APOP MD5 digests).
"""

from __future__ import annotations

import re

import pytest

from qpopper import limits
from qpopper.pop3.command import Command, Extensions
from qpopper.pop3.protocol import State
from tests.helpers.authorization_state import TlsHook, capa_lines
from tests.transcripts.harness import (HOST, NOW, PID, TableAuthenticator, apop_digest, parse,
                                       run_lockstep, spool_fixture)

GREETING = "+OK Qpopper (version 4.1.0) at mail.example.org starting.  <TS>"
GREETING_RE = re.compile(
    rb"^\+OK Qpopper \(version 4\.1\.0\) at mail\.example\.org starting\.  "
    rb"(<4242\.1700000000\.[0-9a-f]{16}@mail\.example\.org>)\r\n$")
SIGNING_OFF = b"+OK Pop server at mail.example.org signing off.\r\n"
PASSWORD_REQUIRED = "+OK Password required for {}.\r\n"
BAD_PASSWORD = '-ERR [AUTH] Password supplied for "{}" is incorrect.\r\n'
BAD_DIGEST = b"-ERR [AUTH] authentication failure\r\n"
USER_FIRST = b"-ERR No user name given: send USER before PASS.\r\n"
NOT_ENABLED = b"-ERR Command not enabled\r\n"

MESSAGE_1 = (b"From alice@example.org Tue Nov 14 22:13:20 2023\n"
             b"From: Alice <alice@example.org>\nSubject: one\n\nHello.\n\n")
MESSAGE_2 = (b"From bob@example.org Tue Nov 14 22:14:20 2023\n"
             b"From: Bob <bob@example.org>\nSubject: two\nX-UIDL: 0123456789abcdef\n\n"
             b"Second.\n")


def capa_bytes(**kw) -> bytes:
    return b"".join(line.encode() + b"\r\n" for line in capa_lines(**kw))


spool = spool_fixture(alice=MESSAGE_1 + MESSAGE_2, bob=b"")


@pytest.fixture
def pop(spool):
    session = spool.session()
    session.greet()
    return session


# --- greeting ----------------------------------------------------------------------------------------
def test_greeting_has_the_apop_timestamp(spool):
    banner = spool.session().greet()
    assert GREETING_RE.match(banner), banner


def test_apop_timestamp_is_unique_per_connection(spool):
    stamps = {GREETING_RE.match(spool.session().greet()).group(1) for _ in range(50)}
    assert len(stamps) == 50


def test_greeting_without_apop_has_no_timestamp(spool):
    pop = spool.session(authenticator=TableAuthenticator(str(spool.home), apop_enabled=False))
    assert pop.greet() == b"+OK Qpopper (version 4.1.0) at mail.example.org starting.\r\n"
    assert pop.proto.apop_timestamp is None


def test_shy_greeting_hides_the_version(spool):
    pop = spool.session(shy=True)
    banner = pop.greet()
    assert banner == f"+OK ready  {pop.proto.apop_timestamp}\r\n".encode()
    assert b"4.1" not in banner


def test_shy_greeting_without_apop(spool):
    pop = spool.session(shy=True,
                        authenticator=TableAuthenticator(str(spool.home), apop_enabled=False))
    assert pop.greet() == b"+OK ready\r\n"


# --- USER / PASS ---------------------------------------------------------------------------------------
def test_user_pass_login(spool):
    run_lockstep(spool.session(), parse(f"""
        S: {GREETING}
        C: USER alice
        S: +OK Password required for alice.
        C: PASS wonderland
        S: +OK alice has 2 visible messages (0 hidden) in {octets_of(spool)} octets.
    """))


def octets_of(spool) -> int:
    """The visible octets of alice's spool, as another session's STAT reports them (that
    session aborts without update, so the spool stays as it was)."""
    pop = spool.session(update_on_abort=False)
    pop.login("alice")
    stat = pop.send("STAT")
    pop.proto.eof()
    return int(stat.split()[2])


def test_login_reply_is_singular_for_one_message(spool):
    spool.write("alice", MESSAGE_1)
    pop = spool.session()
    reply = pop.login("alice")
    assert re.fullmatch(rb"\+OK alice has 1 visible message \(0 hidden\) in \d+ octets\.\r\n",
                        reply), reply
    assert pop.proto.state == State.TRANSACTION


def test_login_to_empty_spool(spool):
    pop = spool.session()
    pop.greet()
    pop.send("USER bob")
    assert pop.send("PASS pass word with spaces") == \
        b"+OK bob has 0 visible messages (0 hidden) in 0 octets.\r\n"


def test_password_keeps_its_spaces(spool):
    pop = spool.session()
    pop.greet()
    pop.send("USER bob")
    pop.send("PASS pass word with spaces")
    assert pop.env.authenticator.calls[0][2] == "pass word with spaces"


def test_wrong_password_and_unknown_user_get_the_same_reply(spool):
    """... and USER after a failed PASS is a new login, not a repeat: no bad command."""
    pop = spool.session()
    run_lockstep(pop, parse(f"""
        S: {GREETING}
        C: USER alice
        S: +OK Password required for alice.
        C: PASS guess
        S: -ERR [AUTH] Password supplied for "alice" is incorrect.
        C: USER mallory
        S: +OK Password required for mallory.
        C: PASS guess
        S: -ERR [AUTH] Password supplied for "mallory" is incorrect.
    """))
    assert pop.proto.bad_commands == 0


def test_failed_pass_returns_to_expecting_user(pop):
    pop.send("USER alice")
    pop.send("PASS guess")
    assert pop.send("PASS wonderland") == USER_FIRST
    assert pop.proto.state == State.AUTHORIZATION


def test_pass_before_user(pop):
    assert pop.send("PASS wonderland") == USER_FIRST
    assert pop.env.authenticator.calls == []


def test_user_again_replaces_the_pending_name(pop):
    pop.send("USER mallory")
    pop.send("USER alice")
    assert pop.send("PASS wonderland").startswith(b"+OK alice has 2 visible messages")


@pytest.mark.parametrize("name, shown", [
    ("../alice", "../alice"),
    ("a/b", "a/b"),
    (".", "."),
    ("..", ".."),
    ("x" * (limits.MAX_USER_NAME_OCTETS + 1), "x" * (limits.MAX_USER_NAME_OCTETS + 1)),
    ("al\x01ice", "al?ice"),
    ("al\x7fice", "al?ice"),
    ("-no-mime", "-no-mime"),
    ("-oQ/tmp", "-oQ/tmp"),
    ("-alice", "-alice"),
])
def test_impossible_user_names_get_the_wrong_password_reply_after_the_delay(spool, name, shown):
    pop = spool.session(auth_failure_delay=3)
    pop.greet()
    assert pop.send(f"USER {name}") == PASSWORD_REQUIRED.format(shown).encode()
    assert pop.send("PASS wonderland") == BAD_PASSWORD.format(shown).encode()
    assert pop.env.authenticator.calls == []           # never checked...
    # ...but refused by the authenticator, as a failed login (its delay, its count)
    assert pop.env.authenticator.refused_names == [(shown, "USER")]


def test_user_name_of_64_octets_is_passed_on(spool):
    name = "x" * limits.MAX_USER_NAME_OCTETS
    pop = spool.session()
    pop.greet()
    pop.send(f"USER {name}")
    assert pop.send("PASS guess") == BAD_PASSWORD.format(name).encode()
    assert pop.env.authenticator.calls[0][1] == name


def test_invalid_utf8_in_user_name_is_refused_like_a_wrong_password(pop):
    assert pop.send(b"USER al\xffice\r\n") == PASSWORD_REQUIRED.format("al?ice").encode()
    assert pop.send("PASS x") == BAD_PASSWORD.format("al?ice").encode()
    assert pop.env.authenticator.calls == []


def test_downcase_user(spool):
    pop = spool.session(downcase_user=True)
    pop.greet()
    assert pop.send("USER ALICE") == PASSWORD_REQUIRED.format("alice").encode()
    assert pop.send("PASS wonderland").startswith(b"+OK alice has")


def test_without_downcase_user_case_matters(spool):
    pop = spool.session()
    pop.greet()
    pop.send("USER ALICE")
    assert pop.send("PASS wonderland") == BAD_PASSWORD.format("ALICE").encode()


def test_trim_domain(spool):
    pop = spool.session(trim_domain=True)
    pop.greet()
    assert pop.send("USER alice@example.org") == PASSWORD_REQUIRED.format("alice").encode()
    assert pop.send("PASS wonderland").startswith(b"+OK alice has")


def test_without_trim_domain_the_domain_stays(spool):
    pop = spool.session()
    pop.greet()
    pop.send("USER alice@example.org")
    assert pop.env.authenticator.calls == []
    pop.send("PASS wonderland")
    assert pop.env.authenticator.calls[0][1] == "alice@example.org"


def test_no_mime_suffix_sets_the_login_flag(spool):
    pop = spool.session(downcase_user=True, trim_domain=True)
    pop.greet()
    assert pop.send("USER Alice-No-Mime@Example.org") == PASSWORD_REQUIRED.format("alice").encode()
    assert pop.send("PASS wonderland").startswith(b"+OK alice has")
    assert pop.proto.login.user == "alice"
    assert pop.proto.login.no_mime is True


def test_plain_login_has_no_mime_flag_off(spool):
    pop = spool.session()
    pop.login("alice")
    assert pop.proto.login.no_mime is False
    assert pop.proto.login.mechanism == "USER"


# --- APOP ------------------------------------------------------------------------------------------------
def test_apop_login_with_the_real_digest(spool):
    pop = spool.session()
    pop.greet()
    digest = apop_digest(pop.proto.apop_timestamp, "tanstaaf")
    assert pop.send(f"APOP alice {digest}").startswith(b"+OK alice has 2 visible messages")
    assert pop.proto.login.mechanism == "APOP"
    assert pop.env.authenticator.calls == [
        ("apop", "alice", pop.proto.apop_timestamp, digest, "127.0.0.1")]


def test_apop_digest_of_another_connection_fails(spool):
    first = spool.session()
    first.greet()
    stale = apop_digest(first.proto.apop_timestamp, "tanstaaf")
    pop = spool.session()
    pop.greet()
    assert pop.send(f"APOP alice {stale}") == BAD_DIGEST
    assert pop.proto.state == State.AUTHORIZATION


def test_apop_unknown_user_gets_the_bad_digest_reply(pop):
    digest = apop_digest(pop.proto.apop_timestamp, "tanstaaf")
    assert pop.send(f"APOP mallory {digest}") == BAD_DIGEST


def test_apop_impossible_name_is_refused_after_the_delay(spool):
    pop = spool.session(auth_failure_delay=2)
    pop.greet()
    assert pop.send("APOP ../alice 0123456789abcdef0123456789abcdef") == BAD_DIGEST
    assert pop.env.authenticator.calls == []
    assert pop.env.authenticator.refused_names == [("../alice", "APOP")]


def test_apop_not_enabled(spool):
    pop = spool.session(authenticator=TableAuthenticator(str(spool.home), apop_enabled=False))
    pop.greet()
    assert pop.send("APOP alice 0123456789abcdef0123456789abcdef") == NOT_ENABLED
    assert pop.env.authenticator.calls == []


def test_apop_no_mime_suffix(spool):
    pop = spool.session()
    pop.greet()
    digest = apop_digest(pop.proto.apop_timestamp, "tanstaaf")
    assert pop.send(f"APOP alice-no-mime {digest}").startswith(b"+OK alice has")
    assert pop.proto.login.no_mime is True


# --- what the maildrop says at login ---------------------------------------------------------------------
def test_second_session_on_the_same_maildrop_gets_in_use_and_is_closed(spool):
    first = spool.session()
    first.login("alice")
    second = spool.session()
    reply = second.login("alice")
    assert reply.startswith(b"-ERR [IN-USE] "), reply
    assert second.proto.closed
    assert first.send("STAT").startswith(b"+OK 2 ")
    first.send("QUIT")


def test_unreadable_spool_format_is_sys_perm_and_closes(spool):
    spool.write("alice", b"this is not an mbox\n")
    pop = spool.session()
    reply = pop.login("alice")
    assert reply == (b"-ERR [SYS/PERM] Unable to process From lines (envelopes), change "
                     b"recognition modes or check for corrupted mail drop.\r\n")
    assert pop.proto.closed


# --- AUTH and STLS ---------------------------------------------------------------------------------------
def test_auth_without_sasl_mechanisms(pop):
    """No mechanism offered (sasl-no-dictionary hides them all): AUTH lists none and refuses
    each; PLAIN is refused as plaintext (tests/test_sasl_protocol.py has the rest). Each
    refusal counts as a bad command (tests/test_authorization_budget.py), the listing not."""
    assert pop.send("AUTH PLAIN") == b"-ERR [AUTH] Plaintext authentication is not permitted\r\n"
    assert pop.send("AUTH X-NONE") == b"-ERR Unrecognized authentication type\r\n"
    assert pop.send("AUTH") == b"+OK Available authentication mechanisms follow\r\n.\r\n"
    assert pop.proto.bad_commands == 2


def test_auth_hook_runs_a_continuation_exchange(spool):
    """The SASL feature's entry point: its AUTH verb, CAPA's SASL line, continuation lines
    longer than a command line, and login_succeeded."""
    seen = []

    def cmd_auth(proto, args):
        proto.reply(b"+ \r\n")

        def continuation(line: bytes):
            seen.append(line)
            user, _, password = line.decode().partition(" ")
            login = proto.env.authenticator.check_password(user, password.strip(),
                                                           proto.env.client_ip)
            proto.login_succeeded(login)
        proto.read_continuation(continuation)

    ext = Extensions(authorization_verbs={"AUTH": Command(cmd_auth, 1, 2)},
                     sasl_mechanisms=lambda proto: ["X-TEST"])
    pop = spool.session(extensions=ext)
    pop.greet()
    assert pop.send("CAPA") == capa_bytes(sasl="X-TEST")
    assert pop.send("AUTH X-TEST") == b"+ \r\n"
    long_line = b"alice wonderland" + b" " * 400 + b"\r\n"    # fine for a continuation
    assert pop.send(long_line).startswith(b"+OK alice has 2 visible messages")
    assert seen == [long_line[:-2]]


def test_over_long_continuation_line_cancels_the_exchange(spool):
    def cmd_auth(proto, args):
        proto.reply(b"+ \r\n")
        proto.read_continuation(lambda line: pytest.fail("must not be called"), limit=100)

    pop = spool.session(extensions=Extensions(authorization_verbs={"AUTH": Command(cmd_auth, 1, 1)}))
    pop.greet()
    pop.send("AUTH X")
    assert pop.send(b"A" * 150 + b"\r\nUSER alice\r\n") == (
        b"-ERR Line too long (more than 100 octets).\r\n" + PASSWORD_REQUIRED.format("alice").encode())


def test_stls_not_enabled(pop):
    assert pop.send("STLS") == NOT_ENABLED


def stls_session(spool, succeed=True, **cfg):
    hook = TlsHook(succeed)
    pop = spool.session(start_tls=hook, **cfg)
    hook.env = pop.env
    pop.greet()
    return pop, hook


def test_stls_discards_plaintext_sent_after_it(spool):
    pop, hook = stls_session(spool)
    # A man in the middle appends a command to the client's STLS (CVE-2011-0411 style).
    assert pop.send(b"STLS\r\nUSER mallory\r\nPASS x\r\n") == b"+OK STLS\r\n"
    assert hook.calls == 1
    assert pop.env.authenticator.calls == []
    assert pop.send("USER alice") == PASSWORD_REQUIRED.format("alice").encode()


def test_stls_forgets_a_pending_user(spool):
    pop, _ = stls_session(spool)
    pop.send("USER alice")
    pop.send("STLS")
    assert pop.send("PASS wonderland") == USER_FIRST


def test_capa_lists_stls_before_tls_and_not_after(spool):
    pop, _ = stls_session(spool)
    assert pop.send("CAPA") == capa_bytes(stls=True)
    pop.send("STLS")
    assert pop.send("CAPA") == capa_bytes(stls=False)        # RFC 2595 §4, decision §7.8
    assert pop.send("STLS") == b"-ERR TLS in progress\r\n"


def test_failed_handshake_ends_the_session(spool):
    """The client's TLS state is unknown after a failed handshake: nothing it sends may be read
    as plain text again, so the session ends (Qpopper carried on in AUTHORIZATION)."""
    pop, hook = stls_session(spool, succeed=False)
    assert pop.send("STLS") == b"+OK STLS\r\n"
    assert pop.proto.closed
    assert pop.send("USER alice") == b""


def test_stls_in_transaction_is_unknown(spool):
    pop, _ = stls_session(spool)
    pop.send("USER alice")
    pop.send("PASS wonderland")
    assert pop.send("STLS") == b'-ERR Unknown command: "STLS".\r\n'


def test_implicit_tls_session_offers_no_stls(spool):
    pop = spool.session(tls_active=True, start_tls=lambda: True)
    pop.greet()
    assert pop.send("CAPA") == capa_bytes(stls=False)


# --- CAPA in AUTHORIZATION -------------------------------------------------------------------------------
def test_capa_default(pop):
    assert pop.send("CAPA") == capa_bytes()


def test_capa_shy_hides_implementation_before_login(spool):
    pop = spool.session(shy=True)
    pop.greet()
    assert pop.send("CAPA") == capa_bytes(implementation=False)


def test_capa_without_user_when_clear_text_passwords_are_never_allowed(spool):
    pop = spool.session(clear_text_password="never")
    pop.greet()
    assert pop.send("CAPA") == capa_bytes(user=False)


def test_capa_offers_user_only_inside_tls_when_policy_is_tls(spool):
    pop, _ = stls_session(spool, clear_text_password="tls")
    assert pop.send("CAPA") == capa_bytes(user=False, stls=True)
    pop.send("STLS")
    assert pop.send("CAPA") == capa_bytes(user=True, stls=False)


@pytest.mark.parametrize("policy", ["default", "always", "local"])
def test_capa_offers_user_for_other_policies(spool, policy):
    pop = spool.session(clear_text_password=policy)
    pop.greet()
    assert pop.send("CAPA") == capa_bytes()


def test_capa_announces_login_delay_and_expire(spool):
    pop = spool.session(announce_login_delay=900, announce_expire=30)
    pop.greet()
    assert pop.send("CAPA") == capa_bytes(login_delay=900, expire="30")


def test_capa_announces_expire_zero(spool):
    pop = spool.session(announce_login_delay=0, announce_expire=0)
    pop.greet()
    assert pop.send("CAPA") == capa_bytes(login_delay=0, expire="0")


def test_capa_localtime_follows_the_clock(spool):
    pop = spool.session()
    pop.greet()
    pop.proto.now = lambda: NOW + 86400
    assert b"X-LOCALTIME Wed, 15 Nov 2023" in pop.send("CAPA")


# --- QUIT ------------------------------------------------------------------------------------------------
def test_quit_in_authorization(spool):
    run_lockstep(spool.session(), parse(f"""
        S: {GREETING}
        C: USER alice
        S: +OK Password required for alice.
        C: QUIT
        S: +OK Pop server at {HOST} signing off.
    """))


def test_quit_in_authorization_leaves_the_spool_alone(spool):
    before = spool.read("alice")
    pop = spool.session()
    pop.greet()
    assert pop.send("QUIT") == SIGNING_OFF
    assert pop.proto.state == State.CLOSED
    assert spool.read("alice") == before


def test_texts_match_the_real_authenticator():
    """No enumeration: a refused name and a wrong password must read the same whichever
    layer refuses, so the protocol's texts are the authenticator's."""
    from qpopper.auth import policy
    from qpopper.pop3 import auth_state
    assert auth_state.BAD_PASSWORD == policy.BAD_PASSWORD
    assert auth_state.BAD_DIGEST == policy.BAD_DIGEST


def test_env_pid_is_in_the_timestamp(spool):
    pop = spool.session()
    pop.greet()
    assert pop.proto.apop_timestamp.startswith(f"<{PID}.")
