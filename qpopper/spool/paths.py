"""Where a user's spool, dot-lock, temporary drop and cache live
(docs/compatibility.md, "Spool locations and option files").

Options: spool-dir, hash-spool 1|2, home-dir-mail, home-dir-misc, temp-dir, temp-name, cache-dir,
cache-name, check-hash-dir, check-old-spool-loc.

`SpoolPaths.for_user` is pure string work: it validates the user name first and never touches
the filesystem, so a refused name (`../x`, `a/b`, NUL, control characters, empty, too long)
cannot reach any file. Every composed path is re-checked: its directory must be exactly the
directory we meant, so no name or name template can add a path component.
`ensure_hash_dirs()` is the one method that writes: it creates missing hashed directories,
through spool/dirs.py (never through a link planted in the spool directory).
"""

from __future__ import annotations

import os
import syslog
from dataclasses import dataclass
from typing import Callable

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.dirs import UnsafeComponent, make_dirs_below

Log = Callable[[int, str], None]

LOCK_SUFFIX = ".lock"
"""The dot-lock is `<spool>.lock`, as every Debian delivery agent expects."""

SPOOL_OPTIONS_SUFFIX = ".qpopper-options"
"""The administrator's per-user file `<spool-dir>/<user>.qpopper-options`."""

HASH_ONE_CHARS = 5
"""hash-spool 1 sums the first five characters (the manual's `maida` -> `o`)."""

BAD_NAME_TEXT = "Invalid user name."
HASH_DIR_REFUSED_TEXT = "Unable to use your spool directory; contact your administrator"


def check_user_name(user: str) -> None:
    """Refuse a name that could leave its directory or confuse the files beside it.

    Refused: empty, longer than limits.MAX_USER_NAME_OCTETS (UTF-8), `/`, `..`, NUL, any
    control character, and a leading `.` (`.x.pop` would be user `x`'s temporary drop).
    """
    if not isinstance(user, str) or not user:
        raise PopError(BAD_NAME_TEXT, RespCode.AUTH, log="refused empty user name")
    try:
        octets = len(user.encode("utf-8"))
    except UnicodeEncodeError:
        raise PopError(BAD_NAME_TEXT, RespCode.AUTH, log="refused undecodable user name") from None
    if octets > limits.MAX_USER_NAME_OCTETS:
        raise PopError(BAD_NAME_TEXT, RespCode.AUTH, log=f"refused user name of {octets} octets")
    if ("/" in user or ".." in user or user.startswith(".")
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user)):
        raise PopError(BAD_NAME_TEXT, RespCode.AUTH, log=f"refused user name {user!r}")


def hash_dirs(user: str, hash_spool: int) -> tuple[str, ...]:
    """The hashed sub-directories for `user`: () for 0, ('o',) for 1, ('m', 'a') for 2."""
    if hash_spool == 1:
        total = sum(user.encode("utf-8")[:HASH_ONE_CHARS])
        return (chr(ord("a") + total % 26),)
    if hash_spool == 2:
        first = user[0]
        return (first, user[1] if len(user) > 1 else first)
    return ()


def _named(template: str, user: str, what: str) -> str:
    """`template` with %s replaced by the user name; it must stay one path component."""
    name = template.replace("%s", user)
    if user not in name or "/" in name or name in (".", ".."):
        raise PopError("Server configuration error; contact your administrator", RespCode.SYS_PERM,
                       log=f"{what} {template!r} must contain %s and no '/'")
    return name


def _inside(directory: str, name: str) -> str:
    """`directory/name`, after proving the result's parent is exactly `directory`."""
    path = os.path.join(directory, name)
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(directory):
        raise PopError(BAD_NAME_TEXT, RespCode.AUTH, log=f"path {path!r} escapes {directory!r}")
    return path


@dataclass(frozen=True)
class SpoolPaths:
    user: str
    spool: str                  # the mbox delivery agents append to
    lock: str                   # <spool>.lock
    temp_drop: str              # .user.pop: the session's working copy and session lock
    cache: str                  # .user.cache (server mode)
    options_file: str           # <spool-dir>/<user>.qpopper-options
    old_temp_drop: str | None   # check-old-spool-loc: .user.pop in the plain spool dir
    spool_dir: str              # the configured spool-dir (owner and mode model for hash dirs)
    hashed_dirs: tuple[str, ...]  # hashed directories under spool-dir/temp-dir/cache-dir
    # (configured top directory, hashed parts below it) per walk: ("/var/mail", ("m", "a"))
    hash_walks: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def journal(self) -> str:
        """The maildrop's redo journal beside the temporary drop."""
        return self.temp_drop + ".journal"

    @property
    def new_image(self) -> str:
        """Where the update builds the new spool image before committing it."""
        return self.temp_drop + ".new"

    @classmethod
    def for_user(cls, cfg, user: str, home: str | None) -> "SpoolPaths":
        check_user_name(user)
        hash_spool = cfg.hash_spool
        subdirs = hash_dirs(user, hash_spool)
        spool_dir = cfg.spool_dir
        hashed = []
        # `a.b` under hash-spool 2: Qpopper's `a/./a.b` is `a/a.b`
        parts = tuple(part for part in subdirs if part != ".")
        walks = []

        def hashed_dir(base: str) -> str:
            path = base
            for part in parts:
                path = _inside(path, part)
                hashed.append(path)
            if parts:
                walks.append((base, parts))
            return path

        home_mail = cfg.home_dir_mail
        home_misc = cfg.home_dir_misc
        if (home_mail or home_misc) and not home:
            raise PopError("No home directory; contact your administrator", RespCode.SYS_PERM,
                           log=f"user {user} has no home directory")
        if home_mail:
            # The administrator's file name under the home directory (it may have sub-dirs).
            spool = os.path.join(home, home_mail)
        else:
            spool = _inside(hashed_dir(spool_dir), user)

        temp_name = _named(cfg.temp_name, user, "temp-name")
        cache_name = _named(cfg.cache_name, user, "cache-name")
        if home_misc:
            temp_drop_dir = home
        else:
            temp_drop_dir = hashed_dir(cfg.temp_dir or spool_dir)
        temp_drop = _inside(temp_drop_dir, temp_name)
        cache_dir = cfg.cache_dir
        if home_misc:
            cache = _inside(home, cache_name)
        elif cache_dir:
            cache = _inside(hashed_dir(cache_dir), cache_name)
        else:
            cache = _inside(temp_drop_dir, cache_name)

        old_temp_drop = None
        if cfg.check_old_spool_loc and (subdirs or home_mail):
            candidate = _inside(spool_dir, temp_name)
            if candidate != temp_drop:
                old_temp_drop = candidate
        return cls(user=user, spool=spool, lock=spool + LOCK_SUFFIX, temp_drop=temp_drop,
                   cache=cache, options_file=_inside(spool_dir, user + SPOOL_OPTIONS_SUFFIX),
                   old_temp_drop=old_temp_drop, spool_dir=spool_dir,
                   hashed_dirs=tuple(dict.fromkeys(hashed)),
                   hash_walks=tuple(dict.fromkeys(walks)))

    def ensure_hash_dirs(self, log: Log | None = None) -> None:
        """check-hash-dir: create missing hashed directories, parents first, with the mode
        and owner of the spool directory. Only root or the spool directory's owner may create
        them (the session calls this before the privilege drop): a directory a user created
        would let that user tamper with every spool hashed into it, so any other caller only
        logs the missing directory. Group mail may plant entries in the spool directory: a
        hashed directory that is a link or not a directory is never followed nor changed
        (spool/dirs.py), and the login is refused with [SYS/PERM]. Anything else that fails
        is logged; the maildrop then finds out what is missing."""
        if not self.hashed_dirs:
            return
        try:
            model = os.stat(self.spool_dir)
        except OSError as exc:
            _note(log, f"check-hash-dir: cannot stat {self.spool_dir}: {exc.strerror}")
            return
        may_create = os.geteuid() in (0, model.st_uid)
        for top, parts in self.hash_walks:
            try:
                make_dirs_below(top, parts, model, create=may_create)
            except UnsafeComponent as refusal:
                raise PopError(HASH_DIR_REFUSED_TEXT, RespCode.SYS_PERM,
                               log=f"check-hash-dir: {refusal}") from None
            except OSError as exc:
                _note(log, self._hash_dir_trouble(exc, may_create))
                return

    def _hash_dir_trouble(self, exc: OSError, may_create: bool) -> str:
        if may_create:
            return f"check-hash-dir: {exc.filename}: {exc.strerror}"
        if isinstance(exc, FileNotFoundError):
            return (f"check-hash-dir: {exc.filename} is missing; only root or the owner of "
                    f"{self.spool_dir} may create it")
        return f"check-hash-dir: cannot check {exc.filename}: {exc.strerror}"


def _note(log: Log | None, text: str) -> None:
    if log is not None:
        log(syslog.LOG_WARNING, text)
