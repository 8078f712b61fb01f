"""What the bulletin tests (tests/integration/test_bulletins.py, test_bulletins_maildir.py)
share: the host name and the time they deliver at, a bulletin file's text, a delivery killed
at a step, a huge broken bulletin and what a process has read."""

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


HUGE_OCTETS = 16 * 1024 * 1024
"""bulletins.MAX_BULLETIN_OCTETS: the largest bulletin a login reads."""


def post_huge_broken(path, head: bytes = b"Subject: no envelope\r\n\r\n") -> None:
    """A bulletin file of HUGE_OCTETS without its From line (sparse: costs no disk), world-
    readable: a login skips it, and must learn so from its head alone."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(HUGE_OCTETS)
    path.chmod(0o644)


def octets_read(pid: int | str = "self") -> int:
    """What the process has read so far, by read(2) and pread(2) (the kernel's rchar)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
