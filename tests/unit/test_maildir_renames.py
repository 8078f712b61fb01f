"""Another program renames Maildir files while a session runs (docs/maildir.md, "Changes by
other programs"): a message is the file, known by its base name and its inode. A renamed
message is found again (also from the index, with no listing), a different file with the
same base name (a copy, a restored backup) is never taken for it, a file listed under two
names is one message, and UPDATE deletes the file the user deleted wherever another program
moved it, and nothing else."""

from __future__ import annotations

import errno
import os
import time

import pytest

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import maildir
from qpopper.spool.maildir_drop import MaildirDrop
from tests.helpers.maildirs import (COPY, FIRST, SECOND, files, make_maildir, replace_with_copy,
                                    retr, settle, two_messages, wire)


def test_a_renamed_message_is_found_again_also_when_the_session_listed_nothing(tmp_path):
    path, first, second = two_messages(tmp_path)
    settle(path)
    steps = []
    drop = MaildirDrop.open(path, "qpt", step_hook=steps.append)
    try:
        assert not any("index" in step for step in steps)       # from the index, no listing
        index = [m.base for m in drop.messages].index(first)
        os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,R"))
        assert retr(drop, index) == wire(FIRST)
        drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert list(files(path)) == [f"new/{second}"]


@pytest.mark.parametrize("copy", ["made-after", "same-time", "given-the-inode",
                                  "given-the-inode-in-the-logins-tick"])
def test_a_copy_under_the_base_name_is_never_taken_for_the_listed_message(tmp_path, copy):
    """The session listed new/KEY; another program expunged it and put a different file with
    that base name in cur/ (a restored backup, the message delivered again by a sync tool).
    The copy is made after the listing; or keeps the message's time (cp -p, rsync -a, tar),
    and the inode tells; or has the message's inode, as a file system may give a new file
    the inode of one just removed (ext4 does; set by hand here, as the reuse is the file
    system's choice), and the time tells. RETR says the message is gone, and UPDATE's DELE
    leaves the copy alone; on the message's inode, QUIT cannot tell it from the message
    changed in place, and says a deleted message was not removed."""
    path, first, second = two_messages(tmp_path)
    copy_path = os.path.join(path, "cur", first + ":2,S")
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        original = os.lstat(os.path.join(path, "new", first))
        replace_with_copy(path, f"new/{first}", COPY, f"cur/{first}:2,S")
        if copy == "same-time":
            os.utime(copy_path, ns=(original.st_atime_ns, original.st_mtime_ns))
        elif copy.startswith("given-the-inode"):
            drop.inodes[index] = os.lstat(copy_path).st_ino
        if copy == "given-the-inode-in-the-logins-tick":     # the same clock tick as the login
            os.utime(copy_path, ns=(drop.listed_ns, drop.listed_ns))
        with pytest.raises(PopError) as gone:
            drop.check_available(index)
        assert gone.value.code is RespCode.SYS_TEMP and "removed" in str(gone.value)
        if copy.startswith("given-the-inode"):
            with pytest.raises(PopError, match="not removed"):
                drop.update(deleted={index}, retrieved=set())
        else:
            drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"cur/{first}:2,S": COPY, f"new/{second}": SECOND}


def test_a_copy_put_at_the_messages_own_name_during_the_session_is_not_deleted(tmp_path):
    path, first, second = two_messages(tmp_path)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        replace_with_copy(path, f"new/{first}", b"Subject: restored\n\nz\n")
        drop.update(deleted={index}, retrieved={1 - index})
    finally:
        drop.close()
    assert files(path) == {f"new/{first}": b"Subject: restored\n\nz\n",
                           f"cur/{second}:2,S": SECOND}


@pytest.mark.parametrize("listings", [1, maildir.LISTINGS])
def test_a_message_renamed_while_the_directories_are_listed_is_one_message(tmp_path,
                                                                            monkeypatch, listings):
    """new/ is listed, then another program moves a message to cur/ before cur/ is listed:
    the listing has it under both names (one inode). It is one message, under its new name,
    whether the directories' stamps moved (a listing made again: maildir.LISTINGS) or not
    (the clock tick of the change before: one listing, as with 1)."""
    monkeypatch.setattr(maildir, "LISTINGS", listings)
    path, first, second = two_messages(tmp_path)
    with open(os.path.join(path, "new", "1999999999.M1P1.other"), "wb") as f:
        f.write(b"Subject: third\n\nx\n")                         # new/ changed: a listing
    real_scandir = os.scandir

    def scandir_then_move(directory):
        if str(directory).endswith("/cur") and os.path.exists(os.path.join(path, "new", first)):
            os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,S"))
        return real_scandir(directory)
    monkeypatch.setattr(maildir.os, "scandir", scandir_then_move)
    messages = maildir.scan(path)
    monkeypatch.undo()
    assert [m.name for m in messages] == [f"cur/{first}:2,S", f"new/{second}",
                                          "new/1999999999.M1P1.other"]
    assert [m.uid for m in messages][0] == first


def test_one_file_linked_under_two_names_is_one_message_and_dele_removes_both(tmp_path):
    """A move by link and unlink seen in the middle: new/KEY and cur/KEY:2,S are one file."""
    path, first, second = two_messages(tmp_path)
    os.link(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,S"))
    drop = MaildirDrop.open(path, "qpt")
    try:
        assert len(drop.messages) == 2
        index = [m.base for m in drop.messages].index(first)
        assert retr(drop, index) == wire(FIRST)
        drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert list(files(path)) == [f"new/{second}"]


@pytest.mark.parametrize("dated", ["just-now", "ahead"])
def test_mail_delivered_just_before_the_login_or_dated_ahead_is_deleted_and_marked_seen(
        tmp_path, dated):
    """Mail delivered a moment before the login; or dated ahead, as an IMAP server dates a
    message file by its received date, which an APPEND may put in the future: the file,
    untouched since before the login, is the message."""
    path, (first, second) = make_maildir(tmp_path, [FIRST, SECOND])   # not listed yet
    stamp = None if dated == "just-now" else (time.time() + 3600,) * 2
    for key in (first, second):
        os.utime(os.path.join(path, "new", key), stamp)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        drop.update(deleted={index}, retrieved={1 - index})
    finally:
        drop.close()
    assert files(path) == {f"cur/{second}:2,S": SECOND}


def test_a_restore_keeping_the_time_written_over_the_message_is_not_deleted(tmp_path):
    """rsync -a, cp -p or tar put a copy at the message's own name, with its time: the
    inode says it is another file."""
    path, first, second = two_messages(tmp_path)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        original = os.lstat(os.path.join(path, "new", first))
        replace_with_copy(path, f"new/{first}", COPY)
        os.utime(os.path.join(path, "new", first), ns=(original.st_atime_ns, original.st_mtime_ns))
        drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"new/{first}": COPY, f"new/{second}": SECOND}


def test_marking_seen_never_renames_over_another_file(tmp_path):
    """RETR of new/KEY, no DELE: its seen name cur/KEY:2,S is taken by another file (one the
    session lists, then one that came after the listing); the message stays unseen in new/."""
    path, first, second = two_messages(tmp_path)
    with open(os.path.join(path, "cur", first + ":2,S"), "wb") as f:
        f.write(COPY)
    with open(os.path.join(path, "new", "1999999999.M1P1.late"), "wb") as f:
        f.write(b"Subject: late\n\nz\n")
    drop = MaildirDrop.open(path, "qpt")
    try:
        names = [m.name for m in drop.messages]
        assert len(names) == 4
        late = names.index("new/1999999999.M1P1.late")
        with open(os.path.join(path, "cur", "1999999999.M1P1.late:2,S"), "wb") as f:
            f.write(b"another late file\n")
        drop.update(deleted=set(), retrieved={names.index(f"new/{first}"), late})
    finally:
        drop.close()
    assert files(path)[f"new/{first}"] == FIRST and files(path)[f"cur/{first}:2,S"] == COPY
    assert files(path)["cur/1999999999.M1P1.late:2,S"] == b"another late file\n"
    assert files(path)["new/1999999999.M1P1.late"] == b"Subject: late\n\nz\n"


class ListedInodes:
    """os.scandir whose entries give other inodes than the files' own, consistently, as
    some file systems' directory listings do: `change(inode)` (overlayfs over several file
    systems: other numbers; FUSE without inode numbers: one number for every file)."""

    def __init__(self, change):
        self.change = change
        self.real = os.scandir

    def __call__(self, path):
        return _Listing(self.real(path), self.change)


class _Listing:
    def __init__(self, listing, change):
        self.listing, self.change = listing, change

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.listing.close()

    def __iter__(self):
        for entry in self.listing:
            yield _Entry(entry, self.change)


class _Entry:
    def __init__(self, entry, change):
        self.entry, self.change = entry, change
        self.name = entry.name

    def inode(self):
        return self.change(self.entry.inode())

    def __getattr__(self, attribute):
        return getattr(self.entry, attribute)


@pytest.mark.parametrize("file_system", ["other-numbers", "one-number"])
def test_where_directory_entries_have_other_inodes_than_the_files(tmp_path, monkeypatch,
                                                                   file_system):
    """Mail delivered a moment before the login is deleted; a renamed message is found
    again and deleted; two files with one base name are two messages; a copy written over a
    message's name during the session is kept."""
    path, first, second = two_messages(tmp_path)
    a_second_ago = time.time() - 1
    os.utime(os.path.join(path, "new", second), (a_second_ago, a_second_ago))
    with open(os.path.join(path, "cur", second + ":2,S"), "wb") as f:
        f.write(COPY)                                            # another file, its base name
    third = "1999999999.M1P1.third"
    with open(os.path.join(path, "new", third), "wb") as f:
        f.write(b"Subject: third\n\nz\n")
    change = (lambda inode: inode ^ 0x5A5A) if file_system == "other-numbers" else (
        lambda inode: 0xFFFFFFFF)
    monkeypatch.setattr(os, "scandir", ListedInodes(change))
    drop = MaildirDrop.open(path, "qpt")
    try:
        names = [m.name for m in drop.messages]
        assert sorted(names) == sorted([f"new/{first}", f"new/{second}", f"cur/{second}:2,S",
                                        f"new/{third}"])
        os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,R"))
        assert retr(drop, names.index(f"new/{first}")) == wire(FIRST)
        replace_with_copy(path, f"new/{third}", COPY)
        time.sleep(0.02)            # the copy is older than the listing: its time must tell
        drop.update(deleted={names.index(f"new/{first}"), names.index(f"new/{second}"),
                             names.index(f"new/{third}")}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"cur/{second}:2,S": COPY, f"new/{third}": COPY}


def test_a_file_system_that_refuses_to_set_times_still_serves_the_maildir(tmp_path,
                                                                          monkeypatch):
    """The login's time comes from touching the lock file; a file system that refuses
    (a FUSE one without utimens) leaves this host's clock, a tick back, in its place."""
    from qpopper.spool import maildir_drop
    path, first, second = two_messages(tmp_path)

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    monkeypatch.setattr(maildir_drop.os, "utime", refuse)
    before = time.time_ns()
    drop = MaildirDrop.open(path, "qpt")
    try:
        assert before - maildir_drop.CLOCK_LAG_NS <= drop.listed_ns
        assert drop.listed_ns <= time.time_ns() - 10_000_000       # a tick back at least
        index = [m.base for m in drop.messages].index(first)
        os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,S"))
        drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert list(files(path)) == [f"new/{second}"]


def test_a_message_moved_after_an_overlayfs_copy_up_is_still_deleted(tmp_path, monkeypatch):
    """On overlayfs over two file systems, a file from the lower layer renamed by another
    program is copied up: its directory entry's inode changes, lstat's does not."""
    path, first, second = two_messages(tmp_path)
    listing = ListedInodes(lambda inode: inode ^ 0x5A5A)
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda where: listing(where)
                        if str(where).endswith("/cur") else real_scandir(where))
    drop = MaildirDrop.open(path, "qpt")
    try:
        for key in (first, second):
            os.rename(os.path.join(path, "new", key), os.path.join(path, "cur", key + ":2,S"))
        drop.update(deleted={0, 1}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {}


@pytest.mark.parametrize("copy_time", ["its-own", "the-messages"])
def test_a_copy_put_over_a_messages_name_during_update_is_kept(tmp_path, monkeypatch,
                                                              copy_time):
    """Where directory entries' inodes are not the files', the listing the session keeps
    for finding files again goes stale: a copy written over a marked message's name after
    it was made is still not taken for the message (put there after the listing, even
    with the message's time kept)."""
    from qpopper.spool import maildir_files
    path, first, second = two_messages(tmp_path)
    monkeypatch.setattr(os, "scandir", ListedInodes(lambda inode: inode ^ 0x5A5A))
    real_init = maildir_files.DirListing.__init__

    def list_then_copy(self, where, clock):
        real_init(self, where, clock)
        if not os.path.exists(os.path.join(path, "tmp", "done")):
            open(os.path.join(path, "tmp", "done"), "w").close()
            original = os.lstat(os.path.join(path, "new", second))
            replace_with_copy(path, f"new/{second}", COPY)     # just after the listing
            if copy_time == "the-messages":
                os.utime(os.path.join(path, "new", second),
                         ns=(original.st_atime_ns, original.st_mtime_ns))
    monkeypatch.setattr(maildir_files.DirListing, "__init__", list_then_copy)
    drop = MaildirDrop.open(path, "qpt")
    try:
        drop.update(deleted={0, 1}, retrieved=set())      # the first one's check lists
    finally:
        drop.close()
    assert files(path) == {f"new/{second}": COPY}


@pytest.mark.parametrize("put_at_the_old_name", ["restore-keeping-the-time", "another-message"])
def test_a_listing_made_for_retr_never_vouches_for_a_file_put_at_a_name_since(
        tmp_path, put_at_the_old_name):
    """RETR of a message another program moved lists new/ and cur/. Later that program
    moves A too, and a file is put at A's old name: a restore that kept A's time, or
    another message's file renamed there. DELE of A removes A, wherever it went, and
    nothing at its old name."""
    path, keys = make_maildir(tmp_path, [FIRST, SECOND, b"Subject: third\n\nz\n"])
    drop = MaildirDrop.open(path, "qpt")
    try:
        names = [m.name for m in drop.messages]
        a, b, c = (names.index(f"new/{key}") for key in keys)
        os.rename(os.path.join(path, "new", keys[2]), os.path.join(path, "cur", keys[2] + ":2,S"))
        assert retr(drop, c) == wire(b"Subject: third\n\nz\n")          # lists the Maildir
        original = os.lstat(os.path.join(path, "new", keys[0]))
        os.rename(os.path.join(path, "new", keys[0]), os.path.join(path, "cur", keys[0] + ":2,S"))
        if put_at_the_old_name == "restore-keeping-the-time":
            replace_with_copy(path, f"new/{keys[0]}", FIRST)
            os.utime(os.path.join(path, "new", keys[0]),
                     ns=(original.st_atime_ns, original.st_mtime_ns))
        else:
            os.rename(os.path.join(path, "new", keys[1]), os.path.join(path, "new", keys[0]))
        drop.update(deleted={a}, retrieved=set())
    finally:
        drop.close()
    assert f"cur/{keys[0]}:2,S" not in files(path)
    assert files(path)[f"new/{keys[0]}"] == (FIRST if put_at_the_old_name.startswith("restore")
                                             else SECOND)


@pytest.mark.parametrize("elsewhere", ["moved", "expunged"])
def test_finding_every_message_again_costs_one_listing(tmp_path, monkeypatch, elsewhere):
    """A mail client moved every message to cur/ during the session, or expunged them all;
    the UPDATE that deletes them all lists new/ and cur/ once more, not once per message
    (again only if they changed since)."""
    from qpopper.spool import maildir_files
    path, keys = make_maildir(tmp_path, [b"Subject: %d\n\nbody\n" % n for n in range(60)])
    drop = MaildirDrop.open(path, "qpt")
    listings = []
    real_init = maildir_files.DirListing.__init__

    def counted(self, where, clock):
        listings.append(where)
        real_init(self, where, clock)
    monkeypatch.setattr(maildir_files.DirListing, "__init__", counted)
    try:
        for key in keys:
            if elsewhere == "moved":
                os.rename(os.path.join(path, "new", key),
                          os.path.join(path, "cur", key + ":2,S"))
            else:
                os.unlink(os.path.join(path, "new", key))
        time.sleep(0.05)                         # the directories' last change a tick back
        drop.update(deleted=set(range(60)), retrieved=set())
    finally:
        drop.close()
    assert files(path) == {} and len(listings) == 1


def one_number_twins(tmp_path, monkeypatch):
    """A Maildir on a file system whose listing gives one inode number for every file (FUSE
    without inode numbers), with two different files of one base name: new/X and cur/X:2,S."""
    path, first, second = two_messages(tmp_path)
    with open(os.path.join(path, "cur", first + ":2,S"), "wb") as f:
        f.write(COPY)
    a_minute_ago = time.time() - 60
    os.utime(os.path.join(path, "cur", first + ":2,S"), (a_minute_ago, a_minute_ago))
    monkeypatch.setattr(os, "scandir", ListedInodes(lambda inode: 0xFFFFFFFF))
    return path, first, second


def test_a_gone_message_is_never_found_again_as_its_listed_twin(tmp_path, monkeypatch):
    path, first, second = one_number_twins(tmp_path, monkeypatch)
    drop = MaildirDrop.open(path, "qpt")
    try:
        names = [m.name for m in drop.messages]
        os.unlink(os.path.join(path, "new", first))              # expunged elsewhere
        drop.update(deleted={names.index(f"new/{first}")}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"cur/{first}:2,S": COPY, f"new/{second}": SECOND}


def test_a_message_found_again_is_its_new_names_owner(tmp_path, monkeypatch):
    """Message X moved (new/X -> cur/X:2,R) and found again at RETR; its twin cur/X:2,S is
    expunged elsewhere; DELE of the twin must not take X's file at its new name."""
    path, first, second = one_number_twins(tmp_path, monkeypatch)
    drop = MaildirDrop.open(path, "qpt")
    try:
        names = [m.name for m in drop.messages]
        os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,R"))
        assert retr(drop, names.index(f"new/{first}")) == wire(FIRST)
        os.unlink(os.path.join(path, "cur", first + ":2,S"))
        drop.update(deleted={names.index(f"cur/{first}:2,S")}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"cur/{first}:2,R": FIRST, f"new/{second}": SECOND}


def test_a_listing_vouches_for_no_file_put_at_a_name_in_its_own_clock_tick(tmp_path,
                                                                          monkeypatch):
    """A copy (keeping the message's time) renamed over a message's name just after the
    listing, in the same clock tick as its made_ns: its change time equals made_ns, and the
    listing does not describe it."""
    from qpopper.spool import maildir_files
    path, first, second = two_messages(tmp_path)
    monkeypatch.setattr(os, "scandir", ListedInodes(lambda inode: inode ^ 0x5A5A))
    real_init = maildir_files.DirListing.__init__

    def list_then_copy_in_the_same_tick(self, where, clock):
        real_init(self, where, clock)
        if self.made_ns and not os.path.exists(os.path.join(path, "tmp", "done")):
            open(os.path.join(path, "tmp", "done"), "w").close()
            original = os.lstat(os.path.join(path, "new", second))
            replace_with_copy(path, f"new/{second}", COPY)
            os.utime(os.path.join(path, "new", second),
                     ns=(original.st_atime_ns, original.st_mtime_ns))
            self.made_ns = os.lstat(os.path.join(path, "new", second)).st_ctime_ns
    monkeypatch.setattr(maildir_files.DirListing, "__init__", list_then_copy_in_the_same_tick)
    drop = MaildirDrop.open(path, "qpt")
    try:
        drop.update(deleted={0, 1}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"new/{second}": COPY}


def test_a_move_in_the_listings_own_tick_is_found_by_a_new_listing(tmp_path, monkeypatch):
    """A message moved after the listing but within its clock tick leaves new/'s and cur/'s
    stamps as listed: once the clock has moved on, a lookup that misses lists again."""
    from qpopper.spool import maildir_files
    path, first, second = two_messages(tmp_path)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        other = 1 - index
        os.rename(os.path.join(path, "new", second), os.path.join(path, "cur", second + ":2,R"))
        assert retr(drop, other) == wire(SECOND)                 # lists new/ and cur/
        listing = drop._files._listing
        stamps = {sub: os.stat(os.path.join(path, sub)) for sub in maildir.SUBDIRS}
        os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,S"))
        for sub, st in stamps.items():                           # as if in the same tick
            os.utime(os.path.join(path, sub), ns=(st.st_atime_ns, st.st_mtime_ns))
        listing.made_ns = min(mtime for mtime, _ in listing.stamps)
        assert isinstance(listing, maildir_files.DirListing)
        assert retr(drop, index) == wire(FIRST)
        drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert list(files(path)) == [f"cur/{second}:2,R"]


def test_mail_delivered_while_the_login_lists_is_deleted(tmp_path, monkeypatch):
    path, first, second = two_messages(tmp_path)
    real_load = maildir.load_index
    late = "1999999999.M2P2.during"

    def deliver_then_load(where, log=None):
        made = os.path.join(path, "tmp", late)
        with open(made, "wb") as f:
            f.write(b"Subject: during\n\nz\n")
        os.rename(made, os.path.join(path, "new", late))
        return real_load(where, log)
    monkeypatch.setattr(maildir, "load_index", deliver_then_load)
    drop = MaildirDrop.open(path, "qpt")
    monkeypatch.undo()
    try:
        names = [m.name for m in drop.messages]
        drop.update(deleted={names.index(f"new/{late}")}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"new/{first}": FIRST, f"new/{second}": SECOND}


@pytest.mark.parametrize("its_time", ["later", "set-back"])
def test_a_file_written_on_a_removed_messages_inode_at_its_name_is_kept(tmp_path, its_time):
    """rm, then a different file written at the name, dated later or set into the past
    (touch -d, cp -p of another file): the freed inode (set by hand here: ext4 gives it),
    but not the time measured for the message, and a change time after the login. Kept;
    and as the session cannot tell it from its message changed in place, QUIT says a
    deleted message was not removed (a DELE not done must not look done)."""
    path, first, second = two_messages(tmp_path)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        replace_with_copy(path, f"new/{first}", COPY)
        stamp = (drop.listed_ns + 1_000_000_000 if its_time == "later"
                 else time.time_ns() - 86400 * 1_000_000_000)
        os.utime(os.path.join(path, "new", first), ns=(stamp, stamp))
        drop.inodes[index] = os.lstat(os.path.join(path, "new", first)).st_ino
        with pytest.raises(PopError, match="not removed"):
            drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"new/{first}": COPY, f"new/{second}": SECOND}


def test_a_message_dated_ahead_and_renamed_by_another_program_is_deleted(tmp_path):
    path, (first, second) = make_maildir(tmp_path, [FIRST, SECOND])
    an_hour_ahead = time.time() + 3600
    os.utime(os.path.join(path, "new", first), (an_hour_ahead, an_hour_ahead))
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,S"))
        drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert files(path) == {f"new/{second}": SECOND}


def test_a_file_put_at_a_known_name_is_measured_again(tmp_path):
    """A restore put another file at a message's name before the login: the listing takes
    nothing from the index for it (another inode), so its size, UID and time are its own,
    and when another program then renames it, DELE still finds it."""
    path, first, second = two_messages(tmp_path)
    restored = b"Subject: restored, longer\nX-UIDL: restored-uidl-0001\n\nanother body\n"
    replace_with_copy(path, f"new/{first}", restored)
    with open(os.path.join(path, "new", "1999999999.M1P1.later"), "wb") as f:
        f.write(b"Subject: later\n\nz\n")                         # new/ changed: a listing
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        message = drop.messages[index]
        assert (message.octets, message.uid) == (len(wire(restored)), "restored-uidl-0001")
        os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,S"))
        drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert f"cur/{first}:2,S" not in files(path) and f"new/{first}" not in files(path)


@pytest.mark.parametrize("order", ["rename-then-touch", "touch-then-rename"])
def test_a_dele_left_for_a_renamed_message_changed_in_place_is_not_a_quiet_ok(tmp_path, order):
    """Another client renamed the deleted message (new -> cur, flags) and its time changed
    (review 135): UPDATE leaves it, and QUIT must say a deleted message was not removed."""
    from tests.helpers.maildirs import settle
    path, first, second = two_messages(tmp_path)
    settle(path)
    drop = MaildirDrop.open(path, "qpt")
    old, new = os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,S")
    try:
        index = [m.base for m in drop.messages].index(first)
        time.sleep(0.02)
        if order == "rename-then-touch":
            os.rename(old, new)
            os.utime(new)
        else:
            os.utime(old)
            os.rename(old, new)
        with pytest.raises(PopError, match="not removed"):
            drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert f"cur/{first}:2,S" in files(path)                # nothing lost either way
