"""What the bulletin tests (tests/integration/test_bulletins.py, test_bulletins_maildir.py)
share: the host name and the time they deliver at, a bulletin file's text, and a delivery
killed at a step."""

from __future__ import annotations

from tests.helpers.spoolcheck import dies_in_child, killer_at_step

HOST = "pop.example.org"
STAMP = 1764250000


def bulletin_text(subject: str, extra_headers: bytes = b"", body: bytes = b"Body.\n") -> bytes:
    return (b"From qpop Wed Nov  9 13:31:08 1994\n"
            b"Date: Wed, 9 Nov 1994 13:31:07 -0800 (PST)\n"
            b"To: user@localhost\n"
            b"From: POP Administrator <postmaster@localhost>\n"
            + extra_headers + b"Subject: " + subject.encode() + b"\n\n" + body)


def crash_at(env, step, nth=1):
    """Run a delivery in a child process that SIGKILLs itself at `step` (a real crash)."""
    return dies_in_child(lambda: env.deliver(step_hook=killer_at_step(step, nth)))
