"""The real master runs its warm-up (qpopper/server/warmup.py; docs/internals.md, "The
master's warm-up") before it accepts the first connection, leaves the site's spool
directory, the fault-injection step log and the log alone, and serves as before (root
only: a real user, PAM and the privilege drop)."""

from __future__ import annotations

import os

import pytest

from qpopper.server.session import CRASH_AT_ENV, STEP_LOG_ENV
from qpopper.server.warmup import ROUNDS
from tests.helpers.messages import mbox
from tests.helpers.sysusers import make_spool
from tests.server_harness import PopperServer, Site, login

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def site(world_tmp, pam_service):
    made = Site(world_tmp, pam_service, debug=True)
    yield made
    made.close()


def test_the_master_warms_up_before_it_listens_and_touches_nothing(site, system_users):
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(("hello", "one\n"), ("again", "two\n")))
    step_log = os.path.join(site.root, "steps")
    with open(step_log, "w"):
        pass
    os.chmod(step_log, 0o666)         # the session writes it after dropping privileges
    # the warm-up's QUIT reaches the update steps: with the hook, it would kill the master
    env = {STEP_LOG_ENV: step_log, CRASH_AT_ENV: "update:never-a-step"}
    spool_dir_before = sorted(os.listdir(site.spool_dir))
    server = PopperServer(site.root, site.config, syslog=site.syslog, env=env).start()
    site.servers.append(server)

    texts = site.syslog.texts()
    warmed = [i for i, t in enumerate(texts) if f"warm-up: {ROUNDS} throw-away sessions run" in t]
    listening = [i for i, t in enumerate(texts) if "master listening on" in t]
    assert warmed and listening and warmed[0] < listening[0], texts
    assert not any("warm-up skipped" in t or "Stats:" in t or "qpopper-warmup" in t
                   for t in texts), texts
    assert sorted(os.listdir(site.spool_dir)) == spool_dir_before
    assert os.path.getsize(step_log) == 0

    client = login(server, user)
    assert client.stat()[0] == 2
    client.quit()
    with open(step_log) as f:                  # the hook is there for the real sessions
        assert f.read().strip()
