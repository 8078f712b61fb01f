"""Load: 200 sessions at once against one master, and the master's memory across 2,000
sessions. Users come from a pop.auth store (user-database pop-auth): creating 200 system users
would dominate the run; every store user runs as one real `qpt` account (pop-auth-owner),
each with a spool of their own (the session lock is per user). Root only."""

from __future__ import annotations

import concurrent.futures
import os
import poplib
import threading

import pytest

from qpopper.auth.store import PopAuthStore
from tests.server_harness import PopperServer, Site, mbox, rss_kib, wait_until, write_config
from tests.helpers.sysusers import mail_gid

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONCURRENT = 200
SEQUENTIAL = 2000
WARM_UP = 300
RSS_TOLERANCE_KIB = 1024
SPOOL = mbox(("hello", "A short message.\n"), ("again", "Another one.\n"))


@pytest.fixture
def store_site(world_tmp, pam_service, system_users):
    owner = system_users.create("own")
    s = Site(world_tmp, pam_service, statistics=False, timing=False, log_login="",
             user_database="pop-auth", pop_auth_owner=owner.name,
             pop_auth_file=os.path.join(world_tmp, "pop.auth"),
             max_children=CONCURRENT + 50, max_children_per_address=CONCURRENT + 50)
    store = PopAuthStore.create(s.options["pop_auth_file"], owner_uid=owner.uid,
                                owner_gid=owner.gid)
    s.users = [f"load{n}" for n in range(CONCURRENT)]
    for name in s.users:
        store.set_secret(name, f"pw-{name}")
        path = os.path.join(s.spool_dir, name)
        with open(path, "wb") as f:
            f.write(SPOOL)
        os.chown(path, owner.uid, mail_gid())
        os.chmod(path, 0o600)
    yield s
    s.close()


def session(server, name, *, barrier=None, fetch=True):
    client = poplib.POP3(server.host, server.port, timeout=60)
    try:
        client.user(name)
        client.pass_(f"pw-{name}")
        if barrier is not None:
            barrier.wait(timeout=90)           # all logged in at the same time
        count, _ = client.stat()
        assert count == 2
        if fetch:
            assert b"Subject: hello" in client.retr(1)[1]
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_200_concurrent_sessions_complete(store_site):
    server = store_site.server()
    barrier = threading.Barrier(CONCURRENT)
    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(session, server, name, barrier=barrier)
                   for name in store_site.users]
        errors = [f.exception(timeout=150) for f in futures]
    assert [e for e in errors if e is not None] == []
    wait_until(lambda: not server.children(), timeout=30, what="every child to be reaped")


@pytest.mark.timeout(240)
def test_master_memory_does_not_grow_across_2000_sessions(store_site):
    server = store_site.server()
    names = store_site.users[:10]                # ten clients, each its own user

    def run(count):
        def worker(name):
            for _ in range(count // len(names)):
                session(server, name, fetch=False)
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            for f in [pool.submit(worker, n) for n in names]:
                f.result(timeout=200)
        wait_until(lambda: not server.children(), timeout=30, what="children to be reaped")

    run(WARM_UP)
    before = rss_kib(server.pid)
    run(SEQUENTIAL)
    after = rss_kib(server.pid)
    print(f"master VmRSS {before} -> {after} KiB")
    assert after - before <= RSS_TOLERANCE_KIB, f"master RSS grew {before} -> {after} KiB"
