"""A throw-away session the master runs on itself before it forks anything, so every user
session starts from a warmer image (docs/internals.md, "The master's warm-up").

A forked session pays, in private memory, for every page it writes. CPython 3.11 rewrites a
code object's bytecode in place the first few times it runs (quickening and specialisation),
and many modules build caches on first use (compiled regular expressions, struct formats,
interned strings, method caches): done in each session, all of that is written on copy-on-
write pages of that session. Done once here, before gc.freeze(), it is shared by all.

The session is the real thing — Session, Protocol and the maildrop of the site's mode —
resuming a login as the user session does, talking to a socket pair inside this process, on
a spool in a private temporary directory (never the site's spool directory, bulletins,
cache directory or home directories), with a log that goes nowhere, without the test-only
maildrop step hook, and in a thread of its own, so no signal handler of the master is
touched. A root master runs it as prelogin-user, or `nobody` (effective ids only, given back
afterwards). Any failure only means a colder image: the master goes on without it.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import socket
import syslog
import tempfile
import threading

import setproctitle

from qpopper.auth import Login
from qpopper.config import Config
from qpopper.log import Logger
from qpopper.server import privsep
from qpopper.server.channel import Channel
from qpopper.server.session import CRASH_AT_ENV, STEP_LOG_ENV, Session

FALLBACK_ACCOUNT = "nobody"
"""Whom a root master's warm-up runs as when prelogin-user, qpopper's own unprivileged
account, does not exist (it needs no root)."""

WAIT_S = 2
"""The longest a warm-up session waits for input (its commands are all sent at once)."""

ROUNDS = 12
"""Sessions run: CPython 3.11 quickens a code object after 8 calls, and specialises an
instruction within a few runs of it after that."""

USER = "qpopper-warmup"
"""The throw-away maildrop's owner name (no such account is needed or looked up)."""

COMMANDS = (b"STAT\r\nLIST\r\nUIDL\r\nLIST 1\r\nUIDL 2\r\nTOP 1 2\r\nRETR 2\r\nNOOP\r\n"
            b"LAST\r\nRSET\r\nQUIT\r\n")
"""What a polling client sends after its login, all pipelined after PASS (the session
resumes with them as unread bytes): nothing is deleted, so the spool stays as it was."""

MESSAGES = tuple(
    b"From: Warm-up <warmup@localhost>\n"
    b"Subject: message %d\n"
    b"Message-ID: <%d@warmup.invalid>\n\n"
    b"line one\n.dot-stuffed line\nline three\n" % (n, n) for n in range(1, 4))

SPOOL = b"".join(b"From warmup@localhost Mon Jan  5 10:00:00 2026\n%s\n" % message
                 for message in MESSAGES)
"""The mbox spool of every round."""

MAILDIR = "~/Maildir"
"""On a site with the maildir option, every round also serves this Maildir: under the
warm-up's home, its temporary directory (never the site's own maildir pattern)."""

SITE_PATH_OPTIONS = ("home_dir_mail", "home_dir_misc", "temp_dir", "cache_dir", "bulldir",
                     "maildir", "hash_spool", "check_hash_dir", "user_options",
                     "spool_options", "statistics", "timing", "tracefile")
"""Options that could point the warm-up at the site's files or log: set back to their
defaults, so everything stays in the temporary directory."""


def warm_up(cfg, log) -> bool:
    """Run ROUNDS throw-away sessions in this process (the master, before gc.freeze()), and
    as many on a Maildir when the site has the maildir option. True when they all ran; on
    any error False, with a debug line in the master's log."""
    title = setproctitle.getproctitle()
    failure: list[BaseException] = []
    workdir = None
    # the fault-injection hook would count (or crash at) the warm-up's steps
    hooks = {name: os.environ.pop(name) for name in (CRASH_AT_ENV, STEP_LOG_ENV)
             if name in os.environ}
    identity = privsep.EffectiveIdentity(warm_up_account(cfg))
    try:
        identity.enter()                    # a root master: unprivileged while it runs
        workdir = tempfile.mkdtemp(prefix="qpopper-warmup-")
        sites = [_warm_up_config(cfg, workdir)]
        if cfg.maildir:
            sites.append(sites[0].replace("warm-up", maildir=MAILDIR))
        login = Login(USER, os.geteuid(), os.getegid(), workdir, "USER")

        def rounds() -> None:
            try:
                for _ in range(ROUNDS):
                    for site in sites:
                        _user_session(site, login, workdir)
            except BaseException as exc:        # noqa: B902 (reported by the caller)
                failure.append(exc)

        runner = threading.Thread(target=rounds, name="qpopper-warmup", daemon=True)
        runner.start()
        runner.join()
    except Exception as exc:            # noqa: B902 (a colder image, never a failed start)
        failure.append(exc)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        identity.leave()
        os.environ.update(hooks)
        setproctitle.setproctitle(title)
    if failure:
        exc = failure[0]
        log(syslog.LOG_DEBUG, f"warm-up skipped: {type(exc).__name__}: {exc}")
        return False
    log(syslog.LOG_DEBUG, f"warm-up: {ROUNDS * (2 if cfg.maildir else 1)} throw-away "
                          f"sessions run")
    return True


def warm_up_account(cfg) -> str:
    """prelogin-user when it exists and is not root (an account of qpopper's own, unlike
    the shared nobody, and no pre-login process exists yet to share it), else nobody."""
    try:
        if pwd.getpwnam(cfg.prelogin_user).pw_uid != 0:
            return cfg.prelogin_user
    except KeyError:
        pass
    return FALLBACK_ACCOUNT


def _warm_up_config(cfg, workdir: str):
    defaults = Config.defaults()
    # A round that waited for a byte (it never should: all commands are there) ends within
    # WAIT_S instead of the site's timeout, so the master's start is never held long.
    return cfg.replace("warm-up", spool_dir=workdir, reverse_lookup=False, timeout=WAIT_S,
                       login_timeout=WAIT_S,
                       **{name: getattr(defaults, name) for name in SITE_PATH_OPTIONS})


def _user_session(cfg, login: Login, workdir: str) -> None:
    if cfg.maildir:
        _fresh_maildir(os.path.join(workdir, MAILDIR[2:]))
    else:
        with open(os.path.join(workdir, USER), "wb") as f:
            f.write(SPOOL)
    server_end, client_end = socket.socketpair()
    try:
        session = Session(cfg, Channel(server_end.fileno(), server_end.fileno(), server_end),
                          log=Logger(stream=io.StringIO()), hostname="localhost",
                          peer=("127.0.0.1", 0), client_host="localhost", login_done=True)
        session.run(resume=(login, COMMANDS, 0))
        replies = _read_all(client_end)
    finally:
        server_end.close()
        client_end.close()
    # the login's answer and QUIT's; a command the site turned off may answer -ERR
    lines = replies.splitlines()
    if not lines or not lines[0].startswith(b"+OK") or not lines[-1].startswith(b"+OK"):
        raise ValueError(f"the warm-up session was refused: {replies[:200]!r}")


def _fresh_maildir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub))
    for n, message in enumerate(MESSAGES, 1):
        with open(os.path.join(path, "new", f"176000000{n}.M{n}P1.warmup"), "wb") as f:
            f.write(message)


def _read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)

