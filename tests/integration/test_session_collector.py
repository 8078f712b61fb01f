"""The user session opens its maildrop without the cyclic collector and freezes the message
list (docs/internals.md, "The message list and the collector").

Each check runs in a forked child (tests.helpers.spoolcheck.in_child): gc.freeze is
process-wide, and the test process must keep its own collector as it was. A real Session
serves a real server-mode spool of 2,000 messages over a socket pair, resumed as the monitor
hands a verified login over; the child reports the collector's state after STAT.
"""

from __future__ import annotations

import gc
import os
import socket
import weakref

import pytest

from qpopper.auth import Login
from qpopper.config import Config
from qpopper.log import Logger
from qpopper.server import monitor_handover
from qpopper.server import session as session_mod
from qpopper.server.channel import Channel
from tests.helpers.messages import message
from tests.helpers.spoolcheck import in_child

pytestmark = pytest.mark.timeout(60)

MESSAGES = 2000


class Node:
    """A weakly referenceable object that can be part of a reference cycle."""

    def __init__(self):
        self.other = None


def test_the_block_is_frozen_after_the_logins_garbage_is_collected(tmp_path):
    def child():
        before = Node()
        before.other = Node()
        before.other.other = before                 # a cycle only the collector can free
        gone = weakref.ref(before)
        del before
        frozen = gc.get_freeze_count()
        with session_mod.kept_for_the_session():
            paused = not gc.isenabled()
            built = [[i] for i in range(10_000)]   # lists: objects the collector tracks
        after = gc.get_freeze_count() - frozen
        # frozen objects are not listed: the frozen (permanent) generation is apart
        listed = {id(o) for o in gc.get_objects()}
        built_frozen = id(built) not in listed and id(built[-1]) not in listed
        enabled = gc.isenabled()
        gc.disable()                                # a caller's disabled collector stays so
        with session_mod.kept_for_the_session():
            pass
        stays_off = not gc.isenabled()
        gc.enable()
        try:
            with session_mod.kept_for_the_session():
                raise OSError("the open failed")
        except OSError:
            pass
        return (gone() is None, paused, after >= len(built), built_frozen, enabled, stays_off,
                gc.isenabled())

    result = in_child(child, str(tmp_path / "result"), expect_kill=False)
    assert result == (True, True, True, True, True, True, True)


def spool_of(tmp_path) -> tuple[Config, str]:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    user = os.environ.get("USER") or "qpt-collector"
    (spool_dir / user).write_bytes(b"".join(message(n, body_lines=1) for n in range(MESSAGES)))
    cfg = Config.defaults().replace(spool_dir=str(spool_dir), server_mode=True,
                                    reverse_lookup=False)
    return cfg, user


@pytest.mark.parametrize("own_process", [True, False])
def test_a_user_session_freezes_its_message_list_a_shared_process_does_not(tmp_path,
                                                                             own_process):
    cfg, user = spool_of(tmp_path)

    def child():
        server, client = socket.socketpair()
        session = session_mod.Session(
            cfg, Channel(server.fileno(), server.fileno(), server), log=Logger(stream=None),
            hostname="test.host", peer=("127.0.0.1", 4000), client_host="localhost",
            login_done=True, own_process=own_process)
        login = Login(user=user, uid=os.getuid(), gid=os.getgid(), home=str(tmp_path),
                      mechanism="USER", no_mime=False)
        frozen = gc.get_freeze_count()
        session.run(resume=(login, b"STAT\r\nQUIT\r\n", 0))
        client.settimeout(5)
        replies = client.recv(65536)
        messages = session.protocol.trans.messages
        listed = {id(o) for o in gc.get_objects()}       # the frozen generation is apart
        return (replies.split(b"\r\n")[1], gc.get_freeze_count() - frozen, gc.isenabled(),
                len(messages), id(messages) in listed, id(messages[-1]) in listed)

    stat, frozen, enabled, count, list_listed, last_listed = in_child(
        child, str(tmp_path / "result"), expect_kill=False)
    assert stat.startswith(b"+OK %d " % MESSAGES) and count == MESSAGES
    assert enabled
    if own_process:
        assert frozen >= MESSAGES and not list_listed and not last_listed
    else:
        assert frozen == 0 and list_listed and last_listed


def test_the_monitor_runs_the_user_session_as_its_process_alone(monkeypatch):
    """The monitor, becoming the user session, makes its Session with own_process. (The
    master's warm-up runs its sessions in a thread of the master: the default, False.)"""
    made = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            made.append(kwargs)

        def run(self, resume):
            return 0

    monkeypatch.setattr(monitor_handover, "Session", Recorder)
    monkeypatch.setattr(monitor_handover.privsep, "drop_privileges", lambda *a: None)
    monkeypatch.setattr(monitor_handover.signal, "signal", lambda *a: None)   # pytest's stay
    ours, theirs = socket.socketpair()

    class Client:
        in_fd = out_fd = ours.fileno()
        sock = ours

    class Monitor(monitor_handover.BecomingTheSession):
        cfg, log, hostname, peer, client = (Config.defaults(), None, "h", ("127.0.0.1", 1),
                                            Client())

    with ours, theirs:
        Monitor()._run_user_session(None, 0, b"", False, "localhost", 0, None)
    assert made and made[0]["own_process"] is True


def test_inetd_mode_freezes_its_start_up_heap_before_the_connection(tmp_path, monkeypatch):
    """serve_inetd's process lives for one connection: what the start-up built is frozen
    before the monitor runs, so the session's full collection before it opens the maildrop
    (and the pre-login child's) walk only what the connection made (docs/internals.md, "The
    message list and the collector")."""
    from qpopper.server import monitor

    class Invocation:
        argv = ()

    def child():
        startup = [[i] for i in range(1000)]       # stands for the imports and the config
        seen = {}

        class Recorder:
            def __init__(self, *args, **kwargs):
                pass

            def run(self):
                listed = {id(o) for o in gc.get_objects()}
                seen.update(frozen=gc.get_freeze_count(), listed=id(startup[0]) in listed)
                return 0

        monkeypatch.setattr(monitor, "Monitor", Recorder)
        cfg = Config.defaults().replace(reverse_lookup=False)
        here, there = socket.socketpair()
        saved = os.dup(0), os.dup(1)
        try:
            os.dup2(there.fileno(), 0)
            os.dup2(there.fileno(), 1)
            code = monitor.serve_inetd(cfg, Invocation())
        finally:
            os.dup2(saved[0], 0)
            os.dup2(saved[1], 1)
            here.close(), there.close()
        return code, seen["frozen"] >= len(startup), seen["listed"]

    assert in_child(child, str(tmp_path / "result"), expect_kill=False) == (0, True, False)
