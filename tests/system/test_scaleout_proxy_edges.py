"""A proxy-protocol listener of the real master (docs/scale-out.md's qpopper.config lines, no
HAProxy in front): what a balancer or a health checker may do before or instead of a header,
seen in the server's own log; and the health check's answer while spool-dir is gone or
another file system sits on its mount point (docs/scale-out.md, "The load balancer")."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import syslog
import time

import pytest

from qpopper import proxy_protocol
from tests.helpers.scaleout_recipe import ProxiedServer, snippet
from tests.server_harness import Site, free_port

pytestmark = pytest.mark.timeout(120)

BALANCER = "127.0.0.1"


@pytest.fixture
def proxied_site(world_tmp, pam_service):
    site = Site(world_tmp, pam_service, debug=True)
    port = free_port()
    with open(site.config, "a") as f:
        f.write(snippet("qpopper.config", LISTEN=f"127.0.0.1:{port}", BALANCER=BALANCER,
                        SPOOL=site.spool_dir))
    server = ProxiedServer(world_tmp, site.config, port=port, syslog=site.syslog)
    site.servers.append(server)
    server.start()
    try:
        yield site, server
    finally:
        site.close()


def test_a_check_that_resets_before_a_header_is_logged_at_debug_only(proxied_site):
    """A TCP health check that connects and aborts (SO_LINGER 0: a reset, as many checkers
    close) sends nothing, like one that closes: debug only, not a refused header."""
    site, server = proxied_site
    sock = socket.create_connection((server.host, server.port), source_address=(BALANCER, 0))
    time.sleep(0.2)                      # accepted and the header being waited for
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    site.syslog.wait_for(r"pre-login: 127\.0\.0\.1: closed before a PROXY header")
    assert not [text for text in site.syslog.texts() if "refused" in text], site.syslog.texts()


def test_a_reset_inside_a_header_is_a_refused_header(proxied_site):
    site, server = proxied_site
    sock = socket.create_connection((server.host, server.port), source_address=(BALANCER, 0))
    sock.sendall(b"PROXY TCP4 192.0.2.")
    time.sleep(0.2)                      # those octets taken as the header's beginning
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    site.syslog.wait_for(r"pre-login: PROXY protocol header from 127\.0\.0\.1 refused: "
                         r"connection reset inside the PROXY protocol header; closing")


HEALTHY = b"+OK POP3 server ready (health check)\r\n"
GONE = (b"-ERR [SYS/TEMP] spool-dir cannot be examined: No such file or directory "
        b"(health check)\r\n")
ELSEWHERE = (b"-ERR [SYS/TEMP] spool-dir is on another device than at start-up or reload "
             b"(mount gone?) (health check)\r\n")


def health_check(server, version: int = 2) -> bytes:
    """HAProxy's check: a v2 LOCAL header, or a v1 header naming the check's own connection;
    everything the server answers before it closes."""
    with socket.create_connection((server.host, server.port), timeout=10,
                                  source_address=(BALANCER, 0)) as sock:
        if version == 2:
            sock.sendall(proxy_protocol.make_v2(None))
        else:
            sock.sendall(proxy_protocol.make_v1(BALANCER, sock.getsockname()[1],
                                                server.host, server.port))
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def lines_like(site, pattern: str) -> list[tuple[int, str]]:
    return [(pri & 7, text) for pri, _, text in site.syslog.records
            if re.fullmatch(pattern, text)]


def test_health_checks_fail_while_spool_dir_is_gone(proxied_site):
    """A spool directory renamed away (an NFS mount whose directory vanished, a stale
    handle): every check, v2 and v1, gets -ERR [SYS/TEMP], so HAProxy's `expect string +OK`
    fails and the host goes DOWN; the master logs it once, and once when it is back."""
    site, server = proxied_site
    spool = site.spool_dir
    assert health_check(server) == HEALTHY
    failing = (rf"health checks fail: spool-dir {re.escape(spool)} cannot be examined \(No "
               rf"such file or directory\); the balancer is answered -ERR")
    back = rf"health checks pass again: spool-dir {re.escape(spool)} is back"
    os.rename(spool, spool + ".away")
    try:
        for version in (2, 1, 2):
            assert health_check(server, version) == GONE
        site.syslog.wait_for(failing)
    finally:
        os.rename(spool + ".away", spool)
    assert health_check(server) == HEALTHY
    assert health_check(server, 1) == HEALTHY
    site.syslog.wait_for(back)
    assert [pri for pri, _ in lines_like(site, failing)] == [syslog.LOG_WARNING]
    assert [pri for pri, _ in lines_like(site, back)] == [syslog.LOG_NOTICE]
    # no session, no other line about the checks above debug
    assert [text for pri, _, text in site.syslog.records if pri & 7 < syslog.LOG_DEBUG
            and not re.fullmatch(f"{failing}|{back}|master listening on .*", text)
            and BALANCER in text] == []


@contextlib.contextmanager
def file_system_on(path: str):
    """A small tmpfs mounted on `path` (root's test: the master sees the mount table this
    process changes), unmounted afterwards whatever happens."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0775", "qpt-spool", path],
                   check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", path], check=True)


def test_health_checks_fail_while_another_file_system_is_on_spool_dir(proxied_site):
    """The mount point without what was mounted there, as an NFS mount that went away leaves
    it: the same path, a directory, but another device than the master recorded. A reload
    records the device anew (so a reload with the mount gone takes the empty mount point
    for the spool: docs/scale-out.md says to reload only once it is back)."""
    site, server = proxied_site
    spool = site.spool_dir
    failing = (rf"health checks fail: spool-dir {re.escape(spool)} is on another device "
               rf"than at start-up or the last reload \(a mount gone\?\); the balancer is "
               rf"answered -ERR")
    assert health_check(server) == HEALTHY
    with file_system_on(spool):
        assert health_check(server) == ELSEWHERE
        assert health_check(server, 1) == ELSEWHERE
        site.syslog.wait_for(failing)
        assert len(lines_like(site, failing)) == 1
        os.kill(server.pid, signal.SIGHUP)
        site.syslog.wait_for("configuration reloaded")
        assert health_check(server) == HEALTHY       # the tmpfs is the spool-dir now
    assert health_check(server) == ELSEWHERE         # and the disk below is not
    os.kill(server.pid, signal.SIGHUP)
    wait_reloads(site, 2)
    assert health_check(server) == HEALTHY
    assert len(lines_like(site, failing)) == 2       # fine in between: a change each time
    moved = (rf"spool-dir {re.escape(spool)} is on another device than before the reload; "
             r"health checks take it as it is now \(a mount gone\?\)")
    assert len(lines_like(site, moved)) == 2         # each reload told it


def wait_reloads(site, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while site.syslog.texts().count("configuration reloaded") < count:
        assert time.monotonic() < deadline, site.syslog.texts()
        time.sleep(0.05)
