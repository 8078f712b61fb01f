#!/usr/bin/env python3
"""CPU per session by kind of work, from a system-wide `perf record -a -g` taken while a
server was under a steady load of sessions.

    perf record -a -g -F 499 -o after.data -- sleep 3      # during an 8-client sessions run
    python3 bench/perf_breakdown.py after.data:86.5 --comm popper   # 86.5 sessions in those 3 s

Only samples of processes whose name (comm) starts with --comm count. Each sample goes to the
first kind its call chain matches: the password hash (any frame in libcrypt, with the page
faults it causes), process exit (do_exit/exit_mmap), fork (copy_process), page faults
(copy-on-write and fresh pages), then by the sampled function's object: other kernel work
(system calls), the Python interpreter, other user space (libssl, libc, ...).
bench/privsep_cost.py --perf-dir DIR records such files for qpopper-py and prints this.
"""

from __future__ import annotations

import argparse
import collections
import subprocess

KINDS = ("password hash (libcrypt)", "process exit", "fork", "page faults",
         "other kernel (system calls)", "Python interpreter", "other user space")


def kind(frames: list[tuple[str, str]]) -> str:
    """frames: (symbol, object) from the sampled function outwards."""
    symbols = {symbol for symbol, _ in frames}
    if any("libcrypt" in obj for _, obj in frames):
        return KINDS[0]
    if symbols & {"do_exit", "exit_mmap"}:
        return KINDS[1]
    if symbols & {"copy_process", "dup_mm"}:
        return KINDS[2]
    if "asm_exc_page_fault" in symbols:
        return KINDS[3]
    leaf = frames[0][1] if frames else ""
    return KINDS[4] if "kernel" in leaf else KINDS[5] if "libpython" in leaf else KINDS[6]


def breakdown(path: str, sessions: float, comm: str, hz: int) -> dict[str, float]:
    """ms of CPU per session for each kind, and "total"."""
    text = subprocess.run(["perf", "script", "-i", path, "-F", "comm,ip,sym,dso"],
                          capture_output=True, text=True, timeout=600).stdout
    counts: collections.Counter = collections.Counter()
    for sample in text.split("\n\n"):
        lines = sample.splitlines()
        if not lines or not lines[0].strip().startswith(comm):
            continue
        frames = []
        for line in lines[1:]:
            _, _, rest = line.strip().partition(" ")
            symbol, _, obj = rest.rpartition(" (")
            frames.append((symbol.split("+")[0], obj.rstrip(")")))
        counts[kind(frames)] += 1
    ms = 1000 / hz / max(sessions, 1e-9)
    result = {k: round(counts[k] * ms, 1) for k in KINDS}
    result["total"] = round(sum(counts.values()) * ms, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", help="FILE:SESSIONS (sessions in the recording)")
    parser.add_argument("--comm", default="popper", help="process name prefix (popper)")
    parser.add_argument("--hz", type=int, default=499, help="perf record -F (499)")
    args = parser.parse_args()
    for record in args.records:
        path, _, sessions = record.rpartition(":")
        result = breakdown(path, float(sessions), args.comm, args.hz)
        print(f"{path}: CPU ms per session of {args.comm}* processes")
        for name, value in result.items():
            print(f"  {name:<30} {value:6.1f}")


if __name__ == "__main__":
    main()
