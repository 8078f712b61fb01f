"""Real system users for tests (root only): useradd + chpasswd, removed with userdel -r.

Every user is named `qpt<tag><random>` so a leftover is recognisable and never collides with a
real account. Use the context manager (or the `system_users` fixture in tests/conftest.py):

    with SystemUsers() as users:
        alice = users.create(password="S3cret-alice")            # /bin/bash, home dir
        old = users.create(account_expired=True)                  # usermod -e 1970-01-02
        locked = users.create(locked=True)                        # usermod -L
        stale = users.create(password_expired=True)               # chage -d 0
        nologin = users.create(shell="/usr/sbin/nologin")
        debian = users.create(crypt_method=None)                  # PAM's own: yescrypt
    # all removed here, even when the body raised

Passwords are hashed with SHA-512 crypt (`chpasswd -c SHA512`, login.defs' ENCRYPT_METHOD)
unless a test asks for PAM's own method (`crypt_method=None`: Debian's pam_unix writes
yescrypt). pam_unix checks both the same way; yescrypt costs ~25 ms of CPU per check here
against ~3 ms, and the suite logs in some thousands of times, so the default is the cheap
one; the tests that stand for a stock Debian account, and every benchmark in bench/ (the
hash is part of a login's cost at a real site, for all the servers compared), ask for yescrypt.

`world_readable_tmpdir()` makes a 0755 temp directory under /tmp: pytest's tmp_path lives in
a 0700 root directory that a dropped-privilege child cannot even traverse.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

PREFIX = "qpt"
MAX_NAME = 32                     # useradd's limit on Debian
PRELOGIN_USER = "qpt-prelogin"
"""The servers' prelogin-user in tests (the packages create qpopper-login)."""
PRELOGIN_LOCKS = "/run/lock/{name}.lock"
"""Held (shared) by every test run that uses the account `name`: see prelogin_account."""
PRELOGIN_CHANGE_LOCKS = "/run/lock/{name}.change.lock"
"""Held (exclusive) by the test run that adds or removes the account `name`."""


def is_root() -> bool:
    return os.geteuid() == 0


def mail_gid() -> int:
    """The group that owns /var/mail on Debian (`mail`, gid 8)."""
    return grp.getgrnam("mail").gr_gid


@dataclass(frozen=True)
class SysUser:
    name: str
    password: str
    uid: int
    gid: int
    home: str
    shell: str


def _run(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True, timeout=30)


class SystemUsers:
    """Creates users on demand; removes every one of them on exit."""

    def __init__(self):
        self.created: list[str] = []

    def __enter__(self) -> "SystemUsers":
        if not is_root():
            raise PermissionError("creating system users needs root")
        return self

    def __exit__(self, *exc) -> None:
        self.remove_all()

    def create(self, tag: str = "", *, password: str | None = None, shell: str = "/bin/bash",
               home: bool = True, account_expired: bool = False, locked: bool = False,
               password_expired: bool = False, crypt_method: str | None = "SHA512") -> SysUser:
        name = f"{PREFIX}{tag}{secrets.token_hex(4)}"[:MAX_NAME]
        password = password if password is not None else "pw-" + secrets.token_urlsafe(12)
        args = ["useradd", "--shell", shell, "--user-group"]
        args += ["--create-home"] if home else ["--no-create-home", "--home-dir", "/nonexistent"]
        _run(*args, name)
        self.created.append(name)             # from here on, __exit__ removes it
        # chpasswd reads "name:password" on stdin, so the password never shows in `ps`.
        method = ("-c", crypt_method) if crypt_method else ()    # without: through PAM
        _run("chpasswd", *method, stdin=f"{name}:{password}\n")
        if account_expired:
            _run("usermod", "--expiredate", "1970-01-02", name)   # expired since day 1
        if locked:
            _run("usermod", "--lock", name)
        if password_expired:
            _run("chage", "--lastday", "0", name)                  # must change at next login
        entry = pwd.getpwnam(name)
        return SysUser(name, password, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)

    def remove_all(self) -> None:
        errors = []
        while self.created:
            name = self.created.pop()
            # -r: home and mail spool; -f: even if a stray test process still runs as the user.
            result = subprocess.run(["userdel", "-r", "-f", name], capture_output=True, text=True,
                                    timeout=30)
            try:
                pwd.getpwnam(name)
                errors.append(f"{name}: userdel: {result.stderr.strip()}")
            except KeyError:
                pass
        if errors:
            raise RuntimeError("could not remove test users: " + "; ".join(errors))


@contextlib.contextmanager
def world_readable_tmpdir(prefix: str = "qpt-"):
    """A 0755 directory under /tmp, removed afterwards (children that dropped privileges
    can reach files inside it, subject to each file's own mode)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_spool(directory: str, user: SysUser, content: bytes = b"", mode: int = 0o600) -> str:
    """`<directory>/<user>` owned user:mail with `mode` (0600 is what Debian's delivery agents
    create), as a real /var/mail spool would be."""
    path = os.path.join(directory, user.name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, content)
        os.fchown(fd, user.uid, mail_gid())
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def prelogin_account(name: str = PRELOGIN_USER):
    """`name` (PRELOGIN_USER) as a system account without a home or a shell, for the test
    run. Test runs at the same time share it: each holds a shared lock on PRELOGIN_LOCKS while
    it uses it, and the last run to end removes it (removed by the first, it failed the
    other's logins). Adding it and removing it happen under PRELOGIN_CHANGE_LOCKS, and a
    run takes its shared lock before it lets go of that one: a run ending meanwhile sees it
    used; two runs starting together never wait for each other's whole run."""
    users = os.open(PRELOGIN_LOCKS.format(name=name), os.O_RDWR | os.O_CREAT, 0o600)
    change = os.open(PRELOGIN_CHANGE_LOCKS.format(name=name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with _exclusive(change):
            if not account_exists(name):
                _run("useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                     "/nonexistent", "--shell", "/usr/sbin/nologin", name)
            fcntl.flock(users, fcntl.LOCK_SH)
        yield name
    finally:
        with _exclusive(change):
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass                                # another run still uses it
            else:
                subprocess.run(["userdel", name], capture_output=True, timeout=30)
        os.close(users)
        os.close(change)


@contextlib.contextmanager
def _exclusive(fd: int):
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def in_child(body) -> str:
    """Run body() -> str in a forked child (which may change its ids); returns that text.
    The child always leaves through os._exit, so pytest's state is never run twice."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, body().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        result = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return result
