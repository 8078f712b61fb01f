"""The header fast path (one regex search over a header block for the lines that matter,
mbox_headers._HeaderScanner._noted_header_lines) gives what the plain paths give: the loop over
every header line and the line-by-line reader, on generated spools of 10,000+ messages (From_,
MMDF, Content-Length true and false, broken input) under every option that changes a scan —
the same messages, offsets, octets and UIDs, hence the same RETR bytes."""

from __future__ import annotations

import dataclasses
import io
import random

import pytest

from qpopper.spool import mbox, mbox_headers

FIELDS = [f.name for f in dataclasses.fields(mbox.Message)]
pytestmark = pytest.mark.timeout(300)

HEADERS = [
    b"Received: from a by b", b"RECEIVED: from c", b"received:x", b"Received : not noted",
    b"Receivedx: not noted", b"Date: Wed, 25 Nov 2026 10:00:00 +0000", b"date:today",
    b"Message-ID: <%d@x>", b"message-id:<lower>", b"Message-Id: <mixed>", b"Subject: s%d",
    b"SUBJECT: upper", b"Subject: with\x00nul", b"Subject:", b"X-UIDL: uid-%d-0123456789",
    b"x-uidl: lower-uid-0123456789", b"X-UIDL: short", b"Status: RO", b"status: O",
    b"STATUS: U", b"Content-Length: %d", b"content-length: 12", b"Content-Length: junk",
    b"From: someone", b"X-IMAP: 1", b"To: x", b"X-Long: " + b"l" * 3000, b":colon first",
    b"No-Colon-Here-At-All-In-Sixteen", b"X-Received: by x",
]
CONTINUATIONS = [b" folded", b"\tfolded", b" \x00nul", b"  deep", b"\t"]
ENDS = [b"\n", b"\n", b"\n", b"\r\n"]


def header_block(rng: random.Random, n: int, body_len: int) -> bytes:
    lines = []
    for _ in range(rng.randrange(0, 14)):
        line = rng.choice(HEADERS)
        if b"%d" in line:
            line = line % (body_len if line.startswith(b"Content-Length") else n)
        lines.append(line + rng.choice(ENDS))
        while rng.random() < 0.3:
            lines.append(rng.choice(CONTINUATIONS) + rng.choice(ENDS))
    if rng.random() < 0.05:
        lines.insert(0, rng.choice(CONTINUATIONS) + b"\n")      # a block starting folded
    return b"".join(lines)


def body(rng: random.Random) -> bytes:
    return b"".join(rng.choice([b"text", b"", b">From x", b".", b"From a Wed Dec  2 05:53:22 1992",
                                b"Subject: in the body", b"b" * 200])
                    + rng.choice(ENDS) for _ in range(rng.randrange(0, 6)))


def big_spool(seed: int, kind: str, messages: int = 10_000) -> bytes:
    rng = random.Random(seed)
    out = []
    for n in range(messages):
        text = body(rng)
        head = header_block(rng, n, len(text))
        blank = b"" if rng.random() < 0.01 else rng.choice((b"\n", b"\r\n"))
        if kind == "mmdf":
            out.append(b"\x01\x01\x01\x01\n" + head + blank + text + b"\x01\x01\x01\x01\n")
        else:
            out.append(b"From s%d@x Wed Dec  2 05:53:22 1992\n" % n + head + blank + text
                       + b"\n")
    data = b"".join(out)
    if kind == "broken":            # cut anywhere, maybe inside a header block
        data = data[:rng.randrange(len(data) // 2, len(data))]
    return data


def rows(data: bytes, **options) -> list[list]:
    return [[getattr(m, name) for name in FIELDS]
            for m in mbox.scan(io.BytesIO(data), **options)]


def one_by_one(self, d, block, base):
    return self._header_lines_one_by_one(d, block, base, d.number == 1 and self.first_number == 1)


OPTIONS = [{}, {"old_style_uid": True}, {"content_length": False, "uw_kludge": True},
           {"unique_num": 7}]


@pytest.mark.parametrize("kind", ["from", "mmdf", "broken"])
def test_the_fast_path_equals_both_plain_paths_on_10000_messages(kind, monkeypatch):
    data = big_spool({"from": 1, "mmdf": 2, "broken": 3}[kind], kind)
    taken = []
    fast = mbox_headers._HeaderScanner._noted_header_lines

    def counted(self, d, block, base):
        taken.append(1)
        return fast(self, d, block, base)

    for options in OPTIONS:
        with monkeypatch.context() as patch:
            patch.setattr(mbox_headers._HeaderScanner, "_noted_header_lines", counted)
            expected = rows(data, **options)
        assert len(expected) >= 9_000 and sum(taken) >= 9_000     # the fast path really ran
        taken.clear()
        with monkeypatch.context() as patch:
            patch.setattr(mbox_headers._HeaderScanner, "_noted_header_lines", one_by_one)
            assert rows(data, **options) == expected, options
        if options == {}:                           # the slowest reference: once
            with monkeypatch.context() as patch:
                patch.setattr(mbox_headers._HeaderScanner, "_headers_in_buffer",
                              lambda self, d: False)
                assert rows(data, **options) == expected, options


def test_spools_with_true_and_false_content_lengths(monkeypatch):
    rng = random.Random(5)
    parts = []
    for n in range(10_000):
        text = body(rng)
        length = len(text) + rng.choice([0, 0, 0, 1, -1, 500])   # sometimes a lie
        head = header_block(rng, n, len(text)) + b"Content-Length: %d\n" % max(0, length)
        parts.append(b"From s@x Wed Dec  2 05:53:22 1992\n" + head + b"\n" + text + b"\n")
    data = b"".join(parts)
    expected = rows(data)
    with monkeypatch.context() as patch:
        patch.setattr(mbox_headers._HeaderScanner, "_noted_header_lines", one_by_one)
        assert rows(data) == expected
    assert len(expected) >= 9_000
