"""Bulletins (reference §1.6 B1-B6, §6; manual "Using Bulletins"), in-process on real files:
naming and order, groups, the .popbull cases, popbulldir, the bulletin database, the rewritten
headers, and the crash/failure windows of the append (qpopper/bulletins.py's docstring)."""

from __future__ import annotations

import contextlib
import errno
import grp
import io
import os
import secrets
import sqlite3
import subprocess
import syslog
import tracemalloc

import pytest

from qpopper import bulletin_records, bulletins
from qpopper.auth import Login
from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import mbox
from qpopper.spool.paths import SpoolPaths
from tests.helpers.bulletin_cases import (HOST, HUGE_OCTETS, STAMP, bulletin_text, crash_at,
                                          octets_read, post_huge_broken)
from tests.helpers.spoolcheck import another_host

pytestmark = pytest.mark.timeout(60)

USER = "alice"
FAST_LOCKS = 0.05
SPOOL_MAIL = (b"From someone@example.org Wed Dec  2 05:53:22 1992\nSubject: ordinary mail\n\n"
              b"hello\n")


class Env:
    """A bulldir, a home, a spool dir and the options, for one user."""

    def __init__(self, tmp_path, user=USER, gid=None, **options):
        self.root = tmp_path
        self.bulldir = tmp_path / "bulls"
        self.bulldir.mkdir(exist_ok=True)
        self.home = tmp_path / f"home-{user}"
        self.home.mkdir(exist_ok=True)
        self.spool_dir = tmp_path / "spool"
        self.spool_dir.mkdir(exist_ok=True)
        self.user = user
        self.login = Login(user, os.geteuid(), os.getegid() if gid is None else gid,
                           str(self.home), "USER")
        self.cfg = Config.defaults().replace(spool_dir=str(self.spool_dir),
                                             bulldir=str(self.bulldir), **options)
        self.paths = SpoolPaths.for_user(self.cfg, user, str(self.home))
        self.logged: list[tuple[int, str]] = []

    def log(self, priority, text):
        self.logged.append((priority, text))

    def post(self, name: str, data: bytes | None = None) -> None:
        (self.bulldir / name).write_bytes(data if data is not None else bulletin_text(name))

    def deliver(self, *, stamp=STAMP, step_hook=None) -> int:
        return bulletins.deliver(self.cfg, self.login, self.paths, HOST, self.log,
                                 step_hook=step_hook, lock_step_s=FAST_LOCKS,
                                 clock=lambda: stamp)

    @property
    def popbull(self):
        return self.home / ".popbull"

    def spool(self) -> bytes:
        try:
            with open(self.paths.spool, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def messages(self) -> list[tuple[str, str]]:
        """(Subject, uid) of every message in the spool, parsed as the maildrop will."""
        with open(self.paths.spool, "rb") as f:
            found = mbox.scan(f)
            out = []
            for m in found:
                f.seek(m.offset)
                text = f.read(m.end - m.offset)
                subject = next(line for line in text.split(b"\n")
                               if line.startswith(b"Subject: "))[9:].decode()
                out.append((subject, m.uid))
        return out

    def subjects(self) -> list[str]:
        return [s for s, _ in self.messages()] if os.path.exists(self.paths.spool) else []


# --- one bulletin as a message ----------------------------------------------------------------------
def test_render_rewrites_to_adds_uidl_drops_old_uidl_and_status():
    data = (b"From qpop Wed Nov  9 13:31:08 1994\n"
            b"X-UIDL: thisisanolduidvalue\n"
            b"To: user@localhost,\n"
            b"    second@localhost\n"
            b"Status: RO\n"
            b"Subject: notice\n"
            b"To: third@localhost\n"
            b"\n"
            b"Line one.\n"
            b"From qpop Wed Nov  9 13:31:08 1994\n"
            b"last line without newline")
    out = bulletins.render(data, "bob", HOST, "1764250000.007", None)
    assert out == (b"From qpop Wed Nov  9 13:31:08 1994\n"
                   b"X-UIDL: 1764250000.007\n"
                   b"To: bob@pop.example.org\n"
                   b"Subject: notice\n"
                   b"To: bob@pop.example.org\n"
                   b"\n"
                   b"Line one.\n"
                   b">From qpop Wed Nov  9 13:31:08 1994\n"
                   b"last line without newline\n"
                   b"\n")


@pytest.mark.parametrize("body", [b"body\n", b"body\n\n", b"body\n\n\n", b"no final newline"])
def test_rendered_bulletin_serves_its_own_text_without_the_framing_line(body):
    """docs/mbox.md, "The framing line": the bulletin is followed by exactly one framing line,
    which RETR leaves out; empty lines of its own text stay, next to mail before and after."""
    data = b"From admin Wed Nov 25 10:00:00 2026\nSubject: notice\n\n" + body
    out = bulletins.render(data, "bob", HOST, "1764250000.007", None)
    after = b"From x@y Wed Nov 25 11:00:00 2026\nSubject: later\n\nlater\n\n"
    spool = out + after
    messages = mbox.scan(io.BytesIO(spool))
    assert len(messages) == 2
    sent: list[bytes] = []
    mbox.send_message(io.BytesIO(spool), messages[0], sent.append)
    text = body if body.endswith(b"\n") else body + b"\n"
    assert b"".join(sent).endswith(b"\r\n\r\n" + text.replace(b"\n", b"\r\n"))
    assert out.endswith(text + b"\n")


@pytest.mark.parametrize("data", [b"Subject: no envelope\n\nbody\n",
                                  b"From nobody\nSubject: bad date\n\nx\n", b"",
                                  b"From admin Wed Nov 25 10:00:00 2026\rSubject: x\n\nx\n"])
def test_read_file_refuses_a_bulletin_without_a_valid_from_line(tmp_path, data):
    """The one check of the first line (render takes it as given); a line ends at its LF,
    as in the mbox the bulletin goes into."""
    (tmp_path / "1.b").write_bytes(data)
    logged = []
    assert bulletins.read_file(str(tmp_path), bulletins.Bulletin(1, "1.b", None),
                               lambda priority, text: logged.append(text)) is None
    assert logged == ["Bulletin 1.b skipped: it does not start with a valid 'From ' line"]


def test_the_first_line_delivered_is_the_one_checked(tmp_path):
    """read_file checks the head's first line and reads only what follows the head: a file
    changed between the two reads still starts, as read, with the line that was checked."""
    path = tmp_path / "1.b"
    path.write_bytes(b"Subject: written after the check\n\n" + b"x" * 5000 + b"\n")
    head = b"From admin Wed Nov 25 10:00:00 2026\nSubject: checked\n"
    with open(path, "rb") as f:
        data = bulletins.read_after(f.fileno(), head, os.path.getsize(path))
    assert bytes(data) == head + path.read_bytes()[len(head):]
    assert bulletins.read_after(os.open(path, os.O_RDONLY), b"From x", 3) == b"From x"


def reference_render(data: bytes, user: str, hostname: str, uidl: str,
                     mmdf_separator: bytes | None, *, maildir: bool = False) -> bytes:
    """render() as it was, line by line, with lines ending at LF as in the mbox the bulletin
    goes into (it also broke lines at a lone CR, which no mbox reader does): what render must
    still produce for every bulletin."""
    lines = data.split(b"\n")
    lines = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    from_line = lines[0] if lines[0].endswith(b"\n") else lines[0] + b"\n"
    out = [] if mmdf_separator or maildir else [from_line]
    if mmdf_separator:
        out.insert(0, mmdf_separator)
    out.append(f"X-UIDL: {uidl}\n".encode())
    i, dropping = 1, False
    while i < len(lines):
        line = lines[i]
        if line in (b"\n", b"\r\n"):
            break
        i += 1
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name in (b"x-uidl", b"status", b"to")
        if name == b"to":
            out.append(f"To: {user}@{hostname}\n".encode())
        elif not dropping:
            out.append(line)
    for line in lines[i:]:
        out.append(b">" + line if not maildir and mbox.is_from_line(line) else line)
    message = b"".join(out)
    if not message.endswith(b"\n"):
        message += b"\n"
    if maildir:
        return message
    return message + (mmdf_separator or mbox.FRAMING_LINE)


FROM = b"From admin Wed Nov 25 10:00:00 2026"
LONG = b"x" * (bulletins.SHARED_PIECE_OCTETS + 3)


@pytest.mark.parametrize("data", [
    FROM,
    FROM + b"\n",
    FROM + b"\r\nSubject: s\r\n\r\nbody\r\n",
    FROM + b"\nTo: a,\n b\nStatus: RO\n\tmore\nX-UIDL:  old\nSubject: " + LONG + b"\n\n" + LONG,
    FROM + b"\nSubject: s\nStatus: RO",
    FROM + b"\nSubject: s\nTo:\n",
    FROM + b"\n  To : x\nTOX: kept\nto\n\n" + FROM + b"\n" + FROM + b"\r\nFrom nobody\n",
    FROM + b"\nSubject: s\n\n" + (LONG + b"\n" + FROM + b"\n") * 3 + b"From x",
    FROM + b"\nSubject: s\n\r\n" + FROM + b"\n\n\n",
    FROM + b"\nSubject: \r\n\r \n" + b"From " + LONG + b"\n\r\n" + FROM,
    FROM + b"\nSubject: s\rTo: x\n\nbody\rFrom admin Wed Nov 25 10:00:00 2026\n",
], ids=range(11))
@pytest.mark.parametrize("separator, maildir", [(None, False), (b"\x01\x01\x01\x01\n", False),
                                                (None, True)], ids=["mbox", "mmdf", "maildir"])
def test_render_gives_what_the_line_by_line_render_gave(data, separator, maildir):
    assert bulletins.render(data, "bob", HOST, "1.001", separator, maildir=maildir) == (
        reference_render(data, "bob", HOST, "1.001", separator, maildir=maildir))


BIG_OCTETS = HUGE_OCTETS - 64 * 1024
HEAD = b"From admin Wed Nov 25 10:00:00 2026\r\nSubject: big\r\nTo: all\r\n\r\n"


@pytest.mark.parametrize("line", [b"A body line of a bulletin, seventy-odd octets, CRLF ended\r\n",
                                  b"\r\n"], ids=["text", "empty-lines"])
def test_rendering_a_huge_bulletin_costs_about_its_message(line):
    """A valid bulletin of nearly MAX_BULLETIN_OCTETS is rendered once per user it goes to:
    the message plus a bounded overhead (no list of its lines: 8 M empty lines were 17 times
    the file's size), measured as the peak of what Python allocated."""
    data = HEAD + line * ((BIG_OCTETS - len(HEAD)) // len(line))
    tracemalloc.start()
    try:
        out = bulletins.render(data, "bob", HOST, "1.001", None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) > len(data)
    assert peak < len(out) * 1.1, peak / len(data)


@pytest.mark.parametrize("maildir", [False, True], ids=["mbox", "maildir"])
def test_delivering_a_huge_bulletin_costs_twice_its_size(tmp_path, maildir):
    """The whole copy of such a bulletin (read, render, the spool's payload or the Maildir
    file): the file's bytes and the message, never more at once."""
    from tests.integration.test_bulletins_maildir import MaildirEnv
    data = HEAD + b"A body line of a bulletin, seventy-odd octets, CRLF ended\r\n" * (
        (BIG_OCTETS - len(HEAD)) // 60)
    env = MaildirEnv(tmp_path, max_bulletins=5) if maildir else Env(tmp_path, max_bulletins=5)
    (env.bulldir / "1.big").write_bytes(data)
    tracemalloc.start()
    try:
        assert env.deliver() == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(data) * 2.2, peak / len(data)


def test_bulletins_are_files_starting_with_a_digit_in_number_order(tmp_path):
    for name in ("10.ten", "9.nine", "00002.two", "x.notes", ".5.hidden", "README", "3"):
        (tmp_path / name).write_bytes(b"")
    found = bulletins.list_bulletins(str(tmp_path), group_bulletins=False, log=print)
    assert [(b.number, b.name, b.group) for b in found] == [
        (2, "00002.two", None), (3, "3", None), (9, "9.nine", None), (10, "10.ten", None)]
    grouped = bulletins.list_bulletins(str(tmp_path), group_bulletins=True, log=print)
    assert [b.group for b in grouped] == ["two", None, "nine", "ten"]


@pytest.mark.parametrize("left_over", ["00001.notice~", "00001.notice.bak", "00001.notice.swp",
                                       "00001.notice.dpkg-old", "00001.notice.dpkg-new",
                                       "00001.notice.dpkg-dist", "00001.notice.rpmnew",
                                       "00001.notice.rpmsave", "00001.notice.BAK",
                                       "00002.draft.tmp", ".00001.notice.swp"])
def test_editor_and_package_manager_left_overs_are_not_bulletins(tmp_path, left_over):
    """An editor's backup of 00001.notice has the same number: delivered, it would be a second
    bulletin with the same X-UIDL. Only the bulletin itself goes out."""
    env = Env(tmp_path)
    env.post("00001.notice")
    env.post(left_over)
    assert [b.name for b in bulletins.list_bulletins(str(env.bulldir), False, env.log)] == [
        "00001.notice"]
    assert env.deliver() == 1
    assert env.subjects() == ["00001.notice"]


@pytest.mark.parametrize("group_bulletins", [True, False])
def test_a_group_named_like_a_left_over_suffix_is_logged_at_each_login(tmp_path,
                                                                         group_bulletins):
    """With group-bulletins, 00007.tmp reads as a bulletin for the group tmp: it is a
    left-over all the same, and each login says so (once per file), so the administrator
    who meant it for that group learns why it never goes out. A backup of a named bulletin
    (00009.notice.bak) is the left-over it looks like, and no group: not logged."""
    env = Env(tmp_path, group_bulletins=group_bulletins, max_bulletins=9)
    for name in ("00001.ALL.notice", "00007.tmp", "00008.BAK", "00009.ALL.notice.bak",
                 "00010.ALL~"):
        env.post(name)
    assert env.deliver() == 1
    assert env.deliver(stamp=STAMP + 1) == 0
    assert env.subjects() == ["00001.ALL.notice"]
    noted = [t for p, t in env.logged if " ignored: " in t]
    if not group_bulletins:
        assert noted == []
        return
    assert all(p == syslog.LOG_NOTICE for p, t in env.logged if " ignored: " in t)
    expected = [f"Bulletin {name} ignored: its name ends like an editor's or package "
                f"manager's left-over; for group {group} name it {name}.<subject>"
                for name, group in (("00007.tmp", "tmp"), ("00008.BAK", "BAK"))]
    assert sorted(noted) == sorted(expected * 2)


# --- what a user gets ---------------------------------------------------------------------------------
def test_new_user_gets_the_newest_max_bulletins_with_uidl_and_to(tmp_path):
    env = Env(tmp_path, max_bulletins=2)
    for n in (1, 2, 3):
        env.post(f"0000{n}.notice{n}")
    assert env.deliver() == 2
    assert env.messages() == [("00002.notice2", f"{STAMP}.002"),
                              ("00003.notice3", f"{STAMP}.003")]
    assert b"To: alice@pop.example.org\n" in env.spool()
    assert b"user@localhost" not in env.spool()
    assert env.popbull.read_bytes() == b"3\n"
    assert os.stat(env.popbull).st_mode & 0o777 == 0o600
    # the next login: nothing new, nothing twice
    assert env.deliver(stamp=STAMP + 60) == 0
    assert env.subjects() == ["00002.notice2", "00003.notice3"]


def test_a_spool_the_first_delivery_creates_meanwhile_gets_the_bulletin_after_it(tmp_path):
    """A new user (no spool): a plain fcntl appender (no dot-lock) creates the spool between
    our open (ENOENT) and our create (EEXIST). The bulletin goes after its message, not lost
    to a FileExistsError."""
    env = Env(tmp_path)
    env.post("1.b")

    def appender(step):
        if step == "bulletins:spool-create":
            fd = os.open(env.paths.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, SPOOL_MAIL + b"\n")
            os.close(fd)
    assert env.deliver(step_hook=appender) == 1
    assert env.subjects() == ["ordinary mail", "1.b"]
    assert env.popbull.read_bytes() == b"1\n"


def test_default_max_bulletins_is_one(tmp_path):
    env = Env(tmp_path)
    for n in (1, 2, 3):
        env.post(f"{n}.b")
    assert env.deliver() == 1
    assert env.subjects() == ["3.b"]


def test_seen_number_delivers_only_newer_ones_after_existing_mail(tmp_path):
    env = Env(tmp_path)
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL)                               # no empty line at its end
    for n in (1, 2, 3, 4):
        env.post(f"{n}.b")
    env.popbull.write_bytes(b"2\n")
    assert env.deliver() == 2
    assert env.subjects() == ["ordinary mail", "3.b", "4.b"]
    assert env.spool().startswith(SPOOL_MAIL + b"\n")      # the separator's empty line added
    assert env.popbull.read_bytes() == b"4\n"
    env.post("5.new")
    assert env.deliver() == 1
    assert env.subjects() == ["ordinary mail", "3.b", "4.b", "5.new"]


def test_empty_popbull_means_everything_seen_and_is_rewritten(tmp_path):
    env = Env(tmp_path, max_bulletins=5)
    for n in (1, 2, 3):
        env.post(f"{n}.b")
    env.popbull.write_bytes(b"")
    assert env.deliver() == 0
    assert env.spool() == b""
    assert env.popbull.read_bytes() == b"3\n"


@pytest.mark.parametrize("garbage", [b"not a number\n", b"-4\n", b"\xff\xfe\n", b"\n"])
def test_garbage_popbull_counts_as_missing_and_is_rewritten(tmp_path, garbage):
    env = Env(tmp_path, max_bulletins=2)
    for n in (1, 2, 3):
        env.post(f"{n}.b")
    env.popbull.write_bytes(garbage)
    assert env.deliver() == 2
    assert env.subjects() == ["2.b", "3.b"]
    assert env.popbull.read_bytes() == b"3\n"


def test_missing_popbull_with_nothing_to_deliver_records_the_newest(tmp_path):
    env = Env(tmp_path, max_bulletins=0)
    env.post("7.b")
    assert env.deliver() == 0
    assert env.popbull.read_bytes() == b"7\n"


def test_no_bulldir_or_empty_bulldir_touches_nothing(tmp_path):
    env = Env(tmp_path)
    assert env.deliver() == 0                             # bulldir exists, no bulletins
    assert not env.popbull.exists() and not os.path.exists(env.paths.spool)
    env.cfg = env.cfg.replace(bulldir=None)
    env.post("1.b")
    assert env.deliver() == 0
    assert not env.popbull.exists() and not os.path.exists(env.paths.spool)


def test_unreadable_bulldir_is_logged_and_mail_goes_on(tmp_path):
    env = Env(tmp_path)
    env.cfg = env.cfg.replace(bulldir=str(tmp_path / "missing"))
    assert env.deliver() == 0
    assert any("Unable to read bulletin directory" in t for _, t in env.logged)


def test_bulletin_without_from_line_is_skipped_with_a_log_line(tmp_path):
    env = Env(tmp_path, max_bulletins=3)
    env.post("1.good")
    env.post("2.bad", b"Subject: I forgot the From line\n\nbody\n")
    env.post("3.good")
    assert env.deliver() == 2
    assert env.subjects() == ["1.good", "3.good"]
    assert env.popbull.read_bytes() == b"3\n"             # not offered again
    assert (syslog.LOG_WARNING,
            "Bulletin 2.bad skipped: it does not start with a valid 'From ' line") in env.logged


def test_popbulldir_holds_the_record_and_reads_home_popbull_first_time(tmp_path):
    popbulldir = tmp_path / "popbull"
    popbulldir.mkdir()
    env = Env(tmp_path, popbulldir=str(popbulldir))
    for n in (1, 2, 3):
        env.post(f"{n}.b")
    env.popbull.write_bytes(b"1\n")                       # the old place
    assert env.deliver() == 2
    assert (popbulldir / "alice.popbull").read_bytes() == b"3\n"
    assert env.popbull.read_bytes() == b"1\n"             # untouched
    env.post("4.b")
    assert env.deliver() == 1
    assert env.subjects() == ["2.b", "3.b", "4.b"]


def test_popbulldir_file_of_another_owner_is_ignored(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: chown")
    popbulldir = tmp_path / "popbull"
    popbulldir.mkdir()
    env = Env(tmp_path, popbulldir=str(popbulldir))
    env.post("1.b")
    planted = popbulldir / "alice.popbull"
    planted.write_bytes(b"999\n")                         # planted by someone else
    os.chown(planted, 1, 1)
    assert env.deliver() == 1
    assert env.subjects() == ["1.b"]
    assert any("not a plain file of the user" in t for _, t in env.logged)


def test_mmdf_spool_gets_mmdf_wrapped_bulletins(tmp_path):
    env = Env(tmp_path)
    sep = b"\x01\x01\x01\x01\n"
    with open(env.paths.spool, "wb") as f:
        f.write(sep + b"Subject: mmdf mail\n\nbody\n" + sep)
    env.post("1.b")
    assert env.deliver() == 1
    assert env.subjects() == ["mmdf mail", "1.b"]
    assert env.spool().endswith(sep) and b"From qpop" not in env.spool()


@pytest.mark.parametrize("pad", [b"\n", b"\r\n\n"])
def test_a_padded_mmdf_spool_gets_mmdf_wrapped_bulletins(tmp_path, pad):
    """Empty lines before the first separator are padding: the format is the first
    separator's (docs/mbox.md, "Padding before the first message")."""
    env = Env(tmp_path)
    sep = b"\x01\x01\x01\x01\n"
    with open(env.paths.spool, "wb") as f:
        f.write(pad + sep + b"Subject: mmdf mail\n\nbody\n")        # open: no trailer yet
    env.post("1.b")
    assert env.deliver() == 1
    assert env.subjects() == ["mmdf mail", "1.b"]
    assert env.spool().endswith(sep) and b"From qpop" not in env.spool()


@pytest.mark.parametrize("spool_file", ["missing", "empty", "padding"])
def test_empty_spool_at_an_mmdf_site_gets_an_mmdf_bulletin(tmp_path, spool_file):
    """The empty spool cannot tell its format: spool-format mmdf says it. In From_ form the
    MMDF agent's next message would be read as part of the bulletin (and deleted with it).
    Nor can one of empty lines only (docs/mbox.md, "Padding before the first message")."""
    env = Env(tmp_path, spool_format="mmdf")
    sep = b"\x01\x01\x01\x01\n"
    pad = b"\n\r\n" if spool_file == "padding" else b""
    if spool_file != "missing":
        with open(env.paths.spool, "wb") as f:
            f.write(pad)
    env.post("1.b")
    assert env.deliver() == 1
    assert env.spool().startswith(pad + sep) and env.spool().endswith(sep)
    with open(env.paths.spool, "ab") as f:                 # the delivery agent's next message
        f.write(sep + b"Subject: mmdf mail\n\nbody\n" + sep)
    assert env.subjects() == ["1.b", "mmdf mail"]


@pytest.mark.parametrize("spool_format", ["mbox", "mmdf"])
def test_a_spools_own_first_line_wins_over_spool_format(tmp_path, spool_format):
    env = Env(tmp_path, spool_format=spool_format)
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL)
    env.post("1.b")
    assert env.deliver() == 1
    assert env.subjects() == ["ordinary mail", "1.b"]
    assert b"\x01" not in env.spool()


# --- skipped bulletins (docs/bulletins.md, "Skipped bulletins") ----------------------------------
def break_bulletin(env, name: str, how: str) -> None:
    """A bulletin the login must skip: still empty (being written), not world-readable, or
    without its From line."""
    path = env.bulldir / name
    if how == "empty":
        path.write_bytes(b"")
    elif how == "not-world-readable":
        path.write_bytes(bulletin_text(name))
        os.chmod(path, 0o640)
    else:
        path.write_bytes(b"Subject: no envelope\n\nx\n")


@pytest.mark.parametrize("how", ["empty", "not-world-readable", "no-from-line"])
@pytest.mark.parametrize("store", ["popbull", "bulldb"])
def test_a_skipped_newest_bulletin_is_delivered_once_it_is_mended(tmp_path, how, store):
    env = bulldb_env(tmp_path, max_bulletins=5) if store == "bulldb" else Env(
        tmp_path, max_bulletins=5)
    env.post("1.b")
    break_bulletin(env, "2.b", how)
    assert env.deliver() == 1
    assert any(p == syslog.LOG_WARNING and t.startswith("Bulletin ") and "2.b skipped: " in t
               for p, t in env.logged)
    assert env.deliver(stamp=STAMP + 1) == 0               # tried again, still skipped
    env.post("2.b")                                        # mended
    os.chmod(env.bulldir / "2.b", 0o644)
    assert env.deliver(stamp=STAMP + 2) == 1
    assert env.subjects() == ["1.b", "2.b"]
    assert env.deliver(stamp=STAMP + 3) == 0
    if store == "popbull":
        assert env.popbull.read_bytes() == b"2\n"
    else:
        assert [row[:2] for row in db_rows(env)] == [(USER, 2)]


def test_a_broken_bulletin_never_holds_back_newer_ones_nor_repeats_them(tmp_path):
    """The record is one number: once a newer bulletin went out, a skipped older one is given
    up (copying it later would need the record below the newer one, which would then be
    copied twice)."""
    env = Env(tmp_path, max_bulletins=5)
    env.post("1.b")
    break_bulletin(env, "2.b", "empty")
    assert env.deliver() == 1
    env.post("3.b")
    assert env.deliver(stamp=STAMP + 1) == 1               # 3 goes out; 2 is still empty
    assert env.popbull.read_bytes() == b"3\n"
    env.post("2.b")
    assert env.deliver(stamp=STAMP + 2) == 0
    assert env.subjects() == ["1.b", "3.b"]


@pytest.mark.parametrize("head", [b"Subject: no envelope\r\n\r\n", b""])
def test_a_huge_broken_bulletin_is_skipped_by_its_head_at_every_login(tmp_path, head):
    """A broken newest bulletin is tried again at every login, under the spool lock: its first
    line decides before the rest is read, so a 16 MiB one (sparse here) costs a few KiB."""
    assert HUGE_OCTETS == bulletins.MAX_BULLETIN_OCTETS
    env = Env(tmp_path, max_bulletins=5)
    env.post("1.b")
    post_huge_broken(env.bulldir / "2.b", head)
    for n in range(3):
        before = octets_read()
        assert env.deliver(stamp=STAMP + n) == (1 if n == 0 else 0)
        assert octets_read() - before < 256 * 1024
    assert env.subjects() == ["1.b"]
    assert env.popbull.read_bytes() == b"1\n"             # tried again at the next login
    assert sum("2.b skipped: it does not start with a valid 'From ' line" in t
               for _, t in env.logged) == 3


def test_a_skipped_bulletin_below_a_copied_one_is_not_tried_again(tmp_path):
    env = Env(tmp_path, max_bulletins=5)
    break_bulletin(env, "1.b", "not-world-readable")
    env.post("2.b")
    assert env.deliver() == 1
    assert env.popbull.read_bytes() == b"2\n"
    os.chmod(env.bulldir / "1.b", 0o644)
    assert env.deliver(stamp=STAMP + 1) == 0
    assert env.subjects() == ["2.b"]


@pytest.mark.parametrize("store", ["popbull", "bulldb"])
def test_a_skipped_bulletin_sharing_its_number_with_a_copied_one_is_given_up(tmp_path, store):
    """Numbers may tie (ties go by name): a skipped bulletin with the number of one that went
    out cannot keep the record below that number, or the copied one would go out at every
    later login."""
    env = bulldb_env(tmp_path, max_bulletins=5) if store == "bulldb" else Env(
        tmp_path, max_bulletins=5)
    env.post("5.ALL.news")
    break_bulletin(env, "5.ALL.zz-staff", "not-world-readable")
    assert env.deliver() == 1
    assert env.deliver(stamp=STAMP + 1) == 0
    assert env.deliver(stamp=STAMP + 2) == 0
    assert env.subjects() == ["5.ALL.news"]
    if store == "popbull":
        assert env.popbull.read_bytes() == b"5\n"
    else:
        assert [row[:2] for row in db_rows(env)] == [(USER, 5)]


# --- the bulletin database ------------------------------------------------------------------------
def bulldb_env(tmp_path, **options):
    env = Env(tmp_path, bulldb=True, **options)
    (env.bulldir / bulletin_records.BULLDB_DIR).mkdir()
    return env


def db_rows(env):
    path = env.bulldir / bulletin_records.BULLDB_DIR / bulletin_records.BULLDB_FILE
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT user, last, pending FROM seen ORDER BY user").fetchall()
    finally:
        db.close()


def test_bulldb_first_use_reads_popbull_but_never_writes_it(tmp_path):
    env = bulldb_env(tmp_path)
    for n in (1, 2, 3):
        env.post(f"{n}.b")
    env.popbull.write_bytes(b"2\n")
    assert env.deliver() == 1
    assert env.subjects() == ["3.b"]
    assert db_rows(env) == [("alice", 3, None)]
    assert env.popbull.read_bytes() == b"2\n"
    db_file = env.bulldir / bulletin_records.BULLDB_DIR / bulletin_records.BULLDB_FILE
    assert os.stat(db_file).st_mode & 0o777 == bulletin_records.BULLDB_MODE
    env.post("4.b")
    env.popbull.write_bytes(b"0\n")                       # read only the first time
    assert env.deliver() == 1
    assert env.subjects() == ["3.b", "4.b"]
    assert db_rows(env) == [("alice", 4, None)]


def test_bulldb_created_by_another_login_meanwhile_is_used(tmp_path, monkeypatch):
    """Two first logins: the other creates the database between our open (ENOENT) and our
    create (EEXIST). We open the one it made, not -ERR [SYS/TEMP]."""
    env = bulldb_env(tmp_path)
    env.post("1.b")
    path = str(env.bulldir / bulletin_records.BULLDB_DIR / bulletin_records.BULLDB_FILE)
    real_open = os.open

    def other_login_first(name, flags, mode=0o777, **kw):
        if name == path and flags & os.O_EXCL and not os.path.exists(path):
            os.close(real_open(path, os.O_RDWR | os.O_CREAT, bulletin_records.BULLDB_MODE))
        return real_open(name, flags, mode, **kw)
    monkeypatch.setattr(os, "open", other_login_first)
    assert env.deliver() == 1
    monkeypatch.undo()
    assert env.subjects() == ["1.b"] and db_rows(env) == [("alice", 1, None)]


def test_bulldb_keeps_one_record_per_user(tmp_path):
    alice = bulldb_env(tmp_path, max_bulletins=2)
    bob = Env(tmp_path, user="bob", bulldb=True, max_bulletins=1)
    for n in (1, 2, 3):
        alice.post(f"{n}.b")
    assert alice.deliver() == 2 and bob.deliver() == 1
    assert bob.subjects() == ["3.b"]
    assert db_rows(alice) == [("alice", 3, None), ("bob", 3, None)]


def test_bulldb_unusable_is_sys_temp_unless_nonfatal(tmp_path):
    env = Env(tmp_path, bulldb=True, bulldb_max_tries=2)  # no bulldb directory: cannot open
    env.post("1.b")
    with pytest.raises(PopError) as refused:
        env.deliver()
    assert refused.value.code == RespCode.SYS_TEMP
    assert refused.value.render() == (b"-ERR [SYS/TEMP] Unable to open Bulletin database; "
                                      b"contact your administrator\r\n")
    assert env.spool() == b""
    env.cfg = env.cfg.replace(bulldb_nonfatal=True)
    assert env.deliver() == 0
    assert env.spool() == b""
    assert any("goes on without bulletins" in t for _, t in env.logged)


@pytest.mark.parametrize("breakage", ["no directory", "not a database"])
def test_bulldb_unusable_for_good_is_refused_at_once_without_retries(tmp_path, monkeypatch,
                                                                     breakage):
    """Only a lock held by another session is worth bulldb-max-tries waits: a missing
    directory or a file that is not a database is refused at the first try."""
    waits = []
    monkeypatch.setattr(bulletins.time, "sleep", waits.append)
    env = Env(tmp_path, bulldb=True)                      # bulldb-max-tries: 75
    if breakage == "not a database":
        (env.bulldir / bulletin_records.BULLDB_DIR).mkdir()
        (env.bulldir / bulletin_records.BULLDB_DIR / bulletin_records.BULLDB_FILE).write_bytes(b"x" * 4096)
    env.post("1.b")
    with pytest.raises(PopError) as refused:
        env.deliver()
    assert refused.value.code == RespCode.SYS_TEMP
    assert waits == []
    assert bulletin_records.BULLDB_FILE in refused.value.log and "tries" not in refused.value.log


def test_bulldb_locked_by_another_writer_is_retried_then_refused(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(bulletins.time, "sleep", waits.append)
    env = bulldb_env(tmp_path, bulldb_max_tries=3)
    env.post("1.b")
    env.post("2.b")
    env.popbull.write_bytes(b"1\n")
    path = env.bulldir / bulletin_records.BULLDB_DIR / bulletin_records.BULLDB_FILE
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute(bulletin_records.BulletinDb.SCHEMA)
        holder.execute("BEGIN EXCLUSIVE")                  # another session holds it
        with pytest.raises(PopError) as refused:
            env.deliver()
        assert len(waits) == 2 and refused.value.log.endswith("(3 tries)")
        assert env.spool() == b""                         # cut back or never written
        holder.execute("COMMIT")
    finally:
        holder.close()
    assert env.deliver() == 1
    assert env.subjects() == ["2.b"]


@pytest.mark.parametrize("bulldb", [False, True])
def test_a_bulletin_numbered_over_what_a_record_holds_is_skipped_and_logged(tmp_path, bulldb):
    """A file named by 20 digits: the bulletin database (SQLite INTEGER) cannot record it,
    and it would stand above every later bulletin. Skipped and logged; everyone logs in."""
    env = bulldb_env(tmp_path) if bulldb else Env(tmp_path)
    env.post("00001.one")
    env.post("99999999999999999999.big")
    assert env.deliver() == 1
    assert env.subjects() == ["00001.one"]
    assert (syslog.LOG_WARNING, "Bulletin 99999999999999999999.big skipped: its number is over "
            f"{2**63 - 1}") in env.logged
    assert env.deliver() == 0


def test_a_number_the_bulletin_database_cannot_hold_is_a_database_error(tmp_path):
    """The backstop: SQLite's OverflowError is the database's failure (bulldb-nonfatal
    decides), never an exception that ends every login."""
    env = bulldb_env(tmp_path)
    path = env.bulldir / bulletin_records.BULLDB_DIR / bulletin_records.BULLDB_FILE
    db = bulletin_records.BulletinDb(str(path), USER, 3, env.log, None)
    try:
        with pytest.raises(bulletin_records.BulletinDbError, match="too large"):
            db.save(2**64)
    finally:
        db.close()


# --- groups (real groups: groupadd) -------------------------------------------------------------
@pytest.fixture
def real_group():
    if os.geteuid() != 0:
        pytest.skip("needs root: groupadd")
    names = []

    def make(members=()):
        name = "qptg" + secrets.token_hex(4)
        subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=30)
        names.append(name)
        for member in members:
            subprocess.run(["usermod", "-aG", name, member], check=True, capture_output=True,
                           timeout=30)
        return grp.getgrnam(name)

    yield make
    for name in names:
        subprocess.run(["groupdel", name], capture_output=True, timeout=30)


def test_group_bulletins_go_to_members_all_and_ungrouped(tmp_path, system_users, real_group):
    member = system_users.create("gb")
    staff = real_group(members=[member.name])
    primary = real_group()
    names = ["1.ALL.everyone", f"2.{staff.gr_name}.staff_only", "3.qptnosuchgroup.nobody",
             "4", f"5.{primary.gr_name}.by_primary_gid"]
    results = {}
    for who, gid in ((member.name, member.gid), ("outsider", primary.gr_gid)):
        env = Env(tmp_path, user=who, gid=gid, group_bulletins=True, max_bulletins=9)
        for name in names:
            env.post(name)
        assert env.deliver() >= 1
        results[who] = env.subjects()
        assert env.popbull.read_bytes() == b"5\n"
    assert results[member.name] == ["1.ALL.everyone", f"2.{staff.gr_name}.staff_only", "4"]
    assert results["outsider"] == ["1.ALL.everyone", "4", f"5.{primary.gr_name}.by_primary_gid"]


def test_without_group_bulletins_the_group_part_is_just_a_name(tmp_path):
    env = Env(tmp_path, max_bulletins=9)
    env.post("1.qptnosuchgroup.x")
    assert env.deliver() == 1


# --- failures and crashes (B6; no loss, no duplicates) -----------------------------------------------
class Boom(OSError):
    pass


def failing_at(step):
    def hook(name):
        if name == step:
            raise Boom(28, "No space left on device")
    return hook


@pytest.mark.parametrize("step", ["bulletins:extend-spool", "bulletins:write-spool",
                                  "bulletins:fsync-spool-body", "bulletins:write-spool-marker", "bulletins:fsync-spool",
                                  "bulletins:record-seen"])
def test_failure_mid_append_leaves_spool_as_before_and_number_unadvanced(tmp_path, step):
    env = Env(tmp_path, max_bulletins=3)
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL)
    env.popbull.write_bytes(b"1\n")
    for n in (1, 2, 3):
        env.post(f"{n}.b")
    assert env.deliver(step_hook=failing_at(step)) == 0
    assert env.spool() == SPOOL_MAIL
    assert env.popbull.read_bytes() == b"1\n"
    assert any("not delivered" in t for _, t in env.logged)
    assert env.deliver() == 2                              # the next login gets them
    assert env.subjects() == ["ordinary mail", "2.b", "3.b"]


def test_a_maildrop_journal_makes_the_bulletins_wait_for_the_login_after_its_recovery(tmp_path):
    """A session crashed in its update: the maildrop recovers it after the bulletins, and a
    half-written bulletin's NUL could be taken for the update's own marker (docs/bulletins.md,
    "Delivery, crash-safe"): nothing is appended while the journal is there."""
    env = Env(tmp_path, max_bulletins=3)
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL)
    env.post("1.b")
    with open(env.paths.journal, "wb") as f:
        f.write(b"{}")
    assert env.deliver() == 0
    assert env.spool() == SPOOL_MAIL and not env.popbull.exists()
    assert any("wait for the next login" in t for _, t in env.logged)
    os.unlink(env.paths.journal)
    assert env.deliver() == 1
    assert env.subjects() == ["ordinary mail", "1.b"]


CRASH_STEPS = {      # where the child dies → what the next login finds (its log line)
    "bulletins:record-intent": None,                     # no intent yet: a plain delivery
    "bulletins:extend-spool": "not delivered",
    "bulletins:fsync-spool-size": "completed",           # extended, nothing written: rewritten
    "bulletins:write-spool": "completed",
    "bulletins:fsync-spool-body": "completed",
    "bulletins:write-spool-marker": "completed",
    "bulletins:fsync-spool": "delivered",
    "bulletins:record-seen": "delivered",
}


@pytest.mark.parametrize("step", CRASH_STEPS)
@pytest.mark.parametrize("store", ["popbull", "bulldb"])
@pytest.mark.parametrize("next_login_on", ["the same host", "another host"])
def test_crash_at_any_step_then_next_login_has_each_bulletin_exactly_once(tmp_path, step, store,
                                                                         next_login_on):
    """Another host of an NFS spool (and popbulldir) sees the spool under another device
    number: the intent still names it."""
    env = bulldb_env(tmp_path, max_bulletins=3) if store == "bulldb" else Env(tmp_path,
                                                                               max_bulletins=3)
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL)
    for n in (1, 2):
        env.post(f"{n}.b", bulletin_text(f"{n}.b", body=b"x" * 100_000 + b"\n"))  # two chunks
    assert crash_at(env, step), "the child did not reach the step"
    os.unlink(env.paths.lock)                              # the dead session's dot-lock
    with another_host() if next_login_on == "another host" else contextlib.nullcontext():
        env.deliver(stamp=STAMP + 5)
    verdicts = [t.rsplit(": ", 1)[1] for _, t in env.logged if "earlier session" in t]
    assert verdicts == ([CRASH_STEPS[step]] if CRASH_STEPS[step] else [])
    assert env.subjects() == ["ordinary mail", "1.b", "2.b"]
    assert env.spool().startswith(SPOOL_MAIL)
    assert b"\0" not in env.spool()
    env.post("3.b")
    assert env.deliver(stamp=STAMP + 9) == 1
    assert env.subjects() == ["ordinary mail", "1.b", "2.b", "3.b"]


def refused_failing_at(env, *steps: str, error: int = errno.EIO) -> PopError:
    """A login whose delivery fails with `error` (an OSError) at each of `steps`: refused
    [SYS/TEMP]; the refusal."""
    def failing(step):
        if step in steps:
            raise OSError(error, os.strerror(error))
    with pytest.raises(PopError) as refused:
        env.deliver(stamp=STAMP + 5, step_hook=failing)
    assert refused.value.code is RespCode.SYS_TEMP
    return refused.value


def test_a_crashed_copy_that_cannot_be_settled_refuses_the_login_until_it_can(tmp_path):
    """A crashed login's copy whose settling fails (an I/O error rewriting it): the login
    gets [SYS/TEMP], so no session rewrites the spool under the pending copy; the next login
    settles it, and each bulletin is there once."""
    env = Env(tmp_path, max_bulletins=3)
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL)
    env.post("1.b")
    assert crash_at(env, "bulletins:write-spool")
    os.unlink(env.paths.lock)
    refused_failing_at(env, "bulletins:rewrite-incomplete")
    assert env.deliver(stamp=STAMP + 6) == 0
    assert any("earlier session of alice: completed" in t for _, t in env.logged)
    assert env.subjects() == ["ordinary mail", "1.b"]


def test_a_failed_copy_that_cannot_be_cut_back_keeps_its_intent_and_refuses_the_login(
        tmp_path):
    """The copy fails (an I/O error writing it) and so does cutting it back: the half copy
    stays with its intent (not forgotten, as if nothing were there), the login gets
    [SYS/TEMP], and the next login settles it: each bulletin once, no NUL left."""
    env = Env(tmp_path, max_bulletins=3)
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL)
    env.post("1.b", bulletin_text("1.b", body=b"x" * 100_000 + b"\n"))       # two chunks
    refused_failing_at(env, "bulletins:write-spool-marker", "bulletins:truncate-spool-back")
    assert b"\0" in env.spool()                                   # the half copy is there
    assert env.deliver(stamp=STAMP + 6) == 0
    assert any("earlier session of alice: completed" in t for _, t in env.logged)
    assert env.subjects() == ["ordinary mail", "1.b"] and b"\0" not in env.spool()


def crashed_copy_of_a_bulletin_changed_since(env) -> None:
    """A login crashed in the middle of copying 1.b, whose file was then edited: the half
    copy is no longer what the intent would write (docs/bulletins.md, "Delivery, crash-safe")."""
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL)
    env.post("1.b")
    assert crash_at(env, "bulletins:write-spool")
    os.unlink(env.paths.lock)
    env.post("1.b", bulletin_text("1.b", body=b"edited since\n"))


def test_a_crashed_copy_of_a_changed_bulletin_is_cut_back_and_delivered_anew(tmp_path):
    env = Env(tmp_path, max_bulletins=3)
    crashed_copy_of_a_bulletin_changed_since(env)
    assert env.deliver(stamp=STAMP + 5) == 1
    assert any("earlier session of alice: cut back" in t for _, t in env.logged)
    assert env.subjects() == ["ordinary mail", "1.b"] and b"\0" not in env.spool()
    assert b"edited since\n" in env.spool()


def test_a_crashed_copy_that_cannot_be_cut_back_refuses_the_login_saying_why(tmp_path):
    """Cutting the half copy back fails (an I/O error): the login gets [SYS/TEMP] and the
    log names that error; the next login cuts it back."""
    env = Env(tmp_path, max_bulletins=3)
    crashed_copy_of_a_bulletin_changed_since(env)
    refused = refused_failing_at(env, "bulletins:truncate-spool-back", error=errno.ENOSPC)
    assert refused.log == ("Unable to settle an earlier session's bulletin copy for "
                                 f"alice: {os.strerror(errno.ENOSPC)}")
    assert b"\0" in env.spool()                                   # the half copy is there
    assert env.deliver(stamp=STAMP + 6) == 1
    assert any("earlier session of alice: cut back" in t for _, t in env.logged)
    assert env.subjects() == ["ordinary mail", "1.b"] and b"\0" not in env.spool()


def test_crash_after_append_with_mail_delivered_meanwhile(tmp_path):
    """The spool grew after the crash (a delivery agent): the bulletins count as delivered
    and the new mail stays."""
    env = Env(tmp_path, max_bulletins=1)
    env.post("1.b")
    assert crash_at(env, "bulletins:record-seen")
    os.unlink(env.paths.lock)
    with open(env.paths.spool, "ab") as f:
        f.write(SPOOL_MAIL)
    assert env.deliver() == 0
    assert env.subjects() == ["1.b", "ordinary mail"]
    assert env.popbull.read_bytes() == b"1\n"
    assert any("earlier session of alice: delivered" in t for _, t in env.logged)


def test_simultaneous_logins_of_one_user_deliver_each_bulletin_once(tmp_path):
    """The spool lock serialises the read-deliver-record of two sessions (no duplicates)."""
    env = Env(tmp_path, max_bulletins=3)
    for n in (1, 2, 3):
        env.post(f"{n}.b")
    go_r, go_w = os.pipe()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(go_w)
                os.read(go_r, 1)                          # both start together
                env.deliver()
            finally:
                os._exit(0)
        children.append(pid)
    os.close(go_r)
    os.close(go_w)                                         # EOF: go
    for pid in children:
        os.waitpid(pid, 0)
    assert env.subjects() == ["1.b", "2.b", "3.b"]
    assert env.popbull.read_bytes() == b"3\n"


def test_append_makes_the_copy_durable_before_the_marker_byte(tmp_path):
    """The marker byte (the copy's first byte) is written only after the rest is fdatasync'ed."""
    env = Env(tmp_path, max_bulletins=3)
    for n in (1, 2):
        env.post(f"{n}.b")
    steps = []
    assert env.deliver(step_hook=steps.append) == 2
    order = [s for s in steps if s in ("bulletins:write-spool", "bulletins:fsync-spool-body",
                                       "bulletins:write-spool-marker")]
    assert order[-2:] == ["bulletins:fsync-spool-body", "bulletins:write-spool-marker"]
    assert "bulletins:write-spool" in order[:-2]


def test_a_bulletin_rewritten_in_place_after_its_check_still_starts_with_the_checked_line(
        tmp_path, monkeypatch):
    """read_file checks the head's first line and reads only what follows the head (render()
    no longer checks again): a file rewritten in place between the two reads must still start
    the spool's message with the line that was checked. Were the whole file read again from
    its start, its unchecked first line (no From line here) would join the message before it
    in the mbox. The rewrite happens right after the head's read."""
    env = Env(tmp_path)
    with open(env.paths.spool, "wb") as f:
        f.write(SPOOL_MAIL + b"\n")
    checked = (b"From admin Wed Nov 25 10:00:00 2026\nSubject: checked\n\n"
               + b"x" * 5000 + b"\n")
    rewritten = b"Subject: rewritten\n\n" + b"y" * (len(checked) - 21) + b"\n"
    env.post("1.b", checked)
    real_pread = os.pread
    done = []

    def pread(fd, n, offset):
        got = real_pread(fd, n, offset)
        if offset == 0 and got.startswith(b"From admin") and not done:
            done.append(True)
            with open(env.bulldir / "1.b", "r+b") as f:           # in place: the same file
                f.write(rewritten)
        return got
    monkeypatch.setattr(os, "pread", pread)
    assert env.deliver() == 1
    assert done
    assert env.subjects() == ["ordinary mail", "checked"]
