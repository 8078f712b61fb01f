"""`.user.cache`: server mode's saved message list, so a session need not rescan the spool.

A hint, never an authority: used only when every check in `load` passes, else the spool is
scanned and the cache rewritten. Format and checks:
docs/maildrop.md, "The server-mode cache"; Qpopper's cache and ours:
docs/compatibility.md, "Server mode and its cache".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from typing import Callable

from qpopper.spool.durable import pwrite_all, read_up_to, unlink_if_present
from qpopper.spool.mbox import Message

CACHE_VERSION = 3
"""2: a From_ message's framing line (docs/mbox.md, "The framing line") is no longer part of its
content; version-1 caches count it, so they are ignored and the spool is scanned again."""
MAGIC = b"QPCACHE"
CACHE_MODE = 0o600
PROBE_OCTETS = 4096
"""How much of the cached region's head and tail is re-read to check it is still the same."""
MAX_CACHE_OCTETS = 256 * 1024 * 1024
"""A larger file is not ours to trust (about 500,000 messages): rescan instead."""

_FIELDS = [f.name for f in dataclasses.fields(Message)]
_TUPLE_FIELDS = ("stripped", "uidl_lines", "status_lines", "stale_content_length")
_BOOL_FIELDS = ("uid_from_header", "retrieved", "hidden", "mmdf")

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


def encode(user: str, state: SpoolState, options: dict, messages: list[Message]) -> bytes:
    payload = json.dumps({
        "user": user, "spool": dataclasses.asdict(state), "options": options,
        "messages": [[getattr(m, name) for name in _FIELDS] for m in messages],
    }, separators=(",", ":")).encode()
    digest = hashlib.sha256(payload).hexdigest()
    return b"%s %d %s %d\n" % (MAGIC, CACHE_VERSION, digest.encode(), len(payload)) + payload


def decode(data: bytes) -> tuple[str, SpoolState, dict, list[Message]]:
    """Parse and check a cache file's bytes; raises ValueError for anything not quite right."""
    header, newline, payload = data.partition(b"\n")
    parts = header.split(b" ")
    if not newline or len(parts) != 4 or parts[0] != MAGIC:
        raise ValueError("not a cache file")
    if parts[1] != str(CACHE_VERSION).encode():
        raise ValueError(f"cache version {parts[1]!r}")
    if not parts[3].isdigit() or int(parts[3]) != len(payload):
        raise ValueError("cache length mismatch (truncated?)")
    if hashlib.sha256(payload).hexdigest().encode() != parts[2]:
        raise ValueError("cache checksum mismatch")
    doc = json.loads(payload)
    state = SpoolState(**doc["spool"])
    if not all(isinstance(getattr(state, k), int) for k in ("dev", "ino", "size", "mtime_ns")):
        raise ValueError("bad spool state")
    messages = _messages(doc["messages"])
    _check_partition(messages, state.size)
    return doc["user"], state, doc["options"], messages


_TUPLES_AT = [i for i, name in enumerate(_FIELDS) if name in _TUPLE_FIELDS]
_BOOLS_AT = [i for i, name in enumerate(_FIELDS) if name in _BOOL_FIELDS]
_UID_AT = _FIELDS.index("uid")
_INTS_AT = [i for i in range(len(_FIELDS)) if i not in (*_TUPLES_AT, *_BOOLS_AT, _UID_AT)]


def _messages(rows) -> list[Message]:
    """The message records, checked field by field, a column at a time (C loops, not a Python
    step per field): (start, end) pairs of ints, real bools, an ASCII uid, every other field
    an int >= 0 (a bool is not an int here)."""
    if not isinstance(rows, list):
        raise ValueError("bad message list")
    if not all(type(row) is list and len(row) == len(_FIELDS) for row in rows):
        raise ValueError("bad message record")
    if not rows:
        return []
    columns = list(zip(*rows))
    for i in _TUPLES_AT:
        if not any(columns[i]) and set(map(type, columns[i])) == {list}:
            columns[i] = [()] * len(rows)   # most spools: no message has such lines
        else:
            columns[i] = [_pairs(pairs, i) for pairs in columns[i]]
    for i in _BOOLS_AT:
        if set(map(type, columns[i])) != {bool}:
            raise ValueError("bad flag")
    uids = columns[_UID_AT]
    if set(map(type, uids)) != {str} or not all(uids) or not all(map(str.isascii, uids)):
        raise ValueError("bad uid")
    for i in _INTS_AT:
        if set(map(type, columns[i])) != {int} or min(columns[i]) < 0:
            raise ValueError("bad offset or count")
    return list(map(Message, *columns))


def _pairs(pairs, i: int) -> tuple[tuple[int, int], ...]:
    if not (type(pairs) is list and all(type(p) is list and len(p) == 2 and type(p[0]) is int
                                        and type(p[1]) is int for p in pairs)):
        raise ValueError(f"bad {_FIELDS[i]}")
    return tuple(map(tuple, pairs))


def _check_partition(messages: list[Message], size: int) -> None:
    """The messages must tile [0, size) in order, numbered 1..n, with sane inner offsets and
    distinct UIDs: a list that does not is not a scan of any spool."""
    pos = 0
    uids = set()
    for number, m in enumerate(messages, 1):
        inner = (m.offset, m.content_start, m.header_end, m.body_start, m.body_end,
                 m.trailer_end, m.end)
        if (m.number != number or m.offset != pos or list(inner) != sorted(inner)
                or not m.content_start <= m.uidl_insert_at <= m.body_end or m.uid in uids):
            raise ValueError(f"message {number} does not fit")
        uids.add(m.uid)
        pos = m.end
    if pos != size:
        raise ValueError("messages do not cover the cached region")


def load(path: str, user: str, cfg, spool_fd: int) -> tuple[list[Message], SpoolState] | None:
    """The cached messages and the state they describe, when the cache may be trusted for the
    open spool (see the module docstring); None means: scan the spool."""
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
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if cached_user != user or options != scan_options(cfg):
        return None
    now = os.fstat(spool_fd)
    if (now.st_dev, now.st_ino) != (state.dev, state.ino) or now.st_size < state.size:
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
    """Write the cache atomically (tmp file, rename). Raises OSError; callers log and go on."""
    tmp = path + ".tmp"
    data = encode(user, state, scan_options(cfg), messages)
    step("cache-write")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, CACHE_MODE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            raise OSError(f"{tmp}: not our plain file")
        os.ftruncate(fd, 0)
        pwrite_all(fd, data, 0)
    finally:
        os.close(fd)
    step("cache-rename")
    os.rename(tmp, path)


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
