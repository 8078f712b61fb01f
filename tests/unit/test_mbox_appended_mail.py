"""Mail appended to an mbox stays what it was delivered as: the padding written before it, the
server-mode cache's view of it and a full scan of it agree (docs/mbox.md, "What write-back
writes", "Content-Length")."""

from __future__ import annotations

import io
import os

import pytest

from qpopper.spool import mbox
from qpopper.spool.mbox_format import CONTENT_LENGTH_FUZZ
from qpopper.spool.maildrop import Maildrop
from tests.helpers.spoolcheck import append, read, retr, spool_in

USER = "alice"
FROM = b"From a@b Wed Dec  2 05:53:22 1992\n"
TRAILER = b"\x01\x01\x01\x01\n"
pytestmark = pytest.mark.timeout(60)


def make(tmp_path, content: bytes, **options):
    return spool_in(tmp_path, USER, content, **options)


def open_drop(cfg, paths) -> Maildrop:
    return Maildrop.open(cfg, paths, USER, lock_step_s=0.05)


def view(cfg, paths) -> list[tuple[str, int, bytes]]:
    drop = open_drop(cfg, paths)
    try:
        return [(m.uid, m.octets, retr(drop, i)) for i, m in enumerate(drop.messages)]
    finally:
        drop.close()


def padding(tmp_path, data: bytes) -> bytes:
    path = tmp_path / "padded"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return mbox.padding_after(fd, len(data), open_message=None)
    finally:
        os.close(fd)


# --- an MMDF trailer closes a message only as a whole line of an MMDF file ----------------------
def test_a_trailer_closes_only_a_whole_line_of_an_mmdf_file(tmp_path):
    from_spool = FROM + b"Subject: s\n\n"
    mmdf_spool = TRAILER + b"Subject: s\n\n"
    assert padding(tmp_path, from_spool + b"line\n" + TRAILER) == b"\n"     # From_: content
    assert padding(tmp_path, from_spool + b"x" + TRAILER) == b"\n"
    assert padding(tmp_path, from_spool + b"body\n\n") == b""
    assert padding(tmp_path, mmdf_spool + b"body\n" + TRAILER) == b""        # the trailer
    # the second separator line opens a message, empty and open: it gets its trailer
    assert padding(tmp_path, mmdf_spool + b"body\n" + TRAILER + TRAILER) == TRAILER
    assert padding(tmp_path, mmdf_spool + b"body\n" + TRAILER * 3) == b""
    long_sep = b"\x01\x01\x01\x01 MMDF separator of this file\n"
    assert padding(tmp_path, long_sep + b"Subject: s\n\nbody\n" + long_sep) == b""
    # after a trailer: the junk's line ended, and an empty line (junk too: the scan skips it)
    assert padding(tmp_path, mmdf_spool + b"body\n" + TRAILER + b"junk") == b"\n\n"


@pytest.mark.parametrize("after_trailer", [b"", b"\n", b"junk", b"junk\n"])
def test_mail_appended_after_an_mmdf_trailer_and_junk_keeps_both_messages(after_trailer):
    """What follows a trailer is junk the scan skips; the padding only adds junk lines, and
    the new message (its own separator line first) is a message of its own, whole."""
    spool = TRAILER + b"Subject: 1\n\nbody\n" + TRAILER + after_trailer
    new_mail = TRAILER + b"Subject: 2\n\nnew mail\n" + TRAILER
    alone = mbox.scan(io.BytesIO(spool))
    both = spool + mbox.separator_padding(spool[-8:], TRAILER) + new_mail
    scanned = mbox.scan(io.BytesIO(both))
    assert [m.octets for m in scanned] == [alone[0].octets,
                                           mbox.scan(io.BytesIO(new_mail))[0].octets]


def test_mail_put_back_after_an_aborted_session_stays_its_own_message(tmp_path):
    """Normal mode: the session ends without an update while mail arrived; the new mail goes
    back after the old, with the framing line a From_ message needs before it, even when the
    last line ends with the octets of an MMDF trailer."""
    spool = (FROM + b"Subject: 1\n\none\n\n"
             + FROM + b"Subject: 2\n\nends with\nx" + TRAILER)
    cfg, paths = make(tmp_path, spool)
    before = view(cfg, paths)
    drop = open_drop(cfg, paths)
    new_mail = FROM + b"Subject: 3\n\nthree\n\n"
    append(paths.spool, new_mail)
    drop.restore()
    drop.close()
    assert read(paths.spool) == spool + b"\n" + new_mail
    after = view(cfg, paths)
    assert after[:2] == before
    assert len(after) == 3 and after[2][2].endswith(b"\r\n\r\nthree\r\n")


def test_the_server_mode_cache_and_a_full_scan_agree_after_trailer_octets(tmp_path):
    """Server mode: a From_ spool whose last line ends with the octets of an MMDF trailer is
    not closed by them (in a From_ file they are content): the login closes it with the
    empty line, so the mail appended after the session is a message of its own, in the
    cached view as in a full scan."""
    spool = (FROM + b"Subject: 1\n\none\n\n"
             + FROM + b"Subject: 2\n\nlast line is x^A^A^A^A:\nx" + TRAILER)
    cfg, paths = make(tmp_path, spool, server_mode=True)
    drop = open_drop(cfg, paths)
    drop.restore()
    drop.close()
    assert os.path.exists(paths.cache)
    append(paths.spool, FROM + b"Subject: 3\n\nthree\n\n")
    cached = view(cfg, paths)
    os.unlink(paths.cache)
    assert cached == view(cfg, paths)
    assert len(cached) == 3 and cached[2][2].endswith(b"\r\n\r\nthree\r\n")


def test_the_server_mode_cache_and_a_full_scan_agree_after_a_content_length_not_honoured(
        tmp_path):
    """A last message whose Content-Length points past the end of the file is not honoured;
    mail appended after it can end within the slack of that length. Whatever a full scan
    makes of it, the cached view says the same."""
    body = b"hello\n"
    spool = FROM + b"Subject: 1\nContent-Length: %d\n\n" % (len(body) + 40) + body + b"\n"
    cfg, paths = make(tmp_path, spool, server_mode=True)
    drop = open_drop(cfg, paths)
    assert drop.messages[0].stale_content_length         # not honoured
    drop.restore()
    drop.close()
    assert os.path.exists(paths.cache)
    append(paths.spool, FROM + b"Subject: 2\n\n" + b"x" * 4 + b"\n\n")
    cached = view(cfg, paths)
    os.unlink(paths.cache)
    assert cached == view(cfg, paths)


def test_new_mail_after_an_mmdf_message_with_a_content_length_is_scanned_alone(tmp_path):
    """An MMDF message's Content-Length is never weighed (its trailer ends it): mail after
    it is scanned on its own, the cached messages are not scanned again."""
    spool = TRAILER + b"Subject: 1\nContent-Length: 5\n\nbody\n" + TRAILER
    cfg, paths = make(tmp_path, spool, server_mode=True)
    drop = open_drop(cfg, paths)
    drop.restore()
    drop.close()
    append(paths.spool, TRAILER + b"Subject: 2\n\nnew\n" + TRAILER)
    drop = open_drop(cfg, paths)
    try:
        assert len(drop.messages) == 2
        assert drop.scan_region == (len(spool), os.path.getsize(paths.spool))
    finally:
        drop.close()


# --- Content-Length: the same reference point at the end of the file and at a separator -------
def content_length_spool(eol: bytes, delta: int) -> bytes:
    """One message whose body holds a From_ line after an empty line (a separator unless the
    Content-Length is honoured), its Content-Length `delta` octets off the body's length."""
    body = (b"hello" + eol + eol + FROM.replace(b"\n", eol) + b"this line was in the body" + eol
            + b"x" * 40 + eol)
    return (FROM.replace(b"\n", eol) + b"Subject: A" + eol
            + b"Content-Length: %d" % (len(body) + delta) + eol + eol + body + eol)


def first_message(data: bytes) -> tuple[int, int]:
    """(messages, octets of the first) as a scan of `data` finds them."""
    messages = mbox.scan(io.BytesIO(data))
    return len(messages), messages[0].octets


def written_back(data: bytes, status_headers: bool = True) -> bytes:
    f, out = io.BytesIO(data), io.BytesIO()
    for m in mbox.scan(f):
        mbox.copy_for_update(f, m, out.write, retrieved=status_headers,
                             update_status_headers=status_headers)
    return out.getvalue()


@pytest.mark.parametrize("status_headers", [True, False])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_separator_inside_the_content_length_is_weighed_alike_after_write_back(eol,
                                                                                  status_headers):
    """A `From ` line after an empty line near the Content-Length's end: whether it is a
    separator is decided where the length is weighed (less the line ends before it), so the
    write-back, which turns a CRLF framing line into LF, does not merge two messages."""
    for delta in range(-2 * CONTENT_LENGTH_FUZZ, 2 * CONTENT_LENGTH_FUZZ):
        body = eol + eol + FROM.replace(b"\n", eol) + b"end" + eol
        spool = (FROM + b"Subject: a" + eol + b"Content-Length: %d" % (len(body) + delta)
                 + eol + eol + body)
        again = written_back(spool, status_headers)
        assert first_message(again)[0] == first_message(spool)[0], delta


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_content_length_is_weighed_alike_while_last_after_new_mail_and_write_back(eol):
    """Honoured or not, a Content-Length decides the same whether its message is the last of
    the file, mail was appended after it, or the file was written back (in an LF or a CRLF
    spool): otherwise a message RETR sent whole splits at a body `From ` line once mail
    arrives, or the other way round."""
    new_mail = FROM + b"Subject: B\n\n" + b"new mail " * 30 + b"\n\n"     # ends past the slack
    decisions = set()
    for delta in range(-2 * CONTENT_LENGTH_FUZZ, 2 * CONTENT_LENGTH_FUZZ):
        spool = content_length_spool(eol, delta)
        alone = first_message(spool)
        decisions.add(alone[0])
        padded = spool + mbox.separator_padding(spool[-8:]) + new_mail
        assert first_message(padded) == (alone[0] + 1, alone[1]), delta
        again = written_back(spool)
        assert first_message(again)[0] == alone[0], delta
        assert first_message(again + new_mail)[0] == alone[0] + 1, delta
        assert first_message(written_back(again)) == first_message(again), delta
    assert decisions == {1, 2}          # both sides of the slack were tried


@pytest.mark.parametrize("tail, padded", [
    (b"no LF", b"\n\n"), (b"one LF\n", b"\n"), (b"no LF", b"\n"),      # the exact closing
    (b"one LF\n", b"\n\n"), (b"one LF\n", b"\n\n\n"),                 # an agent that pads more
    (b"closed\n\n", b"\n"),                                            # pads what was closed
    (b"CRLF\r\n", b"\r\n"), (b"CRLF\r\n", b"\r\n\r\n"), (b"no LF", b"\r\n\r\n")])
@pytest.mark.parametrize("fast_update", [False, True])
def test_a_server_mode_rewrite_does_not_copy_the_delivery_agent_s_padding_again(
        tmp_path, tail, padded, fast_update):
    """The delivery agent writes empty lines (LF or CRLF) before its `From ` line: the
    closing of a spool that did not end closed at login, or more. The rewrite (a DELE)
    writes the kept messages closed itself, so those lines are left out and the kept
    message is served as before, not with empty lines gained (docs/maildrop.md, "Server
    mode: the update")."""
    spool = FROM + b"Subject: 1\n\none\n\n" + FROM + b"Subject: 2\n\n" + tail
    cfg, paths = make(tmp_path, spool, server_mode=True, update_status_headers=False,
                      fast_update=fast_update)
    drop = open_drop(cfg, paths)
    before = [retr(drop, i) for i in range(len(drop.messages))]
    new_mail = FROM + b"Subject: 3\n\nthree\n\n"
    append(paths.spool, padded + new_mail)
    drop.update({0}, set())
    drop.close()
    closed = tail if tail.endswith(b"\n\n") else tail.rstrip(b"\n") + b"\n\n"
    kept = b"Subject: 2\n\n" + closed
    assert read(paths.spool) == FROM + kept + new_mail
    served = view(cfg, paths)
    assert len(served) == 2 and served[0][2] == before[1]


def test_empty_lines_before_anything_but_a_from_line_are_copied(tmp_path):
    """Content is never left out: empty lines the agent's mail starts with that do not lead
    to a `From ` line are copied as they are."""
    spool = FROM + b"Subject: 1\n\none\n\n" + FROM + b"Subject: 2\n\ntwo\n"
    cfg, paths = make(tmp_path, spool, server_mode=True, update_status_headers=False)
    drop = open_drop(cfg, paths)
    append(paths.spool, b"\n\nnot a separator\n")
    drop.update({0}, set())
    drop.close()
    assert read(paths.spool) == FROM + b"Subject: 2\n\ntwo\n\n" + b"\n\nnot a separator\n"


@pytest.mark.parametrize("tail, padded", [(b"no LF", b"\n\n"), (b"one LF\n", b"\n"),
                                          (b"closed\n\n", b"\n"), (b"closed\n\n", b"\r\n\n")])
def test_a_server_mode_rewrite_keeping_nothing_starts_the_spool_with_the_new_mail(
        tmp_path, tail, padded):
    """Every message deleted, mail delivered during the session after empty lines (the
    agent's padding of an open end, or one that always writes an empty line first): no
    message holds them, and a spool starting with them would be refused at every login."""
    spool = FROM + b"Subject: 1\n\none\n\n" + FROM + b"Subject: 2\n\n" + tail
    cfg, paths = make(tmp_path, spool, server_mode=True, update_status_headers=False)
    drop = open_drop(cfg, paths)
    new_mail = FROM + b"Subject: 3\n\nthree\n\n"
    append(paths.spool, padded + new_mail)
    drop.update({0, 1}, set())
    drop.close()
    assert read(paths.spool) == new_mail
    [(_, _, served)] = view(cfg, paths)                     # the next login takes it
    assert served.startswith(b"Subject: 3\r\n") and served.endswith(b"\r\n\r\nthree\r\n")


def _bodies(data: bytes) -> list[bytes]:
    f = io.BytesIO(data)
    out = []
    for m in mbox.scan(f):
        parts: list[bytes] = []
        mbox.send_message(f, m, parts.append)
        out.append(b"".join(parts).split(b"\r\n\r\n", 1)[1])
    return out


def _update_steps(tmp_path, server: bool) -> list[int]:
    steps: list[str] = []
    (tmp_path / "steps").mkdir()
    cfg, paths = make(tmp_path / "steps", FROM + b"Subject: 1\n\none\n\n", server_mode=server)
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05, step_hook=steps.append)
    append(paths.spool, FROM + b"Subject: 2\n\ntwo\n")
    drop.update(set(), {0})
    drop.close()
    return [i for i, s in enumerate(steps) if s.startswith("update:")]


@pytest.mark.parametrize("server", [False, True])
def test_a_roll_forward_leaves_out_the_agent_s_padding_as_the_update_does(tmp_path, server):
    """Killed at each step of the update (mail delivered during the session, its end not
    closed), then an agent delivers after padding with an LF: the next login's roll-forward
    appends that mail as the update does, the padding left out, so the message before it
    gains no empty line (docs/maildrop.md, "The commit engine")."""
    from tests.helpers.spoolcheck import dies_in_child, killer_at
    late = FROM + b"Subject: 3\n\nthree\n\n"
    expected = [b"one\r\n", b"two\r\n", b"three\r\n"]
    for k in _update_steps(tmp_path, server):
        (tmp_path / str(k)).mkdir()
        cfg, paths = make(tmp_path / str(k), FROM + b"Subject: 1\n\none\n\n",
                          server_mode=server)

        def session():
            drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05, step_hook=killer_at(k))
            append(paths.spool, FROM + b"Subject: 2\n\ntwo\n")
            drop.update(set(), {0})
        assert dies_in_child(session), k
        now = read(paths.spool)
        append(paths.spool, (b"" if now.endswith(b"\n\n") or not now else b"\n") + late)
        drop = open_drop(cfg, paths)
        drop.restore()
        drop.close()
        assert _bodies(read(paths.spool)) == expected, k


def test_a_normal_mode_update_with_more_padding_than_kept_octets_leaves_it_all_out(tmp_path):
    """The image is written over the spool in place: when the agent's empty lines outnumber
    the kept message's octets, the image comes out shorter than the spool, and the commit
    cuts the spool to it. All of them are left out, nothing lost, and QUIT succeeds
    (docs/maildrop.md, "The commit engine")."""
    cfg, paths = make(tmp_path, FROM + b"\nx\n\n")
    drop = open_drop(cfg, paths)
    new_mail = FROM + b"Subject: 2\n\ntwo\n\n"
    append(paths.spool, b"\n" * 200 + new_mail)
    drop.update(set(), set())
    drop.close()
    assert sorted(os.listdir(tmp_path)) == [USER]              # no drop, image or journal left
    spool = read(paths.spool)
    kept = spool[:-len(new_mail)]
    assert spool.endswith(b"\nx\n\n" + new_mail) and kept.endswith(b"\n\nx\n\n")
    assert len(spool) < 200 + len(new_mail)                              # cut
    served = view(cfg, paths)
    assert len(served) == 2 and served[1][2].endswith(b"\r\n\r\ntwo\r\n")
    assert served[0][2].split(b"\r\n\r\n", 1)[1] == b"x\r\n"


def test_a_login_after_a_crashed_session_leaves_the_agent_s_padding_out(tmp_path):
    """A crashed session left its drop; an agent then delivered to the emptied spool after
    an empty line: the login puts that mail after the drop's without it, as an update puts
    it after the kept messages, so the drop's last message gains no empty line; killed at
    each step of that login, the next one ends the same (docs/maildrop.md, "Normal mode")."""
    import json
    from tests.helpers.spoolcheck import dies_in_child, killer_at
    first = FROM + b"Subject: 1\n\none\n\n"
    late = FROM + b"Subject: 2\n\ntwo\n\n"

    def crashed(where):
        where.mkdir()
        cfg, paths = make(where, first)
        open_drop(cfg, paths).close()                  # the drop keeps the mail
        append(paths.spool, b"\n\r\n" + late)
        return cfg, paths
    steps: list[str] = []
    cfg, paths = crashed(tmp_path / "steps")
    Maildrop.open(cfg, paths, USER, lock_step_s=0.05, step_hook=steps.append).close()
    assert read(paths.temp_drop) == first + late
    assert "open:journal-absorbed-rename" in steps
    for k, step in enumerate(steps):
        cfg, paths = crashed(tmp_path / str(k))
        hook = killer_at(k)
        assert dies_in_child(lambda: Maildrop.open(cfg, paths, USER, lock_step_s=0.05,
                                                   step_hook=hook)), step
        if step == "open:truncate-spool":                   # `absorbed`: written as version 3
            assert json.loads(read(paths.journal))["v"] == 3
        open_drop(cfg, paths).close()
        assert read(paths.temp_drop) == first + late, step
        assert read(paths.spool) == b"" and not os.path.lexists(paths.journal), step
