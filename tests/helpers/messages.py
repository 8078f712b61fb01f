"""The one place tests build messages and mbox spools from (LF line ends, as delivery agents
write them)."""

from __future__ import annotations


def from_line(n: int) -> bytes:
    return b"From sender%d@example.org Wed Dec  2 05:53:%02d 1992\n" % (n, n % 60)


def message(n: int, body_lines: int = 3, extra_headers: bytes = b"",
            body: bytes | None = None) -> bytes:
    """Message n of a spool: From line, Subject and Message-Id (then `extra_headers`), and
    `body` or `body_lines` numbered lines, followed by the framing empty line."""
    if body is None:
        body = b"".join(b"line %d of message %d\n" % (i, n) for i in range(body_lines))
    return (from_line(n) + b"Subject: message %d\nMessage-Id: <%d@example.org>\n" % (n, n)
            + extra_headers + b"\n" + body + b"\n")


def mmdf(n: int) -> bytes:
    return (b"\x01\x01\x01\x01\nFrom: a@b\nSubject: mmdf %d\n\nbody %d\n.dot line\n"
            b"\x01\x01\x01\x01\n" % (n, n))


def mbox(*messages: tuple[str, str]) -> bytes:
    """A spool with the given (subject, body) messages."""
    out = []
    for n, (subject, body) in enumerate(messages, 1):
        out.append(f"From sender{n}@example.org Mon Nov  2 10:0{n % 10}:00 2026\n"
                   f"From: Sender {n} <sender{n}@example.org>\n"
                   f"Subject: {subject}\n"
                   f"Message-ID: <m{n}.{subject.replace(' ', '-')}@example.org>\n"
                   f"\n{body}\n")
    return "".join(out).encode()


def mbox_of(*messages: bytes,
            separator: bytes = b"From sender@example.org Wed Dec  2 05:53:22 1992\n") -> bytes:
    """Whole messages (headers first, LF line ends) as an mbox spool: a From line before
    each, a final newline where one is missing, and the framing empty line after each."""
    return b"".join(separator + m + (b"" if m.endswith(b"\n") else b"\n") + b"\n"
                    for m in messages)
