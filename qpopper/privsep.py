"""The one place that changes user, group and supplementary groups — and proves it worked.

What runs as root, and so what a security review must read (popa3d / OpenSSH habit):
  qpopper/cli.py, config.py, options.py   start-up: argv, configuration files
  qpopper/master.py                       listeners, accept, fork, signals (root for good)
  qpopper/log.py                          syslog / tracefile records
  qpopper/session.py                      one connection, until the user is authenticated
  qpopper/protocol.py                     the AUTHORIZATION state (pure: no os calls)
  qpopper/tls.py                          the handshake (STLS or port 995) before login
  qpopper/auth/policy.py, pam.py, store.py  user lookup, PAM, the pop.auth store
  qpopper/spool/paths.py, dirs.py         check-hash-dir's shared directories (ensure_hash_dirs)
  qpopper/privsep.py                      this file
Everything after `drop_privileges` — the spool, the temp drop, the cache, bulletins, the
user option files — runs as the user with the spool directory's group (normally mail) as its
effective and saved group, and the user's own primary group as its real group. The real group
is what a program the session runs gets (`run_user_program`: XTND XMIT's mail-command): only
the user's own uid and primary group, never the mail group, so the user's MTA configuration
(msmtp's passwordeval, a .forward-style hook) cannot read other users' mailboxes.

Order (reference §1.10, DESIGN.md): setgroups([]) → setresgid(user's gid, gid, gid) →
setresuid(uid). Each step is checked afterwards with getresuid/getresgid/getgroups, then we try
to get root back: if setuid(0) or setgid(0) works, or any check fails, the child logs and exits
at once with os._exit — it never continues with the wrong identity.
"""

from __future__ import annotations

import os
import subprocess
import syslog

from . import limits

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
