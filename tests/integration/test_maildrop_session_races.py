"""Sessions of one user racing each other (docs/maildrop.md, "The locking rules";
docs/maildir.md, "One session per mailbox"): two processes (two hosts' sessions) run 30 sessions
each of one user back to back (bulletins, open, read every message, delete some, QUIT or abort)
while delivery agents append: dotlockfile, procmail's lockfile and a plain fcntl appender that
takes no dot-lock (and creates a missing spool), or a Maildir delivery. Every answer must be
+OK, [IN-USE] (another session has the mailbox) or [SYS/TEMP] for a spool lock that stayed
busy: never [SYS/PERM], a format error or an exception; no two sessions may own the mailbox
at once. And afterwards every message is there exactly once unless a committed update deleted
it (each deletion once)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from qpopper import bulletins, bulletins_maildir
from qpopper.auth import Login
from qpopper.config import Config
from qpopper.spool.maildir_drop import MaildirDrop
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.repo import REPO
from tests.helpers.spoolcheck import MESSAGE_ID, USER, old_message

OLD_MESSAGES = 10
DELIVERIES = 45
SESSIONS = 30               # completed sessions per racer...
ATTEMPTS = 1000             # ...within this many logins (a bound, not a rate)
BULLETINS = 2
LOCK_STEP_S = 0.02          # short waits: busy locks show up as [SYS/TEMP], which is allowed
MBOX_AGENTS = ["dotlockfile", "lockfile", "fcntl"]
DOTLOCK_AGENTS = ["dotlockfile", "lockfile"]
SPOOL_BUSY = "SYS_TEMP: Unable to lock the maildrop; try again later."

RACES = {   # name: (options of racer 1, options of racer 2, delivery agents, spool at start)
    "normal": ({}, {}, MBOX_AGENTS, True),
    "normal-new-user": ({}, {}, ["fcntl"], False),
    "normal-no-atomic-open": ({"no_atomic_open": True}, {"no_atomic_open": True},
                              MBOX_AGENTS, True),
    "server": ({"server_mode": True}, {"server_mode": True}, MBOX_AGENTS, True),
    # fast-update renames over the spool: an agent that opens before locking and never
    # checks the name again loses mail (docs/maildrop.md, "Server mode: the update")
    "server-fast-update": ({"server_mode": True, "fast_update": True},
                           {"server_mode": True, "fast_update": True}, DOTLOCK_AGENTS, True),
    "normal-and-server": ({}, {"server_mode": True}, MBOX_AGENTS, True),
    "maildir": ({}, {}, ["maildir"], True),
}

RACER = textwrap.dedent("""
    import collections, fcntl, json, os, random, sys, time
    from qpopper import bulletins, bulletins_maildir
    from qpopper.auth import Login
    from qpopper.config import Config
    from qpopper.pop3.responses import PopError
    from qpopper.spool.maildir_drop import MaildirDrop
    from qpopper.spool.maildrop import Maildrop
    from qpopper.spool.paths import SpoolPaths
    from tests.helpers.spoolcheck import MESSAGE_ID

    a = json.loads(sys.argv[1])
    cfg = Config.defaults().replace(**a["options"])
    login = Login(a["user"], os.geteuid(), os.getegid(), a["home"], "USER")
    paths = SpoolPaths.for_user(cfg, a["user"], a["home"])
    rng = random.Random(a["seed"])
    outcomes, deleted, owned = collections.Counter(), [], []

    # Jitter widens the windows between the steps (a lock file opened, checked, flock'ed;
    # each step of open, update and bulletins), so the racers meet in the middle of each
    # other's: a drop unlinked after our open, or after our check and before our flock.
    real_open, real_flock = os.open, fcntl.flock

    def jittered_open(path, *args, **kw):
        fd = real_open(path, *args, **kw)
        if str(path).endswith((".pop", ".lock")) and rng.random() < 0.5:
            time.sleep(rng.uniform(0, 0.003))
        return fd

    def jittered_flock(fd, operation):
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 0.003))
        return real_flock(fd, operation)
    os.open, fcntl.flock = jittered_open, jittered_flock

    def jitter(step):
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0, 0.002))

    def session():
        if a["maildir"]:
            bulletins_maildir.deliver(cfg, login, a["maildir"], "h", lambda p, t: None,
                                      step_hook=jitter)
            return MaildirDrop.open(a["maildir"], a["user"], step_hook=jitter)
        bulletins.deliver(cfg, login, paths, "h", lambda p, t: None, lock_step_s=a["step"],
                          step_hook=jitter)
        return Maildrop.open(cfg, paths, a["user"], jitter, lock_step_s=a["step"])

    def ids_of(drop):
        ids = []
        for i in range(len(drop.messages)):
            parts = []
            drop.send(i, parts.append, body_lines=0)
            found = MESSAGE_ID.search(b"".join(parts))
            ids.append(found.group(1).decode() if found else "no id")
        return ids

    # Both racers start together: one's start-up must not outlast the other's sessions.
    open(os.path.join(a["barrier"], f"ready-{a['seed']}"), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(a["barrier"])) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)

    for _ in range(a["attempts"]):
        if outcomes["ok"] == a["sessions"]:
            break
        time.sleep(rng.uniform(0, 0.006))     # a client's pace: the racers interleave
        try:
            drop = session()
        except PopError as refusal:
            outcomes[f"{refusal.code.name}: {refusal.text}"] += 1
            continue
        owned_from = time.monotonic()       # the mailbox is ours from here...
        try:
            ids = ids_of(drop)
            if len(set(ids)) != len(ids) or "no id" in ids:
                outcomes[f"a list with a message twice or unreadable: {ids}"] += 1
            doomed = {i for i in range(len(ids)) if rng.random() < 0.2}
            time.sleep(rng.uniform(0, 0.003))
            owned.append((owned_from, time.monotonic()))    # ...at least to here
            if rng.random() < 0.8:
                drop.update(doomed, set(range(len(ids))))
                deleted.extend(ids[i] for i in doomed)
            else:
                drop.restore()
            outcomes["ok"] += 1
        except PopError as refusal:
            outcomes[f"{refusal.code.name}: {refusal.text}"] += 1
            drop.close()
    print(json.dumps({"outcomes": outcomes, "deleted": deleted, "owned": owned}))
""")

DELIVERER = textwrap.dedent("""
    import fcntl, os, subprocess, sys, time
    target, count, agents = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    lock = target + ".lock"

    def dot_lock(take):
        while subprocess.run(take, stderr=subprocess.DEVNULL).returncode != 0:
            time.sleep(0.003)

    for n in range(count):
        agent = agents[n % len(agents)]
        text = (f"Subject: delivery {n}\\nMessage-Id: <delivered-{n}@example.org>\\n\\n"
                f"body {n}\\n")
        if agent == "maildir":
            name = f"{int(time.time())}.M{n:06d}P{os.getpid()}.racehost"
            with open(os.path.join(target, "tmp", name), "w") as f:
                f.write(text)
            os.rename(os.path.join(target, "tmp", name), os.path.join(target, "new", name))
            time.sleep(0.01)
            continue
        if agent == "dotlockfile":
            dot_lock(["dotlockfile", "-l", "-p", "-r", "0", lock])
        elif agent == "lockfile":
            dot_lock(["lockfile", "-r", "0", "-l", "300", lock])
        # fcntl alone: no dot-lock, and it creates a missing spool
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.write(fd, f"From agent@example.org Sat Dec  5 21:00:00 2026\\n{text}\\n".encode())
        finally:
            os.close(fd)
        if agent == "dotlockfile":
            subprocess.run(["dotlockfile", "-u", lock], check=True)
        elif agent == "lockfile":
            os.unlink(lock)
        time.sleep(0.01)
""")


def bulletin(n: int) -> bytes:
    return (b"From qpop Wed Nov  9 13:31:08 1994\nSubject: bulletin %d\n"
            b"Message-Id: <bulletin-%d@example.org>\n\nFor everyone.\n" % (n, n))


def maildir_message(n: int) -> bytes:
    return b"Subject: old %d\nMessage-Id: <old-%d@example.org>\n\nold body\n" % (n, n)


class World:
    """The user's spool (or Maildir), home and bulletin directory in tmp_path."""

    def __init__(self, tmp_path, maildir: bool, spool_at_start: bool):
        self.root = tmp_path
        self.home = tmp_path / "home"
        self.bulldir = tmp_path / "bulls"
        for directory in (self.home, self.bulldir, tmp_path / "spool"):
            directory.mkdir()
        for n in range(1, BULLETINS + 1):
            (self.bulldir / str(n)).write_bytes(bulletin(n))
            os.chmod(self.bulldir / str(n), 0o644)
        self.maildir = str(tmp_path / "Maildir") if maildir else None
        if maildir:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(self.maildir, sub))
            for n in range(OLD_MESSAGES):
                with open(os.path.join(self.maildir, "cur", f"1000{n:03d}.M1P1.old:2,"),
                          "wb") as f:
                    f.write(maildir_message(n))
        self.options = {"spool_dir": str(tmp_path / "spool"), "bulldir": str(self.bulldir),
                        "max_bulletins": BULLETINS}
        cfg = self.config({})
        self.paths = SpoolPaths.for_user(cfg, USER, str(self.home))
        if spool_at_start and not maildir:
            with open(self.paths.spool, "wb") as f:
                f.write(b"".join(old_message(n) for n in range(OLD_MESSAGES)))
        self.old = OLD_MESSAGES if spool_at_start else 0

    def config(self, options: dict):
        return Config.defaults().replace(**self.options, **options)

    def racer(self, options: dict, seed: int) -> subprocess.Popen:
        barrier = self.home.parent / "barrier"
        barrier.mkdir(exist_ok=True)
        args = {"options": {**self.options, **options}, "user": USER, "home": str(self.home),
                "maildir": self.maildir, "seed": seed, "sessions": SESSIONS,
                "attempts": ATTEMPTS, "step": LOCK_STEP_S, "barrier": str(barrier)}
        return subprocess.Popen([sys.executable, "-c", RACER, json.dumps(args)], cwd=str(REPO),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def deliverer(self, agents: list[str]) -> subprocess.Popen:
        target = self.maildir or self.paths.spool
        return subprocess.Popen([sys.executable, "-c", DELIVERER, target, str(DELIVERIES),
                                 ",".join(agents)], stderr=subprocess.PIPE, text=True)

    def final_ids(self) -> list[str]:
        """The next session's messages (its bulletin run delivers nothing new)."""
        login = Login(USER, os.geteuid(), os.getegid(), str(self.home), "USER")
        cfg = self.config({})
        if self.maildir:
            assert bulletins_maildir.deliver(cfg, login, self.maildir, "h", print) == 0
            drop = MaildirDrop.open(self.maildir, USER)
        else:
            assert bulletins.deliver(cfg, login, self.paths, "h", print) == 0
            drop = Maildrop.open(cfg, self.paths, USER)
        try:
            ids = []
            for i in range(len(drop.messages)):
                parts = []
                drop.send(i, parts.append, body_lines=0)
                ids.append(MESSAGE_ID.search(b"".join(parts)).group(1).decode())
            return ids
        finally:
            drop.restore()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("race", RACES)
def test_racing_sessions_of_one_user_say_ok_in_use_or_sys_temp_and_lose_nothing(tmp_path, race):
    first, second, agents, spool_at_start = RACES[race]
    for agent in agents:
        tool = {"dotlockfile": "dotlockfile", "lockfile": "lockfile"}.get(agent)
        if tool and shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (liblockfile-bin, procmail: make test installs them)")
    world = World(tmp_path, maildir=agents == ["maildir"], spool_at_start=spool_at_start)
    deliverer = world.deliverer(agents)
    racers = [world.racer(options, seed) for seed, options in enumerate((first, second))]
    outcomes: dict[str, int] = {}
    deleted: list[str] = []
    owned: list[tuple[float, float]] = []       # CLOCK_MONOTONIC: one clock for all processes
    for racer in racers:
        out, err = racer.communicate(timeout=150)
        assert racer.returncode == 0, err[-3000:]
        result = json.loads(out)
        for what, n in result["outcomes"].items():
            outcomes[what] = outcomes.get(what, 0) + n
        deleted += result["deleted"]
        owned += [tuple(interval) for interval in result["owned"]]
    _, err = deliverer.communicate(timeout=150)
    assert deliverer.returncode == 0, err[-3000:]

    allowed = {"ok", SPOOL_BUSY} | {what for what in outcomes if what.startswith("IN_USE: ")}
    assert set(outcomes) <= allowed, outcomes
    assert outcomes.get("ok", 0) == 2 * SESSIONS, outcomes     # both got their sessions
    assert any(what.startswith("IN_USE: ") for what in outcomes), outcomes   # they did race
    owned.sort()
    for (_, end), (start, _) in zip(owned, owned[1:]):
        assert start >= end, "two sessions owned the mailbox at once"

    final = world.final_ids()
    expected = ({f"old-{n}@example.org" for n in range(world.old)}
                | {f"delivered-{n}@example.org" for n in range(DELIVERIES)}
                | {f"bulletin-{n}@example.org" for n in range(1, BULLETINS + 1)})
    assert len(deleted) == len(set(deleted)), "a message deleted by two sessions"
    assert len(final) == len(set(final)), "a message twice"
    assert set(deleted) <= expected
    assert set(final) == expected - set(deleted)
