"""The batch scan's compiled pass (qpopper/spool/_scan.c) against its definition, the
pure-Python mbox_batch.python_candidates, and the LF counts against bytes.count (docs/mbox.md,
"The batch scan"); its UID text, uid_text, against mbox_format.uid_text_python; its header
block, header_block, against mbox_batch.python_header_block; its separator shape,
plain_from_lines, against mbox_batch.python_plain_from_lines.

Every token string up to 5 tokens over the pieces the pass cares about (LF, CR, `From `, a
date, other octets), seeded random spools cut at every kind of edge, regions starting and
ending anywhere; bad arguments; the buffer let go after the call. And the pass must be there:
on a machine that can compile it (a C compiler and Python.h), a missing build fails here
instead of every test quietly running the fallback.
"""

from __future__ import annotations

import itertools
import mmap
import random
import subprocess
import sys
import tempfile

import pytest

from qpopper.spool import maildir, mbox_batch, mbox_format, mbox_scan
from tests.helpers.compiler import assert_built_and_used
from tests.helpers.repo import REPO
from tests.helpers.scan_passes import assert_same_candidates as same
from tests.helpers.scan_passes import assert_same_header_block, assert_same_plain_from_lines

compiled = mbox_batch.compiled_candidates
python = mbox_batch.python_candidates
needs_c = pytest.mark.skipif(compiled is None, reason="qpopper/spool/_scan.c is not built")
needs_uid_c = pytest.mark.skipif(mbox_format.uid_text_c is None,
                                 reason="qpopper/spool/_scan.c is not built")

TOKENS = [b"\n", b"\r", b"From ", b"From x Wed Dec  2 05:53:22 1992", b"x", b"\n\n"]
"""What the pass looks at: line ends, CR, the `From ` of a candidate, a whole envelope."""


def test_the_scan_accelerator_is_built_and_used_where_it_can_be():
    assert_built_and_used(compiled, mbox_batch.candidates, "qpopper.spool._scan",
                          "the batch scan runs its pure-Python pass")


@needs_c
def test_every_short_token_string():
    for n in range(1, 6):
        for parts in itertools.product(TOKENS, repeat=n):
            data = b"".join(parts)
            same(data, 0, len(data))
            same(b"From y Wed Dec  2 05:53:22 1992\n" + data, 0, len(data) + 32)


def random_spool(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randrange(1, 400)):
        lines.append(rng.choice([b"From s Wed Dec  2 05:53:22 1992\n", b"\n", b"\n", b"text\n",
                                 b"From \n", b"From no date\n", b">From quoted\n",
                                 b"x" * rng.randrange(0, 200) + b"\n", b"From ", b"F", b"\r",
                                 b"From " + b"y" * rng.randrange(60, 2000) + b"\n"]))
    return b"".join(lines)


@needs_c
def test_random_spools_and_regions_cut_anywhere():
    rng = random.Random(20261206)
    for _ in range(600):
        data = random_spool(rng)
        if rng.random() < 0.5:
            data = data.replace(b"\r", b"")        # most spools have no CR at all
        same(data, 0, len(data))
        for _ in range(6):
            start = rng.choice([0, rng.randrange(len(data) + 1)])
            if rng.random() < 0.5:                 # start at a From_ line, as the walk does
                at = data.find(b"From ", start)
                start = start if at == -1 else at
            end = rng.randrange(start, len(data) + 1)
            same(data, start, end)


@needs_c
def test_a_real_map_and_other_buffers():
    data = b"From a Wed Dec  2 05:53:22 1992\nS: x\n\nbody\n\nFrom b Wed Dec  2 05:53:22 1992\n\n"
    data = data * 3000                               # past many 64-octet blocks
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        view = mmap.mmap(f.fileno(), len(data), prot=mmap.PROT_READ)
        same(view, 0, len(data))
        same(view, 64 * 7, len(data) - 1)
        view.close()                                # the call holds no export of the map
    same(bytearray(data), 0, len(data))
    assert compiled(memoryview(data), 0, len(data)) == compiled(data, 0, len(data))


@needs_c
@pytest.mark.parametrize("start, end", [(-1, 3), (0, 100), (5, 4), (101, 101)])
def test_a_region_outside_the_buffer_is_refused(start, end):
    with pytest.raises(ValueError, match="start <= end <= len"):
        compiled(b"From a Wed Dec  2 05:53:22 1992\n" + b"x" * 67, start, end)


@needs_c
def test_only_buffers_are_taken():
    with pytest.raises(TypeError):
        compiled("From a Wed Dec  2 05:53:22 1992\n", 0, 10)
    with pytest.raises(TypeError):
        compiled(b"From a\n", 0)


# --- uid_text: the UID of a digest (docs/accelerators.md, "UID text") ------------------------
def test_the_uid_text_is_built_and_used_where_it_can_be():
    assert_built_and_used(mbox_format.uid_text_c, mbox_format.uid_text, "qpopper.spool._scan",
                          "every UID is made by the pure-Python uid_text")
    assert mbox_scan.encode_uid is mbox_format.encode_uid        # the scan's UIDs
    assert maildir.encode_uid is mbox_format.encode_uid          # a Maildir's UIDs
    digest = bytes(range(16))
    assert mbox_format.encode_uid(digest, old_style=True) == digest.hex()


@needs_uid_c
def test_encode_uid_makes_its_text_in_c(monkeypatch):
    calls = []
    real = mbox_format.uid_text
    monkeypatch.setattr(mbox_format, "uid_text", lambda d: calls.append(d) or real(d))
    digest = bytes(range(16))
    assert mbox_format.encode_uid(digest) == mbox_format.uid_text_python(digest)
    assert calls == [digest]
    mbox_format.encode_uid(digest, old_style=True)                 # hex: no C call
    assert calls == [digest]


@needs_uid_c
def test_uid_text_is_the_python_definition_for_any_digest():
    """Random digests, each octet position at 0x00, 0x01, 0x7f, 0x80 and 0xff, and every
    digit of the alphabet seen (a group's value is below 80**4: its fifth digit is always the
    first of the alphabet, its fourth one of the first three)."""
    rng = random.Random(24)
    digests = [bytes(16), b"\xff" * 16, bytes(range(16)), bytes(range(240, 256))]
    digests += [rng.randbytes(16) for _ in range(50_000)]
    for position in range(16):
        for value in (0x00, 0x01, 0x7F, 0x80, 0xFF):
            digests.append(bytes(position) + bytes([value]) + b"\x5a" * (15 - position))
    for digest in digests:
        assert mbox_format.uid_text_c(digest) == mbox_format.uid_text_python(digest), digest
    seen = {char for digest in digests[:5000] for char in mbox_format.uid_text_c(digest)}
    assert seen == set(mbox_format._UID_ALPHABET.decode("ascii"))


@needs_uid_c
def test_uid_text_takes_any_16_octet_buffer_and_refuses_the_rest():
    digest = bytes(range(16))
    expected = mbox_format.uid_text_python(digest)
    assert mbox_format.uid_text_c(bytearray(digest)) == expected
    assert mbox_format.uid_text_c(memoryview(b"xx" + digest)[2:]) == expected
    for wrong in (b"", digest[:15], digest + b"\0"):
        with pytest.raises(ValueError):
            mbox_format.uid_text_c(wrong)
    for wrong in (None, "0123456789abcdef", 16):
        with pytest.raises(TypeError):
            mbox_format.uid_text_c(wrong)


# --- header_block: a message's header block (docs/accelerators.md, "The header block") --------
HEADER_TOKENS = [b"\n", b"Received:", b"DATE:x", b"message-ID:", b"Subject", b":", b" ", b"\t",
                 b"x-uidl:", b"STATUS:", b"Content-Length:", b"\x00", b"message_id:",
                 b"message\rid:", b"x"]
"""What the walk looks at: line ends, each name in either case with and without its colon, near
misses (`_` and CR, which `| 0x20` would fold into `-`), continuation whitespace, NUL, other
octets."""
SEPARATOR = b"From s\x00 Wed Dec  2 05:53:22 1992\n"
"""With a NUL: the text's separator lines are translated too."""


def test_the_header_block_is_built_and_used_where_it_can_be():
    assert_built_and_used(mbox_batch.compiled_header_block, mbox_batch.header_block,
                          "qpopper.spool._scan", "the batch scan walks headers with regexes")


@needs_c
def test_every_short_header_block():
    """Every string of up to 4 tokens after a separator line, with the blank line after it
    and the stop at every octet (every fifth for the longer strings), so also where the block
    does not end before it (None)."""
    for n in range(0, 5):
        for parts in itertools.product(HEADER_TOKENS, repeat=n):
            data = SEPARATOR + b"".join(parts) + b"\n\nbody\n"
            eol = len(SEPARATOR)
            for stop in range(eol - 1, len(data) + 1, 1 if n < 3 else 5):
                assert_same_header_block(data, 0, eol, stop)


def random_headers(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randrange(0, 40)):
        name = rng.choice([b"Received", b"received", b"DATE", b"Message-Id", b"Subject",
                           b"X-UIDL", b"Status", b"content-length", b"X-Other", b"Message-I",
                           b"Subject ", b""])
        value = bytes(rng.choice(b"abc \t\x00:") for _ in range(rng.randrange(0, 30)))
        lines.append(name + rng.choice([b":", b"", b": "]) + value + b"\n")
        for _ in range(rng.choice([0, 0, 1, 3])):
            lines.append(rng.choice([b" ", b"\t", b"  "]) + value + b"\n")
    return b"".join(lines)


@needs_c
def test_random_header_blocks_in_a_mapped_spool():
    rng = random.Random(20261206)
    messages, where = [], []
    for _ in range(400):
        at = sum(map(len, messages))
        message = SEPARATOR + random_headers(rng) + rng.choice([b"\n", b""]) + b"body\n\n"
        messages.append(message)
        where.append((at, at + len(SEPARATOR), at + len(message)))
    data = b"".join(messages)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        view = mmap.mmap(f.fileno(), len(data), prot=mmap.PROT_READ)
        for at, eol, nxt in where:
            assert_same_header_block(view, at, eol, nxt)
            assert_same_header_block(view, at, eol, rng.randrange(eol - 1, nxt + 1))
        view.close()


@needs_c
@pytest.mark.parametrize("at, eol, stop", [(-1, 7, 9), (7, 7, 9), (0, 7, 5), (0, 7, 100),
                                           (0, 6, 9), (0, 19, 18)])
def test_a_header_block_outside_the_buffer_or_off_a_line_end_is_refused(at, eol, stop):
    with pytest.raises(ValueError, match="header_block: need"):
        mbox_batch.compiled_header_block(b"From a\nS: x\n\nbody\n", at, eol, stop, True)


CHANGING = r"""
import mmap, os, random, sys
from qpopper.spool import mbox_batch
path, calls = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(path)
view = mmap.mmap(os.open(path, os.O_RDONLY), size, prot=mmap.PROT_READ)
writer = os.open(path, os.O_WRONLY)
rng = random.Random(7)
flips = [i for i in range(32, size) if view[i:i + 1] in (b"\n", b"D", b"X", b" ")]
parent = os.getpid()
pid = os.fork()
if pid == 0:                  # flips line ends and name letters (not the separator's) meanwhile
    while os.getppid() == parent:
        for _ in range(1000):
            os.pwrite(writer, rng.choice([b"\n", b"D", b"X", b" "]), rng.choice(flips))
    os._exit(0)
seen = set()
try:
    for n in range(calls):
        got = mbox_batch.compiled_header_block(view, 0, 32, size, n % 2 == 0)
        if got is not None:
            blank, text, other = got
            assert 32 <= blank <= size and isinstance(text, bytes) and other in (True, False)
            assert len(text) <= 2 * size
        seen.add(got is None)
finally:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print("ok", sorted(seen))
"""


@needs_c
def test_a_header_block_changed_while_it_is_read_is_never_read_or_written_out_of_bounds(
        tmp_path):
    """The spool's owner can write it while the scan reads its map: nothing one step found is
    trusted by the next. Another process flips line ends and name letters of long hashed
    headers while header_block walks them; every answer is None or within bounds, and the
    process does not crash. (Out-of-bounds writes show for sure only under the ASan build of
    docs/fuzzing.md; a lost line end crashed a normal build too.)"""
    spool = tmp_path / "spool"
    headers = b"".join(b"Date: " + b"d" * 4000 + b"\nX-Other: x\n" for _ in range(8))
    spool.write_bytes(b"From s Wed Dec  2 05:53:22 1992\n" + headers + b"\nbody\n")
    result = subprocess.run([sys.executable, "-c", CHANGING, str(spool), "20000"],
                            capture_output=True, timeout=120, cwd=str(REPO))
    assert result.returncode == 0 and result.stdout.startswith(b"ok"), result.stderr[-2000:]


# --- plain_from_lines: the separators' common shape (docs/accelerators.md, "The separator
# shape") ----------------------------------------------------------------------------------------
ENVELOPES = [b"From s Wed Dec  2 05:53:22 1992\n", b"From a@b Sat Jan 13 01:05:34 1996\r\n",
             b"From x y z Mon Feb  1 00:00:00 2026", b"From  Wed Dec  2 05:53:22 1992\r",
             b"From s Wed Dec  2 05:53 1992\n", b"From s Wed Dec  2 05:53:22 PST 1992\n",
             b"From s Wed Dec  2 05:53:22 1992 remote from h\n", b"From s\n",
             b"From Wed Dec  2 05:53:22 1992\n"]
"""The common shape with each of its optional line ends, and shapes only is_from_line's
by-position check (or nothing) accepts."""
MAX_LINE = mbox_batch._MAX_LINE


def lines_check(lines: list[bytes], max_octets: int = MAX_LINE) -> None:
    data = b"".join(lines)
    ats, eols, at = [], [], 0
    for line in lines:
        ats.append(at)
        at += len(line)
        eols.append(at)
    assert_same_plain_from_lines(data, ats, eols, max_octets)


def test_the_separator_shape_is_built_and_used_where_it_can_be():
    assert_built_and_used(mbox_batch.compiled_plain_from_lines, mbox_batch.plain_from_lines,
                          "qpopper.spool._scan", "the batch scan checks separators by regex")


@needs_c
def test_every_octet_at_every_position_of_an_envelope():
    """Each envelope with every octet value put at each of its positions, inserted there, the
    octet there left out, and the envelope cut off there: every way one octet can make or
    break the shape."""
    for envelope in ENVELOPES:
        lines = []
        for i in range(len(envelope) + 1):
            lines += [envelope[:i], envelope[:i] + envelope[i + 1:]]
            for value in range(256):
                octet = bytes([value])
                lines.append(envelope[:i] + octet + envelope[i + 1:])
                lines.append(envelope[:i] + octet + envelope[i:])
        lines_check(lines)


@needs_c
def test_every_short_shape_around_the_date():
    """Every string of up to 4 tokens between `From ` and the date, and after it."""
    tokens = [b" ", b"x", b"\r", b"\n", b"1", b":", b"Wed Dec  2 05:53:22 1992"]
    lines = []
    for n in range(0, 5):
        for parts in itertools.product(tokens, repeat=n):
            middle = b"".join(parts)
            lines += [b"From " + middle + b"\n", b"From s " + middle + b" 05:53:22 1992\n",
                      b"From " + middle + b"Wed Dec  2 05:53:22 1992" + middle[:2]]
    lines_check(lines)


@needs_c
def test_the_longest_line_is_the_limit():
    """A line of max_octets - 1 octets may pass, one of max_octets never does."""
    for length in range(MAX_LINE - 3, MAX_LINE + 3):
        pad = b"x" * (length - len(b"From  Wed Dec  2 05:53:22 1992\n"))
        line = b"From " + pad + b" Wed Dec  2 05:53:22 1992\n"
        assert len(line) == length
        lines_check([line])
        assert mbox_batch.compiled_plain_from_lines(line, [0], [length], MAX_LINE) == (
            b"\x01" if length < MAX_LINE else b"\x00")


@needs_c
def test_random_separator_lines_of_random_spools():
    rng = random.Random(20261206)
    for _ in range(300):
        data = random_spool(rng)
        found = python(data, 0, len(data))
        if found is not None:
            assert_same_plain_from_lines(data, found[0], found[1], MAX_LINE)


@needs_c
@pytest.mark.parametrize("ats, eols", [([0], [0, 1]), ([-1], [3]), ([4], [3]), ([0], [99]),
                                       ([0], [2 ** 70]), ([0], [13]), ([12], [13])])
def test_separator_lines_outside_the_buffer_are_refused(ats, eols):
    """The buffer is 12 octets: an end one past it is refused too."""
    with pytest.raises((ValueError, OverflowError)):
        mbox_batch.compiled_plain_from_lines(b"From a\nbody\n", ats, eols, MAX_LINE)


@pytest.mark.parametrize("ats, eols", [((0,), [6]), ([0], (6,)), ([None], [6]), ([0], ["6"])])
def test_separator_lines_are_lists_of_ints(ats, eols):
    with pytest.raises(TypeError):
        mbox_batch.compiled_plain_from_lines(b"From a\n", ats, eols, MAX_LINE)
