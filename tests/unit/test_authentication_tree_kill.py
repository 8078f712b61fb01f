"""The deadline kill of an authentication process's tree (server/monitor_auth.py,
_kill_with_children; docs/privsep.md, "The authentication process"): every process is
stopped before any is killed, and a walk that found a new process walks again, so a daemon
orphaned (and adopted by the subreaper) while the walk went on is found too."""

from __future__ import annotations

import signal

from qpopper.server import monitor_auth


def test_an_orphan_adopted_during_the_walk_is_found_by_the_next(monkeypatch):
    # 100 the authentication process, 101 a PAM helper, 102 the helper's child: 102 leaves
    # 101 (setsid, 101's fork gone) and is adopted by 100 after 100's children were read
    reads = {100: 0}
    events = []

    def children_of(pid):
        if pid == 100:
            reads[100] += 1
            return [101] if reads[100] == 1 else [101, 102]
        return []

    def was_stopped(pid):
        events.append(("stop", pid))
        return True

    monkeypatch.setattr(monitor_auth, "_children_of", children_of)
    monkeypatch.setattr(monitor_auth, "_stopped", was_stopped)
    monkeypatch.setattr(monitor_auth.os, "kill", lambda pid, sig: events.append((sig, pid)))
    monitor_auth._kill_with_children(100)
    # each stopped once, all of them before any is killed
    assert events[:3] == [("stop", 100), ("stop", 101), ("stop", 102)]
    assert sorted(events[3:]) == [(signal.SIGKILL, 100), (signal.SIGKILL, 101),
                                  (signal.SIGKILL, 102)]
    assert reads[100] == 3                            # the walk that found nothing new ends it


def test_a_process_gone_before_it_was_stopped_is_not_killed(monkeypatch):
    signals = []
    monkeypatch.setattr(monitor_auth, "_children_of", lambda pid: [101] if pid == 100 else [])
    monkeypatch.setattr(monitor_auth, "_stopped", lambda pid: pid != 101)
    monkeypatch.setattr(monitor_auth.os, "kill", lambda pid, sig: signals.append(pid))
    monitor_auth._kill_with_children(100)
    assert signals == [100]                           # 101's pid may be another's by now
