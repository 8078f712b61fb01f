"""The batch scan (qpopper/spool/mbox_batch.py) gives what the reference scanner gives
(`scan(..., batch=False)`): the same Message records field for field, hence the same UIDs,
octets and counts, on generated spools of 10,000+ messages and on the shapes it must hand to
the reference (MMDF, Content-Length, CRLF, broken input, a missing final newline, headers past
the window, uw-kludge's first message), from a real file and from memory, whole and by region
(docs/mbox.md, "The batch scan"). Every test runs with each implementation of the batch
path's pass: the compiled one (qpopper/spool/_scan.c) and the pure-Python one."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import tempfile

import pytest

from qpopper.server.children import ForkedCall
from qpopper.spool import mbox, mbox_batch

FIELDS = [f.name for f in dataclasses.fields(mbox.Message)]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True, params=["compiled", "python"])
def implementation(request, monkeypatch):
    """The batch path with the compiled passes, then with the pure-Python ones (what runs
    without the compiled module: no separator pre-check, is_from_line for every line)."""
    if request.param == "compiled":
        if mbox_batch.compiled_candidates is None:
            pytest.skip("qpopper/spool/_scan.c is not built (test_mbox_scan_accel checks "
                        "that it is wherever it can be)")
        monkeypatch.setattr(mbox_batch, "candidates", mbox_batch.compiled_candidates)
        monkeypatch.setattr(mbox_batch, "header_block", mbox_batch.compiled_header_block)
        monkeypatch.setattr(mbox_batch, "plain_from_lines", mbox_batch.compiled_plain_from_lines)
    else:
        monkeypatch.setattr(mbox_batch, "candidates", mbox_batch.python_candidates)
        monkeypatch.setattr(mbox_batch, "header_block", mbox_batch.python_header_block)
        monkeypatch.setattr(mbox_batch, "plain_from_lines", mbox_batch.no_plain_lines)
    return request.param

SEPARATORS = [b"From s%d@x Wed Dec  2 05:53:22 1992\n", b"From s%d Wed Dec  2 05:53 1992\n",
              b"From s%d@x Wed Dec  2 05:53:22 PST 1992 remote from h\n",
              b"From s%d Sat Jan  3 01:05:34 1996 +0700\n",
              b"From s%d\x00nul Wed Dec  2 05:53:22 1992\n"]
HEADERS = [
    b"Received: from a by b", b"RECEIVED: from c", b"received:x", b"Received : not noted",
    b"Date: Wed, 25 Nov 2026 10:00:00 +0000", b"date:today", b"Message-ID: <%d@x>",
    b"message-id:<lower>", b"Subject: s%d", b"SUBJECT: upper", b"Subject: with\x00nul",
    b"Subject:", b"X-UIDL: uid-%d-0123456789", b"x-uidl: lower-uid-0123456789",
    b"X-UIDL: short", b"X-UIDL: " + b"u" * 40, b"Status: RO", b"status: O", b"STATUS: U",
    b"Status: R", b"content-length: 12", b"From: someone", b"From: Mail System Internal Data",
    b"X-IMAP: 1", b"Subject: DON'T DELETE THIS MESSAGE", b"To: x", b"X-Long: " + b"l" * 3000,
    b":colon first", b"No-Colon-Here-At-All-In-Sixteen", b"X-Received: by x",
    b"From nobody Wed Dec  2 05:53:22 1992",
]
CONTINUATIONS = [b" folded", b"\tfolded", b" \x00nul", b"  deep", b"\t"]
BODY_LINES = [b"text", b"", b"", b">From x Wed Dec  2 05:53:22 1992", b".", b"..",
              b"From a Wed Dec  2 05:53:22 1992", b"From not a date", b"From ",
              b"Subject: in the body", b"Status: RO", b"b" * 200, b"nul\x00byte",
              b"From " + b"x" * 1100 + b" Wed Dec  2 05:53:22 1992"]


def header_block(rng: random.Random, n: int, body_len: int, content_length: float) -> bytes:
    lines = []
    for _ in range(rng.randrange(0, 12)):
        line = rng.choice(HEADERS)
        if b"%d" in line:
            line %= n
        lines.append(line + b"\n")
        while rng.random() < 0.3:
            lines.append(rng.choice(CONTINUATIONS) + b"\n")
    if rng.random() < content_length:
        lines.append(b"Content-Length: %d\n" % max(0, body_len + rng.choice([0, 0, 1, -1, 30])))
    if rng.random() < 0.001:                    # past the header window: read line by line
        lines.append(b"X-Big: " + b"h" * 17_000 + b"\n")
    return b"".join(lines)


def body(rng: random.Random) -> bytes:
    return b"".join(rng.choice(BODY_LINES) + b"\n" for _ in range(rng.randrange(0, 8)))


def spool(seed: int, messages: int, *, content_length: float = 0.0, crlf: bool = False,
          mmdf: bool = False) -> bytes:
    rng = random.Random(seed)
    out = []
    for n in range(messages):
        text = body(rng)
        head = header_block(rng, n, len(text), content_length)
        blank = b"" if rng.random() < 0.02 else b"\n"
        if mmdf:
            out.append(b"\x01\x01\x01\x01\n" + head + blank + text + b"\x01\x01\x01\x01\n")
            continue
        framing = b"\n" if rng.random() < 0.97 else rng.choice([b"", b"\n\n"])
        out.append(rng.choice(SEPARATORS) % n + head + blank + text + framing)
    data = b"".join(out)
    return data.replace(b"\n", b"\r\n") if crlf else data


def rows(f, **options) -> list[list]:
    return [[getattr(m, name) for name in FIELDS] for m in mbox.scan(f, **options)]


def both(data: bytes, **options) -> tuple[list, list]:
    """(batch, reference) rows of a real file holding `data`; the in-memory batch scan is
    checked against the same reference on the way."""
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        expected = rows(f, batch=False, **options)
        got = rows(f, **options)
    assert rows(io.BytesIO(data), **options) == expected, options
    return got, expected


def batched(monkeypatch) -> list:
    """Count the messages the batch path builds itself."""
    seen = []
    one = mbox_batch._Batch._record

    def counted(self, *args):
        got = one(self, *args)
        seen.append(isinstance(got, tuple))
        return got

    monkeypatch.setattr(mbox_batch._Batch, "_record", counted)
    return seen


OPTIONS = [{}, {"old_style_uid": True}, {"uw_kludge": True}, {"unique_num": 7},
           {"update_status_headers": False, "unique_num": 7}, {"content_length": False}]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_10000_messages_from_a_file_and_from_memory(options, monkeypatch):
    data = spool(11, 10_500)
    seen = batched(monkeypatch)
    got, expected = both(data, **options)
    assert got == expected
    assert len(expected) >= 10_000
    assert sum(seen) >= 9_000                   # the batch path built them, not the reference


def test_uids_statuses_and_sizes_come_out_as_the_reference_says(monkeypatch):
    """A spool after Qpopper's update: X-UIDL and Status on every message."""
    parts = [b"From a@b Wed Dec  2 05:53:22 1992\nX-UIDL: kept-uid-%05d-abcdef\nSubject: s\n"
             b"Status: %s\n\nbody %d\n>From quoted\n\n" % (n, (b"RO", b"U")[n % 2], n)
             for n in range(10_000)]
    parts[5] = parts[5].replace(b"kept-uid-00005", b"kept-uid-00004")    # a duplicate X-UIDL
    seen = batched(monkeypatch)
    got, expected = both(b"".join(parts))
    assert got == expected and sum(seen) >= 9_000
    messages = mbox.scan(io.BytesIO(b"".join(parts)))
    assert messages[0].uid == "kept-uid-00000-abcdef" and messages[0].retrieved
    assert not messages[1].retrieved and not messages[5].uid_from_header


@pytest.mark.parametrize("shape", ["content-length", "crlf", "mmdf", "broken", "no-final-lf",
                                   "from-line-without-lf", "empty-messages", "nul"])
def test_shapes_the_reference_takes_over(shape):
    data = spool(23, 3_000, content_length=0.02 if shape == "content-length" else 0.0,
                 crlf=shape == "crlf", mmdf=shape == "mmdf")
    if shape == "broken":
        data = data[:len(data) * 2 // 3]
    elif shape == "no-final-lf":
        data = data.rstrip(b"\n")
    elif shape == "from-line-without-lf":
        data += b"\nFrom last Wed Dec  2 05:53:22 1992"
    elif shape == "empty-messages":
        data = b"".join(b"From e Wed Dec  2 05:53:22 1992\n" + b"\n" * (n % 3) for n in range(500))
    elif shape == "nul":
        data = data.replace(b"text", b"t\x00t").replace(b"From: ", b"From:\x00")
    for options in OPTIONS[:4]:
        got, expected = both(data, **options)
        assert got == expected, (shape, options)
        assert expected


def test_regions_as_server_mode_scans_them():
    """A region appended after a cached part: numbered on, UIDs kept apart from those taken."""
    data = spool(31, 2_000, content_length=0.001)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        whole = mbox.scan(f, batch=False)
        for cut in (1, 700, 1_999):
            head = whole[:cut]
            region = dict(start=head[-1].end, first_number=cut + 1,
                          taken_uids={m.uid for m in head})
            expected = rows(f, batch=False, **region)
            assert rows(f, **region) == expected and expected
            assert rows(f, end=whole[cut].offset if cut < 2_000 else None) == rows(
                f, batch=False, end=whole[cut].offset if cut < 2_000 else None)


def test_a_spool_not_starting_with_an_envelope_is_refused_by_both():
    for data in (b"Subject: x\n\nFrom a Wed Dec  2 05:53:22 1992\n\n", b"\nFrom a Wed Dec  2",
                 b"From nobody\n\nbody\n"):
        for batch in (True, False):
            with pytest.raises(mbox.MboxFormatError):
                mbox.scan(io.BytesIO(data), batch=batch)


# --- the helper process: a big region scanned in two parts at once ------------------------------

def helper_spool(**shape) -> bytes:
    return spool(41, 4_000, **shape)


@pytest.fixture
def split_always(monkeypatch):
    """Every region goes to the helper in part, on a one-CPU runner too; count the helpers
    that answered."""
    monkeypatch.setattr(mbox_batch, "SPLIT_OCTETS", 0)
    monkeypatch.setattr(mbox_batch.os, "sched_getaffinity", lambda pid: {0, 1})
    answered = []
    result = mbox_batch._Helper.result

    def counted(self):
        got = result(self)
        answered.append(got is not None)
        return got

    monkeypatch.setattr(mbox_batch._Helper, "result", counted)
    return answered


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_two_parts_at_once_equal_the_reference(options, split_always):
    got, expected = both(helper_spool(), **options)
    assert got == expected and len(expected) >= 4_000
    if "unique_num" not in options:             # Qpopper's counter: one process only
        assert split_always and all(split_always)


@pytest.mark.parametrize("shape", ["crlf-in-helper-part", "content-length-in-parent-part",
                                   "content-length-in-helper-part", "long-headers"])
def test_two_parts_hand_over_to_the_reference(shape, split_always):
    data = helper_spool()
    half = len(data) // 2
    if shape == "crlf-in-helper-part":
        data = data[:-100] + data[-100:].replace(b"\n", b"\r\n")
    elif shape.startswith("content-length"):
        at = data.index(b"\n\nFrom ", half // 3 if "parent" in shape else half * 3 // 2) + 2
        eol = data.index(b"\n", at) + 1
        data = data[:eol] + b"Content-Length: 3\n" + data[eol:]
    else:
        at = data.index(b"\n\nFrom ", half * 3 // 2) + 2
        eol = data.index(b"\n", at) + 1
        data = data[:eol] + b"X-Big: " + b"h" * 20_000 + b"\n" + data[eol:]
    got, expected = both(data)
    assert got == expected and len(expected) >= 4_000


def test_a_failing_helper_leaves_its_part_to_the_parent(monkeypatch, split_always):
    """A helper that dies, or answers only half, is as if there were none."""
    data = helper_spool()
    expected = both(data)[1]
    split_always.clear()
    part = mbox_batch._helper_part

    def dies(batch, start, end):
        os._exit(3)

    monkeypatch.setattr(mbox_batch, "_helper_part", dies)
    assert both(data)[0] == expected

    def cut_short(batch, start, end):
        return part(batch, start, end)[:2]     # a malformed answer

    monkeypatch.setattr(mbox_batch, "_helper_part", cut_short)
    assert both(data)[0] == expected
    assert split_always and not any(split_always)


@pytest.mark.parametrize("chunk", [4096, 65536])
def test_small_parts_and_big_messages(chunk, monkeypatch, split_always):
    """Parts cut at separators, pages released after each, messages past the limit left to
    the reference: nothing changes in the records."""
    monkeypatch.setattr(mbox_batch, "CHUNK_OCTETS", chunk)
    monkeypatch.setattr(mbox_batch, "BIG_MESSAGE_OCTETS", chunk // 2)
    data = helper_spool(content_length=0.0005)
    big = b"From big Wed Dec  2 05:53:22 1992\nSubject: big\n\n" + b"line\n" * chunk + b"\n"
    middle = data.index(b"\n\nFrom ", len(data) // 3) + 2
    data = data[:middle] + big + big + data[middle:]
    for options in OPTIONS[:3]:
        got, expected = both(data, **options)
        assert got == expected and len(expected) >= 4_000


def test_a_helper_past_its_time_is_ended(monkeypatch, split_always):
    data = helper_spool()
    expected = both(data)[1]
    split_always.clear()
    monkeypatch.setattr(mbox_batch, "HELPER_TIMEOUT", 0.2)
    monkeypatch.setattr(mbox_batch, "_helper_part", lambda batch, start, end: os.pause())
    assert both(data)[0] == expected
    assert split_always == [False, False]


def test_the_helper_keeps_no_descriptor_of_the_session(tmp_path, monkeypatch, split_always):
    """The helper holds nothing of the session's but the map and its pipe: a session killed
    meanwhile leaves no socket, spool or lock held by it."""
    listing = tmp_path / "helper-fds"
    real_part = mbox_batch._helper_part

    def part(batch, start, end):
        fds = os.listdir("/proc/self/fd")           # before this write opens one more
        listing.write_text(" ".join(fds))
        return real_part(batch, start, end)
    monkeypatch.setattr(mbox_batch, "_helper_part", part)
    held = os.open(tmp_path / "held", os.O_CREAT | os.O_RDWR, 0o600)   # stands for a lock
    try:
        got, expected = both(helper_spool())
    finally:
        os.close(held)
    assert got == expected and split_always and all(split_always)
    fds = {int(fd) for fd in listing.read_text().split()}
    assert held not in fds
    assert len(fds - {0, 1, 2}) <= 2, fds             # the pipe, and listdir's own


@pytest.mark.parametrize("answer", [(True, [], 99), (True, [], 201), (True, [(1, 2)], 150),
                                    (True, "records", 150), (True, [], "150")],
                         ids=["before-split", "past-end", "short-record", "not-a-list",
                              "not-an-offset"])
def test_a_helper_answer_of_the_wrong_shape_is_refused(answer):
    """The session scans the helper's part itself rather than take records it cannot use
    or a resume point outside that part (forked children of the same user, real pipes)."""
    helper = mbox_batch._Helper(ForkedCall.start(lambda: answer), split=100, end=200)
    assert helper.result() is None
    good = (True, [tuple(range(mbox_batch.RECORD_FIELDS))], 200)
    helper = mbox_batch._Helper(ForkedCall.start(lambda: good), split=100, end=200)
    assert helper.result() == good


@pytest.mark.parametrize("length", [1022, 1023, 1024, 1025])
def test_separator_lines_at_the_length_limit(length):
    """A separator line of limits.MAX_SPOOL_LINE_OCTETS - 1 octets is one, of the limit or
    more is not (Qpopper sees only the first 1023 octets): the batch path's separator checks
    draw the line where the reference does."""
    line = b"From " + b"x" * (length - 31) + b" Wed Dec  2 05:53:22 1992\n"
    assert len(line) == length
    data = (b"From a Wed Dec  2 05:53:22 1992\nSubject: one\n\nbody\n\n" + line +
            b"Subject: two\n\nbody2\n\nFrom c Wed Dec  2 05:53:22 1992\nSubject: 3\n\nb3\n")
    got, expected = both(data)
    assert got == expected
    assert len(got) == (3 if length < mbox_batch._MAX_LINE else 2)
