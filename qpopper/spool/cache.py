"""`.user.cache`: server mode's saved message list, so a session need not rescan the spool.

A hint, never an authority: used only when every check in `load` passes, else the spool is
scanned and the cache rewritten. Format and checks:
docs/maildrop.md, "The server-mode cache"; Qpopper's cache and ours:
docs/compatibility.md, "Server mode and its cache".
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import operator
import os
import stat
from dataclasses import dataclass
from typing import Callable

from qpopper.spool import packed
from qpopper.spool.durable import publish, read_up_to, recorded_as, unlink_if_present
from qpopper.spool.mbox import Message

CACHE_VERSION = 6
"""6: an MMDF first line of limits.MAX_SPOOL_LINE_OCTETS or more is no separator (the spool is
refused, as a scan refuses it); 5: a message ending in a bare CR counted as sent (that CR with
the LF after it, one octet less than 4 counted); 4: packed columns (qpopper/spool/packed.py)
instead of JSON records; 2: a From_ message's framing line (docs/mbox.md, "The framing line")
is no longer part of its content. A cache of another version is ignored and the spool scanned
again."""
MAGIC = b"QPCACHE"
CACHE_MODE = 0o600
PROBE_OCTETS = 4096
"""How much of the cached region's head and tail is re-read to check it is still the same."""
MAX_CACHE_OCTETS = 256 * 1024 * 1024
"""A larger file is not ours to trust (about 500,000 messages): rescan instead."""

StepHook = Callable[[str], None]


@dataclass(frozen=True)
class SpoolState:
    """What the cache says about the spool it describes (all of it read under the spool lock)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    head: str       # sha256 of the first PROBE_OCTETS of [0, size)
    tail: str       # sha256 of the last PROBE_OCTETS of [0, size)


def scan_options(cfg) -> dict:
    """The options that change what a scan yields; a cache made with others is not used."""
    return {"update_status_headers": cfg.update_status_headers,
            "old_style_uid": cfg.old_style_uid,
            "uw_kludge": cfg.uw_kluge}


def spool_state(fd: int, size: int | None = None) -> SpoolState:
    """The state of the open spool, covering [0, size) (default: its whole length)."""
    st = os.fstat(fd)
    size = st.st_size if size is None else size
    head = os.pread(fd, min(PROBE_OCTETS, size), 0) if size else b""
    tail_at = max(0, size - PROBE_OCTETS)
    tail = os.pread(fd, size - tail_at, tail_at) if size else b""
    return SpoolState(st.st_dev, st.st_ino, size, st.st_mtime_ns,
                      hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest())


_INT_FIELDS = ("offset", "end", "octets", "content_start", "header_end", "body_start",
               "body_end", "trailer_end", "uidl_insert_at")
_FLAG_FIELDS = ("uid_from_header", "retrieved", "hidden", "mmdf")
_PAIR_FIELDS = ("stripped", "uidl_lines", "status_lines", "stale_content_length")
_IN_ORDER = ("offset", "content_start", "header_end", "body_start", "body_end", "trailer_end",
             "end")
"""Where a message's parts start, in file order; each is <= the next."""
_SECTIONS = 3 + 2 * len(_PAIR_FIELDS)


def encode(user: str, state: SpoolState, options: dict, messages: list[Message]) -> bytes:
    """The cache file's bytes: columns of the message records (docs/maildrop.md,
    "The server-mode cache"). ValueError for a record that could not be read back (it is not
    cached)."""
    sections = [packed.int_section(getattr(m, name) for name in _INT_FIELDS for m in messages),
                packed.flag_section(getattr(m, name) for name in _FLAG_FIELDS for m in messages),
                packed.text_section([m.uid for m in messages])]
    for name in _PAIR_FIELDS:
        sections.append(packed.int_section(len(getattr(m, name)) for m in messages))
        sections.append(packed.int_section(x for m in messages for pair in getattr(m, name)
                                           for x in pair))
    document = {"user": user, "spool": dataclasses.asdict(state), "options": options,
                "count": len(messages)}
    return packed.pack(MAGIC, CACHE_VERSION, document, sections)


def decode(data: bytes) -> tuple[str, SpoolState, dict, list[Message]]:
    """Parse and check a cache file's bytes; raises ValueError (its text says what was
    wrong) for anything not quite right."""
    doc, sections = packed.unpack(data, MAGIC, CACHE_VERSION, _SECTIONS)
    try:
        state = SpoolState(**doc["spool"])
        user, options, n = doc["user"], doc["options"], doc["count"]
    except (KeyError, TypeError):
        raise ValueError("the cache's document lacks a field") from None
    if not all(type(getattr(state, k)) is int for k in ("dev", "ino", "size", "mtime_ns")) \
            or type(n) is not int or n < 0 or type(user) is not str or type(options) is not dict:
        raise ValueError("bad spool state or message count")
    columns = _columns(sections, n)
    _check_partition(columns, n, state.size)
    messages = list(map(Message, *(columns[f.name] for f in dataclasses.fields(Message))))
    return user, state, options, messages


def _columns(sections: list[bytes], n: int) -> dict:
    """The records' fields, a column at a time (C loops over arrays, not a Python step per
    field): ints >= 0, flags 0 or 1, distinct ASCII UIDs, (start, end) pairs with start <=
    end."""
    ints = packed.ints(sections[0], len(_INT_FIELDS) * n)
    columns = {name: ints[i * n:(i + 1) * n] for i, name in enumerate(_INT_FIELDS)}
    flags = packed.flags(sections[1], len(_FLAG_FIELDS) * n)
    columns.update((name, flags[i * n:(i + 1) * n]) for i, name in enumerate(_FLAG_FIELDS))
    uids = columns["uid"] = packed.texts(sections[2], n)
    if not all(map(str.isascii, uids)) or len(set(uids)) != n:
        raise ValueError("a UID that is not ASCII, or two alike")
    for i, name in enumerate(_PAIR_FIELDS):
        columns[name] = _pairs(sections[3 + 2 * i], sections[4 + 2 * i], n, name)
    columns["number"] = range(1, n + 1)
    return columns


def _pairs(count_section: bytes, flat_section: bytes, n: int, name: str) -> list:
    """One tuple of (start, end) pairs per message. Most spools have none or exactly one per
    message (X-UIDL and Status after a write-back): those are built without a Python loop."""
    counts = packed.ints(count_section, n)
    total = sum(counts)
    flat = packed.ints(flat_section, 2 * total)
    starts, ends = flat[0::2], flat[1::2]
    if not all(map(operator.le, starts, ends)):
        raise ValueError(f"a {name} pair that ends before it starts")
    if not total:
        return [()] * n
    pairs = zip(starts, ends)
    if total == n and counts.count(1) == n:
        return list(zip(pairs))
    return [tuple(itertools.islice(pairs, count)) for count in counts]


def _check_partition(columns: dict, n: int, size: int) -> None:
    """The messages must tile [0, size) in order, with their inner offsets in order: a list
    that does not is not a scan of any spool."""
    offsets, ends = columns["offset"], columns["end"]
    if not n:
        if size:
            raise ValueError("no messages for a region that is not empty")
        return
    if offsets[0] != 0 or offsets[1:] != ends[:-1] or ends[-1] != size:
        raise ValueError("the messages do not tile the cached region")
    for before, after in zip(_IN_ORDER, _IN_ORDER[1:]):
        if not all(map(operator.le, columns[before], columns[after])):
            raise ValueError(f"a message's {before} is after its {after}")
    if not (all(map(operator.le, columns["content_start"], columns["uidl_insert_at"]))
            and all(map(operator.le, columns["uidl_insert_at"], columns["body_end"]))):
        raise ValueError("a message's X-UIDL place is outside its header and body")


def load(path: str, user: str, cfg, spool_fd: int, note: Callable[[str], None] | None = None
         ) -> tuple[list[Message], SpoolState] | None:
    """The cached messages and the state they describe, when the cache may be trusted for the
    open spool (see the module docstring); None means: scan the spool. A cache file that is
    damaged, of another version or of other options is ignored and `note` told why; one that
    no longer describes the spool (new mail, an edit) is the ordinary case, not noted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid()
                or st.st_size > MAX_CACHE_OCTETS):
            return None
        data = read_up_to(fd, st.st_size)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        cached_user, state, options, messages = decode(data)
        if cached_user != user:
            raise ValueError(f"written for {cached_user!r}")
        if options != scan_options(cfg):
            raise ValueError("written with other scan options")
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        if note:            # decode says what was wrong; the others are a bug's safety net
            note(str(error) if isinstance(error, ValueError) else f"unreadable: {error!r}")
        return None
    now = os.fstat(spool_fd)
    if not recorded_as(now, state.ino) or now.st_size < state.size:
        return None
    if now.st_size == state.size and now.st_mtime_ns != state.mtime_ns:
        return None
    if cfg.conservative_cache and now.st_mtime_ns > state.mtime_ns:
        return None
    probe = spool_state(spool_fd, state.size)
    if (probe.head, probe.tail) != (state.head, state.tail):
        return None
    return messages, state


def store(path: str, user: str, cfg, state: SpoolState, messages: list[Message],
          step: StepHook) -> None:
    """Write the cache atomically (`<cache>.tmp`, renamed: durable.publish). Not fsync'd: a
    cache torn by a crash fails `load`'s checks and is rebuilt. Raises OSError; callers log
    and go on."""
    try:
        data = encode(user, state, scan_options(cfg), messages)
    except ValueError as error:
        raise OSError(errno.EINVAL, f"cannot be packed: {error}") from None
    publish(path + ".tmp", path, data, mode=CACHE_MODE, sync=False, step=step,
            steps=("cache-write", None, "cache-rename"))


def remove(path: str, step: StepHook) -> None:
    """Forget the cache. Best effort: a cache we cannot remove still has to pass `load`'s
    checks, which a rewritten spool fails."""
    remove_stale_tmp(path, step)
    if os.path.lexists(path):
        step("cache-unlink")
        unlink_if_present(path, ignore_other_errors=True)


def remove_stale_tmp(path: str, step: StepHook) -> None:
    """The temporary file of a cache write that was interrupted."""
    if os.path.lexists(path + ".tmp"):
        step("cache-tmp-unlink")
        unlink_if_present(path + ".tmp", ignore_other_errors=True)
