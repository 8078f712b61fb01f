"""The maildrop in normal mode, as Qpopper: open moves the spool into .user.pop, update writes
back kept messages plus new mail, restore puts everything back (reference §1.9, §2.6, S6, S9,
S16, S17, L6, L7)."""

import errno
import os
import shutil
import subprocess
import sys
import time

import pytest

from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.dotlock import lock_content
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.spoolcheck import fill_up, read, retr, small_tmpfs

USER = "alice"
FAST_LOCKS = 0.05


def msg(n: int, extra: bytes = b"") -> bytes:
    return (b"From s%d@example.org Wed Dec  2 05:53:22 1992\nSubject: m%d\n%s\nbody %d\n\n"
            % (n, n, extra, n))


def setup(tmp_path, spool: bytes | None = None, **options):
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), **options)
    paths = SpoolPaths.for_user(cfg, USER, str(tmp_path / "home"))
    if spool is not None:
        with open(paths.spool, "wb") as f:
            f.write(spool)
    return cfg, paths


def open_drop(cfg, paths, **kw) -> Maildrop:
    return Maildrop.open(cfg, paths, USER, lock_step_s=FAST_LOCKS, **kw)


def subjects(cfg, paths) -> list[bytes]:
    drop = open_drop(cfg, paths)
    try:
        return [retr(drop, i).split(b"\r\n")[0] for i in range(len(drop.messages))]
    finally:
        drop.close()


def leftovers(tmp_path) -> list[str]:
    return sorted(n for n in os.listdir(tmp_path)
                  if n.endswith((".journal", ".new", ".tmp", ".lock")))


def test_open_moves_the_spool_into_the_private_temp_drop(tmp_path):
    cfg, paths = setup(tmp_path, msg(1) + msg(2))
    inode = os.stat(paths.spool).st_ino
    drop = open_drop(cfg, paths)
    try:
        assert len(drop.messages) == 2 and drop.hidden_count == 0
        assert os.path.getsize(paths.spool) == 0
        assert os.stat(paths.spool).st_ino == inode           # truncated in place
        assert os.path.getsize(paths.temp_drop) == len(msg(1) + msg(2))
        assert os.stat(paths.temp_drop).st_mode & 0o077 == 0
        assert retr(drop, 1) == (b"Subject: m2\r\nX-UIDL: " + drop.messages[1].uid.encode()
                                 + b"\r\n\r\nbody 2\r\n")     # no framing line
        assert leftovers(tmp_path) == []                      # dot-lock only while copying
    finally:
        drop.close()


def test_update_writes_back_kept_messages_with_uidl_and_status(tmp_path):
    cfg, paths = setup(tmp_path, msg(1) + msg(2) + msg(3))
    os.chmod(paths.spool, 0o620)
    inode = os.stat(paths.spool).st_ino
    drop = open_drop(cfg, paths)
    uids = [m.uid for m in drop.messages]
    drop.update({1}, {0})
    assert read(paths.spool) == (
        b"From s1@example.org Wed Dec  2 05:53:22 1992\nX-UIDL: " + uids[0].encode()
        + b"\nSubject: m1\nStatus: RO\n\nbody 1\n\n"
        + b"From s3@example.org Wed Dec  2 05:53:22 1992\nX-UIDL: " + uids[2].encode()
        + b"\nSubject: m3\nStatus: U\n\nbody 3\n\n")
    st = os.stat(paths.spool)
    assert (st.st_ino, st.st_mode & 0o777) == (inode, 0o620)     # same file, same mode
    assert not os.path.exists(paths.temp_drop)
    assert leftovers(tmp_path) == []
    drop = open_drop(cfg, paths)
    assert [m.uid for m in drop.messages] == [uids[0], uids[2]]  # UIDs are stable
    drop.close()


def test_update_keeps_mail_delivered_during_the_session(tmp_path):
    cfg, paths = setup(tmp_path, msg(1) + msg(2))
    drop = open_drop(cfg, paths)
    with open(paths.spool, "ab") as f:
        f.write(msg(3))
    drop.update({0}, set())
    assert read(paths.spool).endswith(msg(3))      # new mail bytes unchanged
    assert subjects(cfg, paths) == [b"Subject: m2", b"Subject: m3"]


def test_everything_deleted_leaves_the_spool_alone(tmp_path):
    cfg, paths = setup(tmp_path, msg(1) + msg(2))
    steps = []
    drop = open_drop(cfg, paths, step_hook=steps.append)
    with open(paths.spool, "ab") as f:
        f.write(msg(3))
    drop.update({0, 1}, set())
    assert read(paths.spool) == msg(3)
    assert not os.path.exists(paths.temp_drop)
    assert not any(s.startswith("update:dotlock") for s in steps)   # no spool lock needed


def test_keep_temp_drop_leaves_the_empty_drop(tmp_path):
    cfg, paths = setup(tmp_path, msg(1), keep_temp_drop=True)
    drop = open_drop(cfg, paths)
    drop.update(set(), set())
    assert os.path.getsize(paths.temp_drop) == 0
    drop = open_drop(cfg, paths)
    drop.update({0}, set())
    assert os.path.exists(paths.temp_drop) and os.path.getsize(paths.temp_drop) == 0


def test_restore_puts_the_mail_back_in_front_of_new_mail(tmp_path):
    original = msg(1) + msg(2, b"Status: RO\n")
    cfg, paths = setup(tmp_path, original)
    drop = open_drop(cfg, paths)
    retr(drop, 0)
    with open(paths.spool, "ab") as f:
        f.write(msg(3))
    drop.restore()
    assert read(paths.spool) == original + msg(3)   # byte for byte
    assert not os.path.exists(paths.temp_drop)
    assert leftovers(tmp_path) == []


def test_update_without_status_headers_changes_no_byte(tmp_path):
    original = msg(1) + msg(2)
    cfg, paths = setup(tmp_path, original, update_status_headers=False)
    drop = open_drop(cfg, paths)
    drop.update(set(), {0, 1})
    assert read(paths.spool) == original


def test_second_session_gets_in_use(tmp_path):
    cfg, paths = setup(tmp_path, msg(1))
    first = open_drop(cfg, paths)
    try:
        with pytest.raises(PopError) as info:
            open_drop(cfg, paths)
        assert info.value.code is RespCode.IN_USE
        assert info.value.render() == (b"-ERR [IN-USE] .alice.pop lock busy!  Is another "
                                       b"session active?\r\n")
    finally:
        first.close()
    open_drop(cfg, paths).close()


def test_leftover_temp_drop_comes_first(tmp_path):
    cfg, paths = setup(tmp_path, msg(2))
    fd = os.open(paths.temp_drop, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, msg(1)[:-1])             # a crashed session's drop, even without its blank line
    os.close(fd)
    assert subjects(cfg, paths) == [b"Subject: m1", b"Subject: m2"]


def test_a_spool_an_appender_creates_while_update_would_is_used(tmp_path):
    """No spool at QUIT (a crashed session's drop of a user whose spool is gone) while the
    first delivery of a plain fcntl appender (no dot-lock) creates it between our open
    (ENOENT) and our create (EEXIST): the update locks and uses that file, not -ERR."""
    cfg, paths = setup(tmp_path)
    fd = os.open(paths.temp_drop, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, msg(1))
    os.close(fd)

    def appender(step):
        if step == "update:spool-create":
            fd = os.open(paths.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, msg(2))
            os.close(fd)
    drop = open_drop(cfg, paths, step_hook=appender)
    drop.update(set(), set())
    assert subjects(cfg, paths) == [b"Subject: m1", b"Subject: m2"]


def test_check_old_spool_loc_recovers_an_old_drop(tmp_path):
    cfg, paths = setup(tmp_path, None, hash_spool=1)
    os.makedirs(os.path.dirname(paths.spool))
    with open(paths.spool, "wb") as f:
        f.write(msg(2))
    assert paths.old_temp_drop == str(tmp_path / ".alice.pop")
    fd = os.open(paths.old_temp_drop, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, msg(1))
    os.close(fd)
    assert subjects(cfg, paths) == [b"Subject: m1", b"Subject: m2"]
    assert not os.path.exists(paths.old_temp_drop)


def test_check_hash_dir_creates_the_hashed_dirs(tmp_path):
    cfg, paths = setup(tmp_path, None, hash_spool=2)
    drop = open_drop(cfg, paths)
    assert drop.messages == []
    drop.close()
    assert os.path.isdir(tmp_path / "a" / "l")


def test_without_check_hash_dir_a_missing_dir_is_an_error(tmp_path):
    cfg, paths = setup(tmp_path, None, hash_spool=2, check_hash_dir=False)
    with pytest.raises(PopError) as info:
        open_drop(cfg, paths)
    assert info.value.code is RespCode.SYS_TEMP
    assert str(tmp_path) not in info.value.text and "/" not in info.value.text


def test_uw_kluge_hidden_message_is_kept(tmp_path):
    folder = (b"From MAILER-DAEMON Wed Dec  2 05:53:22 1992\nFrom: Mail System Internal Data "
              b"<MAILER-DAEMON@x>\nSubject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
              b"X-IMAP: 1 2\n\nfolder data\n\n")
    cfg, paths = setup(tmp_path, folder + msg(1), uw_kluge=True)
    drop = open_drop(cfg, paths)
    assert drop.hidden_count == 1 and len(drop.messages) == 1
    drop.update({0}, set())
    assert read(paths.spool) == folder
    assert os.path.exists(paths.spool)


@pytest.mark.parametrize("every, refreshed", [(1, True), (0, False)])
def test_mail_lock_check_refreshes_the_dot_lock(tmp_path, every, refreshed):
    cfg, paths = setup(tmp_path, msg(1) + msg(2) + msg(3), mail_lock_check=every)
    seen = {}

    def hook(name):
        if name == "update:create-image":
            os.utime(paths.lock, (time.time() - 200, time.time() - 200))
        if name == "update:fsync-image":
            seen["age"] = time.time() - os.stat(paths.lock).st_mtime

    drop = open_drop(cfg, paths, step_hook=hook)
    drop.update({1}, set())
    assert (seen["age"] < 100) is refreshed


def test_stale_lock_of_a_crashed_session_does_not_block(tmp_path):
    cfg, paths = setup(tmp_path, msg(1))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with open(paths.lock, "wb") as f:
        f.write(lock_content(pid=child.pid))
    drop = open_drop(cfg, paths)
    assert len(drop.messages) == 1
    drop.close()
    assert not os.path.exists(paths.lock)


@pytest.mark.skipif(shutil.which("dotlockfile") is None, reason="dotlockfile not installed")
def test_a_delivery_agents_lock_blocks_our_copy(tmp_path):
    cfg, paths = setup(tmp_path, msg(1))
    subprocess.run(["dotlockfile", "-p", "-l", "-r", "0", paths.lock], check=True, timeout=30)
    try:
        with pytest.raises(PopError) as info:
            open_drop(cfg, paths)
        assert info.value.code is RespCode.SYS_TEMP
        assert read(paths.spool) == msg(1)          # not touched
    finally:
        subprocess.run(["dotlockfile", "-u", paths.lock], check=True, timeout=30)
    drop = open_drop(cfg, paths)
    subprocess.run(["dotlockfile", "-p", "-l", "-r", "0", paths.lock], check=True, timeout=30)
    try:
        with pytest.raises(PopError) as info:
            drop.update(set(), set())
        assert info.value.text == "Error updating primary drop.  Mail left in temporary maildrop"
        assert os.path.getsize(paths.temp_drop) == len(msg(1))    # mail left in the drop
    finally:
        subprocess.run(["dotlockfile", "-u", paths.lock], check=True, timeout=30)
    assert subjects(cfg, paths) == [b"Subject: m1"]


def test_temp_drop_symlink_is_refused(tmp_path):
    cfg, paths = setup(tmp_path, msg(1))
    os.symlink(tmp_path / "victim", paths.temp_drop)
    with pytest.raises(PopError) as info:
        open_drop(cfg, paths)
    assert info.value.code is RespCode.SYS_PERM
    assert not (tmp_path / "victim").exists()
    assert read(paths.spool) == msg(1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the spool another owner")
def test_spool_of_another_owner_is_refused(tmp_path):
    cfg, paths = setup(tmp_path, msg(1))
    os.chown(paths.spool, 54321, -1)
    with pytest.raises(PopError) as info:
        open_drop(cfg, paths)
    assert info.value.code is RespCode.SYS_PERM
    assert "/" not in info.value.text


def test_unreadable_journal_is_left_for_the_administrator(tmp_path):
    cfg, paths = setup(tmp_path, msg(1))
    with open(paths.journal, "w") as f:
        f.write("{garbage")
    logged = []
    with pytest.raises(PopError) as info:
        open_drop(cfg, paths, log=lambda p, t: logged.append(t))
    assert info.value.code is RespCode.SYS_TEMP
    assert os.path.exists(paths.journal)
    assert read(paths.spool) == msg(1)


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs, to run out of space for real (root only)."""
    with small_tmpfs(tmp_path / "small") as mnt:
        yield mnt


@pytest.mark.timeout(60)
def test_disk_full_at_update_says_overquota_and_keeps_the_mail(small_fs):
    big = b"".join(msg(n) + b"x" * 1000 + b"\n\n" for n in range(400))   # ~420 KiB
    cfg, paths = setup(small_fs, big)
    steps = []
    drop = open_drop(cfg, paths, step_hook=steps.append)
    count = len(drop.messages)
    filler = fill_up(small_fs)          # then leave room for locks, not for the image
    os.truncate(filler, os.path.getsize(filler) - 64 * 1024)
    with pytest.raises(PopError) as info:
        drop.update(set(), set(range(count)))
    assert info.value.text.startswith("Overquota")
    assert "/" not in info.value.text
    assert "update:write-image" in steps and "update:journal-commit-write" not in steps
    os.unlink(filler)
    assert leftovers(small_fs) == []
    drop = open_drop(cfg, paths)
    assert len(drop.messages) == count
    drop.close()


def test_a_planted_hard_link_at_the_image_name_is_not_truncated(tmp_path):
    cfg, paths = setup(tmp_path, msg(1))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    drop = open_drop(cfg, paths)
    os.link(victim, paths.new_image)
    with pytest.raises(PopError) as info:
        drop.update(set(), set())
    assert info.value.text == "Error updating primary drop.  Mail left in temporary maildrop"
    assert victim.read_bytes() == b"precious"
    os.unlink(paths.new_image)
    assert subjects(cfg, paths) == [b"Subject: m1"]


class Crash(BaseException):
    """Stands in for a kill: nothing in the maildrop handles it, only `finally` blocks run
    (they close descriptors and locks, as the kernel would)."""


def big_msg(n: int, octets: int = 200_000) -> bytes:
    # Ends with a single newline (the last message of a spool may): recovery must pad, so
    # even appending new mail to the image extends the spool.
    return (b"From big%d@example.org Wed Dec  2 05:53:22 1992\nSubject: big%d\n\n" % (n, n)
            + b"y" * (octets - 80) + b"\n")


@pytest.mark.parametrize("spool_after_crash", ["appended", "replaced"])
def test_no_room_during_recovery_keeps_the_journal_and_loses_nothing(tmp_path, spool_after_crash):
    """The update dies after part of the spool was rewritten (the 2nd write-spool chunk), mail
    arrives (appended to the spool, or in a new spool file after the old one was removed),
    then the recovering login runs out of room when extending the spool: it must keep the
    image and journal (the only copy of the mail delivered during the first session) so the
    login after that rolls forward; nothing lost, nothing duplicated."""
    cfg, paths = setup(tmp_path, msg(1) + msg(2))
    drop = open_drop(cfg, paths)
    with open(paths.spool, "ab") as f:              # delivered during the session
        f.write(big_msg(3))
    seen = []

    def crash_at_second_chunk(name):
        seen.append(name)
        if name == "update:write-spool" and seen.count(name) == 2:
            raise Crash()

    drop._hook = crash_at_second_chunk
    with pytest.raises(Crash):
        drop.update(set(), set())
    assert os.path.exists(paths.journal) and os.path.exists(paths.new_image)
    if spool_after_crash == "replaced":
        # moved away, not unlinked: a freed inode number could be reused by the new spool
        os.rename(paths.spool, tmp_path / "moved-away")
    with open(paths.spool, "ab") as f:              # delivered after the crash
        f.write(msg(4))

    def no_room(name):
        if name == "recover:allocate-spool":
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(PopError) as info:
        open_drop(cfg, paths, step_hook=no_room)
    assert info.value.text.startswith("Overquota")
    assert os.path.exists(paths.journal) and os.path.exists(paths.new_image)

    drop = open_drop(cfg, paths)
    try:
        bodies = [retr(drop, i) for i in range(len(drop.messages))]
    finally:
        drop.close()
    assert [b.split(b"\r\n")[0] for b in bodies] == [b"Subject: m1", b"Subject: m2",
                                                     b"Subject: big3", b"Subject: m4"]
    assert bodies[2].count(b"y" * 1000) == (200_000 - 80) // 1000
    assert b"\0" not in b"".join(bodies)
    assert leftovers(tmp_path) == []


def test_the_marker_byte_is_written_after_the_rest_is_durable(tmp_path):
    """Byte Z says "the update is complete": it is written only after an fdatasync of
    everything else, so writeback cannot make the marker durable before the body."""
    cfg, paths = setup(tmp_path, msg(1) + msg(2))
    drop = open_drop(cfg, paths)
    with open(paths.spool, "ab") as f:
        f.write(msg(3))                             # new mail: the image extends the spool
    steps = []
    drop._hook = steps.append
    drop.update({1}, set())
    body = [s for s in steps if s in ("update:write-spool", "update:fsync-spool-body",
                                      "update:write-spool-marker", "update:fsync-spool")]
    assert body == ["update:write-spool", "update:write-spool", "update:fsync-spool-body",
                    "update:write-spool-marker", "update:fsync-spool"]
    assert subjects(cfg, paths) == [b"Subject: m1", b"Subject: m3"]
