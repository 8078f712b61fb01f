"""For the AUTHORIZATION-state transcripts (tests/unit/test_protocol_auth.py and the tests of
the login budget and of clear-text-password): the CAPA reply as the reference gives it, and a
stand-in for the session's STLS handshake."""

from __future__ import annotations

from tests.transcripts.harness import LOCALTIME


def capa_lines(*, user=True, stls=False, implementation=True, login_delay=None,
               expire="NEVER", sasl=None) -> list[str]:
    """Reference §2.1, in order."""
    lines = ["+OK Capability list follows", "TOP"]
    if sasl:
        lines.append(f"SASL {sasl}")
    if user:
        lines.append("USER")
    if login_delay is not None:
        lines.append(f"LOGIN-DELAY {login_delay}")
    lines += [f"EXPIRE {expire}", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
              f"X-LOCALTIME {LOCALTIME}"]
    if stls:
        lines.append("STLS")
    if implementation:
        lines.append("IMPLEMENTATION Qpopper-version-4.1.0")
    return lines + ["."]


class TlsHook:
    """Stands in for the session's handshake: records the call and flips env.tls_active."""

    def __init__(self, succeed=True):
        self.succeed = succeed
        self.env = None
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.succeed:
            self.env.tls_active = True
        return self.succeed
