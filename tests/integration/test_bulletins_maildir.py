"""Bulletins for a Maildir user (docs/bulletins.md, "Maildir users"), in-process on real
files: one file per bulletin in new/, rendered without what only an mbox needs, served by the
real MaildirDrop after the mail already there; the record advances after the files are in;
a crash at any step leaves each bulletin exactly once after the next login; two logins of one
user deliver once; a running session's lock refuses with [IN-USE]."""

from __future__ import annotations

import os

import pytest

from qpopper import bulletins_maildir
from qpopper.auth import Login
from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.maildir_drop import MaildirDrop
from tests.helpers.bulletin_cases import (HOST, STAMP, bulletin_text, crash_at, octets_read,
                                          post_huge_broken)

pytestmark = pytest.mark.timeout(60)

USER = "alice"
MAIL = b"From: someone@example.org\nSubject: ordinary mail\n\nhello\n"


class MaildirEnv:
    """A bulldir, a home with ~/Maildir holding one message, and the options."""

    def __init__(self, tmp_path, **options):
        self.bulldir = tmp_path / "bulls"
        self.bulldir.mkdir()
        self.home = tmp_path / "home"
        self.maildir = self.home / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (self.maildir / sub).mkdir(parents=True)
        (self.maildir / "new" / f"{STAMP - 100}.M1P1.mail").write_bytes(MAIL)
        self.login = Login(USER, os.geteuid(), os.getegid(), str(self.home), "USER")
        self.cfg = Config.defaults().replace(spool_dir=str(tmp_path), bulldir=str(self.bulldir),
                                             **options)
        self.logged: list[tuple[int, str]] = []

    def log(self, priority, text):
        self.logged.append((priority, text))

    def post(self, number: int, body: bytes = b"Body.\n") -> None:
        (self.bulldir / f"{number}.b").write_bytes(bulletin_text(f"{number}.b", body=body))

    def deliver(self, *, stamp=STAMP, step_hook=None) -> int:
        return bulletins_maildir.deliver(self.cfg, self.login, str(self.maildir), HOST,
                                         self.log, step_hook=step_hook, clock=lambda: stamp)

    def served(self) -> list[tuple[bytes, str]]:
        """(Subject, UID) of each message as a session offers them, in order."""
        drop = MaildirDrop.open(str(self.maildir), USER)
        try:
            out = []
            for index, message in enumerate(drop.messages):
                wire = []
                drop.send(index, wire.append)
                text = b"".join(wire)
                subject = text.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
                out.append((subject, message.uid))
            return out
        finally:
            drop.close()

    def subjects(self) -> list[bytes]:
        return [s for s, _ in self.served()]

    @property
    def popbull(self):
        return self.home / ".popbull"


def test_new_user_gets_the_newest_bulletins_as_files_after_the_mail(tmp_path):
    env = MaildirEnv(tmp_path, max_bulletins=2)
    for n in (1, 2, 3):
        env.post(n)
    assert env.deliver() == 2
    names = sorted(os.listdir(env.maildir / "new"))
    assert f"{STAMP}.bulletin-2.{HOST}" in names and f"{STAMP}.bulletin-3.{HOST}" in names
    assert env.served() == [(b"ordinary mail", f"{STAMP - 100}.M1P1.mail"),
                            (b"2.b", f"{STAMP}.002"), (b"3.b", f"{STAMP}.003")]
    assert env.popbull.read_bytes() == b"3\n"
    assert os.listdir(env.maildir / "tmp") == []
    assert any("Delivered 2 bulletin(s) to alice (up to 3)" in t for _, t in env.logged)


def test_the_file_has_no_from_line_no_quoting_and_no_framing_line(tmp_path):
    env = MaildirEnv(tmp_path)
    env.post(1, body=b"From the desk of the admin\n\nbye\n")
    env.deliver()
    data = (env.maildir / "new" / f"{STAMP}.bulletin-1.{HOST}").read_bytes()
    assert data.startswith(b"X-UIDL: %d.001\nDate: " % STAMP)
    assert f"To: {USER}@{HOST}\n".encode() in data and b"To: user@localhost" not in data
    assert data.endswith(b"\n\nFrom the desk of the admin\n\nbye\n")


def test_only_newer_bulletins_on_later_logins_and_the_common_case_takes_no_lock(tmp_path):
    env = MaildirEnv(tmp_path, max_bulletins=5)
    env.post(1)
    assert env.deliver() == 1
    drop = MaildirDrop.open(str(env.maildir), USER)      # a session holds the Maildir
    try:
        assert env.deliver(stamp=STAMP + 1) == 0         # nothing new: no lock wanted
        env.post(2)
        with pytest.raises(PopError) as refused:
            env.deliver(stamp=STAMP + 1)
        assert refused.value.code is RespCode.IN_USE
    finally:
        drop.close()
    assert env.deliver(stamp=STAMP + 2) == 1
    assert env.subjects() == [b"ordinary mail", b"1.b", b"2.b"]
    assert env.popbull.read_bytes() == b"2\n"


def test_a_bulletin_already_in_cur_under_flags_is_not_delivered_again(tmp_path):
    """The record was lost after the first delivery and the user's reader had moved the file."""
    env = MaildirEnv(tmp_path)
    env.post(1)
    env.deliver()
    name = f"{STAMP}.bulletin-1.{HOST}"
    os.rename(env.maildir / "new" / name, env.maildir / "cur" / f"{name}:2,S")
    env.popbull.unlink()
    assert env.deliver(stamp=STAMP + 60) == 0
    assert env.subjects() == [b"ordinary mail", b"1.b"]
    assert env.popbull.read_bytes() == b"1\n"


def test_a_skipped_newest_bulletin_is_delivered_once_it_is_mended(tmp_path):
    """docs/bulletins.md, "Skipped bulletins": the record stays below it while nothing newer
    went out."""
    env = MaildirEnv(tmp_path, max_bulletins=5)
    env.post(1)
    (env.bulldir / "2.b").write_bytes(b"")                 # still being written
    assert env.deliver() == 1
    assert env.popbull.read_bytes() == b"1\n"
    env.post(2)
    assert env.deliver(stamp=STAMP + 1) == 1
    assert env.subjects() == [b"ordinary mail", b"1.b", b"2.b"]
    assert env.popbull.read_bytes() == b"2\n"


def test_a_huge_broken_bulletin_is_skipped_by_its_head(tmp_path):
    """As for an mbox: the first line decides before the rest is read (docs/bulletins.md,
    "Skipped bulletins")."""
    env = MaildirEnv(tmp_path, max_bulletins=5)
    env.post(1)
    post_huge_broken(env.bulldir / "2.b")
    for n in range(2):
        before = octets_read()
        assert env.deliver(stamp=STAMP + n) == (1 if n == 0 else 0)
        assert octets_read() - before < 256 * 1024
    assert env.subjects() == [b"ordinary mail", b"1.b"]
    assert env.popbull.read_bytes() == b"1\n"


def test_a_skipped_bulletin_sharing_its_number_with_a_copied_one_is_given_up(tmp_path):
    """A tie with a copied bulletin: the record passes the number, so the copied one is not
    delivered again once the user has deleted it."""
    env = MaildirEnv(tmp_path, max_bulletins=5)
    (env.bulldir / "5.ALL.news").write_bytes(bulletin_text("5.ALL.news"))
    (env.bulldir / "5.ALL.zz").write_bytes(b"")            # skipped: still being written
    assert env.deliver() == 1
    assert env.popbull.read_bytes() == b"5\n"
    for sub in ("new", "cur"):                             # RETR and DELE of everything
        for name in os.listdir(env.maildir / sub):
            os.unlink(env.maildir / sub / name)
    assert env.deliver(stamp=STAMP + 1) == 0
    assert env.subjects() == []


CRASH_POINTS = [("bulletins:write-tmp", 1), ("bulletins:fsync-tmp", 1),
                ("bulletins:link-new", 1), ("bulletins:write-tmp", 2),
                ("bulletins:link-new", 2), ("bulletins:fsync-new", 1),
                ("bulletins:record-seen", 1)]


@pytest.mark.parametrize("step,nth", CRASH_POINTS)
@pytest.mark.parametrize("bulldb", [False, True])
def test_crash_at_any_step_then_each_bulletin_exactly_once(tmp_path, step, nth, bulldb):
    env = MaildirEnv(tmp_path, max_bulletins=3, bulldb=bulldb)
    if bulldb:
        (env.bulldir / "bulldb").mkdir()
    for n in (1, 2):
        env.post(n, body=b"x" * 100_000 + b"\n")
    assert crash_at(env, step, nth), "the child did not reach the step"
    for name in os.listdir(env.maildir / "tmp"):             # what a crashed delivery leaves
        assert ".bulletin-" in name
    env.deliver(stamp=STAMP + 5)
    assert os.listdir(env.maildir / "tmp") == []             # ... cleared by the next one
    assert env.subjects() == [b"ordinary mail", b"1.b", b"2.b"]
    env.post(3)
    assert env.deliver(stamp=STAMP + 9) == 1
    assert env.subjects() == [b"ordinary mail", b"1.b", b"2.b", b"3.b"]


def test_simultaneous_logins_of_one_user_deliver_each_bulletin_once(tmp_path):
    """The Maildir's session lock serialises them (the loser may be told [IN-USE])."""
    env = MaildirEnv(tmp_path, max_bulletins=3)
    for n in (1, 2, 3):
        env.post(n)
    go_r, go_w = os.pipe()
    children = []
    for offset in (0, 1):                                    # different login times
        pid = os.fork()
        if pid == 0:
            try:
                os.close(go_w)
                os.read(go_r, 1)
                env.deliver(stamp=STAMP + offset)
            except PopError:
                pass
            finally:
                os._exit(0)
        children.append(pid)
    os.close(go_r)
    os.close(go_w)
    for pid in children:
        os.waitpid(pid, 0)
    env.deliver(stamp=STAMP + 2)                             # the loser's next login
    assert env.subjects() == [b"ordinary mail", b"1.b", b"2.b", b"3.b"]
    assert env.popbull.read_bytes() == b"3\n"
