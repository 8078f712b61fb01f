"""The scan's shortcuts change nothing: the plain-From-line pattern only accepts lines the
positional check accepts, the table-driven UID text is §2.4's, and what a scan finds does
not depend on where its reads happen to cut the file (the window slides every
limits.COPY_CHUNK_OCTETS; a tiny chunk makes every boundary fall inside separators, header
blocks, CRLFs and long lines)."""

from __future__ import annotations

import dataclasses
import io
import random

import pytest

from qpopper import limits
from qpopper.spool import mbox, mbox_format
from tests.helpers.mbox_golden import GOLDEN, GOLDEN_SPOOLS, SCAN_OPTIONS, oracle_encode

FIELDS = [f.name for f in dataclasses.fields(mbox.Message)]
pytestmark = pytest.mark.timeout(120)


def rows(messages) -> list[list]:
    return [[getattr(m, name) for name in FIELDS] for m in messages]


# --- From_ lines ---------------------------------------------------------------------------------

def random_from_line(rng: random.Random) -> bytes:
    """Lines near the plain form (each part is the plain one three times in four): right and
    wrong widths, spaces, colons, zones, endings."""
    def pick(options):
        return options[0] if rng.random() < 0.75 else rng.choice(options)

    parts = [b"From", pick([b" ", b"  "]), pick([b"user@host", b"", b"a b", b"x\ry", b"u:1"]),
             b" ", pick([b"Wed", b"We", b"Wedn", b"W:d", b"   "]), b" ",
             pick([b"Dec", b"De", b"D c"]), b" ", pick([b" 2", b"12", b"2", b"x2", b"  2"]), b" ",
             pick([b"05:53:22", b"05:53", b"5:53:22", b"05 53:22", b"05:53:2x", b"05:5322"]),
             pick([b"", b" PST", b" -0700", b" +0700"]), b" ",
             pick([b"1992", b"992", b"19921", b"19 2", b"abcd"]),
             pick([b"", b" PST", b" remote from h", b" remote from 1992"]),
             pick([b"\n", b"\r\n", b"\r", b"", b"\n\n", b"\r\r\n"])]
    return b"".join(parts)


def test_the_plain_from_line_pattern_accepts_only_what_the_positional_check_accepts():
    rng = random.Random(4)
    matched = 0
    for _ in range(50_000):
        line = random_from_line(rng)
        if mbox_format._PLAIN_FROM_LINE.fullmatch(line):
            matched += 1
            assert mbox_format._from_line_by_position(line), line
        assert mbox.is_from_line(line) == (
            len(line) < limits.MAX_SPOOL_LINE_OCTETS and mbox_format._from_line_by_position(line)), line
    assert matched > 1000                   # the shortcut was really taken


# --- UID text ------------------------------------------------------------------------------------

def test_uid_text_is_section_2_4_for_any_digest():
    rng = random.Random(5)
    digests = [bytes(16), b"\xff" * 16, bytes(range(16))]
    digests += [rng.randbytes(16) for _ in range(20_000)]
    for digest in digests:
        assert mbox.encode_uid(digest) == oracle_encode(digest)


# --- chunk boundaries ----------------------------------------------------------------------------

def random_spool(rng: random.Random) -> bytes:
    pick = rng.choice
    out = []
    mmdf = rng.random() < 0.15
    for n in range(rng.randint(1, 12)):
        headers = [pick([b"Subject: s%d" % n, b"Received: by x", b"\tfolded", b"Date: today",
                         b"X-UIDL: uid-%d-0123456789" % rng.randrange(3), b"Status: RO",
                         b"status: O", b"Content-Length: %d" % rng.randrange(80),
                         b"X-Long: " + b"l" * pick([10, 1030, 3000]), b"Message-ID: <%d>" % n,
                         b"Subject: DO NOT DELETE", b"X-IMAP: 1", b"From: Mail System Internal Data"])
                   + pick([b"\n", b"\n", b"\r\n"]) for _ in range(rng.randint(0, 8))]
        body = [pick([b"text line", b"", b">From escaped", b".", b"..", b"with\x00nul",
                      b"From a Wed Dec  2 05:53:22 1992", b"b" * pick([1023, 1024, 4000])])
                + pick([b"\n", b"\n", b"\r\n"]) for _ in range(rng.randint(0, 10))]
        if mmdf:
            out.append(b"\x01\x01\x01\x01\n" + b"".join(headers) + b"\n" + b"".join(body)
                       + b"\x01\x01\x01\x01\n")
        else:
            out.append(b"From s%d@x Wed Dec  2 05:53:%02d 1992\n" % (n, n) + b"".join(headers)
                       + pick([b"\n", b"\r\n", b""]) + b"".join(body) + pick([b"\n", b""]))
    data = b"".join(out)
    if rng.random() < 0.2:
        data = data[:rng.randrange(1, len(data) + 1)]
    return data


def scan_with_chunk(data: bytes, chunk: int, monkeypatch, **options) -> list[list]:
    with monkeypatch.context() as patch:
        patch.setattr(limits, "COPY_CHUNK_OCTETS", chunk)
        return rows(mbox.scan(io.BytesIO(data), **options))


@pytest.mark.parametrize("seed", range(4))
def test_random_spools_scan_the_same_whatever_the_chunk(seed, monkeypatch):
    rng = random.Random(seed)
    for _ in range(60):
        data = random_spool(rng)
        options = rng.choice([{}, {"old_style_uid": True}, {"content_length": False},
                              {"uw_kludge": True}])
        try:
            expected = rows(mbox.scan(io.BytesIO(data), **options))
        except mbox.MboxFormatError:
            continue
        for chunk in (1, 7, 100, 4096):
            assert scan_with_chunk(data, chunk, monkeypatch, **options) == expected


@pytest.mark.parametrize("name", GOLDEN_SPOOLS)
def test_golden_spools_scan_the_same_whatever_the_chunk(name, monkeypatch):
    data = (GOLDEN / f"{name}.mbox").read_bytes()
    options = SCAN_OPTIONS.get(name, {})
    expected = rows(mbox.scan(io.BytesIO(data), **options))
    for chunk in (1, 3, 64, 1000):
        assert scan_with_chunk(data, chunk, monkeypatch, **options) == expected
