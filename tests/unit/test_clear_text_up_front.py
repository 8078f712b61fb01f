"""Clear text refused up front (RFC 2595 §2.3, §4): when clear-text-password refuses clear
text on this connection for every user (never; tls before TLS), USER itself is answered
`-ERR [AUTH]`, so an old client never sends its password, and CAPA offers neither USER nor
the PLAIN and LOGIN mechanisms. The refused USER is no failed login (nothing was tried); its
repeats count as bad commands. Other policies accept USER as Qpopper does.

Transcripts against the real Protocol (tests/transcripts/harness.py).
"""

from __future__ import annotations

import pytest

from qpopper import limits
from tests.helpers.authorization_state import TlsHook
from tests.transcripts.harness import parse, run_lockstep, spool_fixture

GREETING = "S: +OK Qpopper (version 4.1.0) at mail.example.org starting.  <TS>"
NEVER = ("-ERR [AUTH] You must use stronger authentication such as AUTH or APOP to access "
         "this account")
TLS_FIRST = "-ERR [AUTH] Clear text passwords are permitted only over TLS; use STLS first"
TLS_ONLY = "-ERR [AUTH] Clear text passwords are permitted only over TLS"
USER_FIRST = "-ERR No user name given: send USER before PASS."
SASL_WITHOUT_PLAINTEXT = b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5\r\n"

spool = spool_fixture(alice=b"From a@example.org Tue Nov 14 22:13:20 2023\n\nHi.\n")


def session(spool, *, stls=False, **cfg):
    """SASL listed (sasl-no-dictionary off) so CAPA shows which mechanisms are offered."""
    hook = TlsHook() if stls else None
    pop = spool.session(start_tls=hook, sasl_no_dictionary=False, **cfg)
    if hook:
        hook.env = pop.env
    return pop


def assert_no_login_was_tried(pop) -> None:
    auth = pop.env.authenticator
    assert auth.calls == [] and auth.refused_names == []
    assert [text for _, text in pop.env.logs] == [
        "USER from client.example.net (127.0.0.1) refused before the password: "
        f"clear-text-password {pop.proto.cfg.clear_text_password}"]


# --- refused at USER --------------------------------------------------------------------------------
@pytest.mark.parametrize("policy, stls, refusal", [
    ("never", True, NEVER),
    ("never", False, NEVER),
    ("tls", True, TLS_FIRST),
    ("tls", False, TLS_ONLY),        # no STLS here: no command to suggest
])
def test_user_is_refused_before_the_password(spool, policy, stls, refusal):
    pop = session(spool, stls=stls, clear_text_password=policy)
    run_lockstep(pop, parse(f"""
        {GREETING}
        C: USER alice
        S: {refusal}
        C: PASS wonderland
        S: {USER_FIRST}
    """))
    assert_no_login_was_tried(pop)


def test_tls_accepts_user_after_stls(spool):
    pop = session(spool, stls=True, clear_text_password="tls")
    run_lockstep(pop, parse(f"""
        {GREETING}
        C: USER alice
        S: {TLS_FIRST}
        C: STLS
        S: +OK STLS
        C: USER alice
        S: +OK Password required for alice.
        C: PASS wonderland
        S: +OK alice has 1 visible message (0 hidden) in 37 octets.
    """))


@pytest.mark.parametrize("policy", ["always", "local", "default"])
def test_other_policies_accept_user_as_qpopper(spool, policy):
    pop = session(spool, clear_text_password=policy)
    run_lockstep(pop, parse(f"""
        {GREETING}
        C: USER alice
        S: +OK Password required for alice.
    """))


def test_a_refused_user_again_and_again_is_cut_off(spool):
    pop = session(spool, clear_text_password="never")
    pop.greet()
    for _ in range(1 + limits.MAX_BAD_COMMANDS):          # the first refusal is free
        assert pop.send("USER alice") == f"{NEVER}\r\n".encode()
    assert pop.send("USER alice") == b"-ERR Too many bad commands\r\n"
    assert pop.proto.closed
    assert pop.env.authenticator.calls == []


# --- CAPA offers no clear text then ---------------------------------------------------------------------
def test_capa_with_never_lists_neither_user_nor_plaintext_mechanisms(spool):
    pop = session(spool, clear_text_password="never")
    pop.greet()
    capa = pop.send("CAPA")
    assert SASL_WITHOUT_PLAINTEXT in capa and b"\r\nUSER\r\n" not in capa


def test_capa_with_tls_offers_clear_text_only_after_stls(spool):
    pop = session(spool, stls=True, clear_text_password="tls")
    pop.greet()
    capa = pop.send("CAPA")
    assert SASL_WITHOUT_PLAINTEXT in capa and b"\r\nUSER\r\n" not in capa
    pop.send("STLS")
    capa = pop.send("CAPA")
    assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN\r\n" in capa
    assert b"\r\nUSER\r\n" in capa
