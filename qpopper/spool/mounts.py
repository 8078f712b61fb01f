"""Which file system an open file is on, from the kernel's own tables: the mount of the open
file (/proc/self/fdinfo/<fd>, mnt_id) looked up in /proc/self/mountinfo; no statfs binding
needed, and right where a device number is not the mount's (overlayfs layers, btrfs
subvolumes). Used by the spool lock, which must not take flock as well as fcntl on an NFS
mount, and by the dot-lock, which judges a pid-only lock there by its age alone
(docs/scale-out.md, "Locks across hosts"). And which mount holds spool-dir, and whether it
still does, for the health checks (docs/scale-out.md, "The load balancer")."""

from __future__ import annotations

import os

LOCAL_DISK_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs",
                              "jfs", "reiserfs", "bcachefs", "overlay"})
"""File systems whose flock and fcntl locks are the local kernel's own, apart: here a
process may hold both. Network file systems (NFS, CIFS, Ceph, ...) may map one onto the
other, and unknown ones are taken as such."""

NFS_TYPES = frozenset({"nfs", "nfs4"})
"""NFS, shared by hosts whatever the options say: its flock is an fcntl lock of its own owner
(the Linux NFS client, since 2.6.12) unless the mount keeps flock local (local_lock=), so
one process holding both refuses itself, and a pid in a lock there may be another host's."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def mount_id(fdinfo: str) -> str | None:
    """The `mnt_id:` of an /proc/self/fdinfo/<fd> text."""
    for line in fdinfo.splitlines():
        key, _, value = line.partition(":")
        if key == "mnt_id":
            return value.strip()
    return None


def _mount_fields(mount: str, mountinfo: str) -> list[str]:
    """What follows the separator in mount `mount`'s (its id) mountinfo line: type, source,
    super options ([] when the mount is not there)."""
    for line in mountinfo.splitlines():
        # "36 35 98:0 /root /mnt rw,noatime shared:1 - ext4 /dev/sda1 rw": the id first;
        # the optional fields end at a lone "-" (a mount point's spaces are \040), then the type
        fields = line.split(" ")
        if fields[0] == mount and "-" in fields[3:]:
            return fields[fields.index("-", 3) + 1:]
    return []


def fs_type(mount: str, mountinfo: str) -> str | None:
    """The type ("ext4", "nfs4", ...) of mount `mount` (its id) in a mountinfo text."""
    return _type_in(_mount_fields(mount, mountinfo))


def _fields_of(fd: int) -> list[str]:
    """_mount_fields of the mount the open file `fd` is on ([] when it cannot be told: /proc
    not mounted, a kernel without mnt_id). Asked afresh each time: the kernel gives a
    mount's id and device numbers to the next mount once it is gone, so a remembered answer
    could call an NFS mount the tmpfs that was there before."""
    fdinfo = _read(f"/proc/self/fdinfo/{fd}")
    mount = mount_id(fdinfo) if fdinfo is not None else None
    mountinfo = _read("/proc/self/mountinfo") if mount is not None else None
    return _mount_fields(mount, mountinfo) if mountinfo is not None else []


def _type_in(fields: list[str]) -> str | None:
    """The type in a mount's _mount_fields, or None when there are none."""
    return fields[0] if fields else None


def _local_lock_in(fields: list[str]) -> str | None:
    """An NFS mount's `local_lock=` (none, flock, posix or all; nfs(5): `nolock` sets all),
    as the kernel shows it in its super options (the last of its _mount_fields); None when
    it does not say."""
    for option in (fields[2].split(",") if len(fields) > 2 else ()):
        name, _, value = option.partition("=")
        if name == "local_lock":
            return value
    return None


def fs_type_of(fd: int) -> str | None:
    """The type of the file system the open file `fd` is on, or None when it cannot be told."""
    return _type_in(_fields_of(fd))


def flock_beside_fcntl(fd: int, *, network_safe: bool) -> bool:
    """Whether the spool lock may take flock as well as fcntl on the open file `fd`: on a
    local disk yes; on NFS only where the client keeps flock to itself (local_lock=flock or
    all): otherwise it sends flock to the server as an fcntl lock of another owner, which
    refuses the process's own; elsewhere, or when the type cannot be told, only when the
    site did not say the spool is shared (`network_safe`: no-atomic-open). The mount table
    is read once: type and options from the same line."""
    fields = _fields_of(fd)
    kind = _type_in(fields)
    if kind in LOCAL_DISK_TYPES:
        return True
    if kind in NFS_TYPES:
        return _local_lock_in(fields) in ("flock", "all")
    return not network_safe


def directory_on_nfs(path: str) -> bool:
    """Whether the directory `path` is on NFS (False when that cannot be told)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fs_type_of(fd) in NFS_TYPES
    finally:
        os.close(fd)


def mount_point_of(path: str) -> str:
    """The mount point of the file system that holds the directory `path`: the nearest of it
    and its ancestors (symbolic links resolved) whose device differs from its parent's; "/"
    for the root file system. Raises OSError."""
    here = os.path.realpath(path)
    while here != "/":
        parent = os.path.dirname(here)
        if os.stat(here).st_dev != os.stat(parent).st_dev:
            return here
        here = parent
    return "/"


MOUNT_GONE = "unmounted"
"""spool_mount_state's word for a directory no longer on the file system mounted where it was
found (an NFS mount gone leaves its empty mount point); also the state a health check reports
to the master then (server/monitor_proxy.py)."""


def spool_mount_state(path: str, mount_point: str | None) -> str | OSError:
    """Whether the directory `path`, found on the file system mounted at `mount_point`
    (mount_point_of; None: not known), is there and on it still: "ok"; MOUNT_GONE when
    `mount_point` is no mount point now (what was mounted there is gone, its empty directory
    left), or another file system is mounted on `path` or between the two; or the OSError of
    the first stat that failed (`path` first). Judged by the mounts, not by device numbers,
    which a file system gets anew at each mount: an NFS mount that comes back is fine again.
    One stat of `path`, whatever the answer."""
    try:
        device = os.stat(path).st_dev
        if mount_point is None or mount_point == "/":
            return "ok"
        at_mount = os.stat(mount_point).st_dev
        below_mount = os.stat(os.path.dirname(mount_point)).st_dev
    except OSError as exc:
        return exc
    return MOUNT_GONE if at_mount == below_mount or device != at_mount else "ok"
