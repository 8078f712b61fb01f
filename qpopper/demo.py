"""`popper --demo` (what `make run` starts): the real server, for a newcomer, in one command.

It runs the real master and session code as the invoking user, on 127.0.0.1:8110 (a positional
`[127.0.0.1:]PORT` overrides the port; only loopback addresses are accepted), with a data folder
`./demo-data` holding a spool directory and a pop.auth store with user `demo`, password `demo`
(`user-database = pop-auth`). Log records go to the terminal.

Decisions:
- Existing data is kept across restarts (mail you leave on the server stays). When the demo
  user's mail is all gone (spool empty, no temporary drop left), the sample messages are put
  back at start-up, so `curl pop3://demo:demo@127.0.0.1:8110/1` always has something to show.
- Started as root (a container, `sudo make run`), the demo first becomes $SUDO_USER, or
  `nobody`, through privsep.drop_privileges: the demo never serves as root.
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import pwd
import socket
import stat
import sys
import tempfile
import time

from qpopper import config as config_mod
from qpopper.server import privsep
from qpopper.auth import Login
from qpopper.auth.sasl import kerberos_refusal
from qpopper.auth.store import PopAuthStore
from qpopper.log import QPOPPER_LOG_LOGIN, Logger
from qpopper.server.listeners import ListenError, bind_listeners, format_sockaddr, parse_listen
from qpopper.server.master import Master

DEMO_DIR = "demo-data"
DEMO_HOST = "127.0.0.1"
DEMO_PORT = 8110
DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
MAILDIR_USER = "maildemo"
MAILDIR_PASSWORD = "maildemo"
"""A second user, served from a Maildir (docs/maildir.md) by the same demo server."""
DEMO_SHUTDOWN_GRACE_S = 3
"""Ctrl-C should not keep a newcomer waiting for a forgotten telnet session."""

FALLBACK_ACCOUNT = "nobody"


def run_demo(invocation) -> int:
    try:
        base_cfg, _ = config_mod.load(list(invocation.argv))
        host, port = _demo_address(base_cfg)
    except (config_mod.ConfigError, ValueError, ListenError) as exc:
        print(f"popper --demo: {exc}", file=sys.stderr)
        return 2
    refusal = kerberos_refusal(base_cfg)          # the master's site check is not run here
    if refusal:
        print(f"popper --demo: {refusal}", file=sys.stderr)
        return 1                        # what the system lacks, not a mistake in a file
    data_dir = os.path.abspath(DEMO_DIR)
    log = Logger(stream=sys.stderr)
    listeners: list = []
    try:
        # Bind first, while we may still read everything (as root, the account we drop to may
        # not even reach the interpreter's lazily imported modules).
        listeners = bind_listeners([(host, port)])
        if os.geteuid() == 0:
            account = _unprivileged_account()
            if not _reachable(os.path.dirname(data_dir), account):
                # e.g. a clone under /root (0700): the account could not open its own files
                data_dir = os.path.join(tempfile.gettempdir(), f"qpopper-demo-{account.pw_name}")
            _prepare_data(data_dir, account)
            privsep.drop_privileges(_login_for(account, data_dir), account.pw_gid, log)
        else:
            _prepare_data(data_dir, None)
        cfg = demo_config(base_cfg, data_dir)
    except (OSError, ListenError, config_mod.ConfigError) as exc:
        print(f"popper --demo: {exc}", file=sys.stderr)
        for sock in listeners:
            sock.close()
        log.close()
        return 1
    try:
        _print_welcome(listeners[0].getsockname(), data_dir)

        def reload():
            return demo_config(config_mod.load(list(invocation.argv))[0], data_dir)

        return Master(cfg, invocation, listeners, log, notify_systemd=False, reload=reload).serve()
    finally:
        for sock in listeners:
            sock.close()
        log.close()


def demo_config(cfg, data_dir: str):
    """The demo's settings on top of whatever the command line said (ConfigError when they
    cannot go together, e.g. home-dir-mail with the demo's pop-auth users)."""
    demo = cfg.replace(
        source="demo mode",
        spool_dir=os.path.join(data_dir, "spool"),
        pop_auth_file=os.path.join(data_dir, "pop.auth"),
        auth_brakes_file=os.path.join(data_dir, "auth-brakes.sqlite"),
        maildir=os.path.join(data_dir, "maildirs", "%u"),   # only maildemo has one
        user_database="pop-auth",
        clear_text_password="local",      # USER/PASS and curl work; only from this machine
        statistics=True,                  # show the Stats, Timing and login records on the terminal
        timing=True,
        log_login=QPOPPER_LOG_LOGIN,
        shutdown_grace=DEMO_SHUTDOWN_GRACE_S,
        daemon=False,
        # the demo's one listener never reads a PROXY header, not even after a reload
        proxy_protocol=(),
    )
    config_mod.check_combinations(demo)
    return demo


def _demo_address(cfg) -> tuple[str, int]:
    listen = tuple(cfg.listen or ())
    if len(listen) > 1:
        raise ValueError("the demo listens on one address")
    if not listen:
        return DEMO_HOST, DEMO_PORT
    host, port = parse_listen(listen[0])
    host = host or DEMO_HOST
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"{host}: {exc.strerror}") from None
    if not all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos):
        raise ValueError(f"{host} is not a loopback address; the demo only serves this machine")
    return host, port


# --- the data folder ---------------------------------------------------------------------------
def _unprivileged_account() -> pwd.struct_passwd:
    name = os.environ.get("SUDO_USER")
    for candidate in (name, FALLBACK_ACCOUNT):
        if not candidate:
            continue
        try:
            account = pwd.getpwnam(candidate)
        except KeyError:
            continue
        if account.pw_uid > 0:
            return account
    raise OSError("running as root and no unprivileged account (SUDO_USER or nobody) to "
                  "run the demo as")


def _login_for(account: pwd.struct_passwd, data_dir: str) -> Login:
    return Login(user=account.pw_name, uid=account.pw_uid, gid=account.pw_gid, home=data_dir,
                 mechanism="demo")


def _reachable(directory: str, account: pwd.struct_passwd) -> bool:
    """Can `account` search every directory down to `directory` (owner/group/other x bits)?"""
    path = os.path.abspath(directory)
    while True:
        st = os.stat(path)
        if st.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == account.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _prepare_data(data_dir: str, account: pwd.struct_passwd | None) -> None:
    """Create what is missing; keep what is there. Runs as the account that will serve it,
    or as root on its behalf (then everything created is handed to that account, and what
    exists must already be that account's: never chown someone else's files or a symlink)."""
    spool_dir = os.path.join(data_dir, "spool")
    maildirs = os.path.join(data_dir, "maildirs")
    user_maildir = os.path.join(maildirs, MAILDIR_USER)
    for path in (data_dir, spool_dir, maildirs, user_maildir,
                 *(os.path.join(user_maildir, sub) for sub in ("cur", "new", "tmp"))):
        try:
            os.mkdir(path, 0o700)
            _own(path, account)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(f"{path} exists and is not a directory") from None
            if account is not None and st.st_uid != account.pw_uid:
                raise OSError(f"{path} belongs to uid {st.st_uid}, not to "
                              f"{account.pw_name}") from None
    store_path = os.path.join(data_dir, "pop.auth")
    owner = account.pw_uid if account else None
    if not os.path.exists(store_path):
        PopAuthStore.create(store_path, owner_uid=owner,
                            owner_gid=account.pw_gid if account else None)
    store = PopAuthStore(store_path, owner_uid=owner)
    for user, password in ((DEMO_USER, DEMO_PASSWORD), (MAILDIR_USER, MAILDIR_PASSWORD)):
        if not store.has_user(user):
            store.set_secret(user, password)
    if not any(os.listdir(os.path.join(user_maildir, sub)) for sub in ("cur", "new")):
        for name, message in sample_maildir_files(MAILDIR_USER):
            path = os.path.join(user_maildir, "new", name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(message)
            _own(path, account)
    spool = os.path.join(spool_dir, DEMO_USER)
    temp_drop = os.path.join(spool_dir, f".{DEMO_USER}.pop")
    if _size(spool) == 0 and _size(temp_drop) == 0:
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(sample_mailbox())
        _own(spool, account)


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _own(path: str, account: pwd.struct_passwd | None) -> None:
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)


SAMPLES = (
    ("Welcome to qpopper-py", """\
Hello!

This message comes from a real POP3 server: qpopper-py, Qpopper 4.1 rebuilt in
Python. It runs here in demo mode, as you, with its spool under ./demo-data/.

Things to try:
  curl pop3://demo:demo@127.0.0.1:8110/        list the messages
  curl pop3://demo:demo@127.0.0.1:8110/2       fetch message 2
  telnet 127.0.0.1 8110                        speak POP3 yourself (see message 2)

Deleted messages are gone for good once a session ends with QUIT.
When every message is gone, restarting the demo brings these back.
"""),
    ("Speaking POP3 by hand", """\
A POP3 session, as RFC 1939 describes it:

  USER demo            +OK Password required for demo.
  PASS demo            +OK demo has 3 visible messages (0 hidden) in ... octets.
  STAT                 +OK 3 <octets>
  LIST                 one line per message: number and size
  UIDL                 one line per message: number and unique id
  TOP 1 0              the headers of message 1
  RETR 1               message 1
  DELE 1               mark message 1 for deletion
  RSET                 unmark everything
  QUIT                 commit the deletions and sign off

A line of the message that starts with a dot is sent with a second dot
("dot-stuffing"); the client removes it again:
.this line starts with a dot
"""),
    ("Using a mail client", """\
Any mail client can read this mailbox. Its incoming-server settings:

  Protocol:        POP3
  Server:          127.0.0.1
  Port:            8110
  Security:        none (the demo serves this machine only)
  Authentication:  normal password
  User name:       demo
  Password:        demo

Python:
  import poplib
  box = poplib.POP3("127.0.0.1", 8110)
  box.user("demo"); box.pass_("demo")
  print(box.stat())
  print(b"\\n".join(box.retr(1)[1]).decode())
  box.quit()
"""),
)


def sample_messages(user: str, now: float | None = None) -> list[tuple[float, bytes]]:
    """The demo's sample messages for `user`: (delivery time, message without envelope)."""
    now = time.time() if now is None else now
    messages = []
    for number, (subject, body) in enumerate(SAMPLES, 1):
        stamp = now - (len(SAMPLES) - number) * 60
        messages.append((stamp, (
            f"From: qpopper-py demo <qpopper-demo@localhost>\n"
            f"To: {user}@localhost\n"
            f"Subject: {subject}\n"
            f"Date: {email.utils.formatdate(stamp, localtime=False)}\n"
            f"Message-ID: <demo-{number}-{int(stamp)}@localhost>\n"
            f"MIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=us-ascii\n"
            f"\n"
            f"{body}\n").encode("ascii")))
    return messages


def sample_mailbox(now: float | None = None) -> bytes:
    """The demo's sample messages as an mbox spool."""
    parts = []
    for stamp, message in sample_messages(DEMO_USER, now):
        envelope = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(stamp))
        parts.append(f"From qpopper-demo@localhost {envelope}\n".encode("ascii") + message)
    return b"".join(parts)


def sample_maildir_files(user: str, now: float | None = None) -> list[tuple[str, bytes]]:
    """The sample messages as Maildir files: (name in new/, content)."""
    return [(f"{int(stamp)}.M{number}P{os.getpid()}.demo", message)
            for number, (stamp, message) in enumerate(sample_messages(user, now), 1)]


def _print_welcome(sockaddr, data_dir: str) -> None:
    where = format_sockaddr(sockaddr)
    host, port = sockaddr[0], sockaddr[1]
    url_host = f"[{host}]" if ":" in host else host
    print(f"""\
qpopper-py demo: a real POP3 server on {where}, running as {pwd.getpwuid(os.getuid()).pw_name}.
Data (spool and pop.auth store): {data_dir}
User: {DEMO_USER}   Password: {DEMO_PASSWORD}

Try it from another terminal:
  curl pop3://{DEMO_USER}:{DEMO_PASSWORD}@{url_host}:{port}/1      # prints the first message
  curl pop3://{DEMO_USER}:{DEMO_PASSWORD}@{url_host}:{port}/       # lists the messages
  telnet {host} {port}                                  # USER demo, PASS demo, LIST, RETR 1, QUIT
  python3 -c 'import poplib; p = poplib.POP3("{host}", {port}); p.user("demo"); p.pass_("demo"); print(p.stat()); p.quit()'
A mail client: POP3, server {host}, port {port}, no encryption, user {DEMO_USER}, password {DEMO_PASSWORD}.
User {MAILDIR_USER} (password {MAILDIR_PASSWORD}) is served from a Maildir: {data_dir}/maildirs/{MAILDIR_USER}

Log records follow. Stop with Ctrl-C.""", flush=True)
