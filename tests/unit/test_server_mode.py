"""Server mode (-S, reference §1.9, §2.6, S18): the session reads the spool in place, and QUIT
writes only what changed. Real files in tmp_path; sessions driven as the protocol drives the
Maildrop (send = RETR, update = QUIT, restore = abort without update)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

import pytest

from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers import messages
from tests.helpers.spoolcheck import fill_up as fill, read, retr, small_tmpfs

USER = "alice"
pytestmark = pytest.mark.timeout(60)


def message(n: int, extra_headers: bytes = b"") -> bytes:
    return messages.message(n, extra_headers=extra_headers,
                            body=b"body of message %d\n.starts with a dot\n" % n)


def spool_of(*numbers: int) -> bytes:
    return b"".join(message(n) for n in numbers)


def make(tmp_path, content: bytes, **options):
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), server_mode=True, **options)
    paths = SpoolPaths.for_user(cfg, USER, None)
    if content is not None:
        with open(paths.spool, "wb") as f:
            f.write(content)
        os.chmod(paths.spool, 0o660)
    return cfg, paths


def open_drop(cfg, paths, hook=None) -> Maildrop:
    return Maildrop.open(cfg, paths, USER, step_hook=hook, lock_step_s=0.05)


def view(drop) -> list[tuple[str, bytes]]:
    return [(m.uid, retr(drop, i)) for i, m in enumerate(drop.messages)]


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def subjects(data: bytes) -> list[str]:
    return [line[9:].decode().rstrip("\r") for line in data.split(b"\n")
            if line.startswith(b"Subject: ")]


def normal_view(tmp_path, paths) -> list[tuple[str, bytes]]:
    """What a normal-mode session sees of the spool (copied, so the spool stays)."""
    copy_dir = tempfile.mkdtemp(dir=tmp_path)
    shutil.copy(paths.spool, os.path.join(copy_dir, USER))
    cfg = Config.defaults().replace(spool_dir=copy_dir)
    drop = Maildrop.open(cfg, SpoolPaths.for_user(cfg, USER, None), USER, lock_step_s=0.05)
    try:
        return view(drop)
    finally:
        drop.close()


def test_server_mode_reads_the_spool_in_place_and_shows_what_normal_mode_shows(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1, 2, 3))
    expected = normal_view(tmp_path, paths)
    steps = []
    drop = open_drop(cfg, paths, steps.append)
    try:
        assert drop.server_mode
        assert view(drop) == expected                      # same RETR bytes, same UIDs
        assert os.path.getsize(paths.temp_drop) == 0       # nothing copied to .user.pop
        assert read(paths.spool) == spool_of(1, 2, 3)
        assert not any("write" in s or "truncate" in s for s in steps), steps
        # the spool lock was held only while reading: a delivery agent can lock it now
        assert not os.path.exists(paths.lock)
    finally:
        drop.close()
    assert not os.path.exists(paths.temp_drop)


def test_dele_and_quit_rewrite_the_spool_with_headers_and_stable_uids(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1, 2, 3, 4))
    ino = os.stat(paths.spool).st_ino
    drop = open_drop(cfg, paths)
    before = view(drop)
    drop.update({1, 3}, {0})
    data = read(paths.spool)
    assert subjects(data) == ["message 1", "message 3"]
    assert data.count(b"X-UIDL: ") == 2 and b"Status: RO\n" in data and b"Status: U\n" in data
    assert os.stat(paths.spool).st_ino == ino            # rewritten in place (no fast-update)
    assert stat.S_IMODE(os.stat(paths.spool).st_mode) == 0o660
    drop = open_drop(cfg, paths)
    try:
        assert [uid for uid, _ in view(drop)] == [before[0][0], before[2][0]]
    finally:
        drop.close()
    # invariant 5: a normal-mode session sees the same UIDs
    assert [uid for uid, _ in normal_view(tmp_path, paths)] == [before[0][0], before[2][0]]


def test_quit_without_changes_leaves_the_spool_untouched(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1, 2, 3))
    first = open_drop(cfg, paths)
    retr(first, 0)
    first.update(set(), {0})            # the first QUIT writes X-UIDL and Status once
    os.unlink(paths.cache)
    written = read(paths.spool)
    old_time = 1_600_000_000_000_000_000
    os.utime(paths.spool, ns=(old_time, old_time))
    before = os.stat(paths.spool)
    steps = []
    drop = open_drop(cfg, paths, steps.append)
    assert drop.server_mode
    retr(drop, 0)                       # already `Status: RO`: nothing to write
    retr(drop, 1)
    drop.send(2, lambda data: None, body_lines=1)       # TOP marks nothing
    drop.update(set(), {0})
    after = os.stat(paths.spool)
    assert read(paths.spool) == written
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size)
    assert not [s for s in steps if "spool" in s or "image" in s], steps
    assert os.path.exists(paths.cache)                     # only the cache was written


def test_quit_without_status_updates_never_writes(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1, 2), update_status_headers=False)
    before = os.stat(paths.spool)
    drop = open_drop(cfg, paths)
    retr(drop, 1)
    drop.update(set(), {1})
    after = os.stat(paths.spool)
    assert read(paths.spool) == spool_of(1, 2)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_retr_of_an_unread_message_writes_its_status(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1, 2))
    open_drop(cfg, paths).update(set(), set())
    assert read(paths.spool).count(b"Status: U\n") == 2
    drop = open_drop(cfg, paths)
    retr(drop, 1)
    drop.update(set(), {1})
    data = read(paths.spool)
    assert data.count(b"Status: U\n") == 1 and data.count(b"Status: RO\n") == 1
    drop = open_drop(cfg, paths)
    try:
        assert [m.retrieved for m in drop.messages] == [False, True]
    finally:
        drop.close()


def test_everything_deleted_without_new_mail_truncates_the_spool(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1, 2, 3))
    ino = os.stat(paths.spool).st_ino
    steps = []
    drop = open_drop(cfg, paths, steps.append)
    drop.update({0, 1, 2}, set())
    assert read(paths.spool) == b""
    assert os.stat(paths.spool).st_ino == ino
    assert "update:truncate-spool" in steps and "update:create-image" not in steps
    assert not os.path.exists(paths.temp_drop)
    # the login's scan would have been cached at QUIT; an empty spool gets no cache
    assert "update:cache-write" not in steps and not os.path.lexists(paths.cache)
    steps.clear()
    drop = open_drop(cfg, paths, steps.append)
    drop.update(set(), set())
    assert drop.messages == [] and not any("cache" in step for step in steps), steps
    append(paths.spool, message(50))
    drop = open_drop(cfg, paths)
    assert [m.octets > 0 for m in drop.messages] == [True]
    drop.update(set(), set())
    assert os.path.exists(paths.cache)              # mail again: cached as before


@pytest.mark.parametrize("fast_update", [False, True])
def test_everything_deleted_keeps_mail_delivered_during_the_session(tmp_path, fast_update):
    cfg, paths = make(tmp_path, spool_of(1, 2), fast_update=fast_update)
    drop = open_drop(cfg, paths)
    append(paths.spool, message(50))
    drop.update({0, 1}, set())
    assert read(paths.spool) == message(50)


@pytest.mark.parametrize("fast_update", [False, True])
def test_new_mail_during_the_session_follows_the_kept_messages(tmp_path, fast_update):
    cfg, paths = make(tmp_path, spool_of(1, 2, 3), fast_update=fast_update)
    if os.geteuid() == 0:
        os.chown(paths.spool, -1, 8)            # the spool's group must survive a rename
    before = os.stat(paths.spool)
    drop = open_drop(cfg, paths)
    append(paths.spool, message(60) + message(61))
    drop.update({1}, set())
    after = os.stat(paths.spool)
    assert subjects(read(paths.spool)) == ["message 1", "message 3", "message 60", "message 61"]
    assert read(paths.spool).endswith(message(61))          # new mail bytes unchanged
    assert (after.st_ino != before.st_ino) == fast_update   # fast-update renamed the image
    assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(before.st_mode)
    assert after.st_gid == before.st_gid
    assert sorted(os.listdir(tmp_path)) == sorted([USER, os.path.basename(paths.cache)])


def test_fast_update_renames_the_new_image_as_its_help_says(tmp_path):
    """The help (and so the man page and example config) names what is renamed: the new
    image, not the temporary drop."""
    from qpopper.options import lookup
    text = lookup("fast-update").help
    assert ".user.pop.new" in text and "temporary drop" not in text
    cfg, paths = make(tmp_path, spool_of(1, 2, 3), fast_update=True)
    seen = {}

    def hook(name):
        if name == "update:rename-image-over-spool":
            seen["image"] = os.stat(paths.new_image).st_ino
            seen["drop"] = os.stat(paths.temp_drop).st_ino

    drop = open_drop(cfg, paths, hook)
    drop.update({0}, set())
    assert os.stat(paths.spool).st_ino == seen["image"] != seen["drop"]
    assert subjects(read(paths.spool)) == ["message 2", "message 3"]


def test_fast_update_falls_back_to_copying_when_rename_fails(tmp_path):
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem to make rename(2) fail (EXDEV)")
    other_fs = tempfile.mkdtemp(dir="/dev/shm", prefix="qpt-")
    try:
        log = []
        cfg, paths = make(tmp_path, spool_of(1, 2, 3), fast_update=True, temp_dir=other_fs)
        ino = os.stat(paths.spool).st_ino
        drop = Maildrop.open(cfg, paths, USER, log=lambda p, t: log.append(t), lock_step_s=0.05)
        append(paths.spool, message(70))
        drop.update({0}, set())
        assert subjects(read(paths.spool)) == ["message 2", "message 3", "message 70"]
        assert os.stat(paths.spool).st_ino == ino
        assert any("rename failed" in t for t in log), log
        assert os.listdir(other_fs) == [os.path.basename(paths.cache)]
    finally:
        shutil.rmtree(other_fs)


def test_abort_without_update_puts_nothing_back(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1, 2))
    before = os.stat(paths.spool)
    drop = open_drop(cfg, paths)
    append(paths.spool, message(80))
    steps = []
    drop._hook = steps.append
    drop.restore()
    assert read(paths.spool) == spool_of(1, 2) + message(80)
    assert os.stat(paths.spool).st_ino == before.st_ino
    assert not [s for s in steps if "spool" in s or "image" in s], steps
    assert not os.path.exists(paths.temp_drop)


def test_a_leftover_temp_drop_forces_normal_mode_and_its_mail_comes_first(tmp_path):
    cfg, paths = make(tmp_path, spool_of(2, 3))
    fd = os.open(paths.temp_drop, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, message(1))
    os.close(fd)
    drop = open_drop(cfg, paths)
    try:
        assert not drop.server_mode
        assert [subjects(data) for _, data in view(drop)] == [["message 1"], ["message 2"],
                                                               ["message 3"]]
    finally:
        drop.close()
    drop = open_drop(cfg, paths)                 # the mail is in the drop: normal mode again
    assert not drop.server_mode
    drop.update(set(), set())
    drop = open_drop(cfg, paths)                 # written back, drop gone: server mode again
    try:
        assert drop.server_mode and len(drop.messages) == 3
    finally:
        drop.close()


def test_a_missing_spool_forces_normal_mode(tmp_path):
    cfg, paths = make(tmp_path, None)
    drop = open_drop(cfg, paths)
    try:
        assert not drop.server_mode and drop.messages == []
    finally:
        drop.close()


def test_a_second_session_is_refused_while_the_first_runs(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1))
    drop = open_drop(cfg, paths)
    try:
        with pytest.raises(PopError) as refused:
            open_drop(cfg, paths)
        assert refused.value.code == RespCode.IN_USE
    finally:
        drop.close()


def test_a_spool_replaced_during_the_session_is_left_alone(tmp_path):
    cfg, paths = make(tmp_path, spool_of(1, 2))
    drop = open_drop(cfg, paths)
    os.unlink(paths.spool)
    with open(paths.spool, "wb") as f:
        f.write(message(90))
    with pytest.raises(PopError) as refused:
        drop.update({0}, set())
    assert refused.value.code == RespCode.SYS_TEMP
    assert read(paths.spool) == message(90)


def test_mode_switches_keep_uids(tmp_path):
    """Invariant 5: server -> normal -> server, with and without the cache."""
    cfg, paths = make(tmp_path, spool_of(1, 2, 3))
    drop = open_drop(cfg, paths)
    uids = [m.uid for m in drop.messages]
    drop.update(set(), set())                                   # server mode writes X-UIDL
    normal = cfg.replace(server_mode=False)
    drop = open_drop(normal, paths)
    assert [m.uid for m in drop.messages] == uids
    append(paths.spool, message(4))
    drop.update({1}, set())
    drop = open_drop(cfg, paths)
    new_uids = [m.uid for m in drop.messages]
    assert new_uids[:2] == [uids[0], uids[2]]
    drop.close()
    if os.path.exists(paths.cache):
        os.unlink(paths.cache)
    drop = open_drop(cfg, paths)
    try:
        assert [m.uid for m in drop.messages] == new_uids
    finally:
        drop.close()


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs, to run out of space for real (root only)."""
    with small_tmpfs(tmp_path / "small") as mnt:
        yield mnt


BIG = b"".join(message(n) + b"x" * 1000 + b"\n\n" for n in range(300))      # ~330 KiB


def test_disk_full_while_building_the_image_leaves_the_spool_alone(small_fs):
    cfg, paths = make(small_fs, BIG)
    drop = open_drop(cfg, paths)
    filler = fill(small_fs)
    os.truncate(filler, os.path.getsize(filler) - 64 * 1024)   # room for locks, not the image
    with pytest.raises(PopError) as info:
        drop.update({0}, set())
    assert info.value.text.startswith("Overquota") and "/" not in info.value.text
    assert info.value.text.endswith("this session's changes are not applied")
    assert read(paths.spool) == BIG
    os.unlink(filler)
    drop = open_drop(cfg, paths)
    try:
        assert drop.server_mode and len(drop.messages) == 300
    finally:
        drop.close()


def test_disk_full_after_the_spool_was_emptied_keeps_the_image_until_there_is_room(small_fs):
    """Copy path: the spool was emptied for the image, then the room went (another writer):
    the image is now the only copy, so it and its journal stay, and sessions refuse to start
    (Overquota) until the commit can be finished."""
    cfg, paths = make(small_fs, BIG)
    drop = open_drop(cfg, paths)
    state = {}

    def hook(name):
        if name == "update:extend-spool" and "filler" not in state:
            state["filler"] = fill(small_fs)
    drop._hook = hook
    with pytest.raises(PopError) as info:
        drop.update({0}, set())
    assert info.value.text.startswith("Overquota")
    assert info.value.text.endswith("the update completes at a later login")
    assert os.path.exists(paths.journal) and os.path.exists(paths.new_image)
    assert read(paths.spool) == b""
    with pytest.raises(PopError):
        open_drop(cfg, paths)                   # still no room: refused, nothing lost
    assert os.path.exists(paths.new_image)
    os.unlink(state["filler"])
    drop = open_drop(cfg, paths)                # recovered: the update committed
    try:
        assert len(drop.messages) == 299
        assert subjects(retr(drop, 0)) == ["message 1"]
    finally:
        drop.close()


def test_the_uw_folder_message_stays_hidden_and_first(tmp_path):
    folder = (b"From MAILER-DAEMON Wed Dec  2 05:53:00 1992\nFrom: Mail System Internal Data "
              b"<MAILER-DAEMON@x>\nSubject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
              b"X-IMAP: 1 2\n\nfolder data\n\n")
    cfg, paths = make(tmp_path, folder + spool_of(1, 2), uw_kluge=True)
    drop = open_drop(cfg, paths)
    assert drop.server_mode and drop.hidden_count == 1 and len(drop.messages) == 2
    drop.update({0}, set())
    data = read(paths.spool)
    assert data.startswith(folder) and subjects(data)[1:] == ["message 2"]


def test_fast_update_answers_ok_when_the_directory_sync_fails_after_the_rename(
        tmp_path, monkeypatch):
    """The rename over the spool applied the changes: a directory fsync failing after it is
    logged, and QUIT does not claim the changes were not applied (docs/maildrop.md, "Server
    mode: the update")."""
    from qpopper.spool import server_mode

    def failing(path):
        raise OSError(errno.EIO, "Input/output error")
    log = []
    cfg, paths = make(tmp_path, spool_of(1, 2), fast_update=True)
    drop = Maildrop.open(cfg, paths, USER, log=lambda p, t: log.append(t), lock_step_s=0.05)
    monkeypatch.setattr(server_mode, "fsync_parent_dir", failing)
    drop.update({0}, set())
    drop.close()
    assert subjects(read(paths.spool)) == ["message 2"]
    assert not os.path.exists(paths.journal) and not os.path.exists(paths.new_image)
    assert any("directory not synced" in t for t in log), log


def test_the_update_failure_texts_are_pinned():
    """What a client reads when QUIT's write-back fails (docs/maildrop.md, "Disk full and
    quota"): each overquota text is its failure's text after `Overquota: `, word for word."""
    from qpopper.spool import maildrop, server_mode
    assert server_mode.SERVER_UPDATE_FAILED_TEXT == (
        "Error updating primary drop.  Your mail is intact; this session's changes are not "
        "applied")
    assert server_mode.SERVER_UPDATE_PENDING_TEXT == (
        "Error updating primary drop.  Your mail is intact; the update completes at a later "
        "login")
    assert server_mode.OVERQUOTA_SERVER_UPDATE_FAILED_TEXT == (
        "Overquota: error updating primary drop.  Your mail is intact; this session's changes "
        "are not applied")
    assert server_mode.OVERQUOTA_SERVER_UPDATE_PENDING_TEXT == (
        "Overquota: error updating primary drop.  Your mail is intact; the update completes "
        "at a later login")
    assert maildrop.UPDATE_FAILED_TEXT == (
        "Error updating primary drop.  Mail left in temporary maildrop")
    assert maildrop.OVERQUOTA_UPDATE_TEXT == (
        "Overquota: error updating primary drop.  Mail left in temporary maildrop")
    assert maildrop.OVERQUOTA_OPEN_TEXT == (
        "Overquota: unable to copy your mail to the temporary maildrop")
