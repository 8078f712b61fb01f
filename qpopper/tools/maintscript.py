"""The root-side file changes of the package scripts (debian/postinst, the RPM's %post), done
through descriptors that never follow a link.

The scripts run as root on paths inside directories other accounts may write: the pop.auth
store's directory belongs to the pop-auth-owner account, and /var/mail is root:mail 2775 (group
mail may rename and replace its entries). `chown`, `chmod`, `[ -f ]` and `install -d` follow
symlinks, so an entry planted there (`pop.auth -> /etc/shadow`, `/var/mail/a -> /etc`) would
turn the next upgrade into a change of a file elsewhere. Here every such name is opened with
O_NOFOLLOW relative to its parent's descriptor and changed with fchown/fchmod.

    /usr/bin/python3 -m qpopper.tools.maintscript spool-dirs CONFIG [--adjust-existing]
        the directories CONFIG's options name: spool-dir (root:mail 2775 when missing; with
        --adjust-existing an existing one gets group mail and g+rwxs), hash-spool's letter
        directories and temp-dir/cache-dir (made like the spool directory). Prints each
        directory it made. debian/postinst and the RPM's %post both call this, so the option
        reading and the directory list exist once.
    /usr/bin/python3 -m qpopper.tools.maintscript own-store STORE OWNER
        STORE (if it exists) to OWNER, mode 0600: only a regular file with one link; then
        the same for STORE.decoy-key, the key of SCRAM's decoys, which the server refuses
        unless it is the store's owner's or root's (docs/internals.md, "Store mechanisms").
    /usr/bin/python3 -m qpopper.tools.maintscript decoy-key STORE OWNER
        STORE.decoy-key, OWNER's, mode 0600, when STORE is a regular file and the key is
        missing (a store made before popauth made the key); prints it when made.
    /usr/bin/python3 -m qpopper.tools.maintscript make-dirs LIKE DIR...
        each missing DIR with LIKE's owner, group and mode; a DIR below LIKE is walked from LIKE
        without following any link, another DIR from its parent; prints each DIR it made
        (as a path without links: purge removes only what still has that path).

A refused name prints one line on stderr; the exit status is then 3 (the rest is still done),
which the scripts report and go on. Any other failure (a configuration error, a Python that
cannot import this package) exits 1 or 2, and the scripts fail with it: a package whose spool
directories were silently not made is worse than an install that stops and says why.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import string
import sys

from qpopper import config as config_mod
from qpopper.auth.store import DECOY_KEY_SUFFIX, PopAuthStore
from qpopper.spool.dirs import UnsafeComponent, make_dirs_below
from qpopper.spool.locking import Unlinked, open_regular

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
USAGE = ("usage: /usr/bin/python3 -m qpopper.tools.maintscript "
         "{spool-dirs CONFIG [--adjust-existing] | own-store STORE OWNER | decoy-key STORE OWNER "
         "| make-dirs LIKE DIR...}")
STORE_MODE = 0o600
SPOOL_MODE = 0o2775
"""A spool directory the package makes: root:mail, group-writable for delivery agents' and
popper's USER.lock files, setgid so that what is made inside stays group mail."""


class Refused(Exception):
    """A name that is not what the script may change: one line for stderr."""


def own_store(path: str, owner_name: str) -> None:
    """chown OWNER + chmod 0600 of the store and then of its decoy key, never through a link
    (a missing one: nothing)."""
    owner = _account(path, owner_name)
    _own_file(path, owner)
    _own_file(path + DECOY_KEY_SUFFIX, owner)


def make_decoy_key(path: str, owner_name: str) -> bool:
    """The store's missing decoy key, OWNER's 0600 (PopAuthStore.make_decoy_key: a new name
    made with O_EXCL|O_NOFOLLOW, then linked into place, so nothing planted is followed).
    True when made; a missing store, or one that is not a regular file: nothing."""
    owner = _account(path, owner_name)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False                  # own-store says what is wrong with it
    except FileNotFoundError:
        return False
    try:
        return PopAuthStore(path, owner.pw_uid).make_decoy_key()
    except OSError as error:
        raise Refused(f"{path + DECOY_KEY_SUFFIX} not made: {error.strerror}") from None


def _account(path: str, owner_name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(owner_name)
    except KeyError:
        raise Refused(f"{path} not changed: no account {owner_name!r}") from None


def _own_file(path: str, owner: pwd.struct_passwd) -> None:
    def refuse(kind: str, detail: str) -> Refused:
        return Refused(f"{path} not changed: not a regular file with one link")
    for attempt in range(2):
        try:                              # O_NONBLOCK: a FIFO planted there must not hang us
            fd = open_regular(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, refuse=refuse)
            break
        except Unlinked:                  # replaced as we opened it: the new one, once
            if attempt:
                raise Refused(f"{path} not changed: it kept being replaced") from None
        except FileNotFoundError:
            return
        except OSError as error:          # ELOOP: the name is a symlink
            raise Refused(f"{path} not changed: {error.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != owner.pw_uid:
            os.fchown(fd, owner.pw_uid, -1)
        if stat.S_IMODE(st.st_mode) != STORE_MODE:
            os.fchmod(fd, STORE_MODE)
    finally:
        os.close(fd)


def make_dirs(like: str, paths: list[str]) -> tuple[list[str], list[str]]:
    """Each missing directory of `paths`, made like `like`: (the ones made, in order; one
    refusal line for each path that was not used)."""
    reference = os.stat(like)             # the spool directory itself is the administrator's
    made, refusals = [], []
    for path in paths:
        try:
            made += _make_dir(like, path, reference)
        except Refused as refusal:
            refusals.append(str(refusal))
    return made, refusals


def _make_dir(like: str, path: str, reference: os.stat_result) -> list[str]:
    """A DIR below LIKE is walked from LIKE (every component may be a planted link), another
    DIR from its parent (spool/dirs.py does the walk)."""
    like = os.path.normpath(like)
    path = os.path.normpath(path)
    if path.startswith(like.rstrip("/") + "/"):
        top, parts = like, os.path.relpath(path, like).split("/")
    else:
        top, parts = os.path.dirname(path), [os.path.basename(path)]
    try:
        # paths without links: what the package's purge may remove
        return make_dirs_below(os.path.realpath(top), parts, reference)
    except UnsafeComponent as refusal:    # a link or a file sits there
        raise Refused(str(refusal)) from None
    except OSError as error:              # the other DIRs are still made
        raise Refused(f"{error.filename} not made: {error.strerror}") from None


def spool_dirs(config_path: str, adjust_existing: bool) -> tuple[list[str], list[str]]:
    """The directories the configuration names (see the module docstring): (made, refusals)."""
    try:
        cfg, _ = config_mod.load(["-f", config_path])
    except config_mod.ConfigError as error:
        raise Failed(str(error)) from None
    spool = cfg.spool_dir
    if not os.path.isabs(spool):
        raise Refused(f"spool-dir {spool!r} is not absolute; not touched")
    made = []
    mail_gid = grp.getgrnam("mail").gr_gid
    if not os.path.isdir(spool):
        made += _make_spool(spool, mail_gid)
    elif adjust_existing:
        _adjust_spool(spool, mail_gid)
    letters = string.ascii_lowercase
    dirs = []
    if cfg.hash_spool == 1:
        dirs = [os.path.join(spool, a) for a in letters]
    elif cfg.hash_spool == 2:
        for a in letters:
            dirs.append(os.path.join(spool, a))
            dirs += [os.path.join(spool, a, b) for b in letters]
    dirs += [d for d in (cfg.temp_dir, cfg.cache_dir) if d and os.path.isabs(d)]
    more, refusals = make_dirs(spool, dirs)
    return made + more, refusals


def _make_spool(spool: str, mail_gid: int) -> list[str]:
    parent = os.path.dirname(os.path.normpath(spool))
    os.makedirs(parent, mode=0o755, exist_ok=True)        # /var/mail's parent is root's
    os.mkdir(spool, 0o700)
    fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, 0, mail_gid)
        os.fchmod(fd, SPOOL_MODE)
    finally:
        os.close(fd)
    return [os.path.realpath(spool)]         # purge removes only a path without links


def _adjust_spool(spool: str, mail_gid: int) -> None:
    """An existing spool directory: group mail and g+rwxs, as delivery agents need."""
    fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY)      # the administrator's own path
    try:
        st = os.fstat(fd)
        if st.st_gid != mail_gid:
            os.fchown(fd, -1, mail_gid)
        wanted = stat.S_IMODE(st.st_mode) | stat.S_IRWXG | stat.S_ISGID
        if stat.S_IMODE(st.st_mode) != wanted:
            os.fchmod(fd, wanted)
    finally:
        os.close(fd)


class Failed(Exception):
    """Nothing could be done (the configuration does not load): one line, exit 1."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["spool-dirs"] and len(argv) in (2, 3) \
                and argv[2:] in ([], ["--adjust-existing"]):
            made, refusals = spool_dirs(argv[1], adjust_existing=len(argv) == 3)
            print("".join(f"{path}\n" for path in made), end="")
            for refusal in refusals:
                print(f"qpopper-py: {refusal}", file=sys.stderr)
            return EXIT_REFUSED if refusals else 0
        if len(argv) == 3 and argv[0] == "own-store":
            own_store(argv[1], argv[2])
        elif len(argv) == 3 and argv[0] == "decoy-key":
            if make_decoy_key(argv[1], argv[2]):
                print(argv[1] + DECOY_KEY_SUFFIX)
        elif len(argv) >= 2 and argv[0] == "make-dirs":
            made, refusals = make_dirs(argv[1], argv[2:])
            print("".join(f"{path}\n" for path in made), end="")
            for refusal in refusals:
                print(f"qpopper-py: {refusal}", file=sys.stderr)
            return EXIT_REFUSED if refusals else 0
        else:
            print(USAGE, file=sys.stderr)
            return EXIT_USAGE
    except Refused as refusal:
        print(f"qpopper-py: {refusal}", file=sys.stderr)
        return EXIT_REFUSED
    except Failed as failure:
        print(f"qpopper-py: {failure}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"qpopper-py: {error}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
