"""A real HAProxy (docs/scale-out.md's haproxy.cfg) in front of two real masters that share one
spool directory: host-a behind send-proxy-v2, host-b behind send-proxy (v1), each configured
with docs/scale-out.md's qpopper.config lines. Clients connect through HAProxy from their own
127.x addresses; every count and line must carry that address, never HAProxy's 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import poplib
import re
import socket
import sqlite3

import pytest

from qpopper import proxy_protocol
from tests.helpers.sysusers import make_spool
from tests.helpers.scaleout_recipe import (HAPROXY, ProxiedServer, running_haproxy, server_states,
                                   snippet)
from tests.helpers.messages import mbox
from tests.server_harness import Site, free_port, read_greeting, wait_until

pytestmark = pytest.mark.timeout(240)

BALANCER = "127.0.0.1"          # HAProxy connects to the hosts from here
CLIENTS = [f"127.0.0.{n}" for n in (41, 42, 43, 44, 45, 46, 47, 48)]
OVER_LIMIT = b"-ERR [SYS/TEMP] Too many connections; try again later\r\n"


class ClientPOP3(poplib.POP3):
    """poplib with the client socket bound to its own loopback address first."""

    def __init__(self, host: str, port: int, source: str):
        self._source = source
        try:
            super().__init__(host, port, timeout=20)
        except BaseException:
            close_quietly(self)          # poplib leaves the socket open when the welcome fails
            raise

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))


def close_quietly(client: poplib.POP3) -> None:
    for part in (getattr(client, "file", None), getattr(client, "sock", None)):
        if part is not None:
            part.close()


def connect_raw(port: int, source: str, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=10, source_address=(source, 0))


@pytest.fixture
def scaleout(world_tmp, system_users, pam_service):
    if not os.path.exists(HAPROXY):
        pytest.skip("needs Debian's haproxy (make test installs it as root)")
    users = [system_users.create(password=f"Pw-{n}-secret") for n in range(len(CLIENTS))]
    ports = {"a": free_port(), "b": free_port()}
    front = free_port()
    sites = {}
    shared_spool = None
    with contextlib.ExitStack() as stack:
        for name in ("a", "b"):
            root = os.path.join(world_tmp, name)
            os.mkdir(root)
            os.chmod(root, 0o755)
            site = Site(root, pam_service, debug=True,
                        **({"spool_dir": shared_spool} if shared_spool else {}))
            shared_spool = shared_spool or site.spool_dir
            listen = f"127.0.0.1:{ports[name]}"
            with open(site.config, "a") as f:
                f.write(snippet("qpopper.config", LISTEN=listen, BALANCER=BALANCER,
                                SPOOL=shared_spool))
                f.write("set max-children-per-address = 2\n")     # the limit test's
            stack.callback(site.close)
            sites[name] = site
            srv = ProxiedServer(root, site.config, host="127.0.0.1", port=ports[name],
                                syslog=site.syslog)
            site.servers.append(srv)
            srv.start()
        for user in users:
            make_spool(shared_spool, user, mbox(("one", "first"), ("two", "second")))
        config = snippet("haproxy.cfg", FRONTEND=f"127.0.0.1:{front}",
                         HOST_A=f"127.0.0.1:{ports['a']}", HOST_B=f"127.0.0.1:{ports['b']}")
        # host-b speaks version 1, as docs/scale-out.md says it may
        config, count = re.subn(r"(server host-b \S+ send-proxy)-v2", r"\1", config)
        assert count == 1
        admin = stack.enter_context(running_haproxy(world_tmp, config))
        wait_until(lambda: all(s.get("status") == "UP" and s.get("check_status") == "L7OK"
                               for s in server_states(admin).values())
                   and len(server_states(admin)) == 2, timeout=30, what="both hosts UP")
        yield dict(front=front, ports=ports, sites=sites, users=users, admin=admin,
                   spool=shared_spool)


def site_of(scaleout, pattern: str) -> str | None:
    """The host ("a" or "b") whose log has a line matching `pattern`, or None."""
    found = [name for name, site in scaleout["sites"].items()
             if any(re.fullmatch(pattern, text) for text in site.syslog.texts())]
    assert len(found) <= 1, f"{pattern} logged by both hosts"
    return found[0] if found else None


def test_clients_own_addresses_in_login_and_stats_lines(scaleout):
    hosts_used = set()
    for source, user in zip(CLIENTS, scaleout["users"]):
        client = ClientPOP3("127.0.0.1", scaleout["front"], source)
        client.user(user.name)
        client.pass_(user.password)
        count = client.stat()[0]
        assert count >= 1
        client.dele(1)
        client.quit()
        login = rf'\(v[\d.]+\) POP login by user "{user.name}" at \({re.escape(source)}\) ' \
                rf'{re.escape(source)}'
        stats = rf"Stats: {user.name} 1 \d+ {count - 1} \d+ {re.escape(source)} " \
                rf"{re.escape(source)}"
        wait_until(lambda: site_of(scaleout, stats), what=f"Stats line of {source}")
        host = site_of(scaleout, login)
        assert host is not None and site_of(scaleout, stats) == host
        hosts_used.add(host)
    assert hosts_used == {"a", "b"}, "balance source sent every client to one host"
    for site in scaleout["sites"].values():
        assert not [t for t in site.syslog.texts()
                    if BALANCER in t and ("login by" in t or t.startswith("Stats:"))]


def closed_without_answer(sock: socket.socket) -> bool:
    """Closed with nothing said (a reset when our bytes were left unread)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def still_waiting(sock: socket.socket) -> bool:
    """The connection is alive in AUTHORIZATION (NOOP is refused there), not displaced."""
    sock.sendall(b"NOOP\r\n")
    reply = read_greeting(sock)
    return reply.startswith(b"-ERR") and reply != OVER_LIMIT


def _host_of_monitor(scaleout, source: str) -> str:
    """Which host runs the monitor of a connection from `source` (its authentication
    process titles itself with the client's address once the PROXY header is read, the
    monitor once the authentication process has ended)."""
    titles = tuple(f"popper: {source} {kind}".encode() for kind in ("authentication", "monitor"))

    def find():
        for name, site in scaleout["sites"].items():
            for pid in site.servers[0].children():
                with contextlib.suppress(OSError):
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if f.read().startswith(titles):
                            return name
        return None
    return wait_until(find, what=f"the monitor of {source}")


def test_per_address_limit_counts_the_client_not_the_balancer(scaleout):
    x = CLIENTS[0]
    with contextlib.ExitStack() as stack:
        # one after the other: the master's "waited longest" is the order it accepted them
        first = stack.enter_context(connect_raw(scaleout["front"], x))
        assert read_greeting(first).startswith(b"+OK")
        second = stack.enter_context(connect_raw(scaleout["front"], x))
        assert read_greeting(second).startswith(b"+OK")
        host = _host_of_monitor(scaleout, x)
        port = scaleout["ports"][host]
        # two more clients on the same host, straight from the balancer's address with a
        # header of their own: under the limit, they must not displace x's connections
        others = [stack.enter_context(connect_raw(port, BALANCER)) for _ in range(2)]
        for n, (sock, other) in enumerate(zip(others, ("198.51.100.7", "198.51.100.8"))):
            sock.sendall(proxy_protocol.make_v2(other, 50000 + n, "127.0.0.1", port))
            assert read_greeting(sock).startswith(b"+OK")
        for sock in (first, second, *others):
            assert still_waiting(sock)
        # a third connection from x: x's oldest waiting connection is ended for it
        with connect_raw(scaleout["front"], x) as third:
            assert read_greeting(third).startswith(b"+OK")
            assert read_greeting(first) == OVER_LIMIT
            assert first.recv(100) == b""
            assert still_waiting(second)
        scaleout["sites"][host].syslog.wait_for(
            rf"2 sessions from {re.escape(x)} \(max-children-per-address 2\): ending a "
            rf"connection from {re.escape(x)} that has not logged in, for one from {re.escape(x)}")


def test_brakes_count_the_client_address(scaleout):
    z = CLIENTS[3]
    user = scaleout["users"][3]
    for _ in range(2):
        client = ClientPOP3("127.0.0.1", scaleout["front"], z)
        client.user(user.name)
        with pytest.raises(poplib.error_proto):
            client.pass_("wrong password")
        client.close()
    host = _wait_site(scaleout, rf"LOGIN FAILED, user={user.name}, method=USER, "
                                rf"ip=\[{re.escape(z)}\], failures=2, .*")
    site = scaleout["sites"][host]
    with sqlite3.connect(os.path.join(site.root, "auth-brakes.sqlite")) as db:
        rows = dict(db.execute("SELECT key, count FROM failures WHERE kind = 'address'"))
    assert rows == {z: 2}


def _wait_site(scaleout, pattern: str) -> str:
    return wait_until(lambda: site_of(scaleout, pattern), what=pattern)


def test_header_from_untrusted_address_refused_unread(scaleout):
    port = scaleout["ports"]["a"]
    with connect_raw(port, "127.0.0.66") as sock:
        sock.sendall(proxy_protocol.make_v2("203.0.113.5", 1, "127.0.0.1", port))
        assert closed_without_answer(sock)
    scaleout["sites"]["a"].syslog.wait_for(
        r"Refused connection from 127\.0\.0\.66: not in proxy-trusted-networks of a "
        r"proxy-protocol listener")
    assert site_of(scaleout, r".*203\.0\.113\.5.*") is None


@pytest.mark.parametrize("data, why", [
    (b"USER alice\r\n", "not a PROXY protocol header"),
    (proxy_protocol.make_v1("203.0.113.5", 1, "127.0.0.1", 2)[:-2] + b"\n", "without CRLF"),
    (proxy_protocol.V2_SIGNATURE + b"\x21\x11\x04\x00", "v2 header of 1040 octets"),
])
def test_bad_header_from_the_balancer_closes(scaleout, data, why):
    port = scaleout["ports"]["b"]
    with connect_raw(port, BALANCER) as sock:
        sock.sendall(data)
        assert closed_without_answer(sock)
    scaleout["sites"]["b"].syslog.wait_for(
        rf"pre-login: PROXY protocol header from 127\.0\.0\.1 refused: .*{re.escape(why)}.*; "
        rf"closing")


def test_health_checks_answered_without_a_session(scaleout):
    admin = scaleout["admin"]
    # a few check rounds (inter 2s) after start-up
    checks = {name: int(state["chkfail"] or 0) for name, state in server_states(admin).items()}
    answered = "pre-login: 127.0.0.1: PROXY health check answered"
    for name, site in scaleout["sites"].items():
        site.syslog.wait_for(re.escape(answered), timeout=15)
        wait_until(lambda: site.syslog.texts().count(answered) >= 3,
                   timeout=20, what=f"three health checks of host-{name}")
        texts = site.syslog.texts()
        # no session of the balancer's own: nothing else logged about 127.0.0.1
        assert not [t for t in texts if BALANCER in t and not t.startswith("master listening")
                    and t != answered], texts
    states = server_states(admin)
    # "* " before the status: that check is running now (HAProxy's stats)
    assert {n: (s["status"], s["check_status"].removeprefix("* ")) for n, s in states.items()} \
        == {"host-a": ("UP", "L7OK"), "host-b": ("UP", "L7OK")}
    assert {n: int(s["chkfail"] or 0) for n, s in states.items()} == checks


def test_hosts_go_down_while_the_spool_directory_is_gone(scaleout):
    """The shared spool directory gone (renamed away here, as an NFS mount that vanished): the
    checks are answered -ERR [SYS/TEMP], HAProxy's `expect string +OK` fails and both hosts
    go DOWN (3 failed checks 2 s apart); back, they come UP again."""
    admin, spool = scaleout["admin"], scaleout["spool"]
    os.rename(spool, spool + ".away")
    try:
        wait_until(lambda: {s["status"] for s in server_states(admin).values()} == {"DOWN"},
                   timeout=15, what="both hosts DOWN")
        for site in scaleout["sites"].values():
            site.syslog.wait_for(rf"health checks fail: spool-dir {re.escape(spool)} cannot "
                                 rf"be examined \(No such file or directory\); the balancer "
                                 rf"is answered -ERR")
    finally:
        os.rename(spool + ".away", spool)
    wait_until(lambda: {s["status"] for s in server_states(admin).values()} == {"UP"},
               timeout=15, what="both hosts UP again")
