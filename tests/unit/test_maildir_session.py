"""A Maildir session's edges: what auto-delete deletes when other readers (IMAP, webmail)
set the S flag (docs/maildir.md, "What a message is"); XTND XLST and EUIDL over a message
another program removed, behind the real Protocol; the lock file's checks (docs/maildir.md, "One
session per mailbox")."""

from __future__ import annotations

import errno
import os

import pytest

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.locking import SessionLock
from qpopper.spool.maildir_drop import (LOCK_NAME, LOCK_REFUSED_TEXT, OPEN_FAILED_TEXT,
                                        MaildirDrop)
from tests.helpers.maildirs import files, make_maildir, retr, wire
from tests.transcripts.harness import Spool, extended_session

READ_ELSEWHERE = b"Subject: read in webmail\n\nnever downloaded by POP\n"
UNREAD = b"Subject: unread\n\nfor RETR\n"
PEEKED = b"Subject: peeked at\n\nfor TOP\n"


@pytest.fixture
def maildir_session(tmp_path):
    """(path, start): a Maildir whose first message carries the S flag (another reader's),
    and a function that logs a session in on it with the given options."""
    path, keys = make_maildir(tmp_path, [READ_ELSEWHERE, UNREAD, PEEKED])
    first = next(k for k in keys if READ_ELSEWHERE in files(path)[f"new/{k}"])
    os.rename(os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,S"))
    spool = Spool(tmp_path / "spool")

    def start(extended=False, **options):
        pop = (extended_session(spool, **options) if extended else spool.session(**options))

        def open_maildrop(login):
            drop = MaildirDrop.open(path, login.user)
            pop.env.maildrops.append(drop)
            return drop
        pop.env.open_maildrop = open_maildrop
        assert pop.login("alice").startswith(b"+OK alice has 3 visible messages")
        return pop

    yield path, start
    spool.close()


def number_of(pop, content: bytes) -> int:
    """The message number of `content` in this session (by its Subject line)."""
    subject = content.split(b"\n", 1)[0]
    for n in (1, 2, 3):
        if subject in pop.send(f"TOP {n} 0"):
            return n
    raise AssertionError(subject)


def left(path) -> set[bytes]:
    return set(files(path).values())


@pytest.mark.parametrize("option", [{"auto_delete": True}, {"announce_expire": 0}],
                         ids=["auto-delete", "expire-0"])
def test_auto_delete_takes_only_what_this_session_retrieved(maildir_session, option):
    path, start = maildir_session
    pop = start(update_on_abort=False, **option)
    assert pop.send(f"RETR {number_of(pop, UNREAD)}").startswith(b"+OK ")
    pop.send(f"TOP {number_of(pop, PEEKED)} 1")          # TOP is not a retrieval
    pop.send("QUIT")
    assert left(path) == {READ_ELSEWHERE, PEEKED}


@pytest.mark.parametrize("commands, kept", [
    ([READ_ELSEWHERE], {UNREAD, PEEKED}),                  # seen elsewhere, retrieved here
    ([UNREAD, "RSET"], {READ_ELSEWHERE, UNREAD, PEEKED}),  # RSET forgets the RETR
], ids=["seen-and-retrieved", "rset"])
def test_auto_delete_after(maildir_session, commands, kept):
    """A message (bytes) is RETR'd, a str is sent as it is."""
    path, start = maildir_session
    pop = start(auto_delete=True)
    for item in commands:
        reply = pop.send(f"RETR {number_of(pop, item)}" if isinstance(item, bytes) else item)
        assert reply.startswith(b"+OK "), reply
    pop.send("QUIT")
    assert left(path) == kept


@pytest.mark.parametrize("option", [{"auto_delete": True}, {"announce_expire": 0}],
                         ids=["auto-delete", "expire-0"])
def test_a_message_an_earlier_pop_session_retrieved_goes_only_when_retrieved_again(
        maildir_session, option):
    """docs/maildir.md, "What a message is" ("So a message RETR'd in an earlier POP session
    is never auto-deleted ... unless that session RETRs it again"): an earlier session with
    auto-delete that ended without QUIT while update-on-abort was on only marked its RETR
    seen (auto-delete applies at QUIT alone); a later session's auto-delete keeps that
    message as it keeps one read elsewhere, until a session RETRs it again."""
    path, start = maildir_session
    earlier = start(update_on_abort=True, **option)
    assert earlier.send(f"RETR {number_of(earlier, UNREAD)}").startswith(b"+OK ")
    earlier.proto.eof()                                     # the client went: no QUIT
    assert left(path) == {READ_ELSEWHERE, UNREAD, PEEKED}
    assert any(name.endswith(":2,S") and data == UNREAD for name, data in files(path).items())
    later = start(**option)
    assert later.send("QUIT").startswith(b"+OK ")
    assert left(path) == {READ_ELSEWHERE, UNREAD, PEEKED}
    again = start(**option)
    assert again.send(f"RETR {number_of(again, UNREAD)}").startswith(b"+OK ")
    assert again.send("QUIT").startswith(b"+OK ")
    assert left(path) == {READ_ELSEWHERE, PEEKED}


# --- XTND XLST ---------------------------------------------------------------------------------
def test_xlst_and_euidl_survive_a_message_another_program_removed(maildir_session):
    path, start = maildir_session
    pop = start(extended=True)
    gone = number_of(pop, UNREAD)
    name = next(n for n, data in files(path).items() if data == UNREAD)
    os.unlink(os.path.join(path, name))                     # an IMAP expunge, meanwhile
    listing = pop.send("XTND XLST Subject")
    assert listing.startswith(b"+OK xlst command accepted") and listing.endswith(b"\r\n.\r\n")
    assert sorted(listing.split(b"\r\n")[1:-2]) == sorted(
        b"%d Subject: %s" % (number_of(pop, c), c.split(b": ")[1].split(b"\n")[0])
        for c in (READ_ELSEWHERE, PEEKED))
    assert pop.send(f"XTND XLST Subject {gone}") == (
        b"-ERR [SYS/TEMP] Message %d was removed from your Maildir by another program\r\n" % gone)
    euidl = pop.send("EUIDL").split(b"\r\n")              # listed, without its From
    assert euidl[0] == b"+OK uidl command accepted." and len(euidl[1:-2]) == 3, euidl
    assert pop.send(f"EUIDL {gone}").startswith(b"+OK %d " % gone)
    assert pop.send("NOOP") == b"+OK\r\n"                   # the session goes on


def test_a_message_the_user_may_not_read_is_refused_alone(maildir_session, monkeypatch):
    """A root-owned 0600 file (a restore's) in the user's Maildir: RETR, TOP, XLST and EUIDL
    answer for it, the session goes on, and its DELEs are done at QUIT (os.open raises
    EACCES for that file here: the tests run as root, who could read it)."""
    path, start = maildir_session
    pop = start(extended=True)
    unreadable, deleted = number_of(pop, UNREAD), number_of(pop, PEEKED)
    name = next(n for n, data in files(path).items() if data == UNREAD)
    real_open = os.open

    def refusing_open(file, flags, *args, **kwargs):
        if str(file).endswith(name):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", refusing_open)
    assert pop.send(f"DELE {deleted}").startswith(b"+OK")
    refusal = b"-ERR [SYS/TEMP] Message %d cannot be read; contact your administrator\r\n"
    for command in (f"RETR {unreadable}", f"TOP {unreadable} 0",
                    f"XTND XLST Subject {unreadable}"):
        assert pop.send(command) == refusal % unreadable, command
    assert pop.send("XTND XLST Subject").startswith(b"+OK xlst command accepted")
    assert pop.send("EUIDL").startswith(b"+OK uidl command accepted.")
    assert pop.send("NOOP") == b"+OK\r\n"
    assert pop.send("QUIT").startswith(b"+OK")
    monkeypatch.undo()
    assert left(path) == {READ_ELSEWHERE, UNREAD}


# --- the lock file ----------------------------------------------------------------------------
def test_a_lock_file_others_may_read_is_used(tmp_path):
    path, _ = make_maildir(tmp_path, [UNREAD])
    MaildirDrop.open(path, "qpt").close()
    os.chmod(os.path.join(path, LOCK_NAME), 0o644)          # chmod -R go+r, umask 022
    for _ in range(2):
        drop = MaildirDrop.open(path, "qpt")
        assert len(drop.messages) == 1
        drop.close()
    # and back to 0600: another user who could open it could flock it and lock its owner out
    assert os.stat(os.path.join(path, LOCK_NAME)).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hard link"])
def test_a_lock_file_that_is_not_our_plain_file_is_refused(tmp_path, kind):
    path, _ = make_maildir(tmp_path, [UNREAD])
    lock, elsewhere = os.path.join(path, LOCK_NAME), str(tmp_path / "elsewhere")
    if kind == "fifo":
        os.mkfifo(lock, 0o600)
    else:
        open(elsewhere, "wb").close()
        (os.symlink if kind == "symlink" else os.link)(elsewhere, lock)
    with pytest.raises(PopError) as refusal:
        MaildirDrop.open(path, "qpt")
    assert refusal.value.code == RespCode.SYS_PERM
    assert refusal.value.text == LOCK_REFUSED_TEXT


def test_a_lock_file_that_cannot_be_made_for_a_passing_cause_is_sys_temp(tmp_path,
                                                                         monkeypatch):
    """A read-only or full file system, an I/O error: [SYS/TEMP], the log naming the lock
    file (a root-owned file or a directory there is [SYS/PERM]: tests/system/
    test_maildir_server.py)."""
    path, _ = make_maildir(tmp_path, [UNREAD])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(SessionLock, "acquire", read_only)
    with pytest.raises(PopError) as refusal:
        MaildirDrop.open(path, "qpt")
    assert (refusal.value.code, refusal.value.text) == (RespCode.SYS_TEMP, OPEN_FAILED_TEXT)
    assert refusal.value.log == (f"Maildir lock file {os.path.join(path, LOCK_NAME)} could "
                                 f"not be opened: Read-only file system")


def test_a_dele_whose_unlink_fails_for_good_gets_quit_s_err(maildir_session, monkeypatch):
    """An unlink refused for good (EPERM: chattr +i; EDQUOT on a copy-on-write file system):
    QUIT answers -ERR (RFC 1939 §6), the other DELEs are done, and the next login serves the
    message, not refused (docs/maildir.md, "UPDATE and crash safety")."""
    path, start = maildir_session
    pop = start(update_on_abort=False)
    kept, gone = number_of(pop, UNREAD), number_of(pop, PEEKED)
    name = next(n for n, data in files(path).items() if data == UNREAD)
    real_unlink = os.unlink

    def refusing_unlink(file, *args, **kwargs):
        if str(file).endswith(name):
            raise PermissionError(1, "Operation not permitted", str(file))
        return real_unlink(file, *args, **kwargs)
    monkeypatch.setattr(os, "unlink", refusing_unlink)
    assert pop.send(f"DELE {kept}").startswith(b"+OK")
    assert pop.send(f"DELE {gone}").startswith(b"+OK")
    assert pop.send("QUIT") == (
        b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n")
    monkeypatch.undo()
    assert left(path) == {READ_ELSEWHERE, UNREAD}
    again = MaildirDrop.open(path, "alice")             # served, not refused
    assert sorted(retr(again, n) for n in range(len(again.messages))) == sorted(
        wire(data) for data in (READ_ELSEWHERE, UNREAD))
    again.close()
