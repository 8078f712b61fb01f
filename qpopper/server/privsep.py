"""The one place that changes user, group and supplementary groups — and proves it worked.

What runs as root, and so what a security review must read (popa3d / OpenSSH habit; the
process model is docs/privsep.md). No module here reads a client byte as root:
  qpopper/cli.py, config.py, options.py      start-up: argv, configuration files
  qpopper/server/master.py, listeners.py,     listeners, accept, fork, signals (root for good)
    admission.py, master_lifecycle.py,        connection limits; reload and stop;
    children.py                               how every forked child ends; the forked
                                              helpers (ForkedCall: reverse lookup's fork)
  qpopper/server/warmup.py                    start-up: throw-away sessions (session.py, pop3/,
                                              the maildrop) on constant bytes, on a spool in a
                                              0700 temporary directory of its own; no client byte
  qpopper/server/preflight.py                 start-up, HUP, --check-config: files, directories
                                              (makes <bulldir>/bulldb), accounts, PAM service
  qpopper/server/monitor.py, monitor_wire.py, one per connection: forks the pre-login and
    monitor_handover.py                       authentication processes, checks the handover,
                                              then becomes the user session
  qpopper/server/monitor_auth.py,             the authentication process (the monitor's
    monitor_proxy.py                          child): answers the pre-login process's frames
                                              (the PROXY header's address too; a health
                                              check's stat of spool-dir)
  qpopper/auth/policy.py, policy_checks.py,   in the authentication process: user lookup, PAM,
    challenges.py,
    pam.py, store.py, brakes.py,              the pop.auth store, APOP/CRAM/SCRAM challenges,
    password_cache.py                         GSS-API, brakes, the authentication cache's keys
  qpopper/auth/pam.py (preload)               in the master: libpam and the PAM service's
                                              modules loaded once, nothing authenticated
  qpopper/server/auth_cache.py                the authentication cache process (master's child)
  qpopper/server/drac.py                      in the authentication process: DRAC notices
  qpopper/server/tls.py (TlsIdentity.open)    the certificate and key snapshot, never parsed
  qpopper/log.py                              syslog / tracefile records
  qpopper/files.py                            start-up, HUP, logins: files opened without
                                              waiting on a FIFO; who else can read a secret
  qpopper/server/sdnotify.py                  systemd's notify socket
  qpopper/spool/paths.py, dirs.py             check-hash-dir's shared directories
  qpopper/server/privsep.py                   this file
The pre-login process (server/prelogin.py, session.py, channel.py, reply_writer.py, the
whole pop3/ package, auth/sasl.py, server/tls_channel.py's handshake,
server/reverse_lookup.py's helper) runs as prelogin-user in the prelogin-chroot directory,
entered with enter_prelogin_sandbox below before the first client byte; its last step is
server/prelogin_filter.py's system-call filter.
Everything after `drop_privileges` — the spool, the temp drop, the cache, bulletins, the
user option files — runs as the user with the spool directory's group (normally mail) as its
effective and saved group (a Maildir user's session gives it up: leave_spool_group below),
and the user's own primary group as its real group. The real group
is what a program the session runs gets (`run_user_program`: XTND XMIT's mail-command): only
the user's own uid and primary group, never the mail group, so the user's MTA configuration
(msmtp's passwordeval, a .forward-style hook) cannot read other users' mailboxes.

Order (OpenSSH's and popa3d's; docs/privsep.md): setgroups([]) → setresgid(user's gid, gid,
gid) → setresuid(uid). Each step is checked afterwards with getresuid/getresgid/getgroups, then
we try to get root back: if setuid(0), setgid(0) or setgroups([0]) works, or any check fails,
the child logs and exits at once with os._exit — it never continues with the wrong identity.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pwd
import resource
import signal
import subprocess
import syslog
from typing import Iterable

from qpopper import limits
from qpopper.server import prelogin_filter

SESSION_UMASK = 0o007
"""Qpopper's umask after the drop (BINMAIL_IS_SETGID): files the session creates (temp drop,
lock, cache) stay within the user and the mail group."""

EXIT_PRIVSEP_FAILED = 71
"""Exit status of a child whose privilege drop failed (sysexits.h EX_OSERR)."""

USER_PROGRAM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH of a program run for the user: the system's directories, never the server's PATH."""


def drop_privileges(login, gid: int, log=None) -> None:
    """Become `login.uid` with effective and saved group `gid` (the spool directory's group),
    real group `login.gid` (the user's own, for the programs it runs) and no supplementary
    groups, for good. Returns only when every check passed."""
    uid, own_gid = login.uid, login.gid
    if uid <= limits.BLOCKED_UID_MAX or gid <= 0 or own_gid <= 0:
        # policy.py refuses low uids at login already; this is the second line of defence.
        # A real group 0 would let the session make root's group its effective one.
        _abort(log, f"refusing to run a session as uid {uid} gid {gid} (own gid {own_gid})")

    if os.geteuid() != 0:
        # Not root (demo mode, or a test): there is nothing to drop, but we must already be
        # exactly that user.
        if os.getresuid() != (uid, uid, uid):
            _abort(log, f"not root and not uid {uid}: cannot become the user")
        os.umask(SESSION_UMASK)
        return

    try:
        os.setgroups([])
        os.setresgid(own_gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        _abort(log, f"privilege drop to uid {uid} gid {gid} failed: {exc.strerror}")

    problems = []
    if os.getresuid() != (uid, uid, uid):
        problems.append(f"uids {os.getresuid()}")
    if os.getresgid() != (own_gid, gid, gid):
        problems.append(f"gids {os.getresgid()}")
    if os.getgroups():
        problems.append(f"supplementary groups {os.getgroups()}")
    problems.extend(_regained_root())
    if problems:
        _abort(log, f"privilege drop to uid {uid} gid {gid} not effective: "
                    + ", ".join(problems))
    os.umask(SESSION_UMASK)


def user_program_environment(login) -> dict[str, str]:
    """The whole environment of a program run for the user: nothing of the server's own
    (its variables may name sockets, test hooks or credentials of the service)."""
    return {"PATH": USER_PROGRAM_PATH, "HOME": login.home or "/", "USER": login.user,
            "LOGNAME": login.user}


def run_user_program(argv: list[str], login, *, stdin, timeout_s: float) -> int:
    """Run `argv` for the logged-in user and return its exit status: uid `login.uid`, real,
    effective and saved group `login.gid` (the session's mail group stays behind), no
    supplementary groups, `user_program_environment`, cwd /, stdin `stdin`, stdout and stderr
    discarded, no other descriptor. subprocess's `group=` is setregid(gid, gid) in the child,
    which an unprivileged session may do because `login.gid` is its real group; it has no
    supplementary groups to pass on after drop_privileges (a server that never ran as root,
    the demo, keeps its own account's). Raises OSError, subprocess.SubprocessError or
    subprocess.TimeoutExpired (after killing the program) like subprocess.run."""
    done = subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=user_program_environment(login),
                          cwd="/", close_fds=True, group=login.gid, timeout=timeout_s,
                          check=False)
    return done.returncode


def _regained_root() -> list[str]:
    """Each way back to root that unexpectedly worked (all must fail with EPERM)."""
    regained = []
    for name, attempt in (("setuid(0)", lambda: os.setuid(0)),
                          ("setgid(0)", lambda: os.setgid(0)),
                          ("setgroups([0])", lambda: os.setgroups([0]))):
        try:
            attempt()
        except PermissionError:
            continue
        regained.append(f"{name} succeeded")
    return regained


def _abort(log, text: str):
    """Log and end the process now: no cleanup handlers, no `finally`, nothing that could
    keep running with the wrong identity."""
    if log is not None:
        try:
            log(syslog.LOG_CRIT, text)
        except Exception:       # logging must not stop the abort
            pass
    os._exit(EXIT_PRIVSEP_FAILED)


# --- the pre-login sandbox (docs/privsep.md) ------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2


def _last_capability() -> int:
    """The kernel's highest capability number, read once (not in the chroot): the bounding
    set is emptied one capability at a time, so ask the kernel how many there are."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


LAST_CAPABILITY = _last_capability()

PRELOGIN_MAX_FILES = 64
"""Descriptors the pre-login process may hold: the client, its monitor's two sockets (requests
and log records), a relay, the TLS files."""
PRELOGIN_MAX_ADDRESS_SPACE = 2 * 1024 ** 3
"""Its address space (the interpreter and OpenSSL need ~300 MiB of mappings): bounds what a
client can make it allocate."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4   # the kernel reads longs


class SandboxError(Exception):
    """The pre-login process could not lock itself in: it must not serve the client."""


def prctl(option: int, value: int, arg3: int = 0) -> None:
    if _libc.prctl(option, value, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_syscall_filter(own_pid: int, may_signal: Iterable[int] = (), *,
                           resolver: bool = False) -> bool:
    """prelogin_filter's filter (`resolver`: the reverse-lookup helper's), installed in this
    process (NoNewPrivs set: the kernel wants it of an unprivileged process). False on a
    machine it does not know; OSError when the kernel refuses it."""
    code = prelogin_filter.encoded(own_pid, may_signal, resolver=resolver)
    if code is None:
        return False
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // prelogin_filter.INSTRUCTION_OCTETS,
                       ctypes.addressof(buffer))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
    return True


def prelogin_account(cfg) -> tuple[int, int]:
    """(uid, gid) the pre-login process runs as: prelogin-user as root, else ourselves."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        account = pwd.getpwnam(cfg.prelogin_user)
    except KeyError:
        raise SandboxError(f"prelogin-user {cfg.prelogin_user!r}: no such account") from None
    if account.pw_uid == 0 or account.pw_gid == 0:
        raise SandboxError(f"prelogin-user {cfg.prelogin_user!r} is root")
    return account.pw_uid, account.pw_gid


def warm_name_service(cfg) -> None:
    """In the master, before it forks: the account lookups each monitor makes before the
    user's own (prelogin-user, pop-auth-owner, a group list), once. glibc loads a database's
    name-service modules (libnss_systemd on Debian) at its first lookup that reaches them and
    keeps them: done here, every forked monitor inherits them instead of loading them again
    per connection (docs/privsep.md, "PAM modules stay loaded in the master"). Missing
    accounts are not an error here: preflight and the monitor say so."""
    for name in (cfg.prelogin_user, cfg.pop_auth_owner):
        try:
            pwd.getpwnam(name)
        except KeyError:
            pass
    try:
        os.getgrouplist(cfg.prelogin_user, os.getgid())
    except OSError:
        pass


def enter_prelogin_sandbox(cfg, uid: int, gid: int, may_signal: Iterable[int] = ()) -> None:
    """Lock this process in (docs/privsep.md, "The pre-login process"); SandboxError when
    any step fails. Call before touching the client's bytes. The last step is the
    system-call filter (prelogin_filter): from then on it may signal only itself and the
    processes in `may_signal` (its reverse-lookup helper)."""
    was_root = os.geteuid() == 0
    try:
        if was_root:
            for cap in range(LAST_CAPABILITY + 1):
                try:
                    prctl(PR_CAPBSET_DROP, cap)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:       # past the kernel's last capability
                        raise
            os.chroot(cfg.prelogin_chroot)
            os.chdir("/")
            _become(uid, gid)
        _confine()                                   # its reverse lookup was forked before
        _limit(resource.RLIMIT_NOFILE, PRELOGIN_MAX_FILES)
        _limit(resource.RLIMIT_AS, PRELOGIN_MAX_ADDRESS_SPACE)
    except OSError as exc:
        raise SandboxError(f"entering the pre-login sandbox: {exc}") from None
    if was_root:
        _check_became(uid, gid)
    try:
        install_syscall_filter(os.getpid(), may_signal)
    except OSError as exc:
        raise SandboxError(f"entering the pre-login sandbox: {exc}") from None


def drop_to_account(uid: int, gid: int, parent: int) -> None:
    """An unprivileged helper of the pre-login process `parent` (its reverse lookup): the
    pre-login account without the chroot (it needs the resolver's files); NoNewPrivs, not
    dumpable, no core; no fork and no thread (RLIMIT_NPROC 0: nothing it starts could
    outlive it, nor enter a new namespace by clone); ended with its parent; and the
    pre-login filter in its resolver form (it talks to DNS: a reply is network input).
    SandboxError when any step fails."""
    try:
        if os.geteuid() == 0:
            _become(uid, gid)
            _check_became(uid, gid)
        _confine()
        if os.getppid() != parent:
            raise SandboxError("the pre-login process is gone")
        install_syscall_filter(os.getpid(), resolver=True)
    except OSError as exc:
        raise SandboxError(f"dropping the lookup helper to uid {uid}: {exc}") from None


def _confine() -> None:
    """What every unprivileged process of a connection (the pre-login process, its lookup
    helper) does after its uid change: NoNewPrivs, not dumpable, no core, the parent-death
    signal (the uid change cleared it: its parent gone, so is it), and no fork or thread
    (RLIMIT_NPROC 0: a child would outlive the parent's SIGKILL, the parent-death signal
    not being inherited, and could clone into a new namespace). OSError when one fails."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _limit(which: int, most: int) -> None:
    """Hard limit `which` at `most`, or lower where the administrator set it lower already
    (LimitNOFILE=, LimitAS= in the unit), and the soft limit no higher: neither goes up."""
    soft, hard = (most if value == resource.RLIM_INFINITY else min(most, value)
                  for value in resource.getrlimit(which))
    resource.setrlimit(which, (soft, hard))


def _become(uid: int, gid: int) -> None:
    """Exactly uid/gid, no supplementary groups (root only)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _check_became(uid: int, gid: int) -> None:
    if (os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid)
            or os.getgroups()):
        raise SandboxError("the pre-login sandbox still has root or groups")
    regained = _regained_root()
    if regained:
        raise SandboxError("the pre-login process could get root back: "
                           + ", ".join(regained))


def check_prelogin_setup(cfg) -> None:
    """At start-up, as root: the prelogin-user account exists and is not root, and the
    prelogin-chroot directory is an empty directory only root can change (created, 0755,
    when missing). SandboxError says what is wrong, in one line."""
    if os.geteuid() != 0:
        return
    prelogin_account(cfg)
    path = cfg.prelogin_chroot
    if not os.path.isabs(path):
        raise SandboxError(f"prelogin-chroot {path!r} must be an absolute path")
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"prelogin-chroot {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise SandboxError(f"prelogin-chroot {path} must be owned by root and writable "
                               f"by nobody else")
        if os.listdir(fd):
            raise SandboxError(f"prelogin-chroot {path} must be empty")
    finally:
        os.close(fd)


class EffectiveIdentity:
    """`account`'s effective uid and gid, with no supplementary groups, for a stretch of a
    root process's own work that needs no root (the master's warm-up, docs/internals.md,
    "The master's warm-up"): a fault in it cannot write as root. Not a boundary against code
    that means harm — the real and saved uid stay 0, which is how leave() gets root back.
    Changes nothing when the process is not root. glibc applies seteuid to every thread."""

    def __init__(self, account: str):
        self.account = account
        self.saved: tuple[int, tuple[int, int, int], list[int]] | None = None

    def enter(self) -> None:
        if os.geteuid() != 0:
            return
        entry = pwd.getpwnam(self.account)          # KeyError: the caller goes without
        self.saved = (os.geteuid(), os.getresgid(), os.getgroups())
        os.setgroups([])
        os.setegid(entry.pw_gid)
        os.seteuid(entry.pw_uid)

    def leave(self) -> None:
        if self.saved is None:
            return
        uid, gids, groups = self.saved
        os.seteuid(uid)                 # first: only root may set the gids and groups back
        os.setresgid(*gids)             # all three: a Maildir round set real and saved too
        os.setgroups(groups)
        self.saved = None


# --- a Maildir user's session: no spool group (docs/privsep.md, "Maildir users") -------------
def leave_spool_group(own_gid: int, log=None) -> None:
    """After drop_privileges, for a user served from a Maildir: real and effective gid become
    `own_gid`, the login's own group (given, not the real gid: in the master's warm-up, under
    EffectiveIdentity, that is still root's 0). The Maildir is the user's and the session
    follows the paths under it, which the user controls: with the spool group it could be
    led (a symbolic link for cur/) to read or unlink the spool group's files. The spool group
    stays as the saved gid only, for spool_group() around the bulletin record, until
    drop_spool_group()."""
    own_gid = _settable(own_gid)
    sgid = os.getresgid()[2]
    _set_gids((own_gid, own_gid, sgid), "leaving the spool group", log)


def drop_spool_group(own_gid: int, log=None) -> None:
    """For good: real, effective and saved gid `own_gid`, the login's own group."""
    own_gid = _settable(own_gid)
    _set_gids((own_gid, own_gid, own_gid), "dropping the spool group", log)


def _settable(own_gid: int) -> int:
    """`own_gid` while the real uid is root (the master's warm-up, under EffectiveIdentity);
    else the real gid: after drop_privileges that is `own_gid` already, and in a server that
    never had root (the demo as an ordinary user, perhaps after newgrp) the only one it may
    take."""
    return own_gid if os.getuid() == 0 else os.getgid()


def _set_gids(wanted: tuple[int, int, int], what: str, log) -> None:
    """setresgid(*wanted), verified; the session ends (_abort) when it fails."""
    if os.getresgid() == wanted:
        return
    try:
        os.setresgid(*wanted)
    except OSError as exc:
        _abort(log, f"{what} failed: {exc.strerror}")
    if os.getresgid() != wanted:
        _abort(log, f"{what} not effective: gids {os.getresgid()}")


@contextlib.contextmanager
def without_spool_group(own_gid: int):
    """`own_gid`, the login's own group (_settable: the real gid unless the real uid is
    root), as the effective gid for what only follows the user's paths while the session
    still holds the spool group (~/.qpopper-options and the files it chains to:
    docs/privsep.md, "The user's option files"); the spool group comes back after. Nothing
    changes when the effective gid is that already."""
    with _effective_gid(_settable(own_gid)):
        yield


@contextlib.contextmanager
def spool_group():
    """The saved spool group as the effective gid for what needs it and only follows the
    administrator's paths (the bulletin directory and record), between leave_spool_group()
    and drop_spool_group(). Nothing changes when the effective gid is already the saved one,
    nor when the saved one is root's (the master's warm-up under EffectiveIdentity has no
    spool group, only root's saved gid)."""
    sgid = os.getresgid()[2]
    if sgid == 0:
        yield
        return
    with _effective_gid(sgid):
        yield


@contextlib.contextmanager
def _effective_gid(gid: int):
    """`gid` as the effective gid inside, the one before back after; nothing changes when it
    is that already."""
    egid = os.getegid()
    if egid == gid:
        yield
        return
    os.setegid(gid)
    try:
        yield
    finally:
        os.setegid(egid)
