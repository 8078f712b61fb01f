"""mbox parsing, RETR/TOP output and write-back (reference S11-S17, P12/P14/P15, §2.4, §7.9).

Golden spools in tests/golden/<name>.mbox are hand-written; tests/golden/<name>/ holds the
expected UID listing (list.txt) and the expected RETR/TOP bytes (<n>.retr, <n>.top<k>), also
written by hand. Generated UIDs are checked against an independent implementation of §2.4
(below; its step 3 in tests/helpers/mbox_golden.py).
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qpopper import limits
from qpopper.pop3.responses import RespCode
from qpopper.spool import mbox, mbox_scan
from tests.helpers.mbox_golden import GOLDEN, GOLDEN_SPOOLS, SCAN_OPTIONS, oracle_encode
from tests.helpers.repo import REPO

MKSPOOL = Path("/work/shared/bench/mkspool.py")


def test_golden_spools_are_present():
    """A checkout without the fixtures must fail here, not skip every golden test silently."""
    assert set(GOLDEN_SPOOLS) >= {"basic", "content_length", "duplicates", "malformed", "mmdf",
                                  "nul_nofinal", "uw"}


# --- independent oracles -----------------------------------------------------------------------

def split_lines(data: bytes) -> list[bytes]:
    return re.findall(rb"[^\n]*\n|[^\n]+$", data)


def oracle_uid(message: bytes) -> str:
    """§2.4 step 2 (new style, no session counter) over one message's raw bytes."""
    lines = split_lines(message.replace(b"\0", b" "))
    sep = lines[0]
    md = hashlib.md5(sep)
    hashed = False
    for line in lines[1:]:
        if line in (b"\n", b"\r\n"):
            break
        low = line.lower()
        if line.startswith(b"Content-Length:"):
            md.update(line)
            hashed = False
        elif low.startswith((b"received:", b"date:", b"message-id:", b"subject:")):
            md.update(line)
            hashed = True
        elif line[:1] in (b" ", b"\t"):
            if hashed:
                md.update(line)
        else:
            hashed = False
    md.update(sep)
    return oracle_encode(md.digest())


def naive_messages(data: bytes) -> list[tuple[int, bytes]]:
    """Split a From_ spool (no Content-Length headers) line by line per S11:
    a separator is a valid From line at the start or after an empty line."""
    starts = []
    pos = 0
    prev_empty = True
    for line in split_lines(data):
        if prev_empty and mbox.is_from_line(line):
            starts.append(pos)
        prev_empty = line in (b"\n", b"\r\n")
        pos += len(line)
    bounds = starts + [len(data)]
    return [(bounds[i], data[bounds[i]:bounds[i + 1]]) for i in range(len(starts))]


def without_framing(message: bytes) -> bytes:
    """A From_ message without its framing line (docs/mbox.md, "The framing line"): one empty
    line at its end, before the next separator or the end of the file, is not content."""
    lines = split_lines(message)
    if len(lines) >= 2 and lines[-1] in (b"\n", b"\r\n"):
        return message[:-len(lines[-1])]
    return message


def naive_retr(message: bytes, uid: str) -> bytes:
    """RETR data per P14, line by line: headers without Content-Length/X-UIDL, X-UIDL before
    Status or at the end of the headers, CRLF (a last line's bare CR as the CR of its CRLF),
    NUL as space, dot-stuffing."""
    lines = split_lines(message)[1:]
    out, in_headers, inserted = [], True, False
    uidl = b"X-UIDL: " + uid.encode() + b"\r\n"
    for line in lines:
        text = line.replace(b"\0", b" ")
        text = text[:-2] if text.endswith(b"\r\n") else text.rstrip(b"\n")
        if not line.endswith(b"\n") and text.endswith(b"\r"):
            text = text[:-1]            # a last line's bare CR: the CR of its CRLF
        if in_headers:
            if line in (b"\n", b"\r\n"):
                in_headers = False
                if not inserted:
                    out.append(uidl)
                    inserted = True
            elif line.startswith(b"Content-Length:") or line.lower().startswith(b"x-uidl:"):
                continue
            elif line.lower().startswith(b"status:") and not inserted:
                out.append(uidl)
                inserted = True
        out.append((b"." + text if text.startswith(b".") else text) + b"\r\n")
    if not inserted:
        out.append(uidl)
    return b"".join(out)


def unstuff(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def retr(f, msg, body_lines=None) -> bytes:
    out = []
    mbox.send_message(f, msg, out.append, body_lines)
    return b"".join(out)


def scan_path(path: Path, **kw):
    with open(path, "rb") as f:
        return mbox.scan(f, **kw)


def write_back(src: Path, dst: Path, *, retrieved=lambda m: m.retrieved,
               update_status_headers=True, messages=None) -> None:
    with open(src, "rb") as f, open(dst, "wb") as out:
        for m in messages if messages is not None else mbox.scan(f):
            mbox.copy_for_update(f, m, out.write, retrieved=retrieved(m),
                                 update_status_headers=update_status_headers)


# --- golden spools ---------------------------------------------------------------------------------

def read_listing(name: str) -> list[tuple[int, str, set[str]]]:
    rows = []
    for line in (GOLDEN / name / "list.txt").read_text().splitlines():
        number, uid, flags = line.split(" ")
        rows.append((int(number), uid, set() if flags == "-" else set(flags.split(","))))
    return rows


@pytest.mark.parametrize("name", GOLDEN_SPOOLS)
def test_golden_listing_uids_and_flags(name):
    messages = scan_path(GOLDEN / f"{name}.mbox", **SCAN_OPTIONS.get(name, {}))
    got = [(m.number, m.uid, {flag for flag, on in (("header", m.uid_from_header),
                                                    ("retrieved", m.retrieved),
                                                    ("hidden", m.hidden)) if on})
           for m in messages]
    assert got == read_listing(name)


@pytest.mark.parametrize("name", GOLDEN_SPOOLS)
def test_golden_retr_and_top_bytes(name):
    expected_files = sorted((GOLDEN / name).glob("*.retr")) + sorted((GOLDEN / name).glob("*.top*"))
    assert expected_files
    with open(GOLDEN / f"{name}.mbox", "rb") as f:
        messages = mbox.scan(f, **SCAN_OPTIONS.get(name, {}))
        for path in expected_files:
            number, kind = path.name.split(".")
            body_lines = None if kind == "retr" else int(kind[3:])
            assert retr(f, messages[int(number) - 1], body_lines) == path.read_bytes(), path.name


@pytest.mark.parametrize("name", GOLDEN_SPOOLS)
def test_golden_octets_equal_retr_bytes(name):
    """LIST/STAT sizes are exactly the RETR bytes (un-stuffed, no terminator), X-UIDL included,
    on spools never updated; and match the hand-written expected files."""
    with open(GOLDEN / f"{name}.mbox", "rb") as f:
        messages = mbox.scan(f, **SCAN_OPTIONS.get(name, {}))
        total_retr = 0
        for m in messages:
            data = unstuff(retr(f, m))
            assert m.octets == len(data), m.number
            assert m.uidl_line in data.split(b"\r\n\r\n")[0] + b"\r\n"
            expected = GOLDEN / name / f"{m.number}.retr"
            if expected.exists():
                assert m.octets == len(unstuff(expected.read_bytes()))
            total_retr += len(data)
        assert sum(m.octets for m in messages) == total_retr


@pytest.mark.parametrize("name", GOLDEN_SPOOLS)
def test_golden_generated_uids_follow_reference_algorithm(name):
    data = (GOLDEN / f"{name}.mbox").read_bytes()
    messages = scan_path(GOLDEN / f"{name}.mbox", **SCAN_OPTIONS.get(name, {}))
    seen = set()
    for m in messages:
        raw = data[m.offset:m.end]
        if m.uid_from_header:
            continue
        if oracle_uid(raw) in seen:                  # a twin: derived, must still differ
            assert m.uid not in seen
        else:
            assert m.uid == oracle_uid(raw)
            assert len(m.uid) == 20 and all(0x21 <= ord(c) <= 0x70 or c == "~" for c in m.uid)
            assert "." not in m.uid
        seen.add(oracle_uid(raw))
        seen.add(m.uid)


def test_equal_messages_derive_their_uids_without_trying_the_taken_again(monkeypatch):
    """500 equal messages: each gets the next free re-derivation of the shared digest, one
    derivation per message (trying every taken one again was 125,250: a mailbox of copies
    made the scan quadratic)."""
    one = b"From a Wed Dec  2 05:53:22 1992\nSubject: same\n\nbody\n\n"
    real = mbox_scan.encode_uid
    calls = []
    monkeypatch.setattr(mbox_scan, "encode_uid", lambda *args: calls.append(1) or real(*args))
    first = mbox.scan(io.BytesIO(one))[0].uid
    calls.clear()
    for batch in (True, False):
        uids = [m.uid for m in mbox.scan(io.BytesIO(one * 500), batch=batch)]
        assert uids[0] == first and len(set(uids)) == 500
        assert len(calls) == 500
        calls.clear()


def test_golden_write_back_adds_uidl_after_from_line_and_status():
    """S16/S17: X-UIDL right after the From line (old X-UIDL lines dropped), `Status: RO` for a
    retrieved message without Status, an existing Status kept when not retrieved, `Status: U`
    when none; the last message gets the empty line that keeps appended mail separate."""
    retrieved = {1: True, 2: False, 3: False}
    with open(GOLDEN / "basic.mbox", "rb") as f:
        out = []
        for m in mbox.scan(f):
            mbox.copy_for_update(f, m, out.append, retrieved=retrieved[m.number],
                                 update_status_headers=True)
    assert b"".join(out) == (GOLDEN / "basic" / "update.mbox").read_bytes()


# --- envelope recognition --------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    b"From user Wed Dec  2 05:53 1992\n",
    b"From user Wed Dec  2 05:53:22 1992\n",
    b"From user Wed Dec  2 05:53 PST 1992\n",
    b"From user Wed Dec  2 05:53:22 PST 1992\n",
    b"From user Wed Dec  2 05:53 -0700 1992\n",
    b"From user Wed Dec  2 05:53:22 -0700 1992\n",
    b"From user Wed Dec  2 05:53 1992 PST\n",
    b"From user Wed Dec  2 05:53:22 1992 PST\n",
    b"From user Wed Dec  2 05:53 1992 -0700\n",
    b"From user Wed Dec  2 05:53:22 1992 -0700\n",
    b"From user@host.example Wed Nov 25 10:00:00 2026 remote from uucphost\n",
    b"From user@host Wed Nov 25 10:00:00 2026\r\n",
    b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n",
    b"From  Wed Nov 25 10:00:00 2026\n",
])
def test_from_line_with_ctime_date_is_a_separator(line):
    assert mbox.is_from_line(line)


@pytest.mark.parametrize("line", [
    b"From here we go: no date at all\n",
    b"From user\n",
    b"From user Wed Nov 25 2026\n",
    b"From user Wed Nov 25 10-00-00 2026\n",
    b">From user Wed Nov 25 10:00:00 2026\n",
    b"from user Wed Nov 25 10:00:00 2026\n",
    b"From:user Wed Nov 25 10:00:00 2026\n",
    b"From " + b"x" * limits.MAX_SPOOL_LINE_OCTETS + b" Wed Nov 25 10:00:00 2026\n",
])
def test_lines_that_are_not_separators(line):
    assert not mbox.is_from_line(line)


def test_from_line_in_body_splits_only_after_an_empty_line(tmp_path):
    spool = tmp_path / "spool"
    spool.write_bytes(b"From a@x Wed Nov 25 10:00:00 2026\nSubject: a\n\ntext\n"
                      b"From b@x Wed Nov 25 10:00:00 2026\n"       # no empty line before
                      b"\nFrom c@x Wed Nov 25 10:00:00 2026\nSubject: c\n\nc\n")
    messages = scan_path(spool)
    assert [m.offset for m in messages] == [0, spool.read_bytes().index(b"From c@x")]


@pytest.mark.parametrize("long_line", [limits.MAX_SPOOL_LINE_OCTETS - 1,
                                       limits.MAX_SPOOL_LINE_OCTETS, 5000])
def test_line_after_an_over_long_line_is_never_a_separator(tmp_path, long_line):
    """Qpopper reads lines in 1024-octet pieces; the tail of a long line must not pass for the
    empty line that would make the next `From ` line a separator."""
    spool = tmp_path / "spool"
    spool.write_bytes(b"From a@x Wed Nov 25 10:00:00 2026\nSubject: a\n\n"
                      + b"y" * long_line + b"\n"
                      b"From b@x Wed Nov 25 10:00:00 2026\nstill message a\n")
    [m] = scan_path(spool)
    assert m.end == spool.stat().st_size


def test_content_length_ignored_when_the_option_is_off(tmp_path):
    """Without content-length handling the header is an ordinary line (kept, counted) and the
    Solaris-style body splits at its unescaped From line."""
    spool = tmp_path / "spool"
    spool.write_bytes((GOLDEN / "content_length.mbox").read_bytes())
    with open(spool, "rb") as f:
        messages = mbox.scan(f, content_length=False)
        assert len(messages) == 4
        first = retr(f, messages[0])
        assert b"\r\nContent-Length: " in first and first.endswith(b"\r\n\r\nFirst line\r\n")
        assert [m.octets for m in messages] == [len(unstuff(retr(f, m))) for m in messages]


def test_spool_not_starting_with_envelope_is_refused_with_sys_perm(tmp_path):
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: no envelope\n\nbody\nFrom a Wed Nov 25 10:00:00 2026\n\nx\n")
    with pytest.raises(mbox.MboxFormatError) as info:
        scan_path(spool)
    assert info.value.code is RespCode.SYS_PERM
    assert info.value.render() == (
        b"-ERR [SYS/PERM] Unable to process From lines (envelopes), change recognition modes "
        b"or check for corrupted mail drop.\r\n")


def test_empty_spool_has_no_messages(tmp_path):
    spool = tmp_path / "spool"
    spool.write_bytes(b"")
    assert scan_path(spool) == []


# --- UIDs -----------------------------------------------------------------------------------------

def test_uids_are_stable_across_scans_and_sessions(tmp_path):
    spool = tmp_path / "spool"
    spool.write_bytes((GOLDEN / "basic.mbox").read_bytes() + b"\n"
                      + (GOLDEN / "duplicates.mbox").read_bytes())
    first = [m.uid for m in scan_path(spool)]
    assert len(set(first)) == len(first) == 7
    code = ("import sys; from qpopper.spool import mbox; f = open(sys.argv[1], 'rb'); "
            "print('\\n'.join(m.uid for m in mbox.scan(f))); f.close()")
    other_process = subprocess.run([sys.executable, "-c", code, str(spool)], check=True,
                                   capture_output=True, text=True, timeout=60,
                                   cwd=REPO).stdout.split("\n")[:-1]
    assert other_process == first == [m.uid for m in scan_path(spool)]


def test_unique_num_changes_generated_uids_only_when_status_headers_are_saved(tmp_path):
    spool = tmp_path / "spool"
    spool.write_bytes((GOLDEN / "content_length.mbox").read_bytes())
    plain = [m.uid for m in scan_path(spool)]
    counted = [m.uid for m in scan_path(spool, unique_num=1000)]
    assert counted != plain and len(set(counted)) == 3
    assert [m.uid for m in scan_path(spool, unique_num=1000, update_status_headers=False)] == plain


def test_old_style_uids_are_32_hex_digits_of_md5(tmp_path):
    spool = tmp_path / "spool"
    raw = (b"From a@x Wed Nov 25 10:00:00 2026\nReceived: by x\n\tcontinued\nSubject: s\n"
           b"Content-Length: 2\nX-Other: y\n\nab\n")
    spool.write_bytes(raw)
    [m] = scan_path(spool, old_style_uid=True)
    expected = hashlib.md5(b"From a@x Wed Nov 25 10:00:00 2026\n" b"Received: by x\n"
                           b"Subject: s\n" b"Content-Length: 2\n").hexdigest()
    assert m.uid == expected


@pytest.mark.parametrize("value,kept", [
    (b"a" * 13, True), (b"a" * 32, True), (b"a" * 12, False), (b"a" * 33, False),
    (b"abc def ghi jkl", False), (b"\x7fbcdefghijklmn", False),
])
def test_existing_x_uidl_kept_when_13_to_32_printable_chars(tmp_path, value, kept):
    spool = tmp_path / "spool"
    spool.write_bytes(b"From a@x Wed Nov 25 10:00:00 2026\nX-UIDL:  " + value + b"\n\nbody\n")
    [m] = scan_path(spool)
    assert m.uid_from_header is kept
    assert (m.uid == value.decode("latin-1")) is kept


def test_region_scan_continues_numbering_and_avoids_taken_uids(tmp_path):
    spool = tmp_path / "spool"
    twin = b"From t@x Wed Nov 25 10:00:00 2026\nSubject: same\n\nx\n\n"
    spool.write_bytes(twin + twin)
    with open(spool, "rb") as f:
        whole = mbox.scan(f)
        first = mbox.scan(f, end=whole[1].offset)
        rest = mbox.scan(f, start=whole[1].offset, first_number=2,
                         taken_uids={m.uid for m in first})
    assert [(m.number, m.uid, m.offset, m.octets) for m in first + rest] == \
        [(m.number, m.uid, m.offset, m.octets) for m in whole]


# --- uw-kludge ---------------------------------------------------------------------------------------

def test_uw_kludge_off_shows_the_pseudo_message():
    messages = scan_path(GOLDEN / "uw.mbox")
    assert [m.hidden for m in messages] == [False, False]


def test_uw_kludge_needs_two_marks_and_message_one(tmp_path):
    one_mark = (b"From a@x Wed Nov 25 10:00:00 2026\nSubject: DO NOT DELETE this, it is mine\n"
                b"\nbody\n\n")
    pseudo = (GOLDEN / "uw.mbox").read_bytes().split(b"\n\nFrom dave")[0] + b"\n\n"
    spool = tmp_path / "spool"
    spool.write_bytes(one_mark + pseudo)
    assert [m.hidden for m in scan_path(spool, uw_kludge=True)] == [False, False]
    spool.write_bytes(pseudo + one_mark)
    assert [m.hidden for m in scan_path(spool, uw_kludge=True)] == [True, False]


# --- write-back round trips ----------------------------------------------------------------------

@pytest.mark.parametrize("name", GOLDEN_SPOOLS)
@pytest.mark.parametrize("update_status_headers", [True, False])
def test_write_back_round_trip_keeps_uids_and_messages(tmp_path, name, update_status_headers):
    src = GOLDEN / f"{name}.mbox"
    dst = tmp_path / "written"
    options = SCAN_OPTIONS.get(name, {})
    before = scan_path(src, **options)
    write_back(src, dst, update_status_headers=update_status_headers,
               messages=before)
    after = scan_path(dst, **options)
    assert [m.uid for m in after] == [m.uid for m in before]
    assert [m.hidden for m in after] == [m.hidden for m in before]
    assert all(m.uid_from_header for m in after if not m.hidden) or not update_status_headers
    with open(src, "rb") as f1, open(dst, "rb") as f2:
        for b, a in zip(before, after):
            old, new = retr(f1, b), retr(f2, a)
            old_body = old.split(b"\r\n\r\n", 1)[1:]
            new_body = new.split(b"\r\n\r\n", 1)[1:]
            if old_body:                   # bodies identical but for the closing empty line
                assert new_body[0] in (old_body[0], old_body[0] + b"\r\n")
    # a second write-back changes nothing: the first one is a fixed point
    again = tmp_path / "again"
    write_back(dst, again, update_status_headers=update_status_headers, messages=after)
    assert again.read_bytes() == dst.read_bytes()


def test_write_back_without_status_updates_is_byte_identical(tmp_path):
    src = GOLDEN / "basic.mbox"
    dst = tmp_path / "written"
    write_back(src, dst, update_status_headers=False, retrieved=lambda m: True)
    # only the last message, which lacked its closing empty line, gains one
    assert dst.read_bytes() == src.read_bytes() + b"\n"


def test_write_back_replaces_status_only_when_retrieved(tmp_path):
    src = tmp_path / "spool"
    src.write_bytes(b"From a@x Wed Nov 25 10:00:00 2026\nStatus: O\nX-UIDL: keep-this-uid-01\n"
                    b"\nbody\n\n")
    for retrieved, status in ((True, b"Status: RO\n"), (False, b"Status: O\n")):
        dst = tmp_path / "out"
        write_back(src, dst, retrieved=lambda m: retrieved)
        assert dst.read_bytes() == (b"From a@x Wed Nov 25 10:00:00 2026\nX-UIDL: keep-this-uid-01\n"
                                    + status + b"\nbody\n\n")


def test_mail_appended_after_written_back_messages_stays_separate(tmp_path):
    """A kept last message without final newline or MMDF trailer must not swallow the mail
    written after it (the update writes kept messages, then mail delivered in the session)."""
    new_mail = b"From new@x Wed Nov 25 11:00:00 2026\nSubject: new\n\nnew mail\n\n"
    mmdf_new = b"\x01\x01\x01\x01\nSubject: new\n\nnew mail\n\x01\x01\x01\x01\n"
    truncated_mmdf = b"\x01\x01\x01\x01\nSubject: cut\n\nno trailer"
    cases = [((GOLDEN / "nul_nofinal.mbox").read_bytes(), new_mail),
             ((GOLDEN / "malformed.mbox").read_bytes(), new_mail),
             (truncated_mmdf, mmdf_new)]
    for spool_bytes, appended in cases:
        for update in (True, False):
            src, dst = tmp_path / "src", tmp_path / "dst"
            src.write_bytes(spool_bytes)
            before = scan_path(src)
            write_back(src, dst, update_status_headers=update)
            with open(dst, "ab") as out:
                out.write(appended)
            after = scan_path(dst)
            assert len(after) == len(before) + 1
            assert [m.uid for m in after[:-1]] == [m.uid for m in before]
            with open(dst, "rb") as f:
                assert retr(f, after[-1]).endswith(b"\r\n\r\nnew mail\r\n")


def test_a_last_line_ending_in_a_bare_cr_is_sent_as_after_the_write_back(tmp_path):
    """The write-back adds the LF a last line lacks: a bare CR there becomes a CRLF, so RETR
    sends it as one (docs/mbox.md, "The framing line"), in LIST's octets, before and after."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for last in (b"last\r", b"cr\r\r", b"Subject: headers only\r"):
        body = last if last.startswith(b"Subject") else b"Subject: b\n\n" + last
        src.write_bytes(b"From a@x Wed Nov 25 10:00:00 2026\nSubject: a\n\none\n\n"
                        b"From b@x Wed Nov 25 10:00:00 2026\n" + body)
        for update in (True, False):
            write_back(src, dst, update_status_headers=update)
            sent = []
            for path in (src, dst):
                with open(path, "rb") as f:
                    m = scan_path(path)[-1]
                    sent.append(retr(f, m))
                    assert m.octets == len(sent[-1])
            assert last + b"\n" in sent[0]
            assert sent[0].replace(b"Status: U\r\n", b"") == sent[1].replace(b"Status: U\r\n", b"")


def test_mmdf_trailer_in_headers_junk_and_missing_last_trailer(tmp_path):
    sep = b"\x01\x01\x01\x01\n"
    spool = tmp_path / "spool"
    data = (sep + b"Subject: no blank line\n" + sep + b"junk between\n"
            + sep + b"Subject: b\n\nbody b\n" + sep
            + sep + b"Subject: c\n\nno trailer at the end\n")
    spool.write_bytes(data)
    with open(spool, "rb") as f:
        a, b, c = mbox.scan(f)
        assert (a.offset, a.end) == (0, data.index(sep + b"Subject: b"))
        assert (b.end, c.end) == (data.rindex(sep + b"Subject: c"), len(data))
        assert retr(f, a) == b"Subject: no blank line\r\n" + a.uidl_line
        assert retr(f, b) == b"Subject: b\r\n" + b.uidl_line + b"\r\nbody b\r\n"
        assert retr(f, c) == b"Subject: c\r\n" + c.uidl_line + b"\r\nno trailer at the end\r\n"
        assert [m.octets for m in (a, b, c)] == [len(retr(f, m)) for m in (a, b, c)]
    dst = tmp_path / "dst"
    write_back(spool, dst, update_status_headers=False)
    assert dst.read_bytes() == data + sep            # the missing trailer is added
    write_back(spool, dst)
    assert [m.uid for m in scan_path(dst)] == [a.uid, b.uid, c.uid]
    assert b"junk between\n" in dst.read_bytes()


@pytest.mark.parametrize("update", [True, False])
def test_spool_cut_right_after_a_from_line(tmp_path, update):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"From a@x Wed Nov 25 10:00:00 2026\nSubject: a\n\na\n\n"
                    b"From b@x Wed Nov 25 10:00:00 2026")
    before = scan_path(src)
    with open(src, "rb") as f:
        assert retr(f, before[1]) == before[1].uidl_line
        assert before[1].octets == len(before[1].uidl_line)
    write_back(src, dst, update_status_headers=update)
    after = scan_path(dst)
    assert [m.uid for m in after] == [m.uid for m in before]


# --- streaming -----------------------------------------------------------------------------------------

def test_retr_of_a_big_message_is_a_few_big_writes(tmp_path):
    spool = tmp_path / "spool"
    body = b"".join(b"line %d of a long message\n" % i for i in range(60000))
    spool.write_bytes(b"From a@x Wed Nov 25 10:00:00 2026\nSubject: big\n\n" + body + b"\n"
                      b"From b@x Wed Nov 25 10:00:00 2026\nSubject: small\n\nhi\n")
    with open(spool, "rb") as f:
        big, small = mbox.scan(f)
        writes = []
        mbox.send_message(f, big, writes.append)
        assert len(b"".join(writes)) == big.octets
        assert len(writes) <= big.octets // limits.COPY_CHUNK_OCTETS + 2
        assert max(map(len, writes)) <= 3 * limits.COPY_CHUNK_OCTETS
        writes = []
        mbox.send_message(f, small, writes.append)
        assert len(writes) == 1


def test_top_counts_body_lines_across_chunks(tmp_path):
    spool = tmp_path / "spool"
    lines = [b"%07d" % i + b"x" * (i % 200) + b"\n" for i in range(5000)]
    spool.write_bytes(b"From a@x Wed Nov 25 10:00:00 2026\nSubject: top\n\n" + b"".join(lines))
    with open(spool, "rb") as f:
        [m] = mbox.scan(f)
        for k in (0, 1, 999, 4999, 5000, 9999):
            got = retr(f, m, k).split(b"\r\n\r\n", 1)[1]
            assert got == b"".join(line[:-1] + b"\r\n" for line in lines[:k])


# --- property test against the line-by-line oracle ---------------------------------------------

def random_spool(rng: random.Random, chunk: int) -> bytes:
    parts = []
    for i in range(rng.randint(1, 12)):
        sep_variant = rng.choice([b"", b" remote from uucp", b""])
        parts.append(b"From u%d@x Wed Nov 25 10:%02d:00 2026%s\n" % (i, i % 60, sep_variant))
        eol = rng.choice([b"\n", b"\n", b"\r\n"])
        headers = [b"Subject: message %d %d" % (i, rng.randrange(10 ** 9)),
                   b"Date: Wed, 25 Nov 2026 10:00:00 +0000"]
        if rng.random() < 0.3:
            headers.append(b"X-UIDL: " + (b"u%d-" % i) * rng.randint(2, 9))
        if rng.random() < 0.3:
            headers.insert(rng.randrange(len(headers) + 1), b"Status: " + rng.choice([b"RO", b"U"]))
        if rng.random() < 0.2:
            headers.append(b"Received: by x;\n\tcontinued with\0nul")
        parts.append(b"".join(h + eol for h in headers) + eol)
        body = []
        target = rng.choice([10, 500, chunk - 50, chunk + 3, 2 * chunk + rng.randrange(200)])
        size = 0
        while size < target:
            kind = rng.random()
            if kind < 0.05:
                line = b"From here without date"
            elif kind < 0.08:
                line = b">From u Wed Nov 25 10:00:00 2026"
            elif kind < 0.12:
                line = rng.choice([b".", b"..", b".x", b""])
            elif kind < 0.14:
                line = b"bare\rcr and \0 nul"
            elif kind < 0.15:
                line = b"y" * rng.randint(limits.MAX_SPOOL_LINE_OCTETS, 3000)
            else:
                line = b"w" * rng.randint(0, 120)
            body.append(line + rng.choice([eol, eol, b"\n"]))
            size += len(body[-1])
        parts.append(b"".join(body))
        parts.append(b"\n")
    data = b"".join(parts)
    if rng.random() < 0.3:
        data = data.rstrip(b"\n")
    return data


@pytest.mark.timeout(120)
@pytest.mark.parametrize("header_window", [None, 0])
def test_scan_and_retr_match_line_by_line_oracle_on_random_spools(tmp_path, monkeypatch,
                                                                   header_window):
    """header_window 0 forces the line-by-line header parser everywhere."""
    if header_window is not None:
        monkeypatch.setattr(mbox_scan._Scanner, "HEADER_WINDOW", header_window)
    rng = random.Random(20261127)
    spool = tmp_path / "spool"
    for _ in range(40):
        data = random_spool(rng, limits.COPY_CHUNK_OCTETS)
        spool.write_bytes(data)
        expected = naive_messages(data)
        with open(spool, "rb") as f:
            messages = mbox.scan(f)
            assert [m.offset for m in messages] == [off for off, _ in expected]
            assert messages[-1].end == len(data)
            for m, (_, raw) in zip(messages, expected):
                assert m.end - m.offset == len(raw)
                want = naive_retr(without_framing(raw), m.uid)
                assert retr(f, m) == want
                assert m.octets == len(unstuff(want))
                if not m.uid_from_header:
                    assert m.uid == oracle_uid(raw)


FEATURES = {
    # name: (bytes, index inside them that must land on the boundary)
    "dot line": (b".dot line\n", 0),
    "crlf split": (b"crlf line\r\n", len(b"crlf line\r")),
    "empty line, separator": (b"\nFrom b@x Wed Nov 25 10:00:00 2026\nSubject: b\n\nb\n", 0),
    "separator": (b"\nFrom b@x Wed Nov 25 10:00:00 2026\nSubject: b\n\nb\n", 1),
    "crlf empty line, separator": (b"\r\nFrom b@x Wed Nov 25 10:00:00 2026\nSubject: b\n\nb\n", 1),
    "nul": (b"\0nul line\n", 0),
}


def spool_with_feature_at(position: int, feature: bytes, index: int) -> bytes:
    head = b"From a@x Wed Nov 25 10:00:00 2026\nSubject: a\n\n"
    need = position - index - len(head)
    filler = []
    while need > 0:
        n = min(need, 70)
        if need - n in range(1, 2):             # never leave a 1-byte gap: it could not end a line
            n -= 1
        filler.append(b"f" * (n - 1) + b"\n")
        need -= n
    tail = b"".join(b"after %d\n" % i for i in range(40))
    data = head + b"".join(filler) + feature + tail
    assert data[position - index:position - index + len(feature)] == feature
    return data + b"\nFrom z@x Wed Nov 25 10:00:00 2026\nSubject: z\n\nz\n"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_features_on_read_and_send_chunk_boundaries(tmp_path, feature):
    """Reads are aligned on COPY_CHUNK_OCTETS from the region start (scan) and from the start of
    each range RETR sends (the range after the X-UIDL insert point begins at the blank line):
    put each tricky byte sequence on and around those boundaries."""
    content, index = FEATURES[feature]
    chunk = limits.COPY_CHUNK_OCTETS
    header_end = len(b"From a@x Wed Nov 25 10:00:00 2026\nSubject: a\n")
    positions = [base + delta for base in (chunk, 2 * chunk, header_end + chunk,
                                           header_end + 2 * chunk)
                 for delta in range(-3, 4)]
    spool = tmp_path / "spool"
    for position in positions:
        data = spool_with_feature_at(position, content, index)
        spool.write_bytes(data)
        expected = naive_messages(data)
        with open(spool, "rb") as f:
            messages = mbox.scan(f)
            assert [m.offset for m in messages] == [off for off, _ in expected], position
            for m, (_, raw) in zip(messages, expected):
                want = naive_retr(without_framing(raw), m.uid)
                assert retr(f, m) == want, position
                assert m.octets == len(unstuff(want)), position


MMDF_SEP = b"\x01\x01\x01\x01\n"


def naive_mmdf_messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, end, separator + content) per S12: a message runs from a separator line to the
    next identical line (its trailer); lines up to the next separator are junk of the message."""
    out, pos, state = [], 0, "between"
    for line in split_lines(data):
        if state == "between" and line == MMDF_SEP:
            out.append([pos, None, line])
            state = "content"
        elif state == "content" and line == MMDF_SEP:
            state = "between"
        elif state == "content":
            out[-1][2] += line
        pos += len(line)
    for i, m in enumerate(out):
        m[1] = out[i + 1][0] if i + 1 < len(out) else len(data)
    return [tuple(m) for m in out]


@pytest.mark.timeout(60)
def test_mmdf_scan_and_retr_match_oracle_on_random_spools(tmp_path):
    rng = random.Random(12)
    spool = tmp_path / "spool"
    for _ in range(60):
        parts = []
        for i in range(rng.randint(1, 8)):
            eol = rng.choice([b"\n", b"\r\n"])
            headers = b"Subject: m%d %d" % (i, rng.randrange(10 ** 9)) + eol
            if rng.random() < 0.3:
                headers += b"X-UIDL: " + b"mmdf-%d-uid-value" % i + eol
            if rng.random() < 0.2:
                headers += b"Status: RO" + eol
            body = b"".join(rng.choice([b".", b"..x", b"From x Wed Nov 25 10:00:00 2026", b"",
                                        b"w" * rng.randint(0, 3000)]) + eol
                            for _ in range(rng.choice([0, 1, 5, 2000])))
            shape = rng.random()
            if shape < 0.15:
                parts.append(MMDF_SEP + headers + MMDF_SEP)              # no blank line
            else:
                parts.append(MMDF_SEP + headers + eol + body + MMDF_SEP)
            if rng.random() < 0.15:
                parts.append(b"junk line\n")
        data = b"".join(parts)
        if rng.random() < 0.3:
            data = data[:-len(MMDF_SEP)]                                   # last trailer missing
        spool.write_bytes(data)
        expected = naive_mmdf_messages(data)
        with open(spool, "rb") as f:
            messages = mbox.scan(f)
            assert [(m.offset, m.end) for m in messages] == [(o, e) for o, e, _ in expected]
            for m, (_, _, raw) in zip(messages, expected):
                want = naive_retr(raw, m.uid)
                assert retr(f, m) == want
                assert m.octets == len(unstuff(want))


TOKENS = [b"\n", b"\r\n", b"\r", b"\0", b"From ", b"From x Wed Nov 25 10:00:00 2026\n", b"\n\n",
          b".", b"X-UIDL: abcdefghijklmnop\n", b"Status: RO\n", b"Content-Length: 5\n",
          b"Content-Length: 99999\n", MMDF_SEP, b"Subject: s\n", b"x" * 1100, b"a", b"b c", b" ",
          b"\t", b"Received: r\n", b"\n\nFrom y Wed Nov 25 10:00:00 2026"]


@pytest.mark.timeout(120)
def test_garbage_spools_yield_consistent_messages_and_stable_uids(tmp_path):
    """Invariant 4 and 5 on token soup: every byte belongs to one message, LIST octets equal
    the RETR bytes, and a write-back (either mode) is scanned back with the same UIDs."""
    rng = random.Random(4)
    spool, written = tmp_path / "spool", tmp_path / "written"
    for _ in range(600):
        first = rng.choice([b"From x Wed Nov 25 10:00:00 2026\n", MMDF_SEP])
        data = first + b"".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 60)))
        spool.write_bytes(data)
        with open(spool, "rb") as f:
            messages = mbox.scan(f)
            assert [m.offset for m in messages[1:]] == [m.end for m in messages[:-1]]
            assert (messages[0].offset, messages[-1].end) == (0, len(data))
            for m in messages:
                data_sent = retr(f, m)
                assert data_sent.endswith(b"\r\n") and m.octets == len(unstuff(data_sent))
        for update in (True, False):
            write_back(spool, written, update_status_headers=update, messages=messages,
                       retrieved=lambda m: rng.random() < 0.5)
            assert [m.uid for m in scan_path(written)] == [m.uid for m in messages]


# --- a bigger generated spool ------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_generated_spool_consistency_and_round_trip(tmp_path):
    spool = tmp_path / "spool"
    subprocess.run([sys.executable, str(MKSPOOL), "-n", "400", "-s", "12M", "--seed", "42",
                    "--from-frac", "0.2", "--dot-frac", "0.2", "-o", str(spool)],
                   check=True, capture_output=True, timeout=60)
    data = spool.read_bytes()
    messages = scan_path(spool)
    assert [m.offset for m in messages] == [off for off, _ in naive_messages(data)]
    assert len(messages) == 400 and len({m.uid for m in messages}) == 400
    with open(spool, "rb") as f:
        retr_total = sum(len(unstuff(retr(f, m))) for m in messages)
    assert retr_total == sum(m.octets for m in messages)
    unchanged = tmp_path / "unchanged"
    write_back(spool, unchanged, update_status_headers=False)
    assert unchanged.read_bytes() == data
    updated = tmp_path / "updated"
    write_back(spool, updated, retrieved=lambda m: m.number % 3 == 0)
    again = scan_path(updated)
    assert [m.uid for m in again] == [m.uid for m in messages]
    assert all(m.uid_from_header for m in again)
    assert [m.retrieved for m in again] == [m.number % 3 == 0 for m in messages]
