"""End-to-end crash safety: the logged-in child is SIGKILLed at steps of QUIT's update (the
session's test-only fault hook, QPOPPER_TEST_CRASH_AT), and the next login sees every message
that was not deleted exactly once, byte for byte (DESIGN invariant 1). Root only."""

from __future__ import annotations

import os
import poplib

import pytest

from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import PopperServer, Site, login

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

MESSAGES = tuple((f"message {n}", f"Body of message {n}.\n" + f"line {n}\n" * (n * 40))
                 for n in range(1, 6))
SPOOL = mbox(*MESSAGES)
DELETED = {2, 4}
MAX_CRASH_POINTS = 14


def fetch_all(server, user) -> dict[str, bytes]:
    """Subject → RETR body of every visible message, then QUIT without deleting."""
    client = login(server, user)
    try:
        result = {}
        for n in range(1, client.stat()[0] + 1):
            lines = client.retr(n)[1]
            subject = next(l for l in lines if l.startswith(b"Subject: ")).decode()[9:]
            assert subject not in result, f"{subject} seen twice"
            result[subject] = b"\n".join(l for l in lines if not l.startswith(b"X-UIDL:")
                                         and not l.startswith(b"Status:"))
        client.quit()
        return result
    finally:
        client.close()


def delete_and_quit(server, user) -> bool:
    """True when QUIT was answered, False when the child died under us (the test's point)."""
    client = login(server, user)
    try:
        for n in sorted(DELETED):
            client.dele(n)
        client.quit()
        return True
    except (poplib.error_proto, OSError, EOFError):
        return False
    finally:
        client.close()


def reset_spool(site, user) -> None:
    for name in os.listdir(site.spool_dir):
        os.unlink(os.path.join(site.spool_dir, name))
    make_spool(site.spool_dir, user, SPOOL)


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service, statistics=False, timing=False, log_login="")
    yield s
    s.close()


def test_kill_during_update_loses_and_duplicates_nothing(site, system_users):
    user = system_users.create()
    reset_spool(site, user)

    # 1. the reference: an undisturbed session, recording the steps of the update
    step_log = os.path.join(site.root, "steps")

    def fresh_step_log():
        with open(step_log, "w"):
            pass
        os.chmod(step_log, 0o666)         # the child writes it after dropping privileges

    fresh_step_log()
    with PopperServer(site.root, site.config, syslog=site.syslog,
                      env={"QPOPPER_TEST_STEP_LOG": step_log}) as server:
        original = fetch_all(server, user)
        assert len(original) == 5
        fresh_step_log()
        assert delete_and_quit(server, user)
        after = fetch_all(server, user)
    assert set(after) == {s for s in original if int(s.split()[1]) not in DELETED}
    with open(step_log) as f:
        steps = [line.strip() for line in f if line.startswith("update:")]
    assert len(set(steps)) >= 5, f"too few update steps reported: {steps}"

    # 2. the crash points: each distinct update step (first occurrence), spread evenly
    distinct = list(dict.fromkeys(steps))
    if len(distinct) > MAX_CRASH_POINTS:
        stride = len(distinct) / MAX_CRASH_POINTS
        distinct = [distinct[int(i * stride)] for i in range(MAX_CRASH_POINTS)]

    for step in distinct:
        reset_spool(site, user)
        with PopperServer(site.root, site.config, syslog=site.syslog,
                          env={"QPOPPER_TEST_CRASH_AT": step}) as server:
            assert not delete_and_quit(server, user), f"no crash at {step}"
        with PopperServer(site.root, site.config, syslog=site.syslog) as server:
            seen = fetch_all(server, user)
        kept = {s for s in original if int(s.split()[1]) not in DELETED}
        assert kept <= set(seen), f"crash at {step}: lost {kept - set(seen)}"
        assert set(seen) <= set(original), f"crash at {step}: invented {set(seen) - set(original)}"
        for subject, body in seen.items():
            assert body == original[subject], f"crash at {step}: {subject} changed"
