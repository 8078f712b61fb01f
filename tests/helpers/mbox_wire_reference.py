"""What RETR and TOP of an mbox message must send, built one line at a time (the reference
mbox.send_message is compared with), and seeded random spools full of adversarial lines: for
tests/unit/test_mbox_wire_differential.py and tests/integration/test_retr_output_path.py."""

from __future__ import annotations

import random

from qpopper.spool import mbox

ADVERSARIAL_LINES = (
    b".", b"..", b"...", b". ", b".x", b"..x", b">From me", b">>From you", b">From", b"From",
    b"", b"\r", b"\r\r", b"abc\r", b"a\rb", b"\0", b"x\0y", b"\0.", b".\0", b" .", b"\t.",
    b"From x Wed Nov 25 10:00:00 2026", b"\x01\x01\x01\x01", b"X-UIDL: not a header here",
    b"Status: RO", b"line", b"a somewhat longer line of ordinary text, nothing special",
)
LINE_ENDS = (b"\n", b"\n", b"\n", b"\r\n", b"\r\r\n")


def reference_wire(raw: bytes, msg: mbox.Message, body_lines: int | None) -> bytes:
    """What a client must see between +OK and the terminator, built one line at a time."""
    stop = msg.body_end if body_lines is None else top_stop(raw, msg, body_lines)
    insert = min(msg.uidl_insert_at, stop)
    before = kept(raw, msg, msg.content_start, insert)
    after = kept(raw, msg, insert, stop)
    return wire_lines(before) + msg.uidl_line + wire_lines(after)


def top_stop(raw: bytes, msg: mbox.Message, body_lines: int) -> int:
    pos = msg.body_start
    for _ in range(body_lines):
        if pos >= msg.body_end:
            break
        lf = raw.find(b"\n", pos, msg.body_end)
        pos = msg.body_end if lf < 0 else lf + 1
    return pos


def kept(raw: bytes, msg: mbox.Message, lo: int, hi: int) -> bytes:
    """raw[lo:hi] without the bytes of the stripped header lines."""
    out = bytearray()
    for i in range(lo, hi):
        if not any(a <= i < b for a, b in msg.stripped):
            out.append(raw[i])
    return bytes(out)


def wire_lines(text: bytes) -> bytes:
    out = []
    for line in split_lf(text):
        line = line.replace(b"\0", b" ")
        if line.endswith(b"\r\n"):
            content = line[:-2]
        elif line.endswith(b"\n"):
            content = line[:-1]
        else:
            # the last line, without LF: a bare CR at its end is the CR of its CRLF
            content = line[:-1] if line.endswith(b"\r") else line
        if content.startswith(b"."):
            content = b"." + content
        out.append(content + b"\r\n")
    return b"".join(out)


def split_lf(text: bytes) -> list[bytes]:
    """Lines ended by LF only (a bare CR is data), each with its LF."""
    lines, start = [], 0
    while start < len(text):
        lf = text.find(b"\n", start)
        end = len(text) if lf < 0 else lf + 1
        lines.append(text[start:end])
        start = end
    return lines


def random_line(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.55:
        text = rng.choice(ADVERSARIAL_LINES)
    elif roll < 0.6:
        text = bytes(rng.choice(b"ab.\r\0 >") for _ in range(rng.randrange(1, 5000)))
    else:
        text = bytes(rng.choice(b"abcdefghij .>\r\0") for _ in range(rng.randrange(0, 90)))
    return text + rng.choice(LINE_ENDS)


def random_message(rng: random.Random, mmdf: bool, number: int, max_lines: int = 40) -> bytes:
    headers = [b"Subject: message %d" % number]
    for candidate in (b"Status: RO", b"Status: U", b"X-UIDL: %s" % (b"u%019d" % number),
                      b"X-UIDL: short", b"Received: from x", b" continued", b".Dot: header",
                      b"Date: Wed, 25 Nov 2026 10:00:00 +0000", b"Content-Length: %d",
                      b"X-Nul: a\0b"):
        if rng.random() < 0.3:
            headers.insert(rng.randrange(len(headers) + 1), candidate)
    body = b"".join(random_line(rng) for _ in range(rng.randrange(0, max_lines)))
    headers = [h % len(body) if h.startswith(b"Content-Length") else h for h in headers]
    head = b"".join(h + rng.choice(LINE_ENDS) for h in headers)
    blank = b"" if rng.random() < 0.05 else rng.choice((b"\n", b"\r\n"))
    if mmdf:
        return b"\x01\x01\x01\x01\n" + head + blank + body + b"\x01\x01\x01\x01\n"
    return b"From sender%d Wed Nov 25 10:00:00 2026\n" % number + head + blank + body


def random_spool(seed: int, mmdf: bool = False, count: int | None = None,
                 max_lines: int = 40) -> bytes:
    rng = random.Random(seed)
    messages = [random_message(rng, mmdf, n, max_lines)
                for n in range(count or rng.randrange(20, 45))]
    if not mmdf:
        # the next From line needs an empty line before it; the last message may end mid-line
        messages = [(m if m.endswith(b"\n") else m + b"\n") + b"\n" for m in messages[:-1]] + [
            messages[-1].rstrip(b"\n") + rng.choice((b"", b"x", b"\r", b".", b"\n"))]
    return b"".join(messages)
