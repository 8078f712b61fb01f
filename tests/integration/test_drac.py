"""DRAC (POP-before-SMTP, reference A5 / §2.9) against real UDP peers on 127.0.0.1.

The peers are the test's own: a portmapper speaking RFC 1833 version 2 (PMAPPROC_SET and
PMAPPROC_GETPORT) and a DRAC server (program 900101 v1, DRACPROC_ADD) that registers itself
with that portmapper by an RPC call, as rpc.dracd does, and records every address it is given.
Both decode the RPC messages themselves (RFC 5531), independently of qpopper/server/drac.py. A test
portmapper rather than Debian's rpcbind: rpcbind insists on port 111 on every address (its -h
only narrows UDP) and would be a host-wide service; drac-host's `HOST:PORT` extension points
the server at the test's portmapper instead.
"""

from __future__ import annotations

import contextlib
import poplib
import socket
import syslog
import threading
import time

import pytest

from qpopper.server import drac

from qpopper import limits
from tests.helpers.drac_peers import ADD_PERM, drac_peers
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site

pytestmark = pytest.mark.timeout(60)

TOLERANCE_S = 0.5                  # scheduling slack on a loaded 2-core machine


@contextlib.contextmanager
def silent_udp_port():
    """A bound UDP socket that never answers (a host that drops our datagrams)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_datagrams(sock) -> int:
    sock.setblocking(False)
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(65536)
            n += 1
    return n


# ---- the client ---------------------------------------------------------------------------
def test_dracauth_adds_the_address_in_host_order_through_the_portmapper():
    with drac_peers() as (portmapper, server):
        drac.dracauth(f"127.0.0.1:{portmapper.port}", "127.0.0.1")
        drac.dracauth(f"localhost:{portmapper.port}", "10.1.2.3")
    assert portmapper.mappings[(900101, 1, 17)] == server.port
    assert server.added == [0x7F000001, 0x0A010203]


def test_refusal_by_the_drac_server_is_an_error():
    with drac_peers(status=ADD_PERM) as (portmapper, server):
        with pytest.raises(drac.DracError, match="permission denied"):
            drac.dracauth(f"127.0.0.1:{portmapper.port}", "127.0.0.1")
    assert server.added == [0x7F000001]


def test_drac_not_registered_is_an_error():
    with drac_peers(register=False) as (portmapper, server):
        with pytest.raises(drac.DracError, match="not registered"):
            drac.dracauth(f"127.0.0.1:{portmapper.port}", "127.0.0.1")
    assert server.added == []


def test_nothing_listening_fails_at_once():
    start = time.monotonic()
    with pytest.raises(drac.DracError, match="refused"):
        drac.dracauth(f"127.0.0.1:{closed_udp_port()}", "127.0.0.1")
    assert time.monotonic() - start < limits.DRAC_ATTEMPT_TIMEOUT_S


def test_silent_host_is_retried_within_the_bound():
    with silent_udp_port() as silent:
        start = time.monotonic()
        with pytest.raises(drac.DracError, match="no reply"):
            drac.dracauth(f"127.0.0.1:{silent.getsockname()[1]}", "127.0.0.1")
        elapsed = time.monotonic() - start
        sent = count_datagrams(silent)
    assert limits.DRAC_TOTAL_TIMEOUT_S - 0.05 <= elapsed < limits.DRAC_TOTAL_TIMEOUT_S + TOLERANCE_S
    assert sent == pytest.approx(limits.DRAC_TOTAL_TIMEOUT_S / limits.DRAC_ATTEMPT_TIMEOUT_S, abs=1)


def test_a_name_lookup_that_hangs_is_within_the_bound(monkeypatch):
    """getaddrinfo has no timeout (a dead DNS server): the resolver here is made to hang, as
    one would, and the notification still ends by DRAC_TOTAL_TIMEOUT_S, saying why."""
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: release.wait(30) and [])
    start = time.monotonic()
    try:
        with pytest.raises(drac.DracError, match=r"resolving drac-host 'drac\.example': no "
                                                 r"answer within"):
            drac.dracauth("drac.example", "127.0.0.1")
        assert time.monotonic() - start < limits.DRAC_TOTAL_TIMEOUT_S + TOLERANCE_S
    finally:
        release.set()


@pytest.mark.parametrize("value,expected", [
    ("localhost", ("localhost", 111)), ("10.0.0.1:8111", ("10.0.0.1", 8111)),
    ("[::1]:8111", ("::1", 8111)), ("::1", ("::1", 111)), ("[::1]", ("::1", 111)),
])
def test_drac_host_forms(value, expected):
    assert drac.parse_drac_host(value) == expected


@pytest.mark.parametrize("value", ["host:0", "host:70000", "host:x", "[::1", ":111"])
def test_bad_drac_host_forms(value):
    with pytest.raises(drac.DracError):
        drac.parse_drac_host(value)


def test_config_refuses_a_bad_drac_host(tmp_path):
    from qpopper import config
    with pytest.raises(config.ConfigError, match="drac-host"):
        config.load(["-D", "host:99999"])


class Log(list):
    def __call__(self, priority, text):
        self.append((priority, text))


def test_notify_login_logs_qpoppers_line():
    log = Log()
    with drac_peers() as (portmapper, server):
        drac.notify_login(f"127.0.0.1:{portmapper.port}", "alice", "pc.example.org",
                          "::ffff:127.0.0.1", log)
    assert server.added == [0x7F000001]                  # the IPv4-mapped client's address
    assert log == [(syslog.LOG_NOTICE,
                    "[drac]: login by alice from host pc.example.org (::ffff:127.0.0.1)")]


def test_notify_login_skips_ipv6_clients_and_unset_drac_host():
    log = Log()
    with drac_peers() as (portmapper, server):
        registration_only = portmapper.datagrams
        drac.notify_login(f"127.0.0.1:{portmapper.port}", "alice", "::1", "::1", log)
        drac.notify_login(None, "alice", "127.0.0.1", "127.0.0.1", log)
        assert portmapper.datagrams == registration_only == 1
    assert server.added == []
    assert log == [(syslog.LOG_DEBUG, "[drac]: ::1 is not an IPv4 address; DRAC skipped")]


def test_notify_login_logs_a_failure_and_returns():
    log = Log()
    drac.notify_login(f"127.0.0.1:{closed_udp_port()}", "alice", "h", "127.0.0.1", log)
    assert len(log) == 1 and log[0][0] == syslog.LOG_WARNING
    assert log[0][1].startswith("[drac]: portmapper on 127.0.0.1:")


# ---- through the real server -----------------------------------------------------------------
def pop_login(server, user) -> tuple[float, int]:
    """(seconds PASS took, message count) for a USER/PASS login."""
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        client.user(user.name)
        start = time.monotonic()
        client.pass_(user.password)
        elapsed = time.monotonic() - start
        count = client.stat()[0]
        client.quit()
    finally:
        client.close()
    return elapsed, count


@pytest.fixture
def drac_site(system_users, pam_service, world_tmp):
    """make(drac_host) -> (site, running server, user with one message); one per test."""
    sites = []

    def make(drac_host):
        site = Site(world_tmp, pam_service, drac_host=drac_host)
        sites.append(site)
        user = system_users.create("dr")
        make_spool(site.spool_dir, user, mbox(("hi", "there")))
        return site, site.server(), user

    yield make
    for site in sites:
        site.close()


def test_a_login_through_the_real_server_notifies_drac(drac_site):
    with drac_peers() as (portmapper, server):
        site, popper, user = drac_site(f"127.0.0.1:{portmapper.port}")
        _, count = pop_login(popper, user)
        assert count == 1
        site.syslog.wait_for(rf"\[drac\]: login by {user.name} from host 127\.0\.0\.1 "
                             rf"\(127\.0\.0\.1\)")
    assert server.added == [0x7F000001]


def test_a_dead_drac_host_neither_refuses_nor_delays_the_login(drac_site):
    with silent_udp_port() as silent:
        site, popper, user = drac_site(f"127.0.0.1:{silent.getsockname()[1]}")
        elapsed, count = pop_login(popper, user)
        assert count == 1
        assert elapsed < limits.DRAC_TOTAL_TIMEOUT_S + TOLERANCE_S
        site.syslog.wait_for(r"\[drac\]: portmapper on 127\.0\.0\.1:\d+: no reply within .*")
        assert count_datagrams(silent) >= 2
