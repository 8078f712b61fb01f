"""Random mbox spools as Debian's delivery agents write them, and what POP3 must serve for each
message: the generator and the reference conversion of the mailbox differential tests
(tests/unit/test_mbox_mailbox_differential.py, tests/system/test_mbox_mailbox_server.py).
"""

from __future__ import annotations

import random

WORDS = (b"alpha", b"beta", b".", b"..", b".dot", b">From quoted Wed Nov 25 10:00:00 2026",
         b">>From twice", b"From", b"x\0y", b"\0", b"tab\there", b" lead", b"end\r", b"a\rb",
         b"Status: not a header", b"\x01\x01\x01")


def random_line(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.02:
        text = b"L" * rng.randrange(1000, 3000)            # beyond Qpopper's 1023-octet buffer
    elif roll < 0.5:
        text = b" ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 6)))
    else:
        text = bytes(rng.choice(b"abcdefgh .>-\0") for _ in range(rng.randrange(0, 70)))
    if text.startswith(b"From "):
        text = b">" + text                                 # as a delivery agent quotes it
    return text + (b"\r\n" if rng.random() < 0.15 else b"\n")


def random_message(rng: random.Random, number: int, *, last: bool,
                   content_length: bool = False) -> bytes:
    """A message's text (what mailbox returns for it): headers, blank line, body ending with
    0-3 empty lines; the last of a spool sometimes without its final newline. With
    content_length, a Content-Length header, and sometimes an unquoted From_ line after an
    empty line in the body (what the header makes safe)."""
    headers = [b"Subject: message %d" % number, b"Date: Wed, 25 Nov 2026 10:00:00 +0000"]
    if rng.random() < 0.2:
        headers.append(b"X-Nul: a\0b")
    if rng.random() < 0.1:
        headers.append(b"Received: from x\r")                # a CRLF header line
    body = b"".join(random_line(rng) for _ in range(rng.randrange(0, 12)))
    body += b"".join(rng.choice((b"\n", b"\n", b"\r\n")) for _ in range(rng.randrange(0, 4)))
    if last and rng.random() < 0.3:
        body = body.rstrip(b"\r\n") + rng.choice((b"no final newline", b"", b"."))
    if content_length and rng.random() < 0.3:
        body = b"intro\n\n" + separator(9999) + b"unquoted, inside a body\n" + body
    headers_only = rng.random() < 0.03                      # no blank line, no body
    if content_length:
        headers.append(b"Content-Length: %d" % (0 if headers_only else len(body)))
    if headers_only:
        return b"".join(h + b"\n" for h in headers)
    return b"".join(h + b"\n" for h in headers) + b"\n" + body


def separator(number: int) -> bytes:
    return b"From sender%d@example.org Wed Nov 25 10:%02d:00 2026\n" % (number, number % 60)


def from_spool(rng: random.Random, count: int, *, content_length: bool = False
               ) -> tuple[bytes, list[bytes]]:
    """An mbox as Debian's delivery agents write it: separator, message, one empty line."""
    texts = [random_message(rng, n, last=n == count - 1, content_length=content_length)
             for n in range(count)]
    last = texts[-1]
    # The file's last framing line may be missing; then an empty LF line ending the last
    # message is read as the framing line (by mailbox too). (A CRLF one would be read as
    # framing by qpopper only: such a file is not generated.)
    unframed_end = (last.endswith(b"\n") and not last.endswith(b"\n\r\n")
                    and not content_length and rng.random() < 0.2)
    spool = b"".join(separator(n) + text + (b"\n" if text.endswith(b"\n") else b"")
                     for n, text in enumerate(texts))
    if unframed_end:
        spool = spool[:-1]
        if last.endswith(b"\n\n"):
            texts[-1] = last[:-1]
    return spool, texts


def to_wire(text: bytes) -> bytes:
    """Message bytes as POP3 sends them, before dot-stuffing: CRLF lines, NUL as space."""
    text = text.replace(b"\0", b" ")
    lines = text.split(b"\n")
    last = lines.pop()
    out = b"".join(line + (b"\n" if line.endswith(b"\r") else b"\r\n") for line in lines)
    return out + (last + b"\r\n" if last else b"")


def unstuff(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
