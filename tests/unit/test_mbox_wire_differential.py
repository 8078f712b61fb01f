"""RETR/TOP wire bytes of mbox.send_message against a line-by-line reference implementation.

send_message converts whole blocks with bytes methods, reads in windows and splices the X-UIDL
line into the stream; the reference (tests/helpers/mbox_wire_reference.py) does the obvious
thing one line at a time (end the content before the framing line, cut the stripped header
lines, put X-UIDL at its place, then per line: NUL as space, the line end as CRLF, a CRLF
already there kept as one, a last line without LF closed with CRLF (a bare CR ending it is
that CRLF's CR), a leading dot doubled).
Seeded random spools full of adversarial lines are compared message by message, for RETR and
TOP with several line counts, with windows from 1 octet to the default, from a real file
(pread) and from an io.BytesIO. Each test runs with both wire conversions (the compiled one
when built, and the pure-Python definition).
"""

from __future__ import annotations

import dataclasses
import io
import random

import pytest

from qpopper import limits
from qpopper.spool import mbox, mbox_send
from tests.helpers import wire_impls
from tests.helpers.mbox_wire_reference import random_spool, reference_wire, split_lf

# every test once with the compiled conversion and once with the pure-Python one
each_wire_impl = wire_impls.each_wire_impl
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("each_wire_impl")]

TOP_COUNTS = (0, 1, 2, 3, 7, 10_000)
WINDOWS = (1, 2, 3, 5, 17, 64, 1000, 4096)


def unstuffed_length(wire: bytes) -> int:
    return len(wire) - sum(1 for line in split_lf(wire) if line.startswith(b"."))


def reference_content_end(raw: bytes, msg: mbox.Message) -> int:
    """Where a From_ message's content ends (docs/mbox.md, "The framing line"): before the one
    empty line that precedes the next separator or ends the file, else at the message's end.
    MMDF messages end at their trailer."""
    if msg.mmdf:
        return msg.body_end
    lines = split_lf(raw[msg.content_start:msg.end])
    if lines and lines[-1] in (b"\n", b"\r\n") and raw[msg.end - len(lines[-1]) - 1] == 0x0A:
        return msg.end - len(lines[-1])
    return msg.end


def compare(f, raw: bytes, messages, windows) -> int:
    compared = 0
    for msg in messages:
        assert msg.body_end == reference_content_end(raw, msg), msg.number
        for body_lines in (None, *TOP_COUNTS):
            expected = reference_wire(raw, msg, body_lines)
            if body_lines is None:
                assert unstuffed_length(expected) == msg.octets, msg.number
            for window in windows:
                limits.COPY_CHUNK_OCTETS = window
                writes: list[bytes] = []
                mbox.send_message(f, msg, writes.append, body_lines)
                got = b"".join(writes)
                assert got == expected, (msg.number, body_lines, window)
                compared += 1
    return compared


@pytest.mark.parametrize("seed", range(6))
def test_retr_and_top_equal_the_line_by_line_reference(tmp_path, monkeypatch, seed):
    raw = random_spool(seed)
    path = tmp_path / "spool"
    path.write_bytes(raw)
    with open(path, "rb") as f:
        messages = mbox.scan(f)
        assert len(messages) >= 15
        monkeypatch.setattr(limits, "COPY_CHUNK_OCTETS", limits.COPY_CHUNK_OCTETS)
        default = limits.COPY_CHUNK_OCTETS
        windows = (default, *WINDOWS) if seed < 2 else (default, 3, 64, 4096)
        assert compare(f, raw, messages, windows) > 0
    # the same through a file object without a descriptor (no pread)
    monkeypatch.setattr(limits, "COPY_CHUNK_OCTETS", default)
    assert compare(io.BytesIO(raw), raw, messages, (default, 7)) > 0


def test_mmdf_spool_equals_the_reference(tmp_path, monkeypatch):
    raw = random_spool(99, mmdf=True)
    path = tmp_path / "spool"
    path.write_bytes(raw)
    with open(path, "rb") as f:
        messages = mbox.scan(f)
        assert len(messages) >= 15 and all(m.mmdf for m in messages)
        monkeypatch.setattr(limits, "COPY_CHUNK_OCTETS", limits.COPY_CHUNK_OCTETS)
        assert compare(f, raw, messages, (limits.COPY_CHUNK_OCTETS, 2, 64)) > 0


def test_crlf_split_by_every_window_boundary(tmp_path, monkeypatch):
    """Each CR of a CRLF, and each dot after a line end, falls on a window edge for some size."""
    body = b"".join(b"%s\r\n.%s\r\n..\r\n>From x\r\n\r\r\n" % (b"a" * n, b"b" * n) for n in range(40))
    raw = b"From a Wed Nov 25 10:00:00 2026\nSubject: s\r\nStatus: R\n\n" + body + b"end\r"
    path = tmp_path / "spool"
    path.write_bytes(raw)
    with open(path, "rb") as f:
        [msg] = mbox.scan(f)
        monkeypatch.setattr(limits, "COPY_CHUNK_OCTETS", limits.COPY_CHUNK_OCTETS)
        assert compare(f, raw, [msg], tuple(range(1, 70))) > 0


def test_the_reference_itself_on_a_known_message():
    """Pins the reference (so a wrong reference cannot make the comparison pass)."""
    raw = (b"From a Wed Nov 25 10:00:00 2026\nSubject: s\nX-UIDL: abcdefghijklmnopq\n"
           b"Content-Length: 99\nStatus: RO\n\n.dot\r\n>From x\nnul\0\nbare\rcr\nlast\r")
    [msg] = mbox.scan(io.BytesIO(raw))
    uidl = msg.uidl_line
    assert reference_wire(raw, msg, None) == (
        b"Subject: s\r\n" + uidl + b"Status: RO\r\n\r\n..dot\r\n>From x\r\nnul \r\n"
        b"bare\rcr\r\nlast\r\n")
    assert reference_wire(raw, msg, 1) == b"Subject: s\r\n" + uidl + b"Status: RO\r\n\r\n..dot\r\n"
    assert reference_wire(raw, msg, 0) == b"Subject: s\r\n" + uidl + b"Status: RO\r\n\r\n"


def test_a_uid_with_line_breaks_is_sent_as_it_is(tmp_path):
    """A uid from a damaged cache is not converted (the X-UIDL line is ours, sent verbatim)."""
    raw = (b"From a Wed Nov 25 10:00:00 2026\nSubject: s\nStatus: RO\n\n.body\nlast")
    [msg] = mbox.scan(io.BytesIO(raw))
    for uid in ("a\nb.c", "x\r\ny", "nul\0", "\n.dot"):
        odd = dataclasses.replace(msg, uid=uid)
        for body_lines in (None, 0, 1):
            writes: list[bytes] = []
            mbox.send_message(io.BytesIO(raw), odd, writes.append, body_lines)
            assert b"".join(writes) == reference_wire(raw, odd, body_lines)
            assert odd.uidl_line in b"".join(writes)


class JoinedWireLines:
    """WireLines.feed as it was before feed_pieces: each block joined, then converted whole
    (the pure-Python definition), a trailing CR held back and carried into the next block."""

    def __init__(self, write):
        self.write, self.at_line_start, self.pending_cr = write, True, False

    def feed(self, pieces, final: bool = False) -> None:
        data = b"".join(bytes(piece) for piece in pieces)
        if self.pending_cr:
            data, self.pending_cr = b"\r" + data, False
        if not final and data.endswith(b"\r"):
            data, self.pending_cr = data[:-1], True
        if data:
            data = mbox_send.wire_bytes_python(data, self.at_line_start)
            self.at_line_start = data[-1] == 0x0A
            self.write(data)


def test_feed_pieces_equals_converting_each_block_joined():
    """Blocks cut into pieces of every kind (bytes, memoryview, bytearray; empty ones between
    and after, a CR followed by nothing but empty pieces, a block of empty pieces after a
    pending CR), some blocks final in the middle: the same writes and the same state after
    each block as joining the block first."""
    rng = random.Random(2026)
    kinds = (bytes, bytearray, memoryview, lambda b: memoryview(b"<" + b + b">")[1:-1])
    for case in range(4000):
        got: list[bytes] = []
        want: list[bytes] = []
        ours, theirs = mbox_send.WireLines(got.append), JoinedWireLines(want.append)
        for block in range(rng.randrange(1, 6)):
            text = bytes(rng.choice(b"\r\n.a\0") for _ in range(rng.randrange(0, 12)))
            cuts = sorted(rng.choices(range(len(text) + 1), k=rng.randrange(0, 4)))
            pieces = [rng.choice(kinds)(text[a:b])
                      for a, b in zip([0, *cuts], [*cuts, len(text)])]
            pieces += [rng.choice(kinds)(b"") for _ in range(rng.randrange(0, 3))]
            if case % 7 == 0:
                pieces = [b"\r"] + [b""] * rng.randrange(0, 3)
            final = rng.random() < 0.2
            ours.feed_pieces(tuple(pieces) if rng.random() < 0.3 else pieces, final)
            theirs.feed(pieces, final)
            assert got == want, (case, block)
            assert (ours.at_line_start, ours.pending_cr) == (theirs.at_line_start,
                                                              theirs.pending_cr)
