"""Which file system an open file is on, from the kernel's own tables: the mount of the open
file (/proc/self/fdinfo/<fd>, mnt_id) looked up in /proc/self/mountinfo; no statfs binding
needed, and right where a device number is not the mount's (overlayfs layers, btrfs
subvolumes). Used by the spool lock, which must not take flock as well as fcntl on an NFS
mount, and by the dot-lock, which judges a pid-only lock there by its age alone
(docs/scale-out.md, "Locks across hosts")."""

from __future__ import annotations

import os

LOCAL_DISK_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs",
                              "jfs", "reiserfs", "bcachefs", "overlay"})
"""File systems whose flock and fcntl locks are the local kernel's own, apart: here a
process may hold both. Network file systems (NFS, CIFS, Ceph, ...) may map one onto the
other, and unknown ones are taken as such."""

NFS_TYPES = frozenset({"nfs", "nfs4"})
"""NFS, shared by hosts whatever the options say: its flock is an fcntl lock of its own owner
(the Linux NFS client, since 2.6.12), so one process holding both refuses itself, and a pid
in a lock there may be another host's."""


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


def fs_type(mount: str, mountinfo: str) -> str | None:
    """The type ("ext4", "nfs4", ...) of mount `mount` (its id) in a mountinfo text."""
    for line in mountinfo.splitlines():
        # "36 35 98:0 /root /mnt rw,noatime shared:1 - ext4 /dev/sda1 rw": the id first;
        # the optional fields end at a lone "-" (a mount point's spaces are \040), then the type
        fields = line.split(" ")
        if fields[0] == mount and "-" in fields[3:]:
            rest = fields[fields.index("-", 3) + 1:]
            return rest[0] if rest else None
    return None


def fs_type_of(fd: int) -> str | None:
    """The type of the file system the open file `fd` is on, or None when it cannot be told
    (/proc not mounted, a kernel without mnt_id). Asked afresh each time: the kernel gives
    a mount's id and device numbers to the next mount once it is gone, so a remembered
    answer could call an NFS mount the tmpfs that was there before."""
    fdinfo = _read(f"/proc/self/fdinfo/{fd}")
    mount = mount_id(fdinfo) if fdinfo is not None else None
    mountinfo = _read("/proc/self/mountinfo") if mount is not None else None
    return fs_type(mount, mountinfo) if mountinfo is not None else None


def flock_beside_fcntl(fd: int, *, network_safe: bool) -> bool:
    """Whether the spool lock may take flock as well as fcntl on the open file `fd`: on a
    local disk yes; on NFS never (NFS_TYPES); elsewhere, or when the type cannot
    be told, only when the site did not say the spool is shared (`network_safe`:
    no-atomic-open)."""
    kind = fs_type_of(fd)
    if kind in LOCAL_DISK_TYPES:
        return True
    return not network_safe and kind not in NFS_TYPES


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
