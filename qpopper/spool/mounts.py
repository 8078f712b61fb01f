"""Which file system a file is on, from the kernel's own list of mounts
(/proc/self/mountinfo): no statfs binding needed. Used by the spool lock, which must not take
flock as well as fcntl on an NFS mount (docs/scale-out.md, "Locks across hosts")."""

from __future__ import annotations

import os

MOUNTINFO = "/proc/self/mountinfo"


def fs_type(st_dev: int, mountinfo: str | None = None) -> str | None:
    """The type ("ext4", "nfs4", ...) of the mount whose device is `st_dev`, or None when the
    list cannot be read or does not have it. `mountinfo` is the list's text (default: read)."""
    if mountinfo is None:
        try:
            with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return None
    device = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    for line in mountinfo.splitlines():
        # "36 35 98:0 /root /mnt rw,noatime shared:1 - ext4 /dev/sda1 rw": the optional
        # fields end at a lone "-", then the type
        fields = line.split(" ")
        if len(fields) > 2 and fields[2] == device and "-" in fields[3:]:
            rest = fields[fields.index("-", 3) + 1:]
            return rest[0] if rest else None
    return None


def on_nfs(fd: int) -> bool:
    """Whether the open file `fd` is on an NFS mount; True when that cannot be told (the
    caller's NFS-safe choice stays)."""
    kind = fs_type(os.fstat(fd).st_dev)
    return kind is None or kind.startswith("nfs")
