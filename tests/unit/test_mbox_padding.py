"""Empty lines before a spool's first separator are padding, part of no message
(docs/mbox.md, "Padding before the first message"): the scan reads such a spool as it reads it
without them, in the reference scanner, the batch path with the compiled pass and with the
pure-Python one, from memory and from a real file; anything else first is refused as before;
the end-of-file rules and the commit's copy read the format after the padding."""

from __future__ import annotations

import dataclasses
import io
import tempfile

import pytest

from qpopper import limits
from qpopper.spool import mbox, mbox_batch
from qpopper.spool.mbox import Message
from tests.helpers.scan_passes import assert_same_candidates

FROM_SPOOL = (b"From a@b Wed Dec  2 05:53:22 1992\nSubject: one\nReceived: x\n\nbody one\n.\n\n"
              b"From c@d Wed Dec  2 05:53:23 1992\nSubject: two\nStatus: RO\n\nbody two\n\n"
              b"From e@f Thu Dec  3 01:02:03 1992\nSubject: three\n\nbody three\n")
MMDF_SPOOL = (b"\x01\x01\x01\x01\nSubject: one\n\nbody one\n\x01\x01\x01\x01\n"
              b"\x01\x01\x01\x01\nSubject: two\n\nbody two\n\x01\x01\x01\x01\n")
PADDINGS = [b"\n", b"\n\n", b"\r\n", b"\r\n\n\r\n", b"\n" * 3000]
SHIFTED = ("offset", "end", "content_start", "header_end", "body_start", "body_end",
           "trailer_end", "uidl_insert_at")
SHIFTED_PAIRS = ("stripped", "uidl_lines", "status_lines", "stale_content_length")
PASSES = [p for p in (mbox_batch.compiled_candidates, mbox_batch.python_candidates) if p]


def shifted(m: Message, by: int) -> Message:
    changes = {name: getattr(m, name) + by for name in SHIFTED}
    changes.update({name: tuple((a + by, b + by) for a, b in getattr(m, name))
                    for name in SHIFTED_PAIRS})
    return dataclasses.replace(m, **changes)


def rows(messages) -> list[tuple]:
    return [dataclasses.astuple(m) for m in messages]


def scans(data: bytes, **options) -> list[list[Message]]:
    """The reference scan and the batch scan with each pass there is, from memory and from a
    real file."""
    got = []
    with tempfile.TemporaryFile() as real:
        real.write(data)
        real.flush()
        for f in (io.BytesIO(data), real):
            got.append(mbox.scan(f, batch=False, **options))
            for candidates in PASSES:
                saved = mbox_batch.candidates
                mbox_batch.candidates = candidates
                try:
                    got.append(mbox.scan(f, **options))
                finally:
                    mbox_batch.candidates = saved
    return got


@pytest.mark.parametrize("spool", [FROM_SPOOL, MMDF_SPOOL], ids=["from", "mmdf"])
@pytest.mark.parametrize("pad", PADDINGS, ids=lambda p: f"{len(p)}-octets")
@pytest.mark.parametrize("options", [{}, {"old_style_uid": True, "update_status_headers": False},
                                     {"uw_kludge": True, "content_length": False}],
                         ids=["defaults", "old-style", "uw-kludge"])
def test_a_padded_spool_reads_as_it_does_without_the_padding(spool, pad, options):
    want = [shifted(m, len(pad)) for m in mbox.scan(io.BytesIO(spool), batch=False, **options)]
    assert len(want) > 1
    for got in scans(pad + spool, **options):
        assert rows(got) == rows(want)


def test_padding_is_not_sent():
    pad = b"\r\n\n"
    f = io.BytesIO(pad + FROM_SPOOL)
    messages = mbox.scan(f)
    out = bytearray()
    mbox.send_message(f, messages[0], out.extend)
    assert out.startswith(b"Subject: one\r\n")
    assert len(out) - out.count(b"\r\n..") == messages[0].octets
    assert messages[0].offset == len(pad)


@pytest.mark.parametrize("data", [b"\n", b"\n\n\r\n", b"\r\n" * 40000])
def test_a_spool_of_empty_lines_only_has_no_messages(data):
    for got in scans(data):
        assert got == []


@pytest.mark.parametrize("data", [
    b"\nxyz\n" + FROM_SPOOL,                # a line that is not empty, then a separator
    b"\r\r\n" + FROM_SPOOL,                 # CR CR LF is no empty line
    b"\n \n" + FROM_SPOOL,
    b"\n\r" + FROM_SPOOL,                   # a bare CR
    b"\nFrom nobody\n\n" + FROM_SPOOL,      # `From ` without a date
    b"\n" + b"x" * 2000 + b"\n" + MMDF_SPOOL,
    b"\n\n" + FROM_SPOOL[:5] + b"x" * limits.MAX_SPOOL_LINE_OCTETS + FROM_SPOOL[5:],
    b"\n\x01" + b"x" * limits.MAX_SPOOL_LINE_OCTETS + b"\n",
], ids=["text", "cr-cr-lf", "space", "bare-cr", "no-date", "long-line", "long-from",
        "long-mmdf"])
def test_anything_else_before_the_first_separator_is_refused_as_before(data):
    for f in (io.BytesIO(data),):
        for batch in (True, False):
            with pytest.raises(mbox.MboxFormatError) as info:
                mbox.scan(f, batch=batch)
            assert info.value.offset == 0
            assert info.value.render() == (
                b"-ERR [SYS/PERM] Unable to process From lines (envelopes), change "
                b"recognition modes or check for corrupted mail drop.\r\n")


def test_padding_longer_than_a_read_and_a_crlf_cut_by_one():
    """The padding is read in chunks; a CRLF cut by a chunk's end is still one empty line."""
    for pad in (b"\n" * (limits.COPY_CHUNK_OCTETS - 1) + b"\r\n",
                b"\n" * (limits.MAX_SPOOL_LINE_OCTETS - 1) + b"\r\n",
                b"\r\n" * (limits.COPY_CHUNK_OCTETS + 7)):
        data = pad + FROM_SPOOL
        assert mbox.leading_padding(lambda at, n: data[at:at + n], len(data)) == len(pad)
        want = [shifted(m, len(pad)) for m in mbox.scan(io.BytesIO(FROM_SPOOL))]
        assert rows(mbox.scan(io.BytesIO(data))) == rows(want)


def test_the_passes_agree_from_the_padding_on():
    if len(PASSES) < 2:
        pytest.skip("qpopper/spool/_scan.c is not built")
    for pad in PADDINGS:
        data = pad + FROM_SPOOL
        assert mbox_batch.python_candidates(data, 0, len(data)) is None   # as before: refused
        assert_same_candidates(data, 0, len(data))
        assert_same_candidates(data, len(pad), len(data))


def test_only_the_file_start_is_passed_over():
    """A region scanned after others (new mail) must still start with its separator."""
    data = FROM_SPOOL + b"\n" + FROM_SPOOL
    with pytest.raises(mbox.MboxFormatError):
        mbox.scan(io.BytesIO(data), start=len(FROM_SPOOL))


def fd_of(data: bytes):
    f = tempfile.TemporaryFile()
    f.write(data)
    f.flush()
    return f


@pytest.mark.parametrize("pad", [b"\n", b"\r\n\n"])
def test_the_format_is_read_after_the_padding(pad):
    """padding_after, closing_octets, file_head: what follows the end of a padded spool is
    what follows the end of the same spool without padding, for MMDF (an open last message
    gets its trailer) as for From_."""
    open_mmdf = MMDF_SPOOL + b"\x01\x01\x01\x01\nSubject: open\n\nno trailer\n"
    for spool in (FROM_SPOOL, MMDF_SPOOL, open_mmdf, MMDF_SPOOL[:-1]):
        with fd_of(spool) as plain, fd_of(pad + spool) as padded:
            a, b = plain.fileno(), padded.fileno()
            assert mbox.file_head(b, len(pad + spool)) == mbox.file_head(a, len(spool))
            assert mbox.padding_of(b, len(pad + spool)) == len(pad)
            for open_message in (None, False, True):
                assert (mbox.padding_after(b, len(pad + spool), open_message=open_message)
                        == mbox.padding_after(a, len(spool), open_message=open_message))
            assert (mbox.closing_octets(b, len(pad + spool), mbox.scan(padded))
                    == mbox.closing_octets(a, len(spool), mbox.scan(plain)))
            assert (mbox.closing_counted(b, len(pad + spool))
                    == mbox.closing_counted(a, len(spool)))
    with fd_of(pad + open_mmdf) as padded:
        assert (mbox.closing_counted(padded.fileno(), len(pad + open_mmdf))
                == b"\x01\x01\x01\x01\n")


def test_a_file_cut_while_its_padding_is_read_has_none():
    assert mbox.leading_padding(lambda at, n: b"", 10) == 0
    assert mbox.leading_padding(lambda at, n: b"\n\n"[at:at + n], 10) == 0


CR_CR_LF_PADS = [b"\r\r\n", b"\n\r\r\n", b"\r\n\r\r\n\n", b"\r\r\n\n", b"\n\r\n\r\r\n\r\n"]


@pytest.mark.parametrize("pad", CR_CR_LF_PADS + PADDINGS[:4], ids=repr)
def test_every_path_reads_cr_cr_lf_as_no_empty_line(pad):
    """One rule for an empty line (LF or CRLF alone) in the scan, both passes, the padding
    before the first separator and the empty lines the commit leaves out before a `From `
    line: CR CR LF is content. A spool starting with it is refused by every scan; after mail,
    the `From ` line it precedes is no separator, so none of it may be left out."""
    empty = b"\r\r\n" not in pad
    data = pad + FROM_SPOOL
    with fd_of(data) as f:
        fd = f.fileno()
        assert mbox.padding_of(fd, len(data)) == (len(pad) if empty else 0)
        assert mbox.empty_lines_before_from(fd, 0, len(data)) == (len(pad) if empty else 0)
    if empty:
        want = [shifted(m, len(pad)) for m in mbox.scan(io.BytesIO(FROM_SPOOL))]
        for got in scans(data):
            assert rows(got) == rows(want)
    else:
        for batch in (True, False):
            with pytest.raises(mbox.MboxFormatError):
                mbox.scan(io.BytesIO(data), batch=batch)
    if len(PASSES) == 2:
        assert_same_candidates(data, 0, len(data))
    # the same octets after a message: the commit leaves out only empty lines right before a
    # line the scan of the whole file reads as a separator (after CR CR LF it is content)
    first = FROM_SPOOL[:FROM_SPOOL.index(b"From c@d")]
    whole = first + pad + FROM_SPOOL
    at = len(first) + len(pad)
    with fd_of(whole) as f:
        skip = mbox.empty_lines_before_from(f.fileno(), len(first), len(whole))
        offsets = [m.offset for m in mbox.scan(f)]
    assert skip == (len(pad) if empty else 0)
    assert (at in offsets) == whole[:at].endswith((b"\n\n", b"\n\r\n"))
    assert not skip or at in offsets
    if len(PASSES) == 2:
        assert_same_candidates(whole, 0, len(whole))


def test_empty_lines_past_one_part_are_left_out_as_the_scan_passes_them():
    """The commit's leave-out before a `From ` line reads on as the scan's padding does: past
    one COPY_CHUNK_OCTETS part of empty lines it left nothing out (the lines were copied, to
    become empty lines of the last kept message)."""
    import tempfile
    from qpopper import limits
    first = b"From c@d Wed Dec  2 05:53:22 1992\nSubject: x\n\nbody\n"
    for pad in (b"\n" * (limits.COPY_CHUNK_OCTETS + 1),
                b"\r\n" * (limits.COPY_CHUNK_OCTETS // 2) + b"\n",
                b"\n" * (limits.COPY_CHUNK_OCTETS - 1) + b"\r\n"):
        data = pad + first
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.flush()
            assert mbox.padding_of(f.fileno(), len(data)) == len(pad)
            assert mbox.empty_lines_before_from(f.fileno(), 0, len(data)) == len(pad)


def test_a_file_cut_to_a_lone_cr_after_empty_lines_ends_the_read():
    """A read at a later part that returns a lone CR (the file cut there since its size was
    taken) starts no empty line: the count ends there, it does not read the same octet again
    forever (review 136)."""
    from qpopper.spool import mbox_format
    real = b"\n" * 5000 + b"\r"
    reads = []

    def read(offset: int, n: int) -> bytes:
        reads.append(offset)
        assert len(reads) < 50, reads[-5:]
        return real[offset:offset + n]
    assert mbox_format.leading_padding(read, 100_000) == 0
    reads.clear()
    assert mbox_format._empty_lines_at(read, 100_000) == 5000
