"""A proxy-protocol listener of the real master (docs/scale-out.md's qpopper.config lines, no
HAProxy in front): what a balancer or a health checker may do before or instead of a header,
seen in the server's own log; and the health check's answer while spool-dir is gone or
another file system sits on its mount point (docs/scale-out.md, "The load balancer")."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import syslog
import time

import pytest

from qpopper import proxy_protocol
from qpopper.spool.mounts import mount_point_of
from tests.helpers.scaleout_recipe import ProxiedServer, snippet
from tests.server_harness import Site, free_port, make_spool_dir

pytestmark = pytest.mark.timeout(120)

BALANCER = "127.0.0.1"


@contextlib.contextmanager
def proxied(world_tmp: str, pam_service: str, spool: str | None = None):
    """docs/scale-out.md's proxy-protocol listener on a master of its own; spool-dir the
    site's, or `spool` (then site.spool_dir)."""
    site = Site(world_tmp, pam_service, debug=True)
    site.spool_dir = spool or site.spool_dir
    port = free_port()
    with open(site.config, "a") as f:
        f.write(snippet("qpopper.config", LISTEN=f"127.0.0.1:{port}", BALANCER=BALANCER,
                        SPOOL=site.spool_dir))
    server = ProxiedServer(world_tmp, site.config, port=port, syslog=site.syslog)
    site.servers.append(server)
    try:
        server.start()
        yield site, server
    finally:
        site.close()


@pytest.fixture
def proxied_site(world_tmp, pam_service):
    with proxied(world_tmp, pam_service) as site_and_server:
        yield site_and_server


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
ELSEWHERE = b"-ERR [SYS/TEMP] spool-dir's mount is gone (health check)\r\n"


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
    process changes), private (nothing propagates to other mount namespaces), unmounted
    afterwards whatever happens."""
    subprocess.run(["mount", "--make-private", "-t", "tmpfs", "-o", "size=1m,mode=0775",
                    "qpt-spool", path], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", path], check=True)


def failing_line(spool: str, mount: str) -> str:
    return (f"health checks fail: spool-dir {spool} is no longer on the file system mounted "
            f"at {mount}; the balancer is answered -ERR")


def moved_line(spool: str, before: str, now: str) -> str:
    return f"spool-dir {spool} is now on the file system mounted at {now} (was: {before})"


def kept_line(spool: str, mount: str) -> str:
    return (f"spool-dir {spool} is no longer on the file system mounted at {mount}; health "
            f"checks keep failing until it is back")


def wait_count(site, text: str, count: int, timeout: float = 10) -> None:
    """Until the master logged `text` `count` times (a check's notice reaches it after the
    answer); never more."""
    deadline = time.monotonic() + timeout
    while (found := site.syslog.texts().count(text)) < count:
        assert time.monotonic() < deadline, site.syslog.texts()
        time.sleep(0.05)
    assert found == count, site.syslog.texts()


def test_health_checks_pass_once_the_mount_is_back_under_another_device_number(proxied_site):
    """spool-dir a mount point (a tmpfs here, an NFS mount on a real site), recorded by a
    reload. Unmounted, its empty directory left: -ERR. Mounted again, a new file system with
    a new device number (the kernel gives a new mount the lowest free anonymous number,
    which the filler mounted meanwhile has taken; NFS gets a new one at each mount): +OK at
    once, without a reload, and a reload then is quiet. A reload while it is gone keeps the
    recorded mount, so the checks keep failing until it is back (docs/scale-out.md)."""
    site, server = proxied_site
    spool = site.spool_dir
    below = mount_point_of(spool)                   # "/" on most hosts
    back = f"health checks pass again: spool-dir {spool} is back"
    filler = spool + ".filler"
    os.mkdir(filler)
    try:
        with file_system_on(spool):
            os.kill(server.pid, signal.SIGHUP)     # spool-dir's file system: the tmpfs now
            wait_reloads(site, 1)
            assert health_check(server) == HEALTHY
            first = os.stat(spool).st_dev
        for version in (2, 1):
            assert health_check(server, version) == ELSEWHERE
        wait_count(site, failing_line(spool, spool), 1)
        with file_system_on(filler), file_system_on(spool):
            assert os.stat(spool).st_dev != first      # back, under another number
            assert health_check(server) == HEALTHY
            assert health_check(server, 1) == HEALTHY
            wait_count(site, back, 1)
            os.kill(server.pid, signal.SIGHUP)
            wait_reloads(site, 2)
            assert health_check(server) == HEALTHY
        assert health_check(server) == ELSEWHERE
        wait_count(site, failing_line(spool, spool), 2)
        os.kill(server.pid, signal.SIGHUP)             # with the mount gone: kept
        wait_reloads(site, 3)
        assert health_check(server) == ELSEWHERE
        with file_system_on(spool):
            assert health_check(server) == HEALTHY
            wait_count(site, back, 2)
    finally:
        os.rmdir(filler)
    moved = lines_like(site, r"spool-dir .* (is no longer|is now) on the file system .*")
    assert moved == [(syslog.LOG_NOTICE, moved_line(spool, below, spool)),
                     (syslog.LOG_WARNING, kept_line(spool, spool))]


def test_health_checks_of_a_spool_dir_inside_a_mounted_file_system(world_tmp, pam_service):
    """spool-dir a directory of the mounted file system, found there at start-up: another
    file system mounted on spool-dir, -ERR; the mount gone (an empty spool directory of the
    same name below it), -ERR; the mount back under another device number (the filler took
    the old one), +OK without a reload."""
    mount, filler = os.path.join(world_tmp, "nfs"), os.path.join(world_tmp, "filler")
    os.mkdir(mount)
    os.mkdir(filler)
    tmpfs = ["mount", "--make-private", "-t", "tmpfs", "-o", "size=1m", "qpt-spool"]
    subprocess.run([*tmpfs, mount], check=True)
    try:
        spool = make_spool_dir(mount)
        first = os.stat(spool).st_dev
        with proxied(world_tmp, pam_service, spool) as (site, server):
            assert health_check(server) == HEALTHY
            with file_system_on(spool):               # over spool-dir, below the mount
                assert health_check(server) == ELSEWHERE
            assert health_check(server) == HEALTHY
            subprocess.run(["umount", mount], check=True)
            make_spool_dir(mount)                       # the empty mount point's own "spool"
            assert health_check(server) == ELSEWHERE
            subprocess.run([*tmpfs, filler], check=True)
            subprocess.run([*tmpfs, mount], check=True)
            make_spool_dir(mount)
            assert os.stat(spool).st_dev != first
            assert health_check(server, 1) == HEALTHY
            wait_count(site, f"health checks pass again: spool-dir {spool} is back", 2)
            wait_count(site, failing_line(spool, mount), 2)
    finally:
        for path in (mount, filler):
            while os.path.ismount(path):
                subprocess.run(["umount", path], check=True)
            shutil.rmtree(path)


def test_a_file_system_mounted_on_spool_dir_after_start_up_is_the_spool(proxied_site):
    """spool-dir on the root file system at start-up (a host that came up before its NFS
    mount; systemd/qpopper.service waits for remote-fs.target against that): a file system
    mounted there later is the spool, as the sessions take it, not a mount gone for good."""
    site, server = proxied_site
    if mount_point_of(site.spool_dir) != "/":
        pytest.skip("the test's directory is on a mount of its own: a file system mounted "
                    "on spool-dir is then one over the recorded mount (the tests above)")
    assert health_check(server) == HEALTHY
    with file_system_on(site.spool_dir):
        assert health_check(server) == HEALTHY
        assert health_check(server, 1) == HEALTHY
    assert health_check(server) == HEALTHY
    assert not lines_like(site, "health checks fail: .*")


def wait_reloads(site, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while site.syslog.texts().count("configuration reloaded") < count:
        assert time.monotonic() < deadline, site.syslog.texts()
        time.sleep(0.05)
