"""Where a listed Maildir message's file is now, when another program may have renamed it,
removed it, or put another file with its base name in its place
(docs/maildir.md, "Changes by other programs").

A message is its file. The session knows, for each message, the inode its directory entry
had when listed, its modification time when measured, and the file system's time of the
login. A rename keeps the inode and the modification time and changes the change time; a
copy (a restored backup, a message a sync tool delivered again) gets another inode, or the
inode of a file just removed, and then a change time after the login.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence

from qpopper.spool import maildir


class DirListing:
    """new/ and cur/ listed once: the message files (regular, no dot names) by base name,
    and each name's directory-entry inode, with the file system's time (`clock()`) and the
    directories' stamps taken before. It goes stale: an entry describes the file at its name
    only if that file's inode changed (ctime: a rename, a link, a new file) before
    `made_ns`; a caller checks what it takes with lstat."""

    def __init__(self, path: str, clock: Callable[[], int]):
        self.path = path
        self.made_ns = clock()
        self.stamps = _stamps(path)
        self.by_base, self.entry_inodes = list_by_base(path)

    def describes(self, name: str, st: os.stat_result) -> int | None:
        """The listed directory-entry inode of `name` when the file now there (`st`) is the
        one that was there when listed, else None."""
        return self.entry_inodes.get(name) if st.st_ctime_ns < self.made_ns else None

    def may_have_changed(self, clock: Callable[[], int]) -> bool:
        """Whether new/ or cur/ may have changed since the listing: their stamps differ, or
        were taken in the listing's own clock tick (a change later in that tick leaves them
        alike) and the clock has moved on since (before, a new listing would be no newer:
        file systems with one-second times would list again at every lookup)."""
        if _stamps(self.path) != self.stamps:
            return True
        return (any(mtime >= self.made_ns for mtime, _ in self.stamps)
                and clock() > self.made_ns)


def list_by_base(path: str) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The message files of new/ and cur/ (regular, no dot names): their names by base name,
    each also under every part of its base name before a `,` (a program that renames a
    message into a base name of its own appends `,` and a tail: mbsync's `,U=<n>`), and
    each name's directory-entry inode (maildir.INODE_BITS). A caller takes a name for a
    message's file only when it is that file (its inode and time)."""
    by_base: dict[str, list[str]] = {}
    entry_inodes: dict[str, int] = {}
    for sub in maildir.SUBDIRS:
        with os.scandir(os.path.join(path, sub)) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                name = f"{sub}/{entry.name}"
                base = maildir.base_name(entry.name)
                by_base.setdefault(base, []).append(name)
                at = base.find(",", 1)
                while at > 0:
                    by_base.setdefault(base[:at], []).append(name)
                    at = base.find(",", at + 1)
                entry_inodes[name] = entry.inode() & maildir.INODE_BITS
    return by_base, entry_inodes


def _stamps(path: str) -> list[tuple[int, int]]:
    stamps = []
    for sub in maildir.SUBDIRS:
        st = os.stat(os.path.join(path, sub))
        stamps.append((st.st_mtime_ns, st.st_ino))
    return stamps


class MessageFiles:
    """The files of a session's listed messages: `messages` (their .name follows a rename
    found), `files` their inodes as listed and modification times as measured
    (maildir.scan_with_files), `listed_ns` the file system's time when the login's listing
    began, `clock()` the file system's time now. One DirListing is
    kept, and made again when a lookup misses and the directories may have changed since,
    so finding every message of a big Maildir again, or none, costs one listing."""

    def __init__(self, path: str, messages, files: tuple[Sequence[int], Sequence[int]],
                 listed_ns: int, clock: Callable[[], int]):
        self.path = path
        self.messages = messages
        self.inodes, self.mtimes = files
        self.listed_ns = listed_ns
        self._clock = clock
        self._listing: DirListing | None = None
        self._owner_of: dict[str, int] | None = None

    def current(self, index: int) -> os.stat_result | None:
        """The lstat of message `index`'s file at its name now (after finding it again if
        another program renamed it), or None when it is gone: then there is nothing to do.
        A file at its name with another inode (a restore or a copy put there) is not it.
        Inodes are compared like with like: on some file systems (overlayfs over several,
        FUSE without inode numbers) a directory entry's inode is not lstat's."""
        for attempt in (1, 2):
            st = self._lstat(self.messages[index].name)
            if st is not None:
                st = self._as_it(index, self.messages[index].name, st)
            if st is not None:
                return st
            if attempt == 2 or not self.find_again(index):
                return None
        raise AssertionError("unreachable")

    def find_again(self, index: int) -> bool:
        """Another program renamed message `index` (flags, new -> cur, a tail after its base
        name: mbsync's `,U=<n>`): its file found again by base name (list_by_base) and
        identity (_as_it), under a name of its own base name before one with a tail, never
        at a name the session lists for another message. Sets its .name; False when it is
        gone."""
        for attempt in (1, 2):
            if self._listing is None:
                self._listing = DirListing(self.path, self._clock)
            elif attempt == 2:
                if not self._listing.may_have_changed(self._clock):
                    break                       # a new listing would say the same
                self._listing = DirListing(self.path, self._clock)
            message = self.messages[index]
            names = self._listing.by_base.get(message.base, ())
            # its own base name first: a name with a tail linked to it is taken only when
            # no name of its own base name is its file (_unlink_file's rule)
            for name in sorted(names, key=lambda n: maildir.base_name(n) != message.base):
                if self._owner().get(name, index) != index:
                    continue                            # another listed message's file
                st = self._lstat(name)
                if (st is not None and stat.S_ISREG(st.st_mode)
                        and self._as_it(index, name, st) is not None):
                    self._renamed(index, name)
                    return True
        return False

    def forget_listing(self) -> None:
        """Before UPDATE: what was listed for RETR has had time to go stale."""
        self._listing = None

    def _as_it(self, index: int, name: str, st: os.stat_result) -> os.stat_result | None:
        """The lstat of `name` (`st`, or a newer one) when it is message `index`'s file, else
        None. Its file has the listed inode and is the file measured: the same modification
        time, or its inode changed (ctime: a write, a rename, a link) only before the login,
        as for a file touched after it was measured. A file written at a name after an rm
        (a file system may give it the inode just freed) has a change time after the login,
        and a time of its own unless copied with the message's. Inodes are compared like
        with like: where a directory entry's inode is not the file's (overlayfs over several
        file systems, FUSE), its entry's inode as listed, for a file that has been at that
        name since before that listing (DirListing.describes)."""
        if self._own_file(index, st):
            return st
        if self._listing is None:               # the first time: list, and look again
            self._listing = DirListing(self.path, self._clock)
            st = self._lstat(name)
            if st is None or self._own_file(index, st):
                return st
        if (self._listing.describes(name, st) == self.inodes[index]
                and self._measured(index, st)):
            return st
        return None

    def _own_file(self, index: int, st: os.stat_result) -> bool:
        return st.st_ino & maildir.INODE_BITS == self.inodes[index] and self._measured(index, st)

    def _measured(self, index: int, st: os.stat_result) -> bool:
        """The file measured at the listing: its modification time, or a change time from
        before the login (a file touched after it was measured)."""
        return (st.st_mtime_ns & maildir.INODE_BITS == self.mtimes[index]
                or st.st_ctime_ns < self.listed_ns)

    def _owner(self) -> dict[str, int]:
        if self._owner_of is None:
            self._owner_of = {m.name: i for i, m in enumerate(self.messages)}
        return self._owner_of

    def _renamed(self, index: int, name: str) -> None:
        owner = self._owner()
        if owner.get(self.messages[index].name) == index:
            del owner[self.messages[index].name]
        owner[name] = index
        self.messages[index].name = name

    def changed_in_place(self, index: int) -> bool:
        """Is message `index`'s file still there, the same inode, at its name or at another
        name of its base name that no other listed message has (another program renamed it
        too), though current() no longer takes it for the file measured (another program
        changed its time during the session)? UPDATE then leaves it, and QUIT must say so."""
        message = self.messages[index]
        if self._listing is None:
            self._listing = DirListing(self.path, self._clock)
        names = {message.name, *(name for name in self._listing.by_base.get(message.base, ())
                                 if self._owner().get(name, index) == index)}
        for name in names:
            st = self._lstat(name)
            if st is not None and st.st_ino & maildir.INODE_BITS == self.inodes[index]:
                return True
        return False

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.lstat(os.path.join(self.path, name))
        except FileNotFoundError:
            return None
