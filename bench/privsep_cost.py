#!/usr/bin/env python3
"""What privilege separation costs: qpopper-py before it (commit 1dec647: one child per
connection) and after it (this tree: monitor, pre-login process, user session), against popa3d
and Dovecot, plain text and implicit TLS, all in the same run.

A benchmark, not a test: run it by hand, as root, with the venv (or `make bench`):

    .venv/bin/python bench/privsep_cost.py                  # 3 rounds, 6 s runs, 30 idle
    .venv/bin/python bench/privsep_cost.py --rounds 5 --session-seconds 10 --idle-sessions 50

Two figures per server and mode, each the median of N rounds; in every round the eight
server/mode pairs are measured one after the other, the order turned by one each round:
- sessions/s: 8 clients loop connect, banner, USER, PASS, STAT, QUIT for a fixed time
  (../shared/bench/pop3bench.py sessions), real PAM users (common-auth + common-account);
- idle PSS per authenticated session: N sessions logged in and held; the Pss of every process
  that appeared in the server's tree for them (smaps_rollup), plus what processes that were
  already there grew by (a threaded TLS relay such as stunnel), divided by N.

Servers, all on free 127.0.0.1 ports, started once for the run and stopped at its end:
- qpopper-py before: `git archive 1dec647 qpopper` into the temp dir, run on PYTHONPATH with
  this interpreter; after: this tree the same way; cached: this tree again with the
  authentication cache on (auth-cache-size 10000, default TTLs; docs/auth-cache.md: after the
  warm-up every login is a cache hit, as for clients that poll with a saved password). One
  master each, with --tls-listen. All:
  -R, auth-brakes-file and spool in the temp dir, max-children(-per-address) raised, a fresh
  ECDSA P-256 certificate; after and cached also --prelogin-user=qpt-benchlogin (an account made
  for the run) and a prelogin-chroot in the temp dir;
- popa3d (Debian's, fetched with apt-get download, never installed) under
  systemd-socket-activate; with TLS behind stunnel4 (`exec`, a popa3d per connection), as
  popa3d's documentation advises (it has no TLS of its own);
- Dovecot (dovecot-core + dovecot-pop3d, installed when missing with its system service
  disabled) as its own instance with a config file of this run, pop3 and pop3s listeners.

Prints a table (before, after, popa3d, Dovecot, after/before, after/best peer) and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.pam_service import STOCK_POP3, installed_pam_service  # noqa: E402
from tests.helpers.sysusers import (SystemUsers, prelogin_account,  # noqa: E402
                                    world_readable_tmpdir)
from tests.helpers.testpki import TestPki  # noqa: E402
from tests.server_harness import free_port  # noqa: E402

import benchlib  # noqa: E402
import perf_breakdown  # noqa: E402
from benchlib import (DEFAULT_BENCH_DIR, POPA3D_SPOOL_DIR, Target, Window,  # noqa: E402
                      dovecot, idle, load_pop3bench, qpopper, make_spool, sessions,
                      popa3d_prerequisites, popa3d_server, reference_binary,
                      remove_popa3d_spools, running)

BEFORE_COMMIT = "1dec647"
BENCH_LOGIN = "qpt-benchlogin"
SPLIT_BUDGET = 0.85            # after/before sessions/s may not fall below this
SMALL_SEED = 100
BENCH_USER = "qptbench"        # the From_ lines' name; the spools are copied to every user
DEBIAN_PACKAGES = ("dovecot-core", "dovecot-pop3d", "stunnel4")
SERVERS = ("before", "after", "cached", "popa3d", "dovecot")
TITLES = {"before": "qpopper-py before", "after": "qpopper-py after",
          "cached": "qpopper-py after, auth cache on", "popa3d": "popa3d", "dovecot": "Dovecot"}
AUTH_CACHE = {"auth_cache_size": 10_000}
"""`cached`: this tree with the authentication cache on (docs/auth-cache.md), default TTLs."""
MODES = ("plain", "tls")


# ---------------------------------------------------------------- set-up

@contextlib.contextmanager
def popa3d_tls(binary: str, work: str, pki):
    """popa3d behind stunnel4: TLS in stunnel, a popa3d exec'd per connection."""
    port = free_port()
    conf = os.path.join(work, "stunnel.conf")
    Path(conf).write_text(
        f"foreground = yes\npid =\ndebug = 3\noutput = {work}/stunnel.log\n"
        f"[pop3s]\naccept = 127.0.0.1:{port}\nexec = {binary}\nexecArgs = popa3d\n"
        f"cert = {pki.cert_file}\nkey = {pki.key_file}\n")
    with running(["stunnel4", conf], os.path.join(work, "stunnel.out"), port, tls=True,
                 leftovers=(binary,)) as proc:
        yield proc, port


@contextlib.contextmanager
def before_tree(work: str, commit: str):
    """qpopper/ as it was at `commit`, extracted from this repository with git archive."""
    dest = os.path.join(work, f"qpopper-{commit}")
    os.mkdir(dest)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "qpopper"],
                             capture_output=True, timeout=120)
    if archive.returncode != 0:
        raise SystemExit(f"privsep_cost.py: git archive {commit} failed (use --before-tree): "
                         f"{archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True, timeout=120)
    yield dest


def tls_version(port: int) -> str:
    """What a TLS client negotiates with the server on port: version and cipher suite."""
    raw = socket.create_connection(("127.0.0.1", port), 5)
    with benchlib.client_tls_context().wrap_socket(raw) as sock:
        sock.recv(512)
        return f"{sock.version()} {sock.cipher()[0]}"


# ---------------------------------------------------------------- measurements

# ---------------------------------------------------------------- where the time goes

PERF_EVENTS = "page-faults,context-switches"     # software events: this VM has no PMU
PERF_WINDOW_S = 3.0
PERF_HZ = 499
FORKS = ("clone", "clone3", "fork", "vfork")


def perf(command: str, out: str, *options: str):
    """A measure for Window: `perf COMMAND -a OPTIONS -o out -- sleep SECONDS`."""
    return lambda seconds: subprocess.run(
        ["perf", command, "-a", *options, "-o", out, "--", "sleep", str(seconds)],
        capture_output=True, timeout=120)


def perf_counts(path: str) -> dict:
    counts = {}
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] in PERF_EVENTS.split(","):
                with contextlib.suppress(ValueError):
                    counts[fields[2]] = float(fields[0])
    return counts


def strace_calls(path: str) -> dict[str, int]:
    """syscall -> calls from `strace -c` output."""
    calls = {}
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[-1].isidentifier() and fields[3].isdigit() \
                    and fields[-1] != "total":
                calls[fields[-1]] = int(fields[3])
    return calls


def profile(bench: Path, pb, target: Target, users_file: str, args, work: str) -> dict:
    """For one qpopper-py target: phase latencies with one client; with 8 clients, machine
    CPU (/proc/stat) per session, and page faults and context switches per session over a
    steady PERF_WINDOW_S (perf stat -a: the whole machine), with --perf-dir also a perf record
    of qpopper-py's processes sorted by bench/perf_breakdown.py; forks and system calls per
    session (strace -f -c on the master while one client runs: at most one session too
    many)."""
    one = sessions(bench, pb, target, users_file, 1, 4)
    out = {f"c1_{k}": one.get(k) for k in ("lat_p50_ms", "banner_p50_ms", "auth_p50_ms",
                                            "stat_p50_ms", "quit_p50_ms",
                                            "server_cpu_ms_per_session")}
    stat_file = os.path.join(work, f"perf-{target.server}-{target.mode}.csv")
    runs = [("stat", stat_file, "-x,", "-e", PERF_EVENTS)]
    if args.perf_dir:
        record = os.path.join(args.perf_dir, f"{target.server}-{target.mode}.data")
        runs.append(("record", record, "-g", "-F", str(PERF_HZ)))
    for command, path, *options in runs:
        measuring = Window(perf(command, path, *options), PERF_WINDOW_S)
        eight = sessions(bench, pb, target, users_file, args.concurrency, PERF_WINDOW_S + 2)
        measuring.join()
        in_window = eight["sessions_per_s"] * PERF_WINDOW_S
        if command == "stat":
            out.update({f"perf_{k.replace('-', '_')}_per_session": round(v / in_window, 1)
                        for k, v in perf_counts(stat_file).items() if in_window})
        else:
            out.update({f"cpu_{k}": v for k, v in perf_breakdown.breakdown(
                path, in_window, "popper", PERF_HZ).items()})
    trace_file = os.path.join(work, f"strace-{target.server}-{target.mode}.txt")
    tracer = subprocess.Popen(["strace", "-f", "-c", "-o", trace_file, "-p", str(target.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)                                           # strace attaches
    traced = sessions(bench, pb, target, users_file, 1, 3)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    calls, n = strace_calls(trace_file), max(traced["sessions"], 1)
    out["forks_per_session"] = round(sum(calls.get(f, 0) for f in FORKS) / n, 2)
    out["syscalls_per_session"] = round(sum(calls.values()) / n)
    out["top_syscalls_per_session"] = {k: round(v / n, 1) for k, v in sorted(
        calls.items(), key=lambda kv: -kv[1])[:8]}
    return out


PROFILE_ROWS = (
    ("c1_lat_p50_ms", "1 client: session p50 ms"), ("c1_banner_p50_ms", "  connect+banner"),
    ("c1_auth_p50_ms", "  USER+PASS"), ("c1_stat_p50_ms", "  STAT"), ("c1_quit_p50_ms", "  QUIT"),
    ("c1_server_cpu_ms_per_session", "  server CPU ms/session"),
    ("perf_page_faults_per_session", "8 clients: page faults/session"),
    ("perf_context_switches_per_session", "  context switches/session"),
    ("cpu_total", "perf record: CPU ms/session"),
    *((f"cpu_{kind}", f"  {kind}") for kind in perf_breakdown.KINDS),
    ("forks_per_session", "strace: forks/session"),
    ("syscalls_per_session", "  system calls/session"),
)


def report_profile(profiles: dict) -> None:
    labels = list(profiles)
    print("\nwhere the time goes (qpopper-py; one run each, after the rounds)")
    print(f"{'figure':<32}" + "".join(f" {label:>13}" for label in labels))
    for key, title in PROFILE_ROWS:
        if all(profiles[label].get(key) is None for label in labels):
            continue
        print(f"{title:<32}" + "".join(
            f" {'-' if profiles[label].get(key) is None else f'{profiles[label][key]:g}':>13}"
            for label in labels))
    for label in labels:
        top = profiles[label].get("top_syscalls_per_session", {})
        print(f"  {label}: " + ", ".join(f"{k} {v:g}" for k, v in top.items()))


# ---------------------------------------------------------------- report

ROWS = (  # figure key, label, higher is better (None: no ratio)
    ("sessions_per_s", "sessions/s (C=8)", True),
    ("server_cpu_ms_per_session", "  server CPU ms/session", False),
    ("cpu_ms_per_session", "  machine CPU ms/session", False),
    ("lat_p50_ms", "  latency p50 ms", False),
    ("banner_p50_ms", "  banner p50 ms", False),
    ("auth_p50_ms", "  USER+PASS p50 ms", False),
    ("errors", "  errors", None),
    ("pss_kb_per_session", "idle PSS KiB/session", False),
    ("procs_per_session", "  processes/session", None),
    ("tree_delta_kb_per_session", "  tree delta KiB/session", None),
)


def record(target: Target, data: dict) -> None:
    for key, value in data.items():
        if isinstance(value, (int, float)):
            target.runs.setdefault(key, []).append(value)


def medians(targets: list[Target]) -> dict:
    return {t.label: {k: round(statistics.median(v), 2) for k, v in t.runs.items()}
            for t in targets}


def report(targets: list[Target], args) -> dict:
    med = medians(targets)
    table, verdicts = [], {}
    head = (f"{'figure':<26} {'before':>9} {'after':>9} {'cached':>9} {'popa3d':>9} "
            f"{'Dovecot':>9} {'after/before':>12} {'after/best peer':>15} "
            f"{'cached/best peer':>16}")
    print(f"\nmedians of {args.rounds} rounds ({args.session_seconds:g} s session runs, "
          f"{args.idle_sessions} idle sessions); ratios: > 1 is more of the figure")
    for mode in MODES:
        print(f"\n{mode}\n{head}")
        for key, label, higher in ROWS:
            values = {s: med.get(f"{s}/{mode}", {}).get(key) for s in SERVERS}
            peers = [values[s] for s in ("popa3d", "dovecot") if values[s] is not None]
            after, before_ = values["after"], values["before"]
            ratio = after / before_ if after is not None and before_ else None
            best = (max(peers) if higher else min(peers)) if peers and higher is not None else None
            peer_ratio = after / best if after is not None and best else None
            cached = values["cached"]
            cached_ratio = cached / best if cached is not None and best else None
            cells = " ".join(f"{'-' if v is None else f'{v:g}':>9}" for v in values.values())
            shown = [None if higher is None else ratio, peer_ratio, cached_ratio]
            print(f"{label:<26} {cells} " + " ".join(
                f"{'' if r is None else f'{r:.2f}':>{w}}" for r, w in zip(shown, (12, 15, 16))))
            table.append({"mode": mode, "figure": key, **values,
                          "after_over_before": ratio, "after_over_best_peer": peer_ratio,
                          "cached_over_best_peer": cached_ratio})
            if key == "sessions_per_s" and ratio is not None:
                verdicts[mode] = round(ratio, 3)
    print()
    for mode, ratio in verdicts.items():
        state = "within" if ratio >= SPLIT_BUDGET else "OVER"
        print(f"{mode}: the split keeps {ratio:.0%} of the sessions/s: {state} the 15% budget")
    return {"medians": med, "table": table, "split_ratio": verdicts}


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians (3)")
    parser.add_argument("--session-seconds", type=float, default=6.0,
                        help="length of one sessions run (6)")
    parser.add_argument("--concurrency", type=int, default=8, help="sessions clients (8)")
    parser.add_argument("--idle-sessions", type=int, default=30,
                        help="authenticated sessions held for the PSS figure (30)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="any of before,after,cached,popa3d,dovecot (all)")
    parser.add_argument("--before-commit", default=BEFORE_COMMIT,
                        help=f"the qpopper-py before the split ({BEFORE_COMMIT})")
    parser.add_argument("--before-tree", help="a checkout to use instead of git archive")
    parser.add_argument("--reference-binary", help="a popa3d binary instead of apt-get download")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the qpopper-py profile after the rounds (perf stat, strace)")
    parser.add_argument("--perf-dir", help="also perf record qpopper-py under load into this "
                        "directory and print CPU per session by kind of work")
    parser.add_argument("--raw-out", help="append every pop3bench JSON result to this file")
    parser.add_argument("--bench-dir", default=str(DEFAULT_BENCH_DIR),
                        help="where pop3bench.py and mkspool.py are (../shared/bench)")
    args = parser.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    if args.perf_dir:
        args.perf_dir = os.path.abspath(args.perf_dir)
        os.makedirs(args.perf_dir, exist_ok=True)
    if set(args.servers) - set(SERVERS) or args.rounds < 1 or args.idle_sessions < 1:
        parser.error("bad --servers/--rounds/--idle-sessions")
    return args


def start_servers(stack, args, work, pam, pki, spools) -> list[Target]:
    """Every server of the run, started once; the spools copied into each one's spool dir."""
    limit = args.idle_sessions + 50
    targets = []
    for name in args.servers:
        if name in ("before", "after", "cached"):
            tree = (args.before_tree or stack.enter_context(before_tree(work, args.before_commit))
                    if name == "before" else str(REPO))
            server, tls_port, spool_dir = stack.enter_context(
                qpopper(work, f"qpopper-{name}", tree, pam, pki, limit,
                        None if name == "before" else BENCH_LOGIN,
                        **(AUTH_CACHE if name == "cached" else {})))
            ports, pids = (server.port, tls_port), (server.pid, server.pid)
        elif name == "popa3d":
            binary, pam_text = stack.enter_context(reference_binary(args.reference_binary, work))
            created = stack.enter_context(popa3d_prerequisites(pam_text))
            if created:
                print(f"created for popa3d (removed at the end): {', '.join(created)}")
            plain, port = stack.enter_context(popa3d_server(binary, work))
            relay, tls_port = stack.enter_context(popa3d_tls(binary, work, pki))
            ports, pids, spool_dir = (port, tls_port), (plain.pid, relay.pid), POPA3D_SPOOL_DIR
        else:
            proc, port, tls_port, spool_dir = stack.enter_context(dovecot(work, pam, pki, limit))
            ports, pids = (port, tls_port), (proc.pid, proc.pid)
        spools(spool_dir)
        targets += [Target(name, mode, port, pid) for mode, port, pid in zip(MODES, ports, pids)]
    return targets


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Path(args.bench_dir)
    if os.geteuid() == 0 and {"dovecot", "popa3d"} & set(args.servers):
        benchlib.ensure_debian_packages(DEBIAN_PACKAGES)
    needed = {"popa3d": [("systemd-socket-activate", "systemd"), ("stunnel4", "stunnel4")],
              "dovecot": [("dovecot", "dovecot-core")]}
    benchlib.require_runnable("privsep_cost.py", bench,
                              "it creates users, accounts, PAM files, servers",
                              [tool for server in args.servers for tool in needed.get(server, ())])
    benchlib.clean_up_on_signals()
    pb = load_pop3bench(bench)
    started = time.time()
    raw_out = open(args.raw_out, "a") if args.raw_out else None
    n_users = max(args.idle_sessions, args.concurrency)
    try:
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(world_readable_tmpdir("qpt-privsep-"))
            pam = stack.enter_context(installed_pam_service(STOCK_POP3, tag="bench"))
            stack.enter_context(prelogin_account(BENCH_LOGIN))
            users = stack.enter_context(SystemUsers())
            print(f"making {n_users} users, their spools and a certificate ...", flush=True)
            # yescrypt, as Debian's PAM sets it: the hash is part of a login's cost
            bench_users = [users.create("p", shell="/usr/sbin/nologin", crypt_method=None)
                           for _ in range(n_users)]
            stack.callback(remove_popa3d_spools, bench_users)
            masters = []
            for i, _ in enumerate(bench_users):
                masters.append(os.path.join(work, f"small{i}.mbox"))
                make_spool(bench, masters[-1], seed=SMALL_SEED + i, user=BENCH_USER, count=10)
            users_file = os.path.join(work, "users.txt")
            Path(users_file).write_text("".join(f"{u.name}:{u.password}\n" for u in bench_users))
            os.chmod(users_file, 0o600)
            pki = TestPki(os.path.join(work, "pki")).server("bench")
            restore = benchlib.write_restore_script(work)

            def spools(spool_dir: str) -> None:
                for user, master in zip(bench_users, masters):
                    subprocess.run([restore, master, os.path.join(spool_dir, user.name),
                                    user.name], check=True, timeout=60)

            targets = start_servers(stack, args, work, pam, pki, spools)
            print("servers: " + ", ".join(f"{t.label} {t.port}" for t in targets))
            for t in targets:
                if t.mode == "tls":
                    print(f"  {t.label}: {tls_version(t.port)}")
            print("warm-up (not counted) ...", flush=True)
            for t in targets:
                sessions(bench, pb, t, users_file, args.concurrency, 2)
            for rnd in range(args.rounds):
                print(f"round {rnd + 1}/{args.rounds}, load average "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for t in order:
                    record(t, sessions(bench, pb, t, users_file, args.concurrency,
                                       args.session_seconds, raw_out))
                    held = idle(pb, t, bench_users, args.idle_sessions)
                    record(t, held)
                    t.roles = held["roles"]
            profiles = {} if args.no_profile else {
                t.label: profile(bench, pb, t, users_file, args, work)
                for t in targets if t.server in ("before", "after", "cached")}
    except KeyboardInterrupt:
        print("privsep_cost.py: interrupted; servers stopped, users and files removed",
              file=sys.stderr)
        return 130
    finally:
        if raw_out:
            raw_out.close()
    summary = report(targets, args)
    if profiles:
        report_profile(profiles)
    print(json.dumps({
        "benchmark": "privsep_cost",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "params": {"rounds": args.rounds, "session_seconds": args.session_seconds,
                   "concurrency": args.concurrency, "idle_sessions": args.idle_sessions,
                   "before_commit": args.before_commit},
        "idle_processes": {t.label: t.roles for t in targets},
        "profile": profiles,
        **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
