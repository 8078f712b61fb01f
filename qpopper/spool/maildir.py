"""Maildir mailboxes: what is in one, and the index that saves a rescan (docs/maildir.md).

A Maildir is a directory with cur/, new/ and tmp/; a delivery agent writes each message to
tmp/ and renames it into new/; readers move it to cur/ and record flags after `:2,` in its
name (or after `;2,` or `!2,`: docs/maildir.md, "Info separators"). Files are never
rewritten, so a message's name before `:` (its base name) identifies it
for good: it is the message's UID (unless it carries an X-UIDL header Qpopper would honour, or
is not a valid POP3 UID); the index keys a file by it and its inode (and knows a file
renamed into that base name with a `,` and a tail, as sync tools do, by its inode, size and
time), and takes a file's measurement again only while its modification time is the one
measured. This module only
reads; maildir_drop.py is the session's side (lock, RETR, UPDATE).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import syslog
import time
from collections.abc import Sequence
from dataclasses import dataclass

from qpopper.spool import packed
from qpopper.spool.durable import fsync_dir, publish, read_up_to
from qpopper.spool.mbox import encode_uid
from qpopper.spool.mbox_format import header_uid

SUBDIRS = ("new", "cur")
INDEX_NAME = "qpopper-pop3.index"
INDEX_TEMP_NAME = f".{INDEX_NAME}.tmp"
INDEX_MAGIC = b"QPINDEX"
INDEX_VERSION = 6
INDEX_SECTIONS = 7
"""6: each file's UID as served kept too (a copy's stays its own across sessions and renames);
5: a file ending in a bare CR measured as RETR sends it (one octet less than 4 did) and the
directory stamps without the device number; 4: packed columns with each file's inode and
modification time (qpopper/spool/packed.py); 3 had the inode only, 2 neither, 1 was JSON.
Another version is ignored and the index rebuilt from a listing."""
INODE_BITS = (1 << 63) - 1
"""Inodes and times are kept in 63 bits, as the index's int columns hold them (NFS has 64-bit
inode numbers; a time before 1970 is negative)."""
SETTLE_NS = 2_000_000_000
"""A directory changed less than this before the index's listing began is listed again next
time: a rename in the same clock tick as the listing would leave its mtime unchanged."""
MAX_INDEX_OCTETS = 64 * 1024 * 1024
"""Far more than the index of a million messages takes; a bigger file is not one."""
HEADER_PROBE_OCTETS = 64 * 1024
"""How much of a message is read for its X-UIDL header when ,W= gives the size."""
MAX_POP3_UID = 70
_WIRE_SIZE = re.compile(r",W=([0-9]{1,12})(?:,|$)")
_X_UIDL_LINE = re.compile(rb"(?im)^x-uidl:[^\r\n]*")
_LEADING_NUMBER = re.compile(r"[0-9]{1,20}")
_MICROSECONDS = re.compile(r"^[0-9]+\.(?:[^.]*?)M([0-9]{1,6})")


@dataclass(slots=True)
class MaildirMessage:
    """One message file. `name` is relative to the Maildir (`new/...` or `cur/...`)."""
    name: str
    octets: int                 # what RETR sends: CRLF line ends, a final CRLF added if missing
    uid: str
    retrieved: bool             # the S (seen) flag at login: Qpopper's Status R
    hidden: bool = False        # uw-kludge has no meaning in a Maildir

    @property
    def base(self) -> str:
        return base_name(self.name)


INFO_SEPARATORS = {"colon": ":", "semicolon": ";", "exclamation": "!"}
"""The option maildir-info-separator's values (docs/maildir.md, "Info separators")."""
_OUR_INFO = re.compile(r"2,[A-Za-z]*")
_OTHER_SEPARATOR_INFO = re.compile(r"[!;]2,[A-Za-z]*$")
"""Flags after `!` or `;` instead of `:` (what readers on file systems without `:` write),
in a name with no `:`."""


def _split(name: str) -> tuple[str, str, str]:
    """(base, separator, info) of a message file's name: `cur/B:2,S` -> (B, ":", "2,S"),
    `cur/B;2,S` -> (B, ";", "2,S"), `new/B` -> (B, "", "")."""
    base, colon, info = name.rpartition("/")[2].partition(":")
    if colon or "2," not in base:
        return base, colon, info
    other = _OTHER_SEPARATOR_INFO.search(base)
    if other is None:
        return base, "", ""
    return base[:other.start()], base[other.start()], base[other.start() + 1:]


def base_name(name: str) -> str:
    """`cur/1733.M1P2.host,S=12:2,S` -> `1733.M1P2.host,S=12` (what stays across renames);
    also with `!2,` or `;2,` for `:2,` (docs/maildir.md, "Info separators")."""
    return _split(name)[0]


def flags_of(name: str) -> str:
    info = _split(name)[2]
    return info[2:] if info.startswith("2,") else ""


def info_separator(name: str, default: str = ":") -> str:
    """The separator of the name's flags, `default` when it has none: UPDATE keeps a
    message's own (docs/maildir.md, "Info separators")."""
    return _split(name)[1] or default


def may_mark_seen(name: str) -> bool:
    """Whether UPDATE may rename the file to `cur/<base><separator>2,<flags>S`: its name has
    no info part, or a `2,` one with flag letters (after `:`, `!` or `;`). Another info part
    (`:1,...`) is left as it is (docs/maildir.md, "What a message is")."""
    separator, info = _split(name)[1:]
    return not separator or bool(_OUR_INFO.fullmatch(info))


def is_maildir(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, sub)) for sub in ("cur", "new", "tmp"))


def maildir_path(pattern: str | None, user: str, home: str | None) -> str | None:
    """The `maildir` option's path for this user when it names a Maildir, else None (the
    user is served from the mbox spool). `~` and `%h` are the home directory, `%u` the name."""
    if not pattern:
        return None
    if ("~" in pattern or "%h" in pattern) and not home:
        return None
    path = pattern.replace("%u", user)
    if path.startswith("~"):
        path = home + path[1:]
    path = path.replace("%h", home or "")
    return path if os.path.isabs(path) and is_maildir(path) else None


def wire_octets(data: bytes) -> int:
    """RETR's octet count for a message file's bytes: LF becomes CRLF, a CRLF stays, and a
    last line without LF gets a CRLF, or only the LF when it ends in a bare CR (RETR sends
    that CR as the CR of its CRLF, docs/maildir.md, "What a message is")."""
    return _wire_octets_of((data,))


def _wire_octets_of(parts) -> int:
    """wire_octets() of the parts' concatenation, a part at a time: a CR LF split between two
    parts is counted once."""
    size, last = 0, b""
    for data in parts:
        size += len(data) + data.count(b"\n")
        if b"\r" in data:               # most files have no CR: skip the slower CRLF count
            size -= data.count(b"\r\n")
        if last == b"\r" and data.startswith(b"\n"):
            size -= 1                                   # the CR LF across the parts
        last = data[-1:] or last
    if last and last != b"\n":
        size += 1 if last == b"\r" else 2
    return size


_UID_CHARS = re.compile(rb"[\x21-\x7e]+")
_UID_TEXT = re.compile("[\x21-\x7e]+")
"""One or more characters 0x21-0x7E: what a POP3 UID is made of."""


def first_header_uid(head: bytes) -> str | None:
    """The value of the first X-UIDL header of `head` when Qpopper would keep it (the mbox
    rule: mbox_format.header_uid). The header ends at its first empty line, LF or CR LF
    alone, as for TOP (docs/maildir.md, "What a message is"): not at a later LF LF in the
    body of a message whose header ends in CR LF."""
    window = b"\n" + head              # the file starts a line
    ends = [at for at in (window.find(b"\n\n"), window.find(b"\n\r\n")) if at >= 0]
    match = _X_UIDL_LINE.search(head[:min(ends)] if ends else head)
    return header_uid(match.group()) if match else None


def uid_of(base: str, head: bytes) -> str:
    """An honoured X-UIDL header, else the base name when it is a valid POP3 UID (1-70
    characters 0x21-0x7E, RFC 1939 §7), else Qpopper's encoding of its MD5."""
    from_header = first_header_uid(head)
    if from_header is not None:
        return from_header
    if len(base) <= MAX_POP3_UID and _UID_TEXT.fullmatch(base):
        return base
    return encode_uid(hashlib.md5(base.encode("utf-8", "surrogateescape")).digest())


def _measure(path: str, name: str) -> tuple[int, str, int]:
    """(octets, uid, mtime) of one message file: the size from ,W= when the delivery agent
    wrote it, else counted; the UID from its header or name; its modification time (in
    INODE_BITS)."""
    base = base_name(name)
    wire = _WIRE_SIZE.search(base)
    # O_NONBLOCK: a FIFO put at a name since the listing is not waited on, but passed over
    fd = os.open(os.path.join(path, name),
                 os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a plain file since the listing", name)
        mtime = st.st_mtime_ns & INODE_BITS
        if wire:
            return int(wire.group(1)), uid_of(base, os.pread(fd, HEADER_PROBE_OCTETS, 0)), mtime
        octets, head = _counted(fd, st.st_size)
        return octets, uid_of(base, head), mtime
    finally:
        os.close(fd)


MEASURE_CHUNK_OCTETS = 1024 * 1024
"""A message new to the index is counted in parts this size: never held whole in memory."""


def _counted(fd: int, size: int) -> tuple[int, bytes]:
    """wire_octets() of the file's first `size` octets, read a part at a time (a CR LF split
    between two parts counted once), and its first HEADER_PROBE_OCTETS (for its X-UIDL)."""
    head = bytearray()

    def parts():
        offset = 0
        while offset < size:
            data = os.pread(fd, min(MEASURE_CHUNK_OCTETS, size - offset), offset)
            if not data:
                return
            if len(head) < HEADER_PROBE_OCTETS:
                head.extend(data[:HEADER_PROBE_OCTETS - len(head)])
            offset += len(data)
            yield data
    octets = _wire_octets_of(parts())
    return octets, bytes(head)


def delivery_order(name: str) -> tuple[int, int, str]:
    """Messages are numbered in delivery order: the base name starts with the delivery time
    in seconds, and often has `M<microseconds>` in its second part (the Maildir convention);
    names that do not, last, by name."""
    base = base_name(name)
    number = _LEADING_NUMBER.match(base)
    micro = _MICROSECONDS.search(base)
    return (int(number.group()) if number else 1 << 64, int(micro.group(1)) if micro else 0, base)


# --- the index ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Index:
    """What `qpopper-pop3.index` holds: the directories' stamps when it was written and every
    message file in delivery order with its octets, its measured UID (before duplicates are
    told apart), its S flag, its inode, its modification time when measured and its UID as
    served, unique (docs/maildir.md, "The index")."""
    written_ns: int
    stamps: dict
    names: list
    octets: Sequence[int]
    uids: list
    seen: list
    inodes: Sequence[int]
    mtimes: Sequence[int]
    served: list

    def entries(self) -> dict[str, tuple[int, str]]:
        return dict(zip(self.names, zip(self.octets, self.uids)))

    def messages(self) -> list[MaildirMessage]:
        return list(map(MaildirMessage, self.names, self.octets, self.served, self.seen))


def _dir_stamps(path: str) -> dict[str, list[int]]:
    """new/'s and cur/'s modification time, inode number and change time; not the device
    number, which another host's NFS mount of the same Maildir numbers otherwise
    (durable.recorded_as). The change time because no program can set it: a modification
    time set back (`rsync -a`, `cp -a`, `touch -d`) to the one stamped, after a delivery,
    would hide that delivery."""
    stamps = {}
    for sub in SUBDIRS:
        st = os.stat(os.path.join(path, sub))
        stamps[sub] = [st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    return stamps


def load_index(path: str, log=None) -> Index | None:
    """The saved index, or None when missing or not ours (then it is rebuilt); `log(priority,
    text)` is told why an index file that is there was not used (damaged, cut short, another
    version)."""
    try:
        # O_NONBLOCK and the checks below: a FIFO or a huge file in its place is not an index
        fd = os.open(os.path.join(path, INDEX_NAME),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_INDEX_OCTETS:
            data = b""                              # damaged: rebuilt, with the log line
        else:
            data = read_up_to(fd, st.st_size)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return _decode_index(data)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        if log:
            log(syslog.LOG_NOTICE, f"Maildir index of {path} ignored ({error}); listing the "
                                   "Maildir")
        return None


def _decode_index(data: bytes) -> Index:
    doc, (names, octets, uids, seen, inodes, mtimes, served) = packed.unpack(
        data, INDEX_MAGIC, INDEX_VERSION, INDEX_SECTIONS)
    n, written, stamps = doc.get("count"), doc.get("written_ns"), doc.get("stamps")
    if type(n) is not int or n < 0 or type(written) is not int or not isinstance(stamps, dict):
        raise ValueError("bad count, time or stamps")
    # Every name is new/NAME or cur/NAME (NAME not a dot file, as the listing skips them):
    # n slashes, each right after the start or a NUL.
    starts = sum(names.count(b"\0%s/" % sub.encode()) for sub in SUBDIRS)
    if (names.count(b"/") != n or b"/." in names
            or (n and starts + names.startswith((b"new/", b"cur/")) != n)):
        raise ValueError("a name outside new/ and cur/, or a dot file")
    names = packed.texts(names, n)
    if len(set(names)) != n:
        raise ValueError("a name twice")
    served = packed.texts(served, n)
    if len(set(served)) != n:
        raise ValueError("a UID twice")
    return Index(written, stamps, names, packed.ints(octets, n), packed.texts(uids, n),
                 packed.flags(seen, n), packed.ints(inodes, n), packed.ints(mtimes, n), served)


def store_index(path: str, index: Index, step=None) -> None:
    """Write the index beside the mail: a temporary file renamed over the old one
    (durable.publish), so a reader sees the old index or the new one, never half of one."""
    body = packed.pack(INDEX_MAGIC, INDEX_VERSION,
                       {"written_ns": index.written_ns, "stamps": index.stamps,
                        "count": len(index.names)},
                       [packed.text_section(index.names), packed.int_section(index.octets),
                        packed.text_section(index.uids), packed.flag_section(index.seen),
                        packed.int_section(index.inodes), packed.int_section(index.mtimes),
                        packed.text_section(index.served)])
    # not fsync'd: an index torn by a crash fails load_index's checks and is rebuilt. One
    # temporary name, not one per process: the index is written only under the Maildir's
    # lock, so a file found there is a crashed writer's, and publish clears it.
    publish(os.path.join(path, INDEX_TEMP_NAME), os.path.join(path, INDEX_NAME),
            body, sync=False, step=step, steps=("index-write", None, "index-rename"))


def _unchanged(index: Index | None, stamps: dict) -> bool:
    """The listing in the index is still the directories' content: same directories, same
    mtimes, and the index's listing begun well after the last change (SETTLE_NS)."""
    if index is None or index.stamps != stamps:
        return False
    return all(index.written_ns - max(stamp[0], stamp[-1]) >= SETTLE_NS
               for stamp in stamps.values())


def scan(path: str, log=None, step=None, now_ns: int | None = None) -> list[MaildirMessage]:
    """The messages of the Maildir at `path` in delivery order (scan_with_files)."""
    return scan_with_files(path, log, step, now_ns)[0]


def scan_with_files(path: str, log=None, step=None, now_ns: int | None = None
                    ) -> tuple[list[MaildirMessage], Sequence[int], Sequence[int]]:
    """The messages of the Maildir at `path` in delivery order, their files' inodes as
    listed and their modification times when measured (INODE_BITS), from the index when
    nothing changed (two stat calls, no listing, no Python step per message but one
    constructor call), else from a listing that measures only the files the index does not
    know as they are (base name, inode and time: _known_files). The index is rewritten
    after a listing; a failure to write it (a full disk) is logged (`log(priority, text)`)
    and costs only speed. `now_ns` is the file system's time
    taken just before (this host's clock when not given): the index is written as of then,
    before the stamps, so a change during a long listing is not judged settled
    (docs/maildir.md, "The index")."""
    written_ns = time.time_ns() if now_ns is None else now_ns
    stamps = _dir_stamps(path)
    index = load_index(path, log)
    if _unchanged(index, stamps):
        return index.messages(), index.inodes, index.mtimes
    known = _known_files(index)
    mtimes: dict[str, int] = {}
    kept_uids: dict[str, str] = {}
    listed, stamps = _listed(path, stamps)
    inodes = {name: entry.inode() & INODE_BITS for name, entry in listed.items()}
    if len(set(inodes.values())) != len(inodes):
        _one_name_per_file(path, inodes)
        _gone_before_a_tail(path, inodes)
    entries: dict[str, tuple[int, str]] = {}
    unreadable = False
    for name, inode in inodes.items():
        # the same file (base name and inode: a rename keeps both) keeps its UID as served,
        # and its measurement while its time is the one measured; else measured: new, a
        # restore, a change in place (its size; a UID it measures only tells copies apart)
        kept = known.get((base_name(name), inode))
        if kept is not None:
            kept_uids[name] = kept[3]
        try:
            if kept is not None and listed[name].stat(
                    follow_symlinks=False).st_mtime_ns & INODE_BITS == kept[2]:
                octets, uid, mtimes[name] = kept[:3]
            else:
                octets, uid, mtimes[name] = _measure(path, name)
        except FileNotFoundError:              # moved or removed since the listing
            if kept is None:
                continue
            # renamed by another reader: listed under this name, the session finds it again
            octets, uid, mtimes[name] = kept[:3]
        except PermissionError as error:       # another owner's (a restore run as root)
            if log:
                log(syslog.LOG_WARNING, f"Maildir {path}: {name} cannot be read "
                                        f"({error.strerror}); left out until it can")
            unreadable = True                  # listed again next time: it may be given back
            continue
        entries[name] = (octets, uid)
    _renamed_with_a_tail(known, inodes, entries, mtimes, kept_uids)
    order = sorted(entries, key=delivery_order)
    served = _served_uids(order, entries, kept_uids, inodes)
    # with a file left out the index is never taken as settled (_unchanged): its owner's
    # chown or chmod changes no directory, and the next login must measure it then
    fresh = Index(0 if unreadable else written_ns, stamps, order,
                  [entries[name][0] for name in order],
                  [entries[name][1] for name in order], ["S" in flags_of(name) for name in order],
                  list(map(inodes.get, order)), list(map(mtimes.get, order)),
                  list(map(served.get, order)))
    try:                # even when the listing is the same: a later time makes it trusted
        store_index(path, fresh, step)
    except OSError as error:
        if log:
            log(syslog.LOG_WARNING, f"Maildir index of {path} not written: {error.strerror}")
    return fresh.messages(), fresh.inodes, fresh.mtimes


LISTINGS = 3
"""How many times new/ and cur/ are listed for one scan at most while they change (_listed)."""


def _listed(path: str, stamps: dict) -> tuple[dict[str, os.DirEntry], dict]:
    """The message files of new/ and cur/ (regular, no dot names) by name, and the stamps
    taken before the listing they come from. A directory read while another program renames
    a file inside it may return neither name (POSIX leaves readdir(3) open there; ext4's
    htree moves the entry to its new hash), and a file left out is forgotten by the index: a
    rename into a tail after its base name (mbsync's first run renames every new/B to
    new/B,U=7) would lose its UID. So when a directory's stamps changed during the listing it
    is made again, LISTINGS times at most (docs/maildir.md, "Changes by other programs")."""
    for attempt in range(LISTINGS):
        listed = {f"{sub}/{entry.name}": entry for sub in SUBDIRS
                  for entry in os.scandir(os.path.join(path, sub))
                  if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)}
        after = _dir_stamps(path)
        if after == stamps or attempt == LISTINGS - 1:
            return listed, stamps
        stamps = after
    raise AssertionError("unreachable")


def _known_files(index: Index | None) -> dict[tuple[str, int], tuple[int, str, int, str]]:
    """The index's files by base name and inode (what a rename keeps): octets, measured UID,
    time, UID as served."""
    if index is None:
        return {}
    bases = [base_name(name) for name in index.names]
    return dict(zip(zip(bases, index.inodes),
                    zip(index.octets, index.uids, index.mtimes, index.served)))


def _renamed_with_a_tail(known: dict, inodes: dict[str, int], entries: dict,
                         mtimes: dict[str, int], kept_uids: dict[str, str]) -> None:
    """A file new to the index whose base name is a gone file's base name, `,` and a tail
    (mbsync's `,U=<n>`: it renames a message into a base name of its own) is that file
    renamed when it has its inode, octets and modification time (a rename keeps all three):
    it keeps that file's UID as served (in `kept_uids`).
    A gone file's UID goes to one file at most, and only where no file listed now has that
    file's base name and inode; a new delivery's base name never begins with another
    delivery's followed by `,` (docs/maildir.md, "What a message is")."""
    new = [name for name in entries if name not in kept_uids and "," in base_name(name)]
    if not new:
        return
    taken = {(base_name(name), inode) for name, inode in inodes.items()}
    for name in sorted(new, key=lambda n: (delivery_order(n), inodes[n])):
        base, inode = base_name(name), inodes[name]
        at = base.find(",", 1)
        while at > 0:
            key = (base[:at], inode)
            was = known.get(key)
            if (was is not None and key not in taken and was[0] == entries[name][0]
                    and was[2] == mtimes[name]):
                kept_uids[name] = was[3]
                taken.add(key)                      # its UID goes to this file only
                break
            at = base.find(",", at + 1)


def _gone_before_a_tail(path: str, inodes: dict[str, int]) -> None:
    """Leave out of `inodes` a name that is gone now and whose inode is listed under its base
    name with a tail too: another program renamed the file into that name while new/ and cur/
    were listed (mbsync: `new/B` -> `cur/B,U=7:2,S`). It is one message, found as the file
    renamed (_renamed_with_a_tail). While both names are there (a link), two files."""
    by_inode: dict[int, list[str]] = {}
    for name, inode in inodes.items():
        by_inode.setdefault(inode, []).append(name)
    for names in (names for names in by_inode.values() if len(names) > 1):
        bases = [base_name(name) + "," for name in names]
        for name, base in zip(names, bases):
            if (any(other.startswith(base) and other != base for other in bases)
                    and not os.path.lexists(os.path.join(path, name))):
                del inodes[name]


def _one_name_per_file(path: str, inodes: dict[str, int]) -> None:
    """Leave one name in `inodes` for a file listed under two names of one base name: a
    message another program renamed while the directories were listed (new/ -> cur/, or new
    flags in cur/; a rename keeps the inode), or moved by a link and an unlink. It is one
    message, served once, under the name that is there now (the later one when both are).
    Two files with one base name and different inodes (a user's copy, a restored backup)
    are two messages; so are two names whose listed inodes agree only because the file
    system lists one number for every file (FUSE without inode numbers): while both names
    are there, their files' own inodes decide."""
    first: dict[tuple, str] = {}
    for name, inode in list(inodes.items()):
        key = (base_name(name), inode)
        earlier = first.setdefault(key, name)
        if earlier == name:
            continue
        try:
            if os.lstat(os.path.join(path, earlier)).st_ino != os.lstat(
                    os.path.join(path, name)).st_ino:
                first[key] = name               # two files: both stay, the later one the key
                continue
        except FileNotFoundError:
            pass                                # one name is gone: renamed during the listing
        drop = earlier if os.path.lexists(os.path.join(path, name)) else name
        del inodes[drop]
        first[key] = name if drop == earlier else earlier


def _served_uids(order: list[str], entries: dict[str, tuple[int, str]],
                 kept: dict[str, str], inodes: dict[str, int]) -> dict[str, str]:
    """Each file's UID, unique, and its own for good (docs/maildir.md, "What a message is"):
    a file the index knew keeps the UID it was served under; another takes its measured
    UID, or when a file has that (a copy's X-UIDL header, a copy's base name) its base
    name's, or the MD5 of its base name and inode. Never its directory or flags: a rename
    keeps it. New files take theirs in delivery order, copies of one base name by inode."""
    served = {name: kept[name] for name in order if name in kept}
    taken = set(served.values())
    if len(taken) != len(served):       # two names of one indexed file: the first keeps it
        served, taken = {}, set()
        for name in order:
            if name in kept and kept[name] not in taken:
                served[name] = kept[name]
                taken.add(kept[name])
    for name in sorted((n for n in order if n not in served),
                       key=lambda n: (delivery_order(n), inodes[n])):
        base, salt = base_name(name), inodes[name]
        uid = entries[name][1]
        if uid in taken:
            uid = uid_of(base, b"")
        while uid in taken:                     # a copy of a base name: its inode tells it
            uid = encode_uid(hashlib.md5(f"{base}\0{salt}".encode(
                "utf-8", "surrogateescape")).digest())
            salt = f"{salt}+"
        served[name] = uid
        taken.add(uid)
    return served


def sync_dirs(path: str) -> None:
    for sub in SUBDIRS:
        fsync_dir(os.path.join(path, sub))
