#!/usr/bin/env python3
"""Where an idle authenticated session's memory goes: one qpopper-py master (this tree),
N sessions held after USER, PASS, STAT (plain text, then implicit TLS), the Pss of every
process the server made for them, and a per-mapping breakdown (/proc/PID/smaps) of one
session process and, with TLS, of one relaying pre-login process.

A benchmark, not a test: run it by hand, as root, with the venv:

    .venv/bin/python bench/session_memory.py                 # 50 sessions, plain and TLS
    .venv/bin/python bench/session_memory.py --sessions 20 --modes plain

Real PAM users (common-auth + common-account, so yescrypt runs in the monitor that becomes
the session), a 10-message spool each, the pre-login account and chroot of a real site.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import poplib
import pwd
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.messages import mbox  # noqa: E402
from tests.helpers.pam_service import STOCK_POP3, installed_pam_service  # noqa: E402
from tests.helpers.sysusers import (SystemUsers, make_spool, prelogin_account,  # noqa: E402
                                    world_readable_tmpdir)
from tests.helpers.testpki import TestPki  # noqa: E402
from tests.server_harness import descendants_of, proc_status, proc_title  # noqa: E402

import benchlib  # noqa: E402

BENCH_LOGIN = "qpt-memlogin"
FIELDS = ("Pss", "Private_Dirty", "Private_Clean", "Shared_Dirty", "Shared_Clean", "Rss")


def smaps_by_mapping(pid: int) -> dict[str, collections.Counter]:
    """mapping name -> KiB per FIELDS; anonymous mappings are "[anon]"."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    name = "?"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if "-" in key and " " in line and not rest.strip().endswith("kB"):
                words = line.split()
                name = os.path.basename(words[5]) if len(words) > 5 else "[anon]"
                if len(words) > 5 and words[5].startswith("["):
                    name = words[5]
                continue
            if key in FIELDS:
                out[name][key] += int(rest.split()[0])
    return out


def rollup(pid: int) -> collections.Counter:
    total: collections.Counter = collections.Counter()
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in FIELDS:
                total[key] += int(rest.split()[0])
    return total


def print_breakdown(title: str, pid: int, top: int = 14) -> None:
    maps = smaps_by_mapping(pid)
    total = rollup(pid)
    print(f"  {title} (pid {pid}): Pss {total['Pss']} KiB, Private_Dirty "
          f"{total['Private_Dirty']} KiB, Rss {total['Rss']} KiB")
    print(f"    {'mapping':34} {'Pss':>6} {'PrivDirty':>9} {'PrivClean':>9} {'Shared':>7}")
    for name, c in sorted(maps.items(), key=lambda kv: -kv[1]["Pss"])[:top]:
        shared = c["Shared_Dirty"] + c["Shared_Clean"]
        print(f"    {name[:34]:34} {c['Pss']:6} {c['Private_Dirty']:9} "
              f"{c['Private_Clean']:9} {shared:7}")


def hold(port: int, users, tls: bool, n: int, banner_only: bool = False):
    clients = []
    context = benchlib.client_tls_context() if tls else None
    for i in range(n):
        user = users[i]          # one session per user: the spool lock
        client = (poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=60) if tls
                  else poplib.POP3("127.0.0.1", port, timeout=60))
        if not banner_only:
            client.user(user.name)
            client.pass_(user.password)
            client.stat()
        clients.append(client)
    return clients


def measure(server_pid: int, port: int, users, tls: bool, n: int, settle: float,
            banner_only: bool = False) -> None:
    before = set(descendants_of(server_pid))
    clients = hold(port, users, tls, n, banner_only)
    try:
        time.sleep(settle)
        new = [pid for pid in descendants_of(server_pid) if pid not in before]
        roles: dict[str, list[int]] = collections.defaultdict(list)
        login_uid = pwd.getpwnam(BENCH_LOGIN).pw_uid
        for pid in new:
            with contextlib.suppress(OSError, KeyError):
                uid = int(proc_status(pid)["Uid"].split()[0])
                roles["pre-login" if uid == login_uid else
                      "monitor" if banner_only else "session"].append(pid)
        total = sum(rollup(pid)["Pss"] for pid in new)
        mode = ("tls" if tls else "plain") + (", banner only" if banner_only else "")
        print(f"{mode}: {n} sessions, {len(new)} processes, Pss {total / n / 1024:.2f} MiB "
              f"per session")
        for role, pids in sorted(roles.items()):
            pss = [rollup(pid)["Pss"] for pid in pids]
            dirty = [rollup(pid)["Private_Dirty"] for pid in pids]
            print(f"  {role}: {len(pids)} × Pss {sum(pss) / len(pids) / 1024:.2f} MiB, "
                  f"Private_Dirty {sum(dirty) / len(pids) / 1024:.2f} MiB")
        for role, pids in sorted(roles.items()):
            print_breakdown(f"one {role}: {proc_title(pids[0])}", pids[-1])
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.quit()


def children_cpu_s(pid: int) -> float:
    """CPU of `pid`'s reaped children (and theirs): cutime + cstime."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def login_cpu(server_pid: int, port: int, users, logins: int) -> None:
    """Server CPU per session (connect, USER, PASS, STAT, QUIT), one client at a time: what
    the connections' processes used, read from the master once they were reaped."""
    def run(n: int) -> None:
        for i in range(n):
            for client in hold(port, users[i % len(users):], False, 1):
                client.quit()

    run(len(users))                                         # not counted: first logins
    time.sleep(1)
    before = children_cpu_s(server_pid)
    run(logins)
    time.sleep(1)                                           # the last ones reaped
    used = children_cpu_s(server_pid) - before
    print(f"CPU per session (monitor, pre-login, session): {used / logins * 1000:.1f} ms "
          f"over {logins} sessions")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--modes", default="plain,tls")
    p.add_argument("--banner-only", action="store_true",
                   help="connections that read the banner and wait: monitor and pre-login")
    p.add_argument("--cpu-logins", type=int, default=0,
                   help="also measure the server's CPU per session over this many sessions")
    p.add_argument("--tree", default=str(REPO),
                   help="the qpopper-py tree to run (default: this one)")
    p.add_argument("--settle", type=float, default=1.5)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("session_memory.py: run as root (it creates users, PAM files, a server)",
              file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(world_readable_tmpdir("qpt-mem-"))
        pam = stack.enter_context(installed_pam_service(STOCK_POP3, tag="mem"))
        stack.enter_context(prelogin_account(BENCH_LOGIN))
        users = stack.enter_context(SystemUsers())
        bench_users = [users.create("m", shell="/usr/sbin/nologin", crypt_method=None)
                       for _ in range(args.sessions)]
        pki = TestPki(os.path.join(work, "pki")).server("bench")
        server, tls_port, spool_dir = stack.enter_context(benchlib.qpopper(
            work, "after", args.tree, pam, pki, args.sessions + 8, BENCH_LOGIN))
        for user in bench_users:
            make_spool(spool_dir, user, mbox(*[(f"message {i}", "text\n" * 20) for i in range(10)]))
        print(f"load average {os.getloadavg()[0]:.2f}; master pid {server.pid}, Pss "
              f"{rollup(server.pid)['Pss'] / 1024:.1f} MiB")
        if args.cpu_logins:
            login_cpu(server.pid, server.port, bench_users, args.cpu_logins)
        for mode in args.modes.split(","):
            measure(server.pid, tls_port if mode == "tls" else server.port, bench_users,
                    mode == "tls", args.sessions, args.settle, args.banner_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
