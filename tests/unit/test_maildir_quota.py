"""UPDATE counts what it deleted off a Maildir++ quota (docs/maildir.md, "Maildir++ quotas"):
one line `-<octets> -<count>` appended to `maildirsize`, the octets from `,S=` in a name or
the file's size; nothing when nothing was unlinked, no `maildirsize` made, none written
through a link; a crash leaves the quota counting too much, never too little."""

from __future__ import annotations

import os
import shutil

import pytest

from qpopper.spool.maildir_drop import MaildirDrop
from qpopper.spool.maildir_quota import QUOTA_FILE
from tests.helpers.maildirs import files, make_maildir
from tests.helpers.spoolcheck import dies_in_child, killer_at_step

ONE = b"Subject: one\n\n" + b"x" * 100 + b"\n"
TWO = b"Subject: two\n\n" + b"y" * 50 + b"\n"
THREE = b"Subject: three\n\nz\n"
QUOTA = "1000000S,1000C\n"


def mailbox_with_quota(tmp_path, quota: str | None = QUOTA) -> tuple[str, dict[bytes, str]]:
    """ONE delivered with `,S=` in its name (a count unlike its size, to tell which is used),
    TWO and THREE without; `maildirsize` holding `quota` and their delivery lines."""
    path, keys = make_maildir(tmp_path, [ONE, TWO, THREE])
    names = {files(path)[f"new/{key}"]: f"new/{key}" for key in keys}
    sized = names[ONE] + ",S=1234"
    os.rename(os.path.join(path, names[ONE]), os.path.join(path, sized))
    names[ONE] = sized
    if quota is not None:
        with open(os.path.join(path, QUOTA_FILE), "w") as f:
            f.write(quota + f"1234 1\n{len(TWO)} 1\n{len(THREE)} 1\n")
    return path, names


def update(path, contents: list[bytes], retrieved=(), hook=None, log=None) -> None:
    drop = MaildirDrop.open(path, "qpt", step_hook=hook, log=log)
    by_content = {files(path)[m.name]: i for i, m in enumerate(drop.messages)}
    drop.update(deleted={by_content[c] for c in contents},
                retrieved={by_content[c] for c in retrieved})


def quota_lines(path) -> list[str]:
    with open(os.path.join(path, QUOTA_FILE)) as f:
        return f.read().splitlines()


def test_the_deleted_files_are_counted_off_in_one_line(tmp_path):
    path, _ = mailbox_with_quota(tmp_path)
    update(path, [ONE, TWO], retrieved=[THREE])
    assert quota_lines(path)[-1] == f"-{1234 + len(TWO)} -2"     # S= for ONE, the size for TWO
    assert len(quota_lines(path)) == 5
    assert list(files(path).values()) == [THREE]


def test_an_update_that_deletes_nothing_appends_nothing(tmp_path):
    path, _ = mailbox_with_quota(tmp_path)
    before = quota_lines(path)
    update(path, [], retrieved=[ONE])
    assert quota_lines(path) == before


def test_a_file_another_program_removed_is_not_counted(tmp_path):
    """Removed by another program after the journal was written: only what UPDATE unlinked
    counts (the other program counted its own, if it keeps the quota)."""
    path, names = mailbox_with_quota(tmp_path)
    done = []

    def hook(step):
        if step == "update:unlink" and not done:
            done.append(os.unlink(os.path.join(path, names[ONE])))
    update(path, [ONE, TWO], hook=hook)
    assert done and quota_lines(path)[-1] == f"-{len(TWO)} -1"

    (tmp_path / "all-gone").mkdir()
    path, names = mailbox_with_quota(tmp_path / "all-gone")
    before = quota_lines(path)
    drop = MaildirDrop.open(path, "qpt")
    deleted = {i for i, m in enumerate(drop.messages) if m.name in (names[ONE], names[TWO])}
    for name in (names[ONE], names[TWO]):                 # during the session
        os.unlink(os.path.join(path, name))
    drop.update(deleted=deleted, retrieved=set())
    assert len(deleted) == 2 and quota_lines(path) == before


def test_no_maildirsize_is_made(tmp_path):
    path, _ = mailbox_with_quota(tmp_path, quota=None)
    update(path, [ONE, TWO])
    assert not os.path.lexists(os.path.join(path, QUOTA_FILE))


def test_a_symlinked_maildirsize_is_not_written_through(tmp_path):
    path, _ = mailbox_with_quota(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not a quota\n")
    os.unlink(os.path.join(path, QUOTA_FILE))
    os.symlink(elsewhere, os.path.join(path, QUOTA_FILE))
    logged = []
    update(path, [ONE], log=lambda priority, text: logged.append(text))
    assert elsewhere.read_text() == "not a quota\n"
    assert list(files(path).values()).count(ONE) == 0              # the DELE still happened
    assert [t for t in logged if "maildirsize not updated" in t] == [
        f"Maildir {path}: maildirsize not updated for 1 deleted message(s) of 1234 octets "
        f"(a symbolic link); the quota counts them until it is recalculated"]


def test_a_fifo_at_maildirsize_is_not_waited_on(tmp_path):
    path, _ = mailbox_with_quota(tmp_path)
    os.unlink(os.path.join(path, QUOTA_FILE))
    os.mkfifo(os.path.join(path, QUOTA_FILE))
    logged = []
    update(path, [TWO], log=lambda priority, text: logged.append(text))
    assert any("maildirsize not updated" in t for t in logged)
    assert list(files(path).values()).count(TWO) == 0


STEPS = ["update:unlink", "update:unlink#2", "update:fsync-dirs", "update:quota",
         "update:journal-unlink", "update:index-write"]


@pytest.mark.parametrize("kill_at", STEPS)
def test_a_crash_never_leaves_the_quota_counting_too_little(tmp_path, kill_at):
    """Killed anywhere in UPDATE, the next login finishes the journal: the quota's sum is
    never below what the Maildir holds, and is exact once the line was written."""
    (tmp_path / "pristine").mkdir()
    pristine, _ = mailbox_with_quota(tmp_path / "pristine")
    path = str(tmp_path / "box")
    shutil.copytree(pristine, path)
    step, _, nth = kill_at.partition("#")
    assert dies_in_child(lambda: update(path, [ONE, TWO], hook=killer_at_step(step, int(nth or 1))))
    MaildirDrop.open(path, "qpt").close()                  # the next login
    assert list(files(path).values()) == [THREE]
    octets = sum(int(line.split()[0]) for line in quota_lines(path)[1:])
    count = sum(int(line.split()[1]) for line in quota_lines(path)[1:])
    assert octets >= len(THREE) and count >= 1
    if STEPS.index(kill_at) > STEPS.index("update:quota"):
        assert (octets, count) == (len(THREE), 1)
    if kill_at == "update:unlink":                         # nothing removed yet: recovery counts
        assert (octets, count) == (len(THREE), 1)


def test_another_owners_maildirsize_is_not_written(tmp_path):
    """The session runs as the user: a `maildirsize` of another owner (root's, left by a
    restore, but writable) is not the user's quota to change."""
    path, _ = mailbox_with_quota(tmp_path)
    quota = os.path.join(path, QUOTA_FILE)
    os.chown(quota, os.geteuid() + 4242, -1)
    os.chmod(quota, 0o666)
    before = quota_lines(path)
    logged = []
    update(path, [TWO], log=lambda priority, text: logged.append(text))
    assert quota_lines(path) == before
    assert any("(another owner's file)" in t for t in logged)
