"""The bad-command budget in AUTHORIZATION also bounds commands that try no credential:
a repeated CAPA or bare AUTH listing, USER again without PASS, AUTH with a mechanism not
offered, STLS when it is off. Each counts as a bad command (limits.MAX_BAD_COMMANDS; past it
`-ERR Too many bad commands` and the connection closes), so a client cannot loop on them
until the login deadline. Normal clients never come near it.

Transcripts against the real Protocol (tests/transcripts/harness.py).
"""

from __future__ import annotations

import pytest

from qpopper import limits
from tests.helpers.authorization_state import TlsHook, capa_lines
from tests.transcripts.harness import parse, run_lockstep, spool_fixture

TOO_MANY_BAD = "-ERR Too many bad commands"
CAPA_REPLY = "\n".join(f"S: {line}" for line in capa_lines())
CAPA_REPLY_BEFORE_STLS = "\n".join(f"S: {line}" for line in capa_lines(stls=True))
CAPA_REPLY_INSIDE_TLS = "\n".join(f"S: {line}" for line in capa_lines(stls=False))
GREETING = "S: +OK Qpopper (version 4.1.0) at mail.example.org starting.  <TS>"
NO_MECHANISMS = "S: +OK Available authentication mechanisms follow\nS: ."

spool = spool_fixture(alice=b"From a@example.org Tue Nov 14 22:13:20 2023\n\nHi.\n")


@pytest.fixture
def pop(spool):
    return spool.session()


def stls_pop(spool):
    hook = TlsHook()
    pop = spool.session(start_tls=hook)
    hook.env = pop.env
    return pop


def repeated(command: str, reply: str, times: int) -> str:
    return "\n".join(f"C: {command}\n{reply}" for _ in range(times))


def cut_off(pop, script: str) -> None:
    run_lockstep(pop, parse(script))
    assert pop.proto.closed
    assert any("Too many bad commands from" in text for _, text in pop.env.logs)


# --- each repeat counts ---------------------------------------------------------------------------
def test_capa_again_and_again_is_cut_off(pop):
    cut_off(pop, f"""
        {GREETING}
        {repeated("CAPA", CAPA_REPLY, 1 + limits.MAX_BAD_COMMANDS)}
        C: CAPA
        S: {TOO_MANY_BAD}
    """)


def test_user_again_without_pass_is_cut_off(pop):
    cut_off(pop, f"""
        {GREETING}
        {repeated("USER alice", "S: +OK Password required for alice.",
                  1 + limits.MAX_BAD_COMMANDS)}
        C: USER alice
        S: {TOO_MANY_BAD}
    """)


def test_the_bare_auth_listing_again_and_again_is_cut_off(pop):
    cut_off(pop, f"""
        {GREETING}
        {repeated("AUTH", NO_MECHANISMS, 1 + limits.MAX_BAD_COMMANDS)}
        C: AUTH
        S: {TOO_MANY_BAD}
    """)


def test_every_auth_with_a_mechanism_not_offered_counts(pop):
    cut_off(pop, f"""
        {GREETING}
        {repeated("AUTH X-UNKNOWN", "S: -ERR Unrecognized authentication type",
                  limits.MAX_BAD_COMMANDS)}
        C: AUTH PLAIN
        S: {TOO_MANY_BAD}
    """)


def test_every_stls_when_tls_is_off_counts(pop):
    cut_off(pop, f"""
        {GREETING}
        {repeated("STLS", "S: -ERR Command not enabled", limits.MAX_BAD_COMMANDS)}
        C: STLS
        S: {TOO_MANY_BAD}
    """)


def test_a_loop_of_probes_shares_one_budget(pop):
    probes = "\n".join(f"""
        C: CAPA
        {CAPA_REPLY}
        C: USER alice
        S: +OK Password required for alice.
        C: AUTH
        {NO_MECHANISMS}
        C: STLS
        S: -ERR Command not enabled""" for _ in range(3))
    # The first CAPA, USER and listing are free: 12 probes, 9 counted.
    run_lockstep(pop, parse(f"{GREETING}\n{probes}"))
    assert pop.proto.bad_commands == 9 and not pop.proto.closed
    cut_off(pop, f"""
        C: CAPA
        {CAPA_REPLY}
        C: CAPA
        S: {TOO_MANY_BAD}
    """)


# --- normal clients never pay -----------------------------------------------------------------------
def test_capa_then_user_pass_costs_nothing(pop):
    run_lockstep(pop, parse(f"""
        {GREETING}
        C: CAPA
        {CAPA_REPLY}
        C: AUTH
        {NO_MECHANISMS}
        C: USER alice
        S: +OK Password required for alice.
        C: PASS wonderland
        S: +OK alice has 1 visible message (0 hidden) in 37 octets.
    """))
    assert pop.proto.bad_commands == 0


def test_capa_again_after_stls_is_free(spool):
    """RFC 2595 §4: after STLS the client must forget the capabilities and ask again."""
    pop = stls_pop(spool)
    run_lockstep(pop, parse(f"""
        {GREETING}
        C: CAPA
        {CAPA_REPLY_BEFORE_STLS}
        C: AUTH
        {NO_MECHANISMS}
        C: STLS
        S: +OK STLS
        C: CAPA
        {CAPA_REPLY_INSIDE_TLS}
        C: AUTH
        {NO_MECHANISMS}
        C: USER alice
        S: +OK Password required for alice.
    """))
    assert pop.proto.bad_commands == 0
    assert pop.send("CAPA").startswith(b"+OK Capability list follows")
    assert pop.proto.bad_commands == 1


def test_stls_inside_tls_counts(spool):
    pop = stls_pop(spool)
    pop.greet()
    assert pop.send("STLS") == b"+OK STLS\r\n"
    assert pop.send("STLS") == b"-ERR TLS in progress\r\n"
    assert pop.proto.bad_commands == 1
