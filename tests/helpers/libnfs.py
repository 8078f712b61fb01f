"""A real NFSv4 server and client without a kernel NFS client: nfs-ganesha (user space, in the
foreground, NFSv4 only, no rpcbind) exporting a directory, and libnfs (the user-space client
library, Debian's libnfs13) through ctypes, one NfsClient per simulated host.

Used by tests/test_nfs_ganesha.py (docs/scale-out.md, "What the tests prove").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import daemons
from tests.server_harness import free_port

GANESHA = "/usr/bin/ganesha.nfsd"
LIBNFS = "libnfs.so.13"

GANESHA_CONFIG = """\
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {port};
    Bind_addr = {address};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
NFSV4 {{ Graceless = true; Lease_Lifetime = 15; }}
EXPORT {{
    Export_Id = 1;
    Path = {directory};
    Pseudo = /spool;
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 4;
    Transports = TCP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""

NFS4_F_LOCK, NFS4_F_TLOCK, NFS4_F_ULOCK, NFS4_F_TEST = range(4)
LOCK_LENGTH = 1
"""Octets locked from offset 0 (NFSv4 refuses a zero length with NFS4ERR_INVAL)."""


class NfsStat64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "nfs_dev", "nfs_ino", "nfs_mode", "nfs_nlink", "nfs_uid", "nfs_gid", "nfs_rdev",
        "nfs_size", "nfs_blksize", "nfs_blocks", "nfs_atime", "nfs_mtime", "nfs_ctime",
        "nfs_atime_nsec", "nfs_mtime_nsec", "nfs_ctime_nsec", "nfs_used")]


class NfsUrl(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p),
                ("file", ctypes.c_char_p)]


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


def load_libnfs():
    lib = ctypes.CDLL(LIBNFS, use_errno=True)
    p, i, s, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint64
    signatures = {
        "nfs_init_context": ([], p), "nfs_destroy_context": ([p], None),
        "nfs_get_error": ([p], s), "nfs_set_version": ([p, i], i),
        "nfs4_set_client_name": ([p, s], None), "nfs_set_dircache": ([p, i], None),
        "nfs_parse_url_dir": ([p, s], ctypes.POINTER(NfsUrl)),
        "nfs_destroy_url": ([ctypes.POINTER(NfsUrl)], None),
        "nfs_mount": ([p, s, s], i), "nfs_umount": ([p], i),
        "nfs_open2": ([p, s, i, i, ctypes.POINTER(p)], i),
        "nfs_close": ([p, p], i), "nfs_write": ([p, p, u64, s], i),
        "nfs_link": ([p, s, s], i), "nfs_unlink": ([p, s], i),
        "nfs_stat64": ([p, s, ctypes.POINTER(NfsStat64)], i),
        "nfs_lockf": ([p, p, i, u64], i),
        "nfs_utimes": ([p, s, ctypes.POINTER(Timeval)], i),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result
    return lib


class NfsError(OSError):
    pass


class NfsClient:
    """One NFSv4 client (one simulated host): its own context, client name and connection."""

    def __init__(self, lib, address: str, port: int, client_name: str):
        self.lib = lib
        self.address, self.port = address, port
        self.ctx = lib.nfs_init_context()
        if not self.ctx:
            raise NfsError(errno.ENOMEM, "nfs_init_context failed")
        lib.nfs4_set_client_name(self.ctx, client_name.encode())
        lib.nfs_set_dircache(self.ctx, 0)         # no cached directory listings
        url = lib.nfs_parse_url_dir(self.ctx, f"nfs://{address}/spool?version=4&nfsport={port}"
                                    .encode())
        if not url:
            raise NfsError(errno.EINVAL, self.error())
        try:
            self._check(lib.nfs_mount(self.ctx, url.contents.server, url.contents.path), "mount")
        finally:
            lib.nfs_destroy_url(url)

    def error(self) -> str:
        text = self.lib.nfs_get_error(self.ctx)
        return text.decode(errors="replace") if text else "?"

    def _check(self, status: int, what: str) -> int:
        if status < 0:
            raise NfsError(-status, f"{what}: {os.strerror(-status)} ({self.error()})")
        return status

    def create_exclusive(self, path: str, data: bytes, mode: int = 0o644) -> None:
        handle = ctypes.c_void_p()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._check(self.lib.nfs_open2(self.ctx, path.encode(), flags, mode,
                                       ctypes.byref(handle)), f"create {path}")
        try:
            self._check(self.lib.nfs_write(self.ctx, handle, len(data), data), f"write {path}")
        finally:
            self.lib.nfs_close(self.ctx, handle)

    def open(self, path: str, flags: int = os.O_RDWR) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self._check(self.lib.nfs_open2(self.ctx, path.encode(), flags, 0o644,
                                       ctypes.byref(handle)), f"open {path}")
        return handle

    def close(self, handle) -> None:
        self.lib.nfs_close(self.ctx, handle)

    def lockf(self, handle, op: int) -> int:
        """0 or a negative errno (non-blocking ops): the whole file from offset 0."""
        return self.lib.nfs_lockf(self.ctx, handle, op, LOCK_LENGTH)

    def link(self, source: str, target: str) -> int:
        """0 or a negative errno, as link(2) would report it."""
        return self.lib.nfs_link(self.ctx, source.encode(), target.encode())

    def unlink(self, path: str) -> int:
        return self.lib.nfs_unlink(self.ctx, path.encode())

    def stat(self, path: str) -> NfsStat64 | None:
        st = NfsStat64()
        status = self.lib.nfs_stat64(self.ctx, path.encode(), ctypes.byref(st))
        if status == -errno.ENOENT:
            return None
        self._check(status, f"stat {path}")
        return st

    def set_mtime(self, path: str, when: float) -> None:
        times = (Timeval * 2)(Timeval(int(when), 0), Timeval(int(when), 0))
        self._check(self.lib.nfs_utimes(self.ctx, path.encode(), times), f"utimes {path}")

    def destroy(self) -> None:
        if self.ctx:
            self.lib.nfs_umount(self.ctx)
            self.lib.nfs_destroy_context(self.ctx)
            self.ctx = None


@contextlib.contextmanager
def ganesha(workdir: str, directory: str, address: str = "127.0.0.1"):
    """nfs-ganesha in the foreground exporting `directory` as /spool on address:port (free);
    yields the port once an NFS client can mount it. Raises FileNotFoundError when the
    package is not installed, RuntimeError (with its log) when it does not serve."""
    if shutil.which(GANESHA) is None:
        raise FileNotFoundError(GANESHA)
    port = free_port(address)
    config = Path(workdir, "ganesha.conf")
    config.write_text(GANESHA_CONFIG.format(port=port, address=address, directory=directory))
    log = Path(workdir, "ganesha.log")
    proc = subprocess.Popen([GANESHA, "-F", "-L", str(log), "-f", str(config),
                             "-p", str(Path(workdir, "ganesha.pid")), "-N", "NIV_EVENT"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        lib = load_libnfs()
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ganesha.nfsd exited with {proc.returncode}: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            try:
                NfsClient(lib, address, port, f"probe-{os.getpid()}").destroy()
                break
            except NfsError:
                if time.monotonic() > deadline:
                    raise RuntimeError("ganesha.nfsd did not serve: " +
                                       log.read_text(errors="replace")[-2000:])
                time.sleep(0.2)
        yield lib, port
    finally:
        daemons.stop(proc, signal.SIGTERM, 20)
