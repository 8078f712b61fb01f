"""The warm open against the cold one on generated mailboxes of 10,000+ messages: server
mode's cache (mbox) and the Maildir index must give the very records a scan or a listing
gives (numbers, offsets, sizes, UIDs, flags), and a damaged or old-format cache or index is
ignored with a log line and rebuilt (docs/maildrop.md, "The server-mode cache";
docs/maildir.md, "The index")."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest

from qpopper.config import Config
from qpopper.spool import maildir, mbox, packed
from qpopper.spool.maildir_drop import MaildirDrop
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.messages import from_line, message, mmdf

pytestmark = pytest.mark.timeout(300)
USER = "alice"
MESSAGES = 10_050


def varied_message(rng: random.Random, n: int) -> bytes:
    """A From_ message with what changes a record: X-UIDL (good, too short, twice), Status,
    Content-Length (right or wrong), CRLF lines, a body `From ` line, no body."""
    headers = b""
    kind = rng.random()
    if kind < 0.15:
        headers += b"X-UIDL: header-uid-%010d\n" % n
    elif kind < 0.18:
        headers += b"X-UIDL: short\nX-UIDL: header-uid-%010d\n" % n
    if rng.random() < 0.3:
        headers += rng.choice([b"Status: RO\n", b"Status: R\n", b"Status: O\n", b"Status: U\n"])
    body = b"".join(b"line %d of %d%s\n" % (i, n, rng.choice([b"", b"\r", b" ."]))
                    for i in range(rng.randrange(0, 12)))
    if rng.random() < 0.05:
        body += b">From the body\n.\n..\n"
    if rng.random() < 0.08:
        length = len(body) + rng.choice([0, 0, 3, -2])
        headers += b"Content-Length: %d\n" % max(length, 0)
    return message(n, extra_headers=headers, body=body)


def uw_folder_message() -> bytes:
    return (from_line(0) + b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
            b"X-IMAP: 1234 0000000001\n\nThis text is part of the internal format.\n\n")


def records(messages) -> list[tuple]:
    return [dataclasses.astuple(m) for m in messages]


def open_server_mode(cfg, paths, log=None) -> tuple[list[tuple], tuple[int, int]]:
    """A session's view (every record, hidden ones too) and what it scanned; then an abort
    without update, which writes the cache and leaves the spool as it is."""
    drop = Maildrop.open(cfg, paths, USER, log=log, lock_step_s=0.05)
    try:
        return records(drop._all), drop.scan_region
    finally:
        drop.restore()


def reference_scan(paths, cfg) -> list[tuple]:
    options = {"update_status_headers": cfg.update_status_headers,
               "old_style_uid": cfg.old_style_uid, "uw_kludge": cfg.uw_kluge}
    with open(paths.spool, "rb") as f:
        return records(mbox.scan(f, **options))


SPOOLS = {
    "from-lines": lambda rng: b"".join(varied_message(rng, n) for n in range(1, MESSAGES + 1)),
    "uw-folder-first": lambda rng: uw_folder_message() + b"".join(
        varied_message(rng, n) for n in range(1, MESSAGES + 1)),
    "mmdf": lambda rng: b"".join(mmdf(n) for n in range(1, MESSAGES + 1)),
    # as a write-back leaves it: one X-UIDL and one Status line in every message
    "written-back": lambda rng: b"".join(
        message(n, body_lines=rng.randrange(0, 9), extra_headers=b"X-UIDL: written-uid-%08d\n"
                b"Status: %s\n" % (n, rng.choice([b"RO", b"O"]))) for n in range(1, MESSAGES + 1)),
}


@pytest.mark.parametrize("shape", sorted(SPOOLS))
def test_server_mode_warm_open_is_the_cold_open(tmp_path, shape):
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), server_mode=True)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(SPOOLS[shape](random.Random(shape)))
    size = os.path.getsize(paths.spool)
    cold, region = open_server_mode(cfg, paths)
    assert region == (0, size) and len(cold) >= MESSAGES
    assert cold == reference_scan(paths, cfg)
    warm, region = open_server_mode(cfg, paths)
    assert region == (size, size), "the cache was not used"
    assert warm == cold
    # New mail: the cached records plus a scan of the tail, the same as a full scan.
    with open(paths.spool, "ab") as f:
        f.write(message(MESSAGES + 1) if shape != "mmdf" else mmdf(MESSAGES + 1))
    tail, region = open_server_mode(cfg, paths)
    assert region == (size, os.path.getsize(paths.spool))
    assert tail == reference_scan(paths, cfg) and tail[:len(cold)] == cold


# --- Maildir ----------------------------------------------------------------------------------

def varied_maildir(root, rng: random.Random, count: int) -> str:
    """Message files as delivery agents and MUAs leave them: new/ and cur/ with flags, ,W=
    sizes, X-UIDL headers (two alike), CRLF files, names too long to be a UID."""
    path = str(root / "Maildir")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(path, sub))
    for n in range(count):
        base = f"{1_700_000_000 + n // 3}.M{rng.randrange(10 ** 6)}P{n}.host"
        body = b"Subject: %d\n\n" % n + b"line\n" * rng.randrange(0, 20)
        if rng.random() < 0.1:
            body = b"X-UIDL: maildir-uidl-%06d\n" % (n if rng.random() < 0.9 else 7) + body
        if rng.random() < 0.1:
            body = body.replace(b"\n", b"\r\n")
        if rng.random() < 0.2:
            base += f",S={len(body)},W={maildir.wire_octets(body)}"
        if rng.random() < 0.01:
            base += "x" * 80
        sub, info = rng.choice([("new", ""), ("cur", ":2,"), ("cur", ":2,S"), ("cur", ":2,RS")])
        with open(os.path.join(path, sub, base + info), "wb") as f:
            f.write(body)
    past = 1_700_000_000
    for sub in ("new", "cur"):
        os.utime(os.path.join(path, sub), (past, past))
    return path


def maildir_view(messages) -> list[tuple]:
    return [(m.name, m.octets, m.uid, m.retrieved, m.hidden) for m in messages]


def settle(path: str) -> None:
    """The index as a later session finds it: written long after the directories' last change."""
    index = maildir.load_index(path)
    maildir.store_index(path, dataclasses.replace(
        index, written_ns=index.written_ns + 10 * maildir.SETTLE_NS))


@pytest.fixture(scope="module")
def big_maildir(tmp_path_factory):
    path = varied_maildir(tmp_path_factory.mktemp("maildir"), random.Random(15), MESSAGES)
    steps = []
    cold = maildir_view(maildir.scan(path, step=steps.append))
    assert steps == ["index-write", "index-rename"] and len(cold) == MESSAGES
    settle(path)
    return path, cold


def test_maildir_warm_open_is_the_cold_open(big_maildir):
    path, cold = big_maildir
    assert len({uid for _, _, uid, _, _ in cold}) == len(cold)
    steps = []
    messages, inodes, mtimes = maildir.scan_with_files(path, step=steps.append)
    assert steps == [], "the index was not trusted"
    assert maildir_view(messages) == cold
    # the inodes and times the index keeps are the files' (what finds a renamed message)
    stats = [os.lstat(os.path.join(path, m.name)) for m in messages]
    assert list(inodes) == [st.st_ino for st in stats]
    assert list(mtimes) == [st.st_mtime_ns for st in stats]
    drop = MaildirDrop.open(path, USER)
    assert maildir_view(drop.messages) == cold and list(drop.inodes) == list(inodes)
    assert list(drop.mtimes) == list(mtimes)
    drop.restore()


def json_index_of_version_1(data: bytes) -> bytes:
    index = maildir._decode_index(data)
    return json.dumps({"version": 1, "written_ns": index.written_ns, "stamps": index.stamps,
                       "entries": {n: list(e) for n, e in index.entries().items()}}).encode()


def repacked(data: bytes, change) -> bytes:
    """The index with `change(document, sections)` applied and a right checksum."""
    doc, sections = packed.unpack(data, maildir.INDEX_MAGIC, maildir.INDEX_VERSION, maildir.INDEX_SECTIONS)
    change(doc, sections)
    return packed.pack(maildir.INDEX_MAGIC, maildir.INDEX_VERSION, doc, sections)


def packed_index_of_version_2(data: bytes) -> bytes:
    """The index as version 2 wrote it: the same columns without the inodes and times."""
    doc, sections = packed.unpack(data, maildir.INDEX_MAGIC, maildir.INDEX_VERSION, maildir.INDEX_SECTIONS)
    return packed.pack(maildir.INDEX_MAGIC, 2, doc, sections[:4])


def outside_name(doc, sections) -> None:
    sections[0] = sections[0].replace(b"new/", b"new/../../", 1)


def dot_name(doc, sections) -> None:
    sections[0] = sections[0].replace(b"cur/", b"cur/.", 1)


INDEX_DAMAGES = {
    "truncate": lambda data: data[:len(data) // 2],
    "flip-byte": lambda data: data[:-9] + bytes([data[-9] ^ 1]) + data[-8:],
    "old-json-version-1": lambda data: json_index_of_version_1(data),
    "old-packed-version-2": lambda data: packed_index_of_version_2(data),
    "garbage": lambda data: os.urandom(500),
    "empty": lambda data: b"",
    "count-too-big": lambda data: repacked(data, lambda d, s: d.update(count=d["count"] + 1)),
    "name-outside": lambda data: repacked(data, outside_name),
    "dot-file-name": lambda data: repacked(data, dot_name),
}


@pytest.mark.parametrize("damage", sorted(INDEX_DAMAGES))
def test_a_damaged_or_old_index_is_ignored_with_a_log_line_and_rebuilt(big_maildir, damage):
    path, cold = big_maildir
    index_path = os.path.join(path, maildir.INDEX_NAME)
    with open(index_path, "rb") as f:
        good = f.read()
    try:
        with open(index_path, "wb") as f:
            f.write(INDEX_DAMAGES[damage](good))
        logged, steps = [], []
        seen = maildir_view(maildir.scan(path, log=lambda p, text: logged.append(text),
                                         step=steps.append))
        assert seen == cold
        assert [t for t in logged if t.startswith(f"Maildir index of {path} ignored (")] \
            and len(logged) == 1, logged
        assert steps == ["index-write", "index-rename"]          # rebuilt
        assert maildir.load_index(path) is not None
    finally:
        with open(index_path, "wb") as f:
            f.write(good)


def test_update_without_steps_lists_nothing_and_the_next_session_sees_new_mail(tmp_path):
    """QUIT with no RETR and no DELE: the index written at open still holds, so the update
    neither lists new/ and cur/ nor writes the index; mail that came meanwhile changed new/'s
    mtime, so the next session lists again and finds it."""
    path = varied_maildir(tmp_path, random.Random(3), 300)     # index not written yet
    trace = tmp_path / "trace"
    marker = str(tmp_path / "update-starts-here")
    code = ("import os, sys; from qpopper.spool.maildir_drop import MaildirDrop; "
            "d = MaildirDrop.open(sys.argv[1], 'qpt'); print(len(d.messages)); "
            "os.path.exists(sys.argv[2]); d.update(set(), set())")
    result = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,%desc", "-o", str(trace),
                             sys.executable, "-c", code, path, marker], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "300", result.stderr
    lines = trace.read_text().splitlines()
    after = lines[next(i for i, line in enumerate(lines) if marker in line):]
    touched = [line for line in after if f"{path}/new" in line or f"{path}/cur" in line
               or maildir.INDEX_NAME in line]
    assert touched == [], touched
    with open(os.path.join(path, "new", "1800000000.M1P1.late"), "wb") as f:
        f.write(b"Subject: late\n\nbody\n")
    drop = MaildirDrop.open(path, "qpt")
    assert len(drop.messages) == 301 and drop.messages[-1].name == "new/1800000000.M1P1.late"
    drop.restore()
