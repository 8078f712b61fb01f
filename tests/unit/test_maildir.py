"""Maildir mailboxes in one process: messages written by Python's mailbox.Maildir (the model of
a delivery agent) come out of RETR and TOP byte for byte; UIDs are the base names, stable
across sessions and the new -> cur move; sizes from ,W= or counted; the index answers
without touching the message files when nothing changed; UPDATE deletes and marks seen
exactly once, even when killed at any step; another program's changes are survived."""

from __future__ import annotations

import json
import mailbox
import os
import random
import shutil
import subprocess
import sys

import pytest

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import maildir
from qpopper.spool.maildir_drop import JOURNAL_NAME, MaildirDrop
from tests.helpers.maildirs import make_maildir, retr, settle, wire
from tests.helpers.spoolcheck import another_host, dies_in_child, killer_at_step


def delivered(path, key) -> bytes:
    """The message file as the delivery agent wrote it (mailbox may add the empty line that
    ends a header without a body)."""
    with open(os.path.join(path, "new", key), "rb") as f:
        return f.read()


def random_message(rng: random.Random, n: int) -> bytes:
    lines = [b"From: sender%d@example.org" % n, b"Subject: message %d" % n]
    if rng.random() < 0.2:
        lines.append(b"X-UIDL: uidl-from-header-%08d" % n)
    lines.append(b"")
    for _ in range(rng.randrange(0, 30)):
        kind = rng.random()
        if kind < 0.1:
            lines.append(b"." * rng.randrange(1, 4) + b"dotted")
        elif kind < 0.15:
            lines.append(b"")
        elif kind < 0.2:
            lines.append(b"with\0nul")
        else:
            lines.append(bytes(rng.choice(b"abcdefgh xyz") for _ in range(rng.randrange(0, 90))))
    ending = rng.choice([b"\n", b"\n\n", b"\n\n\n", b""])
    eol = b"\r\n" if rng.random() < 0.1 else b"\n"
    return eol.join(lines) + ending.replace(b"\n", eol)


def test_retr_and_top_are_the_delivered_bytes(tmp_path):
    rng = random.Random(1939)
    messages = [random_message(rng, n) for n in range(300)]
    path, keys = make_maildir(tmp_path, messages)
    drop = MaildirDrop.open(path, "qpt")
    try:
        assert len(drop.messages) == len(messages)
        by_base = {maildir.base_name(m.name): i for i, m in enumerate(drop.messages)}
        for key in keys:
            data = delivered(path, key)
            index = by_base[key]
            sent = retr(drop, index)
            assert sent == wire(data)
            head, _, body = wire(data).partition(b"\r\n\r\n")
            for lines in (0, 1, 3):
                top = retr(drop, index, body_lines=lines)
                if b"\r\n\r\n" in wire(data):
                    expected = head + b"\r\n\r\n" + b"".join(
                        line + b"\r\n" for line in body.split(b"\r\n")[:-1][:lines])
                    assert top == expected
    finally:
        drop.close()


def test_octets_are_what_retr_sends_before_dot_stuffing(tmp_path):
    messages = [b"Subject: a\n\n.dot\nline\n", b"Subject: b\r\n\r\nno final newline",
                b"Subject: c\n\n\n\n"]
    path, keys = make_maildir(tmp_path, messages)
    drop = MaildirDrop.open(path, "qpt")
    try:
        for message in drop.messages:
            unstuffed = retr(drop, drop.messages.index(message)).replace(b"\r\n..", b"\r\n.")
            assert message.octets == len(unstuffed)
    finally:
        drop.close()


def test_a_file_ending_in_a_bare_cr_is_listed_with_the_octets_retr_sends(tmp_path):
    raw = [b"Subject: a\n\nlast\r", b"Subject: b\n\ncr\r\r"]
    path, keys = make_maildir(tmp_path, [b"a", b"b"])
    for key, data in zip(keys, raw):            # as written: mailbox would change the CRs
        name = os.path.join(path, "new", key)
        st = os.stat(name)
        with open(name, "wb") as f:
            f.write(data)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns))
    drop = MaildirDrop.open(path, "qpt")
    try:
        sent = [retr(drop, i) for i in range(len(drop.messages))]
        assert sorted(sent) == [b"Subject: a\r\n\r\nlast\r\n", b"Subject: b\r\n\r\ncr\r\r\n"]
        assert [m.octets for m in drop.messages] == [len(s) for s in sent]
    finally:
        drop.close()


def test_uids_are_base_names_and_survive_the_move_to_cur_and_flags(tmp_path):
    path, keys = make_maildir(tmp_path, [b"Subject: %d\n\nbody\n" % n for n in range(5)])
    drop = MaildirDrop.open(path, "qpt")
    before = {m.uid for m in drop.messages}
    assert before == set(keys)
    deleted_uid = drop.messages[0].uid
    drop.update(deleted={0}, retrieved={1, 2})
    drop = MaildirDrop.open(path, "qpt")
    after = {m.uid: m for m in drop.messages}
    assert set(after) == before - {deleted_uid}
    seen = [m for m in drop.messages if m.retrieved]
    assert len(seen) == 2 and all(m.name.startswith("cur/") and m.name.endswith(":2,S")
                                  for m in seen)
    # Another program adds flags: the UID stays.
    old = seen[0].name
    os.rename(os.path.join(path, old), os.path.join(path, old + "F"))
    drop.close()
    drop = MaildirDrop.open(path, "qpt")
    assert {m.uid for m in drop.messages} == set(after)
    drop.close()


def test_an_honoured_x_uidl_header_is_the_uid_and_duplicates_stay_unique(tmp_path):
    header = b"X-UIDL: 0123456789abcdefXYZ\n"
    path, _ = make_maildir(tmp_path, [b"Subject: a\n" + header + b"\nx\n",
                                      b"Subject: b\n" + header + b"\ny\n",
                                      b"Subject: c\nX-UIDL: short\n\nz\n"])
    drop = MaildirDrop.open(path, "qpt")
    uids = [m.uid for m in drop.messages]
    drop.close()
    assert uids.count("0123456789abcdefXYZ") == 1 and len(set(uids)) == 3
    assert "short" not in uids


def test_long_or_odd_base_names_get_a_valid_pop3_uid(tmp_path):
    path, _ = make_maildir(tmp_path, [])
    long_name = "1700000000." + "x" * 90 + ",S=10"
    for name in (long_name, "1700000001.with space"):
        with open(os.path.join(path, "new", name), "wb") as f:
            f.write(b"Subject: x\n\nbody\n")
    drop = MaildirDrop.open(path, "qpt")
    try:
        for message in drop.messages:
            assert 0 < len(message.uid) <= 70
            assert all(0x21 <= ord(c) <= 0x7E for c in message.uid)
    finally:
        drop.close()


def test_a_delivery_agents_w_size_is_used_without_reading_the_body(tmp_path):
    path, _ = make_maildir(tmp_path, [])
    name = "1700000000.M1P1.host,S=20,W=1234"
    with open(os.path.join(path, "new", name), "wb") as f:
        f.write(b"Subject: x\n\nbody\n")
    drop = MaildirDrop.open(path, "qpt")
    assert drop.messages[0].octets == 1234
    drop.close()


def test_one_session_per_mailbox_and_deliveries_go_on(tmp_path):
    path, _ = make_maildir(tmp_path, [b"Subject: a\n\nx\n"])
    first = MaildirDrop.open(path, "qpt")
    try:
        with pytest.raises(PopError) as refused:
            MaildirDrop.open(path, "qpt")
        assert refused.value.code is RespCode.IN_USE
        box = mailbox.Maildir(path, create=False)            # a delivery is never blocked
        box.add(b"Subject: during\n\nnew mail\n")
        box.close()
    finally:
        first.close()
    second = MaildirDrop.open(path, "qpt")
    assert len(second.messages) == 2
    second.close()


def test_the_index_answers_on_another_host_of_an_nfs_maildir(tmp_path):
    """Another host sees the directories under another device number: the index it finds
    still describes them."""
    path, _ = make_maildir(tmp_path, [b"Subject: %d\n\nbody\n" % n for n in range(3)])
    MaildirDrop.open(path, "qpt").close()
    settle(path)
    with another_host():
        assert maildir._unchanged(maildir.load_index(path), maildir._dir_stamps(path))


def test_the_index_answers_without_touching_message_files(tmp_path):
    path, _ = make_maildir(tmp_path, [b"Subject: %d\n\nbody\n" % n for n in range(200)])
    MaildirDrop.open(path, "qpt").close()
    settle(path)
    trace = tmp_path / "trace"
    code = ("import sys; from qpopper.spool.maildir_drop import MaildirDrop; "
            "d = MaildirDrop.open(sys.argv[1], 'qpt'); print(len(d.messages)); d.close()")
    result = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,%desc", "-o", str(trace),
                             sys.executable, "-c", code, path], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "200", result.stderr
    calls = [line for line in trace.read_text().splitlines() if path in line]
    # two stat calls of new/ and cur/ are the check; no listing (an open of the directory)
    # and no message file
    opened = [line for line in calls if "open" in line.split("(", 1)[0]
              and (f"{path}/new" in line or f"{path}/cur" in line)]
    assert opened == []
    # A new delivery changes new/'s mtime: then it lists again and measures only the new file.
    box = mailbox.Maildir(path, create=False)
    box.add(b"Subject: new\n\nbody\n")
    box.close()
    drop = MaildirDrop.open(path, "qpt")
    assert len(drop.messages) == 201
    drop.close()


def test_a_message_removed_by_another_program_is_reported_not_a_crash(tmp_path):
    path, _ = make_maildir(tmp_path, [b"Subject: a\n\nx\n", b"Subject: b\n\ny\n"])
    drop = MaildirDrop.open(path, "qpt")
    try:
        first = [retr(drop, i) for i in (0, 1)].index(wire(b"Subject: a\n\nx\n"))
        gone, moved = drop.messages[first], drop.messages[1 - first]
        os.unlink(os.path.join(path, gone.name))
        with pytest.raises(PopError) as error:
            drop.check_available(first)
        assert error.value.code is RespCode.SYS_TEMP and "removed" in str(error.value)
        os.rename(os.path.join(path, moved.name),           # a MUA moved it to cur/ meanwhile
                  os.path.join(path, "cur", moved.base + ":2,R"))
        assert retr(drop, 1 - first) == wire(b"Subject: b\n\ny\n")
        drop.update(deleted={first}, retrieved={1 - first})  # the gone one is skipped
    finally:
        drop.close()
    names = sorted(os.listdir(os.path.join(path, "cur")))
    assert names == [moved.base + ":2,RS"]


def test_retr_opens_the_message_once_and_every_descriptor_is_closed(tmp_path, monkeypatch):
    """check_available (before the +OK) keeps the file it opened for the send that follows:
    one open per RETR. A check not followed by its send (another message sent, or the
    session ended) leaves no descriptor behind, and a message removed between the check and
    the send is still sent whole from the open file."""
    from qpopper.spool import maildir_drop
    path, _ = make_maildir(tmp_path, [b"Subject: a\n\nx\n", b"Subject: b\n\ny\n"])
    opened = []
    real_open = os.open

    def counting_open(name, *args, **kwargs):
        fd = real_open(name, *args, **kwargs)
        if isinstance(name, str) and os.sep + "new" + os.sep in name:
            opened.append(fd)
        return fd
    monkeypatch.setattr(maildir_drop.os, "open", counting_open)

    def open_now() -> set[int]:
        return {fd for fd in opened if os.path.exists(f"/proc/self/fd/{fd}")
                and os.readlink(f"/proc/self/fd/{fd}").startswith(path)}
    drop = MaildirDrop.open(path, "qpt")
    try:
        texts = [wire(b"Subject: a\n\nx\n"), wire(b"Subject: b\n\ny\n")]
        first = [retr(drop, i) for i in (0, 1)].index(texts[0])
        opened.clear()
        drop.check_available(first)
        assert retr(drop, first) == texts[0]
        assert len(opened) == 1 and not open_now()             # one open, and it is closed
        drop.check_available(first)
        assert retr(drop, 1 - first) == texts[1]               # not the checked one
        assert not open_now()
        drop.check_available(first)
        os.unlink(os.path.join(path, drop.messages[first].name))
        assert retr(drop, first) == texts[0]                   # removed after the +OK
        drop.check_available(1 - first)
    finally:
        drop.close()
    assert not open_now()                                       # close() closed the checked one


STEPS_TO_KILL = ["update:journal-write", "update:journal-fsync", "update:journal-commit-rename",
                 "update:unlink", "update:unlink#2", "update:rename", "update:rename#2",
                 "update:fsync-dirs", "update:journal-unlink", "update:index-write",
                 "update:index-rename"]


def state(path):
    """{base name: (subdir, flags, content)} of every message file."""
    result = {}
    for sub in maildir.SUBDIRS:
        for name in os.listdir(os.path.join(path, sub)):
            with open(os.path.join(path, sub, name), "rb") as f:
                result[maildir.base_name(name)] = (sub, maildir.flags_of(name), f.read())
    return result


@pytest.mark.parametrize("kill_at", STEPS_TO_KILL)
def test_kill_at_every_update_step_leaves_the_update_done_once_or_not_at_all(tmp_path, kill_at):
    contents = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(6)]
    (tmp_path / "pristine").mkdir()
    pristine, _ = make_maildir(tmp_path / "pristine", contents)
    path = str(tmp_path / "box")
    shutil.copytree(pristine, path)
    before = state(path)
    drop = MaildirDrop.open(path, "qpt")
    order = [m.base for m in drop.messages]
    drop.close()
    deleted, retrieved = {0, 3}, {1, 3, 4}

    step_name, _, nth = kill_at.partition("#")
    hook = killer_at_step(step_name, int(nth or 1))
    killed = dies_in_child(lambda: MaildirDrop.open(path, "qpt", step_hook=hook)
                           .update(deleted, retrieved))
    assert killed, f"the update never reached {kill_at}"

    after_next_login = MaildirDrop.open(path, "qpt")
    after_next_login.close()
    now = state(path)
    done = {base: value for base, value in before.items()
            if base not in {order[i] for i in deleted}}
    for i in retrieved - deleted:
        _, _, content = done[order[i]]
        done[order[i]] = ("cur", "S", content)
    assert now in (before, done), f"killed={killed} at {kill_at}"
    committed = STEPS_TO_KILL.index(kill_at) > STEPS_TO_KILL.index("update:journal-commit-rename")
    # (killed at the second unlink or rename: the first was taken, the journal finishes it)
    assert now == (done if committed else before)
    assert not os.path.exists(os.path.join(path, JOURNAL_NAME))
    assert len({m for m in now}) == len(now)               # every message once


def test_a_damaged_journal_refuses_the_mailbox_and_touches_nothing(tmp_path):
    path, _ = make_maildir(tmp_path, [b"Subject: a\n\nx\n"])
    before = state(path)
    with open(os.path.join(path, JOURNAL_NAME), "w") as f:
        json.dump({"version": 1, "steps": [["unlink", "../../etc/passwd"]]}, f)
    with pytest.raises(PopError) as refused:
        MaildirDrop.open(path, "qpt")
    assert refused.value.code is RespCode.SYS_TEMP
    assert state(path) == before and os.path.exists(os.path.join(path, JOURNAL_NAME))


def test_the_option_pattern_picks_maildir_users_only(tmp_path):
    home = tmp_path / "home"
    (home / "Maildir").mkdir(parents=True)
    assert maildir.maildir_path("~/Maildir", "u", str(home)) is None       # no cur/new/tmp yet
    for sub in ("cur", "new", "tmp"):
        (home / "Maildir" / sub).mkdir()
    assert maildir.maildir_path("~/Maildir", "u", str(home)) == str(home / "Maildir")
    assert maildir.maildir_path("%h/Maildir", "u", str(home)) == str(home / "Maildir")
    assert maildir.maildir_path(str(tmp_path / "%u"), "home", None) is None
    assert maildir.maildir_path(None, "u", str(home)) is None
    assert maildir.maildir_path("relative/%u", "u", str(home)) is None


def test_a_fifo_or_an_oversized_file_in_place_of_the_index_is_ignored_not_waited_on(tmp_path):
    """The index is the user's file: a FIFO there must not hang the session that holds the
    Maildir's lock, and a huge file is not read; both are logged and the Maildir is listed."""
    path = str(tmp_path / "Maildir")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub))
    with open(os.path.join(path, "new", "1764000000.M1P1.host"), "wb") as f:
        f.write(b"Subject: one\n\nbody\n")
    index = os.path.join(path, maildir.INDEX_NAME)
    logged = []
    os.mkfifo(index)
    assert maildir.load_index(path, lambda p, text: logged.append(text)) is None
    os.unlink(index)
    with open(index, "wb") as f:
        f.truncate(maildir.MAX_INDEX_OCTETS + 1)
    assert maildir.load_index(path, lambda p, text: logged.append(text)) is None
    assert len(logged) == 2 and all("ignored" in text for text in logged)


def test_a_crashed_index_writers_temporary_file_is_cleared_by_the_next_write(tmp_path):
    """The index's temporary file has one name (writers hold the Maildir's lock): what a
    crashed writer left there is replaced by the next listing's index, never left beside it,
    and a link planted there is not written through."""
    path = str(tmp_path / "Maildir")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub))
    with open(os.path.join(path, "new", "1764000000.M1P1.host"), "wb") as f:
        f.write(b"Subject: one\n\nbody\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not the index's")
    os.symlink(elsewhere, os.path.join(path, maildir.INDEX_TEMP_NAME))
    assert [m.name for m in maildir.scan(path)] == ["new/1764000000.M1P1.host"]
    assert elsewhere.read_bytes() == b"not the index's"
    assert sorted(n for n in os.listdir(path) if "index" in n) == [maildir.INDEX_NAME]
    assert maildir.load_index(path) is not None


def test_a_deleted_message_gone_is_never_found_again_as_another_with_its_base_name(tmp_path):
    """Two different files with one base name (a user's copy in cur/ of a message in new/):
    the session lists both. The one marked deleted is expunged by another program before
    UPDATE; UPDATE must not take the other, which the session lists as a message of its
    own, for it renamed: that one stays."""
    path, (key,) = make_maildir(tmp_path, [b"Subject: a\n\nx\n"])
    copy = os.path.join(path, "cur", key + ":2,S")
    with open(copy, "wb") as f:
        f.write(b"Subject: a copy, another message\n\ny\n")
    drop = MaildirDrop.open(path, "qpt")
    try:
        names = [m.name for m in drop.messages]
        assert sorted(names) == sorted([f"new/{key}", f"cur/{key}:2,S"])
        doomed = names.index(f"cur/{key}:2,S")
        os.unlink(copy)                                  # expunged by an IMAP server meanwhile
        drop.update(deleted={doomed}, retrieved=set())
    finally:
        drop.close()
    assert os.listdir(os.path.join(path, "new")) == [key]
    with open(os.path.join(path, "new", key), "rb") as f:
        assert f.read().startswith(b"Subject: a\n")
