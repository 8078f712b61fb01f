"""`.user.cache` (reference S10, decision §7.12): server mode trusts a valid cache instead of
rescanning the spool, and ignores (then rewrites) a stale, corrupt or foreign one.

The proof that the spool was NOT rescanned is timing-free: a byte in the middle of a big spool
is changed behind the server's back (same size, mtime put back, outside the head/tail probes);
a rescan would give that message another UID, the cache gives the old one. The Maildrop also
reports the region it scanned (`scan_region`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import sys

import pytest

from qpopper.config import Config
from qpopper.spool import cache, mbox
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.messages import message
from tests.helpers.spoolcheck import SHAPES, another_host

USER = "alice"
pytestmark = pytest.mark.timeout(60)


BIG = b"".join(message(n, body_lines=40) for n in range(1, 41))      # ~40 KiB
MIDDLE = 20                     # message 21 (index 20) sits far from both probes


def make(tmp_path, content: bytes = BIG, **options):
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), server_mode=True, **options)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(content)
    return cfg, paths


def session(cfg, paths, deleted=(), retrieved=()) -> tuple[list[str], tuple[int, int]]:
    """One session: its UIDs and what it scanned; QUIT with the given outcome."""
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    uids, region = [m.uid for m in drop.messages], drop.scan_region
    drop.update(set(deleted), set(retrieved))
    return uids, region


def warm(cfg, paths) -> list[str]:
    """Two sessions: the first writes headers (a change), the second the clean-state cache."""
    session(cfg, paths)
    uids, _ = session(cfg, paths)
    assert os.path.exists(paths.cache)
    return uids


def edit_middle_keeping_size_and_mtime(paths) -> None:
    """Change the X-UIDL value of message 21 in place (same length); restore the mtime."""
    st = os.stat(paths.spool)
    with open(paths.spool, "r+b") as f:
        data = f.read()
        at = data.index(b"X-UIDL: ", data.index(b"From sender21@")) + len(b"X-UIDL: ")
        assert cache.PROBE_OCTETS < at < len(data) - cache.PROBE_OCTETS
        f.seek(at)
        f.write(b"Z" if data[at:at + 1] != b"Z" else b"Y")
    os.utime(paths.spool, ns=(st.st_atime_ns, st.st_mtime_ns))


def full_scan_uids(paths, **options) -> list[str]:
    with open(paths.spool, "rb") as f:
        return [m.uid for m in mbox.scan(f, **options)]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_encoded_scans_decode_to_the_same_messages(shape):
    data = SHAPES[shape][0]
    messages = mbox.scan(io.BytesIO(data))
    state = cache.SpoolState(1, 2, len(data), 3, "h", "t")
    user, state2, options, decoded = cache.decode(cache.encode(USER, state, {"x": 1}, messages))
    assert (user, state2, options) == (USER, state, {"x": 1})
    assert [repr(m) for m in decoded] == [repr(m) for m in messages]


@pytest.mark.parametrize("next_login_on", ["the same host", "another host"])
def test_a_valid_cache_is_used_and_the_spool_is_not_rescanned(tmp_path, next_login_on):
    """Also on another host of an NFS spool, which sees the spool under another device
    number."""
    cfg, paths = make(tmp_path)
    uids = warm(cfg, paths)
    size = os.path.getsize(paths.spool)
    edit_middle_keeping_size_and_mtime(paths)
    assert full_scan_uids(paths)[MIDDLE] != uids[MIDDLE]        # a rescan would notice
    with another_host() if next_login_on == "another host" else contextlib.nullcontext():
        seen, region = session(cfg, paths)
    assert region == (size, size)                               # nothing scanned
    assert seen == uids                                         # the cached UID came back


def test_new_mail_is_scanned_alone_and_numbered_after_the_cached_messages(tmp_path):
    cfg, paths = make(tmp_path)
    uids = warm(cfg, paths)
    size = os.path.getsize(paths.spool)
    with open(paths.spool, "ab") as f:
        f.write(message(100) + message(101))
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    try:
        assert drop.scan_region == (size, os.path.getsize(paths.spool))
        assert [m.uid for m in drop.messages][:40] == uids
        assert [m.uid for m in drop.messages] == full_scan_uids(paths)
        assert [m.number for m in drop.messages] == list(range(1, 43))
        with open(paths.spool, "rb") as f:
            assert [m.octets for m in drop.messages] == [m.octets for m in mbox.scan(f)]
    finally:
        drop.close()
    # that session ended without QUIT: the next one scans the new mail again, and its QUIT
    # (X-UIDL to write for the new mail) leaves a cache of the whole rewritten spool
    _, region = session(cfg, paths)
    assert region == (size, size + len(message(100) + message(101)))
    _, region = session(cfg, paths)
    assert region == (os.path.getsize(paths.spool),) * 2


def _assert_rescanned(cfg, paths):
    seen, region = session(cfg, paths)
    assert region[0] == 0
    assert seen == full_scan_uids(paths)


def test_same_size_but_another_mtime_is_rescanned(tmp_path):
    cfg, paths = make(tmp_path)
    warm(cfg, paths)
    edit_middle_keeping_size_and_mtime(paths)
    os.utime(paths.spool, ns=(1, 1))
    _assert_rescanned(cfg, paths)


def test_a_changed_head_or_tail_is_rescanned(tmp_path):
    cfg, paths = make(tmp_path)
    warm(cfg, paths)
    st = os.stat(paths.spool)
    with open(paths.spool, "r+b") as f:
        f.seek(st.st_size - 10)
        f.write(b"X")
    with open(paths.spool, "ab") as f:          # new mail: the size differs anyway
        f.write(message(102))
    _assert_rescanned(cfg, paths)


def test_a_shorter_or_replaced_spool_is_rescanned(tmp_path):
    cfg, paths = make(tmp_path)
    warm(cfg, paths)
    with open(paths.spool, "r+b") as f:
        f.truncate(len(BIG) // 2)
    cfg2, paths = make(tmp_path, BIG)             # a new inode with the old content
    assert cfg2 == cfg
    _assert_rescanned(cfg, paths)


def old_json_cache(data: bytes) -> bytes:
    """The same cache in version 3's format (JSON records, no byte order): what a spool keeps
    after an upgrade from a build before the packed format."""
    user, state, options, messages = cache.decode(data)
    payload = json.dumps({"user": user, "spool": dataclasses.asdict(state), "options": options,
                          "messages": [list(dataclasses.astuple(m)) for m in messages]},
                         separators=(",", ":")).encode()
    digest = hashlib.sha256(payload).hexdigest().encode()
    return b"QPCACHE 3 %s %d\n" % (digest, len(payload)) + payload


def re_encoded(data: bytes, change) -> bytes:
    """The cache decoded, changed by `change(user, state, options, messages)` and encoded
    again: a valid checksum over wrong content."""
    parts = list(cache.decode(data))
    change(parts)
    return cache.encode(*parts)


def shift_fourth_message(parts) -> None:
    parts[3][3] = dataclasses.replace(parts[3][3], offset=parts[3][3].offset + 1)


DAMAGES = {
    "flip-payload-byte": lambda d: d[:len(d) // 2] + bytes([d[len(d) // 2] ^ 1]) + d[len(d) // 2 + 1:],
    "truncate": lambda d: d[:len(d) // 2],
    "cut-last-octet": lambda d: d[:-1],
    "version": lambda d: d.replace(b"QPCACHE %d " % cache.CACHE_VERSION,
                                   b"QPCACHE %d " % (cache.CACHE_VERSION + 1), 1),
    "old-json-format": old_json_cache,
    "other-byte-order": lambda d: d.replace(b" %s " % sys.byteorder.encode(),
                                            b" big " if sys.byteorder == "little" else b" little ", 1),
    "garbage": lambda d: os.urandom(300),
    "empty": lambda d: b"",
    "other-user": lambda d: re_encoded(d, lambda p: p.__setitem__(0, "bob")),
    "other-options": lambda d: re_encoded(d, lambda p: p[2].update(old_style_uid=True)),
    "bad-partition": lambda d: re_encoded(d, shift_fourth_message),
}


@pytest.mark.parametrize("damage", [*DAMAGES, "symlink"])
def test_a_corrupt_stale_or_foreign_cache_is_ignored_and_rebuilt(tmp_path, damage):
    cfg, paths = make(tmp_path)
    uids = warm(cfg, paths)
    edit_middle_keeping_size_and_mtime(paths)     # a trusted cache would hide this edit
    if damage == "symlink":
        os.rename(paths.cache, paths.cache + ".real")
        os.symlink(paths.cache + ".real", paths.cache)
    else:
        with open(paths.cache, "rb") as f:
            data = DAMAGES[damage](f.read())
        with open(paths.cache, "wb") as f:
            f.write(data)
    logged = []
    drop = Maildrop.open(cfg, paths, USER, log=lambda priority, text: logged.append(text),
                         lock_step_s=0.05)
    seen, region = [m.uid for m in drop.messages], drop.scan_region
    drop.update(set(), set())
    assert region[0] == 0, "the cache was trusted"
    assert seen == full_scan_uids(paths) and seen[MIDDLE] != uids[MIDDLE]
    ignored = [text for text in logged if text.startswith(f"{USER}'s cache ignored (")]
    if damage == "old-json-format":
        assert ignored == [f"{USER}'s cache ignored (format version 3, this build reads "
                           f"{cache.CACHE_VERSION}); scanning the spool"]
    if damage == "symlink":
        assert ignored == []            # not opened at all (O_NOFOLLOW): nothing to say
    else:
        assert len(ignored) == 1, logged
    if damage != "symlink":
        _, region = session(cfg, paths)           # rewritten: trusted again
        assert region[0] == region[1]


def test_conservative_cache_ignores_a_cache_older_than_the_spool(tmp_path):
    cfg, paths = make(tmp_path, conservative_cache=True)
    warm(cfg, paths)
    size = os.path.getsize(paths.spool)
    _, region = session(cfg, paths)
    assert region == (size, size)                  # unchanged spool: the cache is fine
    with open(paths.spool, "ab") as f:
        f.write(message(103))
    _, region = session(cfg, paths)
    assert region == (0, size + len(message(103)))
    # without conservative-cache the same situation scans the new mail only
    size = os.path.getsize(paths.spool)
    with open(paths.spool, "ab") as f:
        f.write(message(104))
    _, region = session(cfg.replace(conservative_cache=False), paths)
    assert region == (size, size + len(message(104)))


def test_a_normal_mode_session_forgets_the_cache(tmp_path):
    cfg, paths = make(tmp_path)
    warm(cfg, paths)
    drop = Maildrop.open(cfg.replace(server_mode=False), paths, USER, lock_step_s=0.05)
    assert not os.path.exists(paths.cache)
    drop.update({0}, set())
    _, region = session(cfg, paths)
    assert region[0] == 0


def test_losing_the_cache_keeps_uids(tmp_path):
    cfg, paths = make(tmp_path)
    uids = warm(cfg, paths)
    os.unlink(paths.cache)
    seen, region = session(cfg, paths)
    assert region[0] == 0 and seen == uids


def test_after_a_rewrite_the_new_cache_describes_the_new_spool(tmp_path):
    cfg, paths = make(tmp_path, fast_update=True)
    uids = warm(cfg, paths)
    session(cfg, paths, deleted={0, 5})
    seen, region = session(cfg, paths)
    size = os.path.getsize(paths.spool)
    assert region == (size, size)
    assert seen == [u for i, u in enumerate(uids) if i not in (0, 5)] == full_scan_uids(paths)


def test_a_stale_temporary_cache_file_is_removed(tmp_path):
    cfg, paths = make(tmp_path)
    with open(paths.cache + ".tmp", "wb") as f:
        f.write(b"half a cache")
    session(cfg, paths)
    assert not os.path.exists(paths.cache + ".tmp")


def test_cache_files_are_private(tmp_path):
    cfg, paths = make(tmp_path)
    session(cfg, paths)
    assert os.stat(paths.cache).st_mode & 0o777 == 0o600


def test_mail_after_a_region_without_an_empty_line_is_its_own_once_the_login_closed_it(
        tmp_path):
    """A spool whose last message lacks the closing empty line: a `From ` line appended right
    after it would be no separator (S11), so the login appends the empty line first
    (docs/mbox.md, "What write-back writes"); the mail appended after the session is then a
    message of its own, scanned after the cached region, as a full scan reads it."""
    content = message(1) + message(2)[:-1]                  # no empty line at the end
    cfg, paths = make(tmp_path, content, update_status_headers=False)
    session(cfg, paths)                                      # clean QUIT: cache written
    with open(paths.spool, "rb") as f:
        assert f.read() == content + b"\n"
    with open(paths.spool, "ab") as f:
        f.write(message(3))
    seen, region = session(cfg, paths)
    assert region[0] == len(content) + 1
    assert seen == full_scan_uids(paths, update_status_headers=False) and len(seen) == 3


def test_a_packed_document_nested_too_deep_is_damage_not_a_crash():
    """json's RecursionError becomes packed's ValueError, which every reader logs and
    rebuilds from (the cache and the Maildir index alike)."""
    import hashlib
    import sys

    from qpopper.spool import packed
    document = b"[" * 100_000
    payload = len(document).to_bytes(8, "little") + document
    data = b"M 1 %s %s %d\n" % (sys.byteorder.encode(), hashlib.sha256(payload).hexdigest()
                                .encode(), len(payload)) + payload
    with pytest.raises(ValueError, match="a damaged document"):
        packed.unpack(data, b"M", 1, 0)
