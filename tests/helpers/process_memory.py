"""Searching another process's memory (as root: /proc/<pid>/mem), for tests that prove a
secret never reached a process (docs/privsep.md, "What the tests prove")."""

from __future__ import annotations


def memory_holds(pid: int, patterns: list[bytes]) -> bool:
    """Whether any readable mapping of `pid` holds one of `patterns`, freed memory too."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]",
                                                                           "[vsyscall]")):
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except OSError:
                continue
            if any(pattern in data for pattern in patterns):
                return True
    return False
