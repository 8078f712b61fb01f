"""Disk full at every write step of a session (root only: a small tmpfs mounted by the test).

For each scenario the session's steps are recorded once; then, for every write step in turn
(each write, copy chunk, extension, allocation, journal and cache write), the session runs
again on a fresh 1 MiB tmpfs and, just before that step, a filler file takes every free page,
so the step (or the next one that needs room) meets a real ENOSPC from the kernel. Then:

- a step that failed says `-ERR [SYS/TEMP]` (an `Overquota: ...` text), never another code;
- once the filler is gone, the next session serves every message exactly once, byte for byte
  as either the update happened or it did not (never partly), and leaves no journal, image,
  temporary or lock file that a later session could misread.

Scenarios: normal mode's login (the copy to the temporary drop), normal mode's update,
server mode's rewrite (copy and fast-update), server mode's cache write. A last test does
the same through the real server, where the client sees the reply. A real quota (EDQUOT) is
tried on a loop-mounted ext4 with the quota feature; kernels built without the quota format
(CONFIG_QFMT_V2) refuse to mount it, and that test then skips saying so (docs/maildrop.md,
"Disk full and quota").
"""

from __future__ import annotations

import errno
import os
import pathlib
import poplib
import shutil
import subprocess
from collections import Counter

import pytest

from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.spoolcheck import (LOCK_STEP_S, USER, deliver, fill_up, message,
                                      next_session_view, small_tmpfs)
from tests.helpers.sysusers import make_spool
from tests.server_harness import Site, login, make_spool_dir

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

SPOOL = b"".join(message(n, body_lines=40) for n in range(1, 41))       # ~50 KiB
NEW_MAIL = message(100, body_lines=40) + message(101)
DELETED = {0, 3, 39}
RETRIEVED = {1, 2}
WRITE_WORDS = ("write", "copy", "extend", "allocate", "pad", "create", "rename", "link",
               "truncate")
"""Steps that may need room (an unlink or fsync never does)."""
SCENARIOS = {
    # name: (config options, phase whose steps get the full disk, deletes at QUIT)
    "normal-login": ({}, "open", DELETED),
    "normal-update": ({}, "update", DELETED),
    "server-rewrite": ({"server_mode": True}, "update", DELETED),
    "server-fast-update": ({"server_mode": True, "fast_update": True}, "update", DELETED),
    "server-cache": ({"server_mode": True, "update_status_headers": False}, "update", set()),
}


def make_cfg(spool_dir, scenario: str) -> Config:
    return Config.defaults().replace(spool_dir=str(spool_dir), **SCENARIOS[scenario][0])


def prepare(mnt) -> None:
    for name in os.listdir(mnt):
        path = os.path.join(mnt, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    cfg = Config.defaults().replace(spool_dir=str(mnt))
    with open(SpoolPaths.for_user(cfg, USER, None).spool, "wb") as f:
        f.write(SPOOL)


def session(mnt, scenario: str, hook, *, quit_with_update: bool = True) -> None:
    """Login, RETR, mail arrives, QUIT; or only the login (the mail stays in the temporary
    drop, as after a dropped connection)."""
    cfg = make_cfg(mnt, scenario)
    paths = SpoolPaths.for_user(cfg, USER, None)
    drop = Maildrop.open(cfg, paths, USER, step_hook=hook, lock_step_s=LOCK_STEP_S)
    if not quit_with_update:
        drop.close()                    # the mail stays in the temporary drop
        return
    try:
        for i in sorted(RETRIEVED):
            drop.send(i, lambda data: None)
        deliver(cfg, NEW_MAIL)
    except BaseException:
        drop.close()
        raise
    drop.update(set(SCENARIOS[scenario][2]), set(RETRIEVED))


def view(mnt, scenario: str):
    return next_session_view(make_cfg(mnt, scenario), mnt)


def write_steps(steps: list[str], phase: str) -> list[int]:
    """Indices of the phase's steps that may need room, at most two of each name (the chunks
    of one copy are alike)."""
    seen: Counter = Counter()
    picked = []
    for k, name in enumerate(steps):
        if name.startswith(phase + ":") and any(w in name for w in WRITE_WORDS):
            seen[name] += 1
            if seen[name] <= 2:
                picked.append(k)
    return picked


@pytest.fixture
def small_fs(tmp_path):
    with small_tmpfs(tmp_path / "small") as mnt:
        yield mnt


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_disk_full_at_every_write_step(small_fs, scenario):
    _, phase, _ = SCENARIOS[scenario]
    prepare(small_fs)
    spool_only, _ = view(small_fs, scenario)                    # what was delivered before
    prepare(small_fs)
    cfg = make_cfg(small_fs, scenario)
    deliver(cfg, NEW_MAIL)
    kept_all, leftovers = view(small_fs, scenario)             # nothing deleted, new mail in
    assert len(kept_all) == len(SPOOL.split(b"\nFrom ")) + 2 and leftovers == []
    prepare(small_fs)
    steps: list[str] = []
    session(small_fs, scenario, steps.append)
    committed, leftovers = view(small_fs, scenario)
    assert leftovers == [] and len(committed) == len(kept_all) - len(SCENARIOS[scenario][2])
    if scenario == "server-cache":
        assert "update:cache-write" in steps
    picked = write_steps(steps, phase)
    assert len(picked) >= 2, steps
    refused = Counter()
    for k in picked:
        prepare(small_fs)
        state: dict = {}

        def fill_before_step(name, k=k, counter=[0]):
            if counter[0] == k:
                state["filler"] = fill_up(small_fs)
            counter[0] += 1
        where = f"{scenario}: disk full before step {k} {steps[k]!r}"
        try:
            session(small_fs, scenario, fill_before_step, quit_with_update=phase != "open")
        except PopError as exc:
            assert exc.code is RespCode.SYS_TEMP, where
            assert exc.text.startswith("Overquota"), (where, exc.text)
            assert "/" not in exc.text, where
            refused[steps[k]] += 1
        assert "filler" in state, where
        os.unlink(state["filler"])                              # room again
        seen, leftovers = view(small_fs, scenario)
        assert leftovers == [], where
        if phase == "open":                           # the login failed, or went through
            assert seen == spool_only, where
        else:
            assert seen in (kept_all, committed), where
    if scenario != "server-cache":                  # the cache is a hint: its loss is no error
        assert refused, f"{scenario}: no step met the full disk"
    assert sum(refused.values()) >= (0 if scenario == "server-cache" else 2), refused


def test_a_failed_cache_write_leaves_nothing_a_later_session_trusts(small_fs):
    """The cache write meets the full disk half way: the session still ends well (a cache
    is only a hint), and the next session scans instead of reading a cut cache."""
    scenario = "server-cache"
    prepare(small_fs)
    state = {}

    def fill_at_cache(name):
        if name == "update:cache-write":
            state["filler"] = fill_up(small_fs)
            os.truncate(state["filler"], os.path.getsize(state["filler"]) - 1024)
    session(small_fs, scenario, fill_at_cache)
    os.unlink(state["filler"])
    cfg = make_cfg(small_fs, scenario)
    paths = SpoolPaths.for_user(cfg, USER, None)
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=LOCK_STEP_S)
    try:
        assert drop.server_mode and drop.scan_region[0] == 0      # scanned, not trusted
        assert len(drop.messages) == 42
    finally:
        drop.close()


def test_the_client_gets_sys_temp_and_the_next_session_everything(world_tmp, pam_service,
                                                                    system_users):
    """Through the real server: a full disk at login (the copy to the temporary drop) and at
    QUIT (the update) answers `-ERR [SYS/TEMP]`; with room again the next session has every
    message once, and its update goes through."""
    mnt = os.path.join(world_tmp, "small")
    with small_tmpfs(pathlib.Path(mnt)):
        os.chmod(mnt, 0o755)
        spool_dir = make_spool_dir(mnt)
        site = Site(world_tmp, pam_service, spool_dir=spool_dir)
        try:
            user = system_users.create()
            make_spool(spool_dir, user, SPOOL)
            server = site.server()
            filler = fill_up(mnt)
            with pytest.raises(poplib.error_proto) as refused:
                login(server, user)
            assert refused.value.args[0].startswith(b"-ERR [SYS/TEMP] Overquota")
            os.unlink(filler)
            with open(os.path.join(spool_dir, user.name), "rb") as f:
                assert f.read() == SPOOL
            client = login(server, user)
            assert client.stat()[0] == 40
            client.dele(1)
            filler = fill_up(mnt)
            with pytest.raises(poplib.error_proto) as refused:
                client.quit()
            client.close()
            assert refused.value.args[0].startswith(b"-ERR [SYS/TEMP] Overquota")
            os.unlink(filler)
            client = login(server, user)
            subjects = [client.top(n, 0)[1][0] for n in range(1, 41)]
            assert subjects == [b"Subject: message %d" % n for n in range(1, 41)]
            client.dele(1)
            assert client.quit().startswith(b"+OK")
            client = login(server, user)
            assert client.stat()[0] == 39
            client.quit()
            assert not [name for name in os.listdir(spool_dir)
                        if name.endswith((".journal", ".new", ".tmp", ".lock"))]
        finally:
            site.close()


def quota_fs(tmp_path):
    """An 8 MiB ext4 image with the quota feature, loop-mounted; None with the reason when
    the kernel or the tools refuse."""
    if not (shutil.which("mkfs.ext4") and shutil.which("setquota")):
        return None, "needs mkfs.ext4 and setquota (Debian packages e2fsprogs and quota)"
    image, mnt = tmp_path / "quota.img", tmp_path / "quota"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "quota", str(image)], check=True,
                   capture_output=True, timeout=60)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)],
                             capture_output=True, text=True, timeout=60)
    if mounted.returncode != 0:
        return None, ("the kernel refuses to mount ext4 with the quota feature (built without "
                      "CONFIG_QUOTA/CONFIG_QFMT_V2): no real EDQUOT on this machine; the "
                      "same code path is tested with ENOSPC on tmpfs")
    return mnt, ""


def test_a_real_quota_gives_sys_temp_and_keeps_the_mail(tmp_path):
    mnt, reason = quota_fs(tmp_path)
    if mnt is None:
        pytest.skip(reason)
    try:
        uid = 4_000_123
        spool_dir = mnt / "spool"
        spool_dir.mkdir()
        os.chown(spool_dir, uid, -1)
        subprocess.run(["setquota", "-u", str(uid), "40", "40", "0", "0", str(mnt)],
                       check=True, timeout=30)
        cfg = Config.defaults().replace(spool_dir=str(spool_dir))
        paths = SpoolPaths.for_user(cfg, USER, None)
        with open(paths.spool, "wb") as f:
            f.write(SPOOL)
        os.chown(paths.spool, uid, -1)
        pid = os.fork()
        if pid == 0:                               # the session runs as the user: quota holds
            code = 1
            try:
                os.setresuid(uid, uid, uid)
                try:
                    Maildrop.open(cfg, paths, USER, lock_step_s=LOCK_STEP_S).close()
                except PopError as exc:
                    code = 0 if (exc.code is RespCode.SYS_TEMP
                                 and exc.text.startswith("Overquota")) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with open(paths.spool, "rb") as f:
            assert f.read() == SPOOL                 # the spool still has all of it
        assert errno.EDQUOT
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)


def test_a_server_mode_rewrite_for_a_stale_length_on_a_full_disk(world_tmp, pam_service,
                                                                  system_users):
    """Server mode, QUIT without DELE: a Content-Length its scan did not honour makes QUIT
    rewrite the spool (docs/mbox.md, "What write-back writes"). On a full disk that fails:
    `-ERR [SYS/TEMP]` with server mode's text (the mail is in the spool, unchanged, not in a
    temporary maildrop; docs/maildrop.md, "Disk full and quota"), nothing is lost, and with
    room again the next QUIT goes through."""
    stale = message(1, extra_headers=b"Content-Length: 99999\n") + SPOOL
    mnt = os.path.join(world_tmp, "small")
    with small_tmpfs(pathlib.Path(mnt)):
        os.chmod(mnt, 0o755)
        spool_dir = make_spool_dir(mnt)
        site = Site(world_tmp, pam_service, spool_dir=spool_dir, server_mode=True)
        try:
            user = system_users.create()
            make_spool(spool_dir, user, stale)
            server = site.server()
            client = login(server, user)
            assert client.stat()[0] == 41
            filler = fill_up(mnt)
            with pytest.raises(poplib.error_proto) as refused:
                client.quit()
            client.close()
            reply = refused.value.args[0]
            assert reply == (b"-ERR [SYS/TEMP] Overquota: error updating primary drop.  "
                             b"Your mail is intact; this session's changes are not applied")
            with open(os.path.join(spool_dir, user.name), "rb") as f:
                assert f.read() == stale
            os.unlink(filler)
            client = login(server, user)
            assert client.stat()[0] == 41
            assert client.quit().startswith(b"+OK")
            with open(os.path.join(spool_dir, user.name), "rb") as f:
                assert b"Content-Length: 99999" not in f.read()
            assert not [name for name in os.listdir(spool_dir)
                        if name.endswith((".journal", ".new", ".tmp", ".lock"))]
        finally:
            site.close()
