"""AUTH (RFC 5034) transcripts: the real Protocol, the real Authenticator and a real pop.auth
store (user-database pop-auth, so no PAM is involved; tests/test_sasl_server.py covers system
users through PAM on the real server). Mechanism filtering by the sasl-* options and by
clear-text-password, initial responses, `=`, `*`, strict base64, long continuation lines."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import sqlite3
import syslog

import pytest

from qpopper import limits
from qpopper.auth.store import PopAuthStore
from qpopper.pop3.protocol import State
from tests.helpers import sasl_sessions
from tests.helpers.sasl_sessions import (AUTH_FAILED, SECRET, assert_logged_in, b64, challenge_of,
                                         session)
from tests.helpers.scram_client import ScramClient

site = sasl_sessions.site       # the fixture: alice's secret in pop.auth, her spool
BAD_PASSWORD = b'-ERR [AUTH] Password supplied for "alice" is incorrect.\r\n'


def scram_first(pop, client) -> bytes:
    """AUTH SCRAM-SHA-256 with the client's first message; the server-first message."""
    return challenge_of(pop.send("AUTH SCRAM-SHA-256 " + b64(client.first())))


def send_proof_expecting_signature(pop, client, server_first) -> None:
    """The client's final message; the server must answer with its valid signature (v=)."""
    assert client.server_signature_ok(challenge_of(pop.send(b64(client.final(server_first)))))


# --- listing ------------------------------------------------------------------------------------
def test_capa_and_bare_auth_list_the_mechanisms(site):
    pop = session(site)
    capa = pop.send("CAPA")
    assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN\r\n" in capa
    assert pop.send("AUTH") == (b"+OK Available authentication mechanisms follow\r\n"
                                b"SCRAM-SHA-256\r\nSCRAM-SHA-1\r\nCRAM-MD5\r\nPLAIN\r\nLOGIN\r\n.\r\n")


@pytest.mark.parametrize("options, offered", [
    (dict(sasl_no_plaintext=True), b"SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5"),
    (dict(sasl_no_active=True), b"SCRAM-SHA-256 SCRAM-SHA-1"),
    (dict(sasl_no_dictionary=True), None),
    (dict(sasl_forward_secrecy=True), None),
    (dict(sasl_min_ssf=56), None),
    (dict(sasl_max_ssf=0), b"SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN"),
    (dict(sasl_no_anonymous=False), b"SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN"),
    (dict(clear_text_password="never"), b"SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5"),
    (dict(clear_text_password="tls"), b"SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5"),
    (dict(pop_auth_file=None), b"PLAIN LOGIN"),
])
def test_sasl_options_filter_the_mechanisms(site, options, offered):
    cfg_options = {k: v for k, v in options.items() if k != "pop_auth_file"}
    if "pop_auth_file" in options:
        site.store = PopAuthStore(str(site.dir / "no-such-store"))
    pop = session(site, **cfg_options)
    capa = pop.send("CAPA")
    if offered is None:
        assert b"SASL" not in capa
        assert pop.send("AUTH") == b"+OK Available authentication mechanisms follow\r\n.\r\n"
    else:
        assert b"SASL " + offered + b"\r\n" in capa


def test_inside_tls_plaintext_mechanisms_and_min_ssf_are_allowed(site):
    pop = session(site, tls_active=True, sasl_no_plaintext=True, clear_text_password="tls",
                  sasl_min_ssf=128)
    assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN\r\n" in pop.send("CAPA")


def test_plaintext_before_tls_is_refused_with_a_hint_to_use_stls(site):
    pop = session(site, start_tls=lambda: True, clear_text_password="tls")
    hint = b"-ERR [AUTH] Plaintext authentication is permitted only over TLS; use STLS first\r\n"
    assert pop.send("AUTH PLAIN " + b64("\0alice\0" + SECRET)) == hint
    assert pop.send("AUTH LOGIN") == hint
    # USER itself is refused, so the password is never sent (tests/test_clear_text_up_front.py)
    assert pop.send("USER alice") == (b"-ERR [AUTH] Clear text passwords are permitted only "
                                      b"over TLS; use STLS first\r\n")
    assert pop.send("PASS " + SECRET) == b"-ERR No user name given: send USER before PASS.\r\n"
    assert pop.proto.state == State.AUTHORIZATION
    assert pop.authlog == []                       # no failed login: no password was tried


def test_unknown_mechanism(site):
    pop = session(site)
    assert pop.send("AUTH X-UNKNOWN") == b"-ERR Unrecognized authentication type\r\n"
    assert pop.send("AUTH GSSAPI") == b"-ERR Unrecognized authentication type\r\n"


# --- PLAIN ----------------------------------------------------------------------------------------
def test_plain_with_initial_response(site):
    pop = session(site)
    assert_logged_in(pop, pop.send("AUTH PLAIN " + b64("\0alice\0" + SECRET)))
    assert pop.proto.login.mechanism == "AUTH PLAIN"
    assert (syslog.LOG_NOTICE, "sasl alice (alice) with PLAIN ssf 0") in pop.authlog


def test_plain_without_initial_response_gets_an_empty_challenge(site):
    pop = session(site)
    assert pop.send("auth plain") == b"+ \r\n"
    assert_logged_in(pop, pop.send(b64("alice\0alice\0" + SECRET)))


def test_plain_authzid_must_be_empty_or_the_user(site):
    pop = session(site)
    assert pop.send("AUTH PLAIN " + b64("bob\0alice\0" + SECRET)) == (
        b"-ERR [AUTH] Authorization identity must be empty or equal the user name\r\n")
    assert pop.proto.state == State.AUTHORIZATION


def test_plain_wrong_password(site):
    pop = session(site)
    assert pop.send("AUTH PLAIN " + b64("\0alice\0wrong")) == BAD_PASSWORD
    assert any("[AUTH] Failed attempted login to alice" in t for _, t in pop.authlog)


def test_plain_malformed_message(site):
    pop = session(site)
    assert pop.send("AUTH PLAIN " + b64("alice-and-secret")) == (
        b"-ERR [AUTH] Malformed AUTH exchange\r\n")


def test_empty_initial_response_is_an_equals_sign(site):
    pop = session(site)
    # `=` is an empty initial response: PLAIN then has nothing to parse.
    assert pop.send("AUTH PLAIN =") == b"-ERR [AUTH] Malformed AUTH exchange\r\n"


def test_star_cancels_the_exchange(site):
    pop = session(site)
    assert pop.send("AUTH PLAIN") == b"+ \r\n"
    assert pop.send("*") == b"-ERR AUTH exchange cancelled\r\n"
    assert pop.send("NOOP").startswith(b"-ERR Unknown command")     # back to commands


@pytest.mark.parametrize("junk", ["not base64!", "YWxpY2U", "YW=xp", "Zm9v\tYmFy"])
def test_invalid_base64_is_refused(site, junk):
    pop = session(site)
    assert pop.send("AUTH PLAIN") == b"+ \r\n"
    assert pop.send(junk) == b"-ERR Invalid base64 data in AUTH response\r\n"


@pytest.mark.parametrize("junk", ["YWxpY2U", "YW=xp", "not-base64!", "=="])
def test_invalid_base64_initial_response_is_refused(site, junk):
    pop = session(site)
    assert pop.send("AUTH PLAIN " + junk) == b"-ERR Invalid base64 data in AUTH response\r\n"
    assert pop.proto.state == State.AUTHORIZATION


def test_continuation_lines_longer_than_a_command_line(site):
    """RFC 5034 §4: continuation lines may exceed 255 octets; ours go up to
    limits.MAX_AUTH_LINE_OCTETS. A 600-octet PLAIN response (long password) is read whole."""
    long_secret = "p" * 440
    site.store.set_secret("alice", long_secret, iterations=4096)
    pop = session(site)
    line = b64("\0alice\0" + long_secret)
    assert len(line) > 255
    assert pop.send("AUTH PLAIN") == b"+ \r\n"
    assert_logged_in(pop, pop.send(line))


def test_continuation_over_the_limit_is_refused(site):
    pop = session(site)
    assert pop.send("AUTH PLAIN") == b"+ \r\n"
    reply = pop.send(b"A" * (limits.MAX_AUTH_LINE_OCTETS + 10) + b"\r\n")
    assert reply.startswith(b"-ERR Line too long")
    assert pop.proto.state == State.AUTHORIZATION


# --- LOGIN ------------------------------------------------------------------------------------------
def test_login_mechanism(site):
    pop = session(site)
    assert challenge_of(pop.send("AUTH LOGIN")) == b"Username:"
    assert challenge_of(pop.send(b64("alice"))) == b"Password:"
    assert_logged_in(pop, pop.send(b64(SECRET)))


def test_login_with_initial_response(site):
    pop = session(site)
    assert challenge_of(pop.send("AUTH LOGIN " + b64("alice"))) == b"Password:"
    assert pop.send(b64("wrong")) == BAD_PASSWORD


# --- CRAM-MD5 ---------------------------------------------------------------------------------------
def cram_response(user, secret, challenge):
    return b64(f"{user} " + hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest())


def test_cram_md5(site):
    pop = session(site)
    challenge = challenge_of(pop.send("AUTH CRAM-MD5"))
    assert re.fullmatch(rb"<[0-9a-f]{16}\.\d+@mail\.example\.org>", challenge)
    assert_logged_in(pop, pop.send(cram_response("alice", SECRET, challenge)))
    assert pop.proto.login.mechanism == "AUTH CRAM-MD5"


def test_cram_md5_wrong_secret_and_unknown_user_look_alike(site):
    pop = session(site)
    challenge = challenge_of(pop.send("AUTH CRAM-MD5"))
    assert pop.send(cram_response("alice", "wrong", challenge)) == AUTH_FAILED
    challenge = challenge_of(pop.send("AUTH CRAM-MD5"))
    assert pop.send(cram_response("nobody-here", SECRET, challenge)) == AUTH_FAILED


def test_cram_md5_challenges_differ(site):
    seen = {challenge_of(session(site).send("AUTH CRAM-MD5")) for _ in range(20)}
    assert len(seen) == 20


# --- SCRAM ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_exchange(site, mechanism):
    pop = session(site)
    client = ScramClient(mechanism, "alice", SECRET)
    server_first = challenge_of(pop.send(f"AUTH {mechanism} " + b64(client.first())))
    server_final = challenge_of(pop.send(b64(client.final(server_first))))
    assert client.server_signature_ok(server_final)          # the server proved itself
    assert pop.proto.state == State.AUTHORIZATION              # until the client's empty line
    assert_logged_in(pop, pop.send(""))
    assert pop.proto.login.mechanism == f"AUTH {mechanism}"


def test_scram_without_initial_response(site):
    pop = session(site)
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET)
    assert pop.send("AUTH SCRAM-SHA-256") == b"+ \r\n"
    server_first = challenge_of(pop.send(b64(client.first())))
    send_proof_expecting_signature(pop, client, server_first)
    assert_logged_in(pop, pop.send(""))


def test_scram_wrong_password_and_unknown_user_look_alike(site):
    pop = session(site)
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET)
    server_first = scram_first(pop, client)
    assert pop.send(b64(client.final(server_first, wrong_password=True))) == AUTH_FAILED
    ghost = ScramClient("SCRAM-SHA-256", "ghost", SECRET)
    ghost_first = challenge_of(pop.send("AUTH SCRAM-SHA-256 " + b64(ghost.first())))
    assert re.fullmatch(rb"r=[^,]+,s=[A-Za-z0-9+/=]{24},i=4096", ghost_first)
    again = challenge_of(session(site).send("AUTH SCRAM-SHA-256 " + b64(ghost.first())))
    assert ghost_first.split(b",")[1] == again.split(b",")[1]        # a stable made-up salt
    assert pop.send(b64(ghost.final(ghost_first))) == AUTH_FAILED


@pytest.mark.parametrize("first, why", [
    ("p=tls-unique,,n=alice,r=abc", b"Channel binding is not supported"),
    ("n,a=bob,n=alice,r=abc", b"Authorization identity must be empty or equal the user name"),
    ("x,,n=alice,r=abc", b"Malformed AUTH exchange"),
    ("n,,m=ext,n=alice,r=abc", b"Malformed AUTH exchange"),
    ("n,,n=al=ZZice,r=abc", b"Malformed AUTH exchange"),
    ("n,,r=abc", b"Malformed AUTH exchange"),
])
def test_scram_refuses_bad_client_first(site, first, why):
    pop = session(site)
    assert pop.send("AUTH SCRAM-SHA-256 " + b64(first)) == b"-ERR [AUTH] " + why + b"\r\n"


def test_scram_refuses_a_changed_nonce_or_binding(site):
    pop = session(site)
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET)
    server_first = scram_first(pop, client)
    final = client.final(server_first).replace(b"c=biws", b"c=eSws")       # "y,," instead
    assert pop.send(b64(final)) == b"-ERR [AUTH] Malformed AUTH exchange\r\n"


def test_scram_authzid_equal_to_the_user_and_y_flag(site):
    pop = session(site)
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET, gs2="y,a=alice,")
    server_first = scram_first(pop, client)
    send_proof_expecting_signature(pop, client, server_first)
    assert_logged_in(pop, pop.send(""))


def test_scram_client_must_answer_the_server_signature_with_an_empty_line(site):
    pop = session(site)
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET)
    server_first = scram_first(pop, client)
    pop.send(b64(client.final(server_first)))
    assert pop.send(b64("junk")) == b"-ERR [AUTH] Malformed AUTH exchange\r\n"
    assert pop.proto.state == State.AUTHORIZATION


def login_lines(pop) -> list[str]:
    """The log-login / sasl-log-login lines the authenticator logged (the site's templates)."""
    return [text for _, text in pop.authlog if re.match(r"(sasl|login) alice ", text)]


def user_failures(brakes_file, user: str) -> int:
    with contextlib.closing(sqlite3.connect(brakes_file)) as db:
        row = db.execute("SELECT count FROM failures WHERE kind = 'user' AND key = ?",
                         (user,)).fetchone()
    return row[0] if row else 0


@pytest.mark.parametrize("rejection, reply", [
    ("*", b"-ERR AUTH exchange cancelled\r\n"),
    (b64("e=other-error"), b"-ERR [AUTH] Malformed AUTH exchange\r\n"),
])
def test_scram_is_no_login_until_the_client_accepts_the_server_signature(site, tmp_path,
                                                                          rejection, reply):
    """A valid proof earns the server's signature (v=), but the login happens only at the
    client's empty answer: a client that rejects the signature stays in AUTHORIZATION, and
    no login line is logged and its user name's failures are not cleared. Completing the
    exchange afterwards logs exactly one login."""
    brakes_file = tmp_path / "brakes.sqlite"
    pop = session(site, auth_brakes_file=str(brakes_file))
    assert pop.send("AUTH PLAIN " + b64("\0alice\0wrong")) == BAD_PASSWORD
    assert user_failures(brakes_file, "alice") == 1
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET)
    server_first = scram_first(pop, client)
    send_proof_expecting_signature(pop, client, server_first)
    assert pop.send(rejection) == reply
    assert pop.proto.state == State.AUTHORIZATION and pop.proto.login is None
    assert login_lines(pop) == []
    assert user_failures(brakes_file, "alice") == 1

    client = ScramClient("SCRAM-SHA-256", "alice", SECRET)
    server_first = scram_first(pop, client)
    send_proof_expecting_signature(pop, client, server_first)
    assert login_lines(pop) == []                          # not before the empty answer
    assert_logged_in(pop, pop.send(""))
    assert login_lines(pop) == ["sasl alice (alice) with SCRAM-SHA-256 ssf 0"]
    assert user_failures(brakes_file, "alice") == 0


def test_store_with_wrong_mode_is_sys_perm_for_store_mechanisms(site):
    os.chmod(site.store.path, 0o644)
    pop = session(site)
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET)
    assert pop.send("AUTH SCRAM-SHA-256 " + b64(client.first())) == (
        b"-ERR [SYS/PERM] POP authentication DB has wrong mode (0644)\r\n")
    challenge = challenge_of(pop.send("AUTH CRAM-MD5"))
    assert pop.send(cram_response("alice", SECRET, challenge)) == (
        b"-ERR [SYS/PERM] POP authentication DB has wrong mode (0644)\r\n")


def test_failures_per_connection_are_capped(site):
    pop = session(site)
    for _ in range(limits.MAX_AUTH_FAILURES_PER_CONNECTION - 1):
        assert pop.send("AUTH PLAIN " + b64("\0alice\0wrong")) == BAD_PASSWORD
        assert not pop.proto.closed
    assert pop.send("AUTH PLAIN " + b64("\0alice\0wrong")) == BAD_PASSWORD
    assert pop.proto.closed
