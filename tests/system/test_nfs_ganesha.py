"""The lock protocol's NFS assumptions (docs/scale-out.md, "Locks across hosts") against a real
NFSv4 server: nfs-ganesha exporting a directory, two libnfs clients as two hosts, and
qpopper-py's own DotLock and kernel locks working on the exported directory itself (a host
that is the NFS server, or shares its disk).

The machine's kernel has no NFS client, so what only a kernel mount would show stays
untested; docs/scale-out.md lists it."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import time

import pytest

from qpopper import limits
from qpopper.spool.dotlock import DotLock
from qpopper.spool.locking import _kernel_lock
from tests.helpers import libnfs

pytestmark = pytest.mark.timeout(180)

NFS_EEXIST = -errno.EEXIST


@pytest.fixture(scope="module")
def nfs():
    """(libnfs library, port, exported directory) of a ganesha serving for this module."""
    if os.geteuid() != 0:
        pytest.skip("needs root: ganesha.nfsd's VFS export opens files by handle")
    if not os.path.exists(libnfs.GANESHA):
        pytest.skip("needs Debian's nfs-ganesha and nfs-ganesha-vfs (make test installs them)")
    try:
        libnfs.load_libnfs()
    except OSError:
        pytest.skip("needs Debian's libnfs13 (make test installs it)")
    with tempfile.TemporaryDirectory(prefix="qpt-nfs-") as workdir:
        export = os.path.join(workdir, "export")
        os.mkdir(export)
        with libnfs.ganesha(workdir, export) as (lib, port):
            yield lib, port, export


@pytest.fixture
def hosts(nfs):
    """Two NFS clients with their own client names: host-a and host-b."""
    lib, port, export = nfs
    made = [libnfs.NfsClient(lib, "127.0.0.1", port, f"qpt-{name}-{os.getpid()}-{time.time_ns()}")
            for name in ("a", "b")]
    yield (*made, export)
    for client in made:
        client.destroy()
    for name in os.listdir(export):
        os.unlink(os.path.join(export, name))


def nfs_dotlock(client, lock: str, host: str) -> bool:
    """The no-atomic-open protocol, done by an NFS client: a unique file, link(2) to the lock
    name, and the unique file's link count decides (docs/scale-out.md)."""
    unique = f"/.lk{host}{time.time_ns()}"
    client.create_exclusive(unique, f"4242@{host}".encode())
    try:
        client.link(unique, lock)
        return client.stat(unique).nfs_nlink == 2
    finally:
        client.unlink(unique)


def test_exclusive_create_by_link_gives_eexist_to_the_second_host(hosts):
    a, b, _ = hosts
    for round_ in range(10):
        first, second = (a, b) if round_ % 2 == 0 else (b, a)
        first.create_exclusive(f"/u{round_}", b"1@first")
        second.create_exclusive(f"/v{round_}", b"2@second")
        assert first.link(f"/u{round_}", f"/user{round_}.lock") == 0
        assert second.link(f"/v{round_}", f"/user{round_}.lock") == NFS_EEXIST
        assert first.stat(f"/u{round_}").nfs_nlink == 2
        assert second.stat(f"/v{round_}").nfs_nlink == 1       # the link count decides
        with pytest.raises(OSError) as refused:               # O_EXCL over NFSv4 too
            second.create_exclusive(f"/user{round_}.lock", b"x")
        assert refused.value.errno == errno.EEXIST


def test_lock_files_of_one_host_are_seen_at_once_by_the_other(hosts):
    a, b, export = hosts
    assert nfs_dotlock(a, "/alice.lock", "host-a")
    seen = b.stat("/alice.lock")
    assert seen is not None and seen.nfs_size == len(b"4242@host-a")
    assert not nfs_dotlock(b, "/alice.lock", "host-b")
    assert a.unlink("/alice.lock") == 0
    assert b.stat("/alice.lock") is None            # no cached name: gone for b at once
    assert nfs_dotlock(b, "/alice.lock", "host-b")


def test_dotlock_on_the_server_disk_and_an_nfs_host_exclude_each_other(hosts):
    """qpopper-py's own no-atomic-open DotLock, run on the exported directory, against a
    host locking over NFS."""
    a, _, export = hosts
    lock_path = os.path.join(export, "bob.lock")
    assert nfs_dotlock(a, "/bob.lock", "host-a")
    ours = DotLock(lock_path, nfs_safe=True)
    assert not ours.try_acquire()       # another host's pid: never judged by this host's pids
    assert a.unlink("/bob.lock") == 0
    assert ours.try_acquire()
    assert not nfs_dotlock(a, "/bob.lock", "host-a")
    ours.release()
    assert nfs_dotlock(a, "/bob.lock", "host-a")


def test_stale_rules_use_the_servers_mtime(hosts):
    """A crashed host's lock is broken by age alone, judged on the mtime the server holds
    (refreshed or aged through NFS), and a pid-only lock (dotlockfile -p) is never judged by
    this host's pids under no-atomic-open."""
    a, b, export = hosts
    lock_path = os.path.join(export, "carol.lock")
    assert socket.gethostname() != "host-a"
    gone_pid = 2 ** 22 + 12345                      # above pid_max's default: no such process
    a.create_exclusive("/carol.lock", f"{gone_pid}@host-a".encode())
    ours = DotLock(lock_path, nfs_safe=True)
    assert not ours.try_acquire()
    # host-a refreshes: host-b sees the server's mtime, not a cached one
    a.set_mtime("/carol.lock", time.time() - limits.DOTLOCK_STALE_S + 60)
    assert abs(b.stat("/carol.lock").nfs_mtime - (time.time() - limits.DOTLOCK_STALE_S + 60)) < 5
    assert not ours.try_acquire()
    # host-a crashed long ago: the lock's age makes it stale for everyone
    a.set_mtime("/carol.lock", time.time() - limits.DOTLOCK_STALE_S - 60)
    assert ours.try_acquire()
    ours.release()
    # dotlockfile -p writes only a pid: with no-atomic-open its age decides
    a.create_exclusive("/dave.lock", f"{gone_pid}\n".encode())
    assert not DotLock(os.path.join(export, "dave.lock"), nfs_safe=True).try_acquire()
    local_rules = DotLock(os.path.join(export, "dave.lock"), nfs_safe=False)
    assert local_rules.try_acquire()                # a local spool: the pid is this host's
    local_rules.release()


def test_byte_range_locks_conflict_between_hosts_and_with_the_server_disk(hosts):
    a, _, export = hosts
    a.create_exclusive("/erin", b"From x\n\nmail\n")
    handle_a = a.open("/erin")
    assert a.lockf(handle_a, libnfs.NFS4_F_TLOCK) == 0
    # host-b, a client of its own: refused (a fresh client per attempt: libnfs 4.0 loses its
    # sequence id after a refused lock)
    b = libnfs.NfsClient(a.lib, *_server_of(a), f"qpt-b-{time.time_ns()}")
    try:
        assert b.lockf(b.open("/erin"), libnfs.NFS4_F_TLOCK) != 0
        assert "NFS4ERR_DENIED" in b.error()
    finally:
        b.destroy()
    # qpopper-py's kernel locks on the server's disk: ganesha holds the NFS lock as a POSIX
    # lock there, so the SpoolLock's fcntl part refuses
    fd = os.open(os.path.join(export, "erin"), os.O_RDWR)
    try:
        assert not _kernel_lock(fd)
        assert a.lockf(handle_a, libnfs.NFS4_F_ULOCK) == 0
        assert _kernel_lock(fd)
        b = libnfs.NfsClient(a.lib, *_server_of(a), f"qpt-b-{time.time_ns()}")
        try:
            assert b.lockf(b.open("/erin"), libnfs.NFS4_F_TLOCK) != 0
        finally:
            b.destroy()
    finally:
        os.close(fd)
    b = libnfs.NfsClient(a.lib, *_server_of(a), f"qpt-b-{time.time_ns()}")
    try:
        assert b.lockf(b.open("/erin"), libnfs.NFS4_F_TLOCK) == 0
    finally:
        b.destroy()
    a.close(handle_a)


def _server_of(client) -> tuple[str, int]:
    return client.address, client.port
