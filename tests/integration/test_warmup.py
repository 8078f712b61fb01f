"""The master's warm-up (qpopper/server/warmup.py; docs/internals.md, "The master's
warm-up"): throw-away sessions through the real Session, Protocol and maildrop, in this
process, that quicken the session's code and touch nothing of the site, no log, no signal
handler; a failure only skips them."""

from __future__ import annotations

import io
import os
import pwd
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import setproctitle

from qpopper.config import Config
from qpopper.log import Logger
from qpopper.server import warmup
from qpopper.server.session import STEP_LOG_ENV
from qpopper.spool.maildir_drop import MaildirDrop
from qpopper.spool.maildrop import Maildrop
from tests.helpers.messages import mbox
from tests.helpers.repo import REPO
from tests.helpers.sysusers import PRELOGIN_USER

QUICKENED = """
import sys
from qpopper.config import Config
from qpopper.log import Logger
from qpopper.pop3 import trans_state
from qpopper.server import warmup
from qpopper.spool.maildir_drop import MaildirDrop
from qpopper.spool.normal_mode import NormalModeMaildrop
from qpopper.spool.server_mode import ServerModeMaildrop

def quickened(function):
    code = function.__code__
    return code._co_code_adaptive != code.co_code

watched = (trans_state.cmd_stat, trans_state.cmd_retr, warmup._user_session,
           {watched_drop})
before = [quickened(f) for f in watched]
cfg = Config.defaults().replace(server_mode={server_mode}, maildir={maildir!r})
done = warmup.warm_up(cfg, Logger())
print(done, before, [quickened(f) for f in watched])
"""


def tree(root: str) -> dict[str, tuple[int, int, bytes]]:
    """Every file under root: (mode, mtime ns, content)."""
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = (st.st_mode, st.st_mtime_ns, f.read())
        out[os.path.relpath(directory, root) + "/"] = (os.stat(directory).st_mode,
                                                       os.stat(directory).st_mtime_ns, b"")
    return out


def on_signal(signum, frame):
    raise AssertionError(f"signal {signum} during the test")


@pytest.fixture
def private_tmp(world_tmp, monkeypatch):
    """tempfile's directory for the test: what the warm-up leaves there is seen. Sticky and
    world-writable, as /tmp: a root warm-up runs as nobody."""
    path = Path(world_tmp) / "tmp"
    path.mkdir()
    path.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.mark.parametrize("server_mode, maildir, watched_drop", [
    (False, None, "NormalModeMaildrop._open_normal"),
    (True, None, "ServerModeMaildrop._open_server"),
    (False, "/srv/maildirs/%u", "MaildirDrop.open.__func__")])
def test_the_warm_up_quickens_the_session_code(server_mode, maildir, watched_drop):
    # a fresh interpreter: nothing of the session has run in it before
    code = QUICKENED.format(server_mode=server_mode, maildir=maildir, watched_drop=watched_drop)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO, check=True)
    assert out.stdout.split("\n")[0] == \
        "True [False, False, False, False] [True, True, True, True]"


def test_the_warm_up_leaves_the_site_its_log_and_the_signals_alone(tmp_path, private_tmp):
    site = tmp_path / "site"
    for name in ("spool", "bulls", "cache", "tmp", "home"):
        (site / name).mkdir(parents=True)
    # a spool and options of the warm-up's own user name, where the site's would be
    (site / "spool" / warmup.USER).write_bytes(mbox(("site", "the site's own mail\n")))
    (site / "spool" / (warmup.USER + ".qpopper-options")).write_text("set server-mode\n")
    (site / "bulls" / "1").write_text("From: admin\nSubject: bulletin\n\nhello\n")
    for sub in ("cur", "new", "tmp"):                   # and its Maildir, where the site's is
        (site / "maildirs" / warmup.USER / sub).mkdir(parents=True)
    (site / "maildirs" / warmup.USER / "new" / "1.M1P1.site").write_text("Subject: x\n\nx\n")
    cfg = Config.defaults().replace(
        spool_dir=str(site / "spool"), bulldir=str(site / "bulls"), cache_dir=str(site / "cache"),
        temp_dir=str(site / "tmp"), statistics=True, timing=True, spool_options=True,
        tracefile=str(site / "trace.log"), maildir=str(site / "maildirs" / "%u"))
    before = tree(str(site))
    title = setproctitle.getproctitle()
    master_log = io.StringIO()
    # handlers of the test's own in place: a session on this thread would replace them
    previous = {signum: signal.signal(signum, on_signal) for signum in
                (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1)}
    try:
        assert warmup.warm_up(cfg, Logger(stream=master_log, debug=True)) is True
        handlers = {signum: signal.getsignal(signum) for signum in previous}
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    assert tree(str(site)) == before
    assert os.listdir(private_tmp) == []                    # its own spool is gone too
    assert master_log.getvalue().count("\n") == 1
    assert "warm-up: 24 throw-away sessions run" in master_log.getvalue()   # mbox and Maildir
    assert set(handlers.values()) == {on_signal}
    assert signal.set_wakeup_fd(-1) == -1                  # none was left installed
    assert setproctitle.getproctitle() == title


def test_the_fault_injection_hook_does_not_see_the_warm_up(tmp_path, private_tmp, monkeypatch):
    step_log = tmp_path / "steps"
    monkeypatch.setenv(STEP_LOG_ENV, str(step_log))
    assert warmup.warm_up(Config.defaults(), Logger(stream=io.StringIO())) is True
    assert not step_log.exists()
    assert os.environ[STEP_LOG_ENV] == str(step_log)        # there again for the sessions


def test_a_failed_warm_up_is_skipped_with_a_debug_line(world_tmp, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", os.path.join(world_tmp, "missing"))
    master_log = io.StringIO()
    title = setproctitle.getproctitle()
    assert warmup.warm_up(Config.defaults(), Logger(stream=master_log, debug=True)) is False
    assert "warm-up skipped: FileNotFoundError" in master_log.getvalue()
    assert setproctitle.getproctitle() == title


def test_a_refused_warm_up_session_is_skipped(private_tmp):
    # a temp-name without the user's name: the maildrop refuses the login (SYS/PERM)
    master_log = io.StringIO()
    cfg = Config.defaults().replace(temp_name=".pop-without-user")
    assert warmup.warm_up(cfg, Logger(stream=master_log, debug=True)) is False
    assert "warm-up skipped: ValueError: the warm-up session was refused: b'-ERR [SYS/PERM]" \
        in master_log.getvalue()
    assert os.listdir(private_tmp) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="root: the warm-up's identity")
@pytest.mark.parametrize("prelogin_user, runs_as", [(PRELOGIN_USER, PRELOGIN_USER),
                                                    ("no-such-account-qpt", "nobody"),
                                                    ("root", "nobody")])
def test_a_root_warm_up_runs_unprivileged_and_gives_root_back(private_tmp, monkeypatch,
                                                              prelogin_account, prelogin_user,
                                                              runs_as):
    """As prelogin-user when it is a real unprivileged account, else as nobody; never as
    root."""
    account = pwd.getpwnam(runs_as)
    groups = os.getgroups()
    seen = []
    real_session = warmup._user_session

    def session(cfg, login, workdir):
        seen.append((os.geteuid(), os.getegid(), tuple(os.getgroups()),
                     os.stat(workdir).st_uid, login.uid))
        real_session(cfg, login, workdir)
    monkeypatch.setattr(warmup, "_user_session", session)
    cfg = Config.defaults().replace(prelogin_user=prelogin_user)
    assert warmup.warm_up(cfg, Logger(stream=io.StringIO())) is True
    assert seen and set(seen) == {(account.pw_uid, account.pw_gid, (), account.pw_uid,
                                   account.pw_uid)}
    assert (os.getresuid(), os.getresgid()) == ((0, 0, 0), (0, 0, 0))
    assert os.getgroups() == groups
    assert os.listdir(private_tmp) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="root: the warm-up's identity")
def test_a_root_warm_up_on_a_maildir_site_never_has_group_0(private_tmp, monkeypatch,
                                                            prelogin_account):
    """A Maildir round leaves the spool group for the login's own group, not the real gid
    (root's 0 under EffectiveIdentity); the mbox rounds after it keep the account's group,
    and the master gets all its gids back."""
    account = pwd.getpwnam(PRELOGIN_USER)
    seen = []
    for kind in (MaildirDrop, Maildrop):
        def spy(cls, *args, _real=kind.open.__func__, **kwargs):
            seen.append((cls.__name__ == "MaildirDrop", os.getresgid()))
            return _real(cls, *args, **kwargs)
        monkeypatch.setattr(kind, "open", classmethod(spy))
    cfg = Config.defaults().replace(prelogin_user=PRELOGIN_USER, maildir="/srv/mail/%u")
    assert warmup.warm_up(cfg, Logger(stream=io.StringIO())) is True
    gid = account.pw_gid
    assert set(seen) == {(True, (gid, gid, gid)), (False, (0, gid, 0)), (False, (gid, gid, gid))}
    assert (os.getresuid(), os.getresgid()) == ((0, 0, 0), (0, 0, 0))
