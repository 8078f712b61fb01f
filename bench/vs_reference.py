#!/usr/bin/env python3
"""qpopper-py against a reference POP3 server (popa3d), measured in the same run.

A benchmark, not a test: run it by hand, as root, from the repository root, with the venv:

    .venv/bin/python bench/vs_reference.py                 # ~300 MB / 20,000 msgs, 3 runs each
    .venv/bin/python bench/vs_reference.py --quick         # ~30 MB / 2,000 msgs, 1 run each
    .venv/bin/python bench/vs_reference.py --size 1G --messages 0 --repeat 3 --scenarios bigbox

What it does, all on 127.0.0.1:
- the reference: Debian's popa3d, fetched with `apt-get download popa3d` + `dpkg-deb -x` into a
  temp directory (never installed: it Conflicts with pop3-server), or `--reference-binary PATH`.
  It runs inetd-style under `systemd-socket-activate --inetd`. What its postinst would make (the
  `popa3d` system user and group, /var/lib/popa3d) and /etc/pam.d/popa3d are created when
  missing and removed afterwards — only what this script created;
- qpopper-py: the real standalone master (`popper`), in normal mode and/or server mode (the
  mode whose `.user.cache` makes a second session on the same spool cheap);
- both authenticate the same throw-away `qpt…` users through PAM with the same stack
  (common-auth + common-account), so the password hash costs both the same;
- the same seeded spools (../shared/bench/mkspool.py) are copied to each server's spool
  (popa3d: /var/mail/USER, compiled in; qpopper-py: a temp spool directory per mode), with the
  mtime set 10 s back (popa3d otherwise waits ~1 s on a mailbox changed this second);
- the shared load generator ../shared/bench/pop3bench.py measures: bigbox cold (fresh copy
  before each run) with RETR + DELE of every message, bigbox without RETR cold and then warm
  (same spool again), sessions at each concurrency, idle memory per held session.

It prints a table of medians with the ratio qpopper-py / popa3d for each figure, then one JSON
line. Users, spools, the PAM file and every server started are removed/stopped at the end, also
on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.pam_service import STOCK_POP3, installed_pam_service  # noqa: E402
from tests.helpers.sysusers import (SystemUsers, prelogin_account,  # noqa: E402
                                    world_readable_tmpdir)
from tests.server_harness import (PopperServer, make_spool_dir,  # noqa: E402
                                  write_config)

import benchlib  # noqa: E402
from benchlib import (DEFAULT_BENCH_DIR, POPA3D_SPOOL_DIR, make_spool,  # noqa: E402
                      popa3d_prerequisites, popa3d_server, reference_binary,
                      remove_popa3d_spools, write_restore_script)

REFERENCE = "popa3d"
TINY_MS = 5               # below this on both sides a ratio says little (one scheduler tick)
BIG_SEED = 300
SMALL_SEED = 100
BENCH_USER = "qptbench"   # the From_ lines' name; the spools are copied to every user

# (scenario, metric, label, unit, higher_is_better)
FIGURES = (
    ("big_cold", "session_start_s", "session start (PASS -> +OK)", "s", False),
    ("big_cold", "stat_s", "STAT", "s", False),
    ("big_cold", "list_s", "LIST", "s", False),
    ("big_cold", "uidl_s", "UIDL", "s", False),
    ("big_cold", "retr_MBps", "RETR all", "MB/s", True),
    ("big_cold", "retr_client_cpu_frac", "  client CPU during RETR", "cores", None),
    ("big_cold", "dele_s", "DELE all", "s", False),
    ("big_cold", "quit_s", "QUIT (mbox update after DELE all)", "s", False),
    ("big_cold", "check_failures", "  pop3bench checks", "", None),
    ("peek_cold", "session_start_s", "session start", "s", False),
    ("peek_cold", "stat_s", "STAT", "s", False),
    ("peek_cold", "uidl_s", "UIDL", "s", False),
    ("peek_cold", "quit_s", "QUIT (no change)", "s", False),
    ("peek_cold", "check_failures", "  pop3bench checks", "", None),
    ("peek_warm", "session_start_s", "session start", "s", False),
    ("peek_warm", "stat_s", "STAT", "s", False),
    ("peek_warm", "uidl_s", "UIDL", "s", False),
    ("peek_warm", "quit_s", "QUIT (no change)", "s", False),
    ("peek_warm", "check_failures", "  pop3bench checks", "", None),
    ("idle", "pss_kb_per_session", "PSS per held session", "KiB", False),
    ("idle", "rss_kb_per_session", "  RSS per held session", "KiB", None),
)
SESSION_FIGURES = (("sessions_per_s", "sessions/s", "1/s", True),
                   ("lat_p50_ms", "latency p50", "ms", False),
                   ("lat_p99_ms", "latency p99", "ms", False),
                   ("errors", "  errors", "", None))
SCENARIO_TITLES = {
    "big_cold": "bigbox, fresh copy before each run: RETR all + DELE all + QUIT (--quickack)",
    "peek_cold": "bigbox without RETR/DELE, fresh copy before each run (cold)",
    "peek_warm": "bigbox without RETR/DELE, same spool again (warm)",
    "idle": "idle: sessions held open, memory of the server process tree",
}


@dataclass
class Target:
    """One server under test: its label, port, the pid whose tree `idle` measures, and the
    directory its users' spools live in (plus the files a cold start removes)."""

    label: str
    port: int
    pid: int
    spool_dir: str
    cold_extra_files: tuple[str, ...] = ()          # %s = user name
    results: dict = field(default_factory=dict)


# ---------------------------------------------------------------- qpopper-py

@contextlib.contextmanager
def qpopper_server(work: str, pam_service: str, mode: str, max_sessions: int):
    root = os.path.join(work, f"qpopper-{mode}")
    os.mkdir(root)
    os.chmod(root, 0o755)
    spool_dir = make_spool_dir(root)
    # Session limits above what the scenarios open (the default 20 per address would refuse
    # the idle scenario's sessions, all from 127.0.0.1); popa3d under the activator has none.
    config = write_config(os.path.join(root, "qpopper.config"), spool_dir=spool_dir,
                          pam_service=pam_service, timeout=600, reverse_lookup=False,
                          server_mode=(mode == "server"), max_children=max_sessions,
                          max_children_per_address=max_sessions)
    with PopperServer(root, config) as server:
        yield server, spool_dir


# ---------------------------------------------------------------- spools and pop3bench

def pop3bench(bench: Path, scenario: str, target: Target, args, raw_out, *extra: str) -> dict:
    return benchlib.pop3bench(bench, scenario, target.port, target.label, *extra,
                              raw_out=raw_out)


def restore_command(script: str, master: str, target: Target, user: str, cold: bool) -> str:
    extra = [os.path.join(target.spool_dir, pattern % user) for pattern in target.cold_extra_files]
    return " ".join([script, master, os.path.join(target.spool_dir, user), user,
                     *(extra if cold else [])])


# ---------------------------------------------------------------- scenarios

def run_bigbox(bench, targets, users_big, master, restore, args, raw_out):
    verify = [] if args.verify else ["--no-verify"]
    # --quickack everywhere: popa3d writes multi-line replies in pieces without TCP_NODELAY, and
    # would otherwise wait ~40 ms on the client's delayed ACK (shared/bench/README.md).
    common = ["--user", users_big.name, "--password", users_big.password,
              "--repeat", str(args.repeat), "--pause", "1", "--quickack"]
    for target in targets:       # cold then warm on the same file, one server at a time
        cold = restore_command(restore, master, target, users_big.name, cold=True)
        target.results["peek_cold"] = pop3bench(bench, "bigbox", target, args, raw_out,
                                                *common, "--no-retr", "--before", cold)
        target.results["peek_warm"] = pop3bench(bench, "bigbox", target, args, raw_out,
                                                *common, "--no-retr")
    for target in targets:
        cold = restore_command(restore, master, target, users_big.name, cold=True)
        target.results["big_cold"] = pop3bench(bench, "bigbox", target, args, raw_out, *common,
                                               "--dele", *verify, "--before", cold)


def restore_small(restore, small_masters, targets, users):
    for target in targets:
        for user, master in zip(users, small_masters):
            subprocess.run(restore_command(restore, master, target, user.name, cold=True),
                           shell=True, check=True)


def run_sessions(bench, targets, users_file, small, args, raw_out):
    restore, masters, users = small
    restore_small(restore, masters, targets, users)
    for concurrency in args.concurrency:
        for target in targets:
            if concurrency == args.concurrency[0]:       # a short warm-up, not counted
                pop3bench(bench, "sessions", target, args, raw_out, "--users-file", users_file,
                          "-c", str(max(args.concurrency)), "-d", "2")
            target.results[f"sessions_c{concurrency}"] = pop3bench(
                bench, "sessions", target, args, raw_out, "--users-file", users_file,
                "-c", str(concurrency), "-d", str(args.session_seconds),
                "--repeat", str(args.repeat), "--pause", "1")


def run_idle(bench, targets, users_file, small, args, raw_out):
    restore, masters, users = small
    restore_small(restore, masters, targets, users)
    for target in targets:
        target.results["idle"] = pop3bench(
            bench, "idle", target, args, raw_out, "--users-file", users_file,
            "-n", str(args.idle_sessions), "--server-pid", str(target.pid),
            "--repeat", str(args.repeat), "--pause", "1")


# ---------------------------------------------------------------- report

def median(target: Target, scenario: str, metric: str):
    data = target.results.get(scenario, {})
    if metric == "check_failures":        # a list per run: pop3bench's median drops it
        runs = data.get("runs") or []
        return sorted({f for run in runs for f in run.get(metric, [])}) if runs else None
    return data.get("median", {}).get(metric)


def ratio_text(mine, ref, higher_is_better, unit) -> tuple[float | None, str]:
    if not isinstance(mine, (int, float)) or not isinstance(ref, (int, float)) or not ref:
        return None, ""
    ratio = mine / ref
    if higher_is_better is None:
        return ratio, ""
    if higher_is_better:
        worse = ratio < 1
        factor = 1 / ratio if worse and ratio else ratio
    else:
        worse = ratio > 1
        factor = ratio if worse else (ref / mine if mine else float("inf"))
    if 0.9 <= ratio <= 1.1:
        return ratio, "about equal"
    if unit in ("s", "ms") and max(mine, ref) * (1000 if unit == "s" else 1) < TINY_MS:
        return ratio, f"both < {TINY_MS} ms"
    return ratio, f"{factor:.1f}x {'worse' if worse else 'better'}"


def show(value) -> str:
    if isinstance(value, list):
        return "OK" if not value else "; ".join(value)[:40]
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def report(reference: Target, mine: list[Target], args, spool: dict) -> dict:
    rows = [(s, m, label, unit, hib) for s, m, label, unit, hib in FIGURES]
    for concurrency in args.concurrency:
        rows += [(f"sessions_c{concurrency}", m, label, unit, hib)
                 for m, label, unit, hib in SESSION_FIGURES]
    ratios = {t.label: {} for t in mine}
    medians = {t.label: {} for t in [reference, *mine]}
    header = f"{'figure':<36} {'unit':>5} {reference.label:>10}"
    for target in mine:
        header += f" | {target.label:>16} {'ratio':>6} {'verdict':<14}"
    last_scenario = None
    print()
    print(f"spool: {spool.get('messages', spool.get('count'))} messages, "
          f"{spool.get('bytes', spool.get('total_bytes'))} bytes; medians of {args.repeat} run(s);"
          f" ratio = qpopper-py / {REFERENCE}")
    for scenario, metric, label, unit, hib in rows:
        if reference.results.get(scenario) is None:
            continue
        if scenario != last_scenario:
            title = SCENARIO_TITLES.get(scenario) or (
                f"sessions: connect/USER/PASS/STAT/QUIT, C={scenario.split('_c')[1]}, "
                f"{args.session_seconds} s runs")
            print(f"\n{title}\n{header}")
            last_scenario = scenario
        ref_value = median(reference, scenario, metric)
        for target in [reference, *mine]:
            medians[target.label][f"{scenario}.{metric}"] = median(target, scenario, metric)
        line = f"{label:<36} {unit:>5} {show(ref_value):>10}"
        for target in mine:
            value = median(target, scenario, metric)
            ratio, verdict = ratio_text(value, ref_value, hib, unit)
            if ratio is not None and hib is not None:
                ratios[target.label][f"{scenario}.{metric}"] = round(ratio, 3)
            line += (f" | {show(value):>16} {'' if ratio is None else f'{ratio:.2f}':>6} "
                     f"{verdict:<14}")
        print(line)
    return medians, ratios


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small defaults: 30M / 2000 messages, 1 run, 3 s sessions, 20 idle")
    parser.add_argument("--size", help="big spool size for mkspool.py (300M; quick 30M)")
    parser.add_argument("--messages", type=int,
                        help="big spool message count, 0 = follows from --size (20000; quick 2000)")
    parser.add_argument("--repeat", type=int, help="runs per figure, medians (3; quick 1)")
    parser.add_argument("--session-seconds", type=float, help="length of a sessions run (10; quick 3)")
    parser.add_argument("--concurrency", default="1,8", help="sessions concurrencies (1,8)")
    parser.add_argument("--idle-sessions", type=int, help="sessions held by idle (100; quick 20)")
    parser.add_argument("--scenarios", default="bigbox,sessions,idle",
                        help="any of bigbox,sessions,idle (all)")
    parser.add_argument("--qpopper-modes", default="normal,server",
                        help="qpopper-py configurations: normal (temp drop), server (server-mode "
                             "with its cache); both by default")
    parser.add_argument("--verify", action="store_true",
                        help="let pop3bench check every RETRed message (costs client CPU)")
    parser.add_argument("--reference-binary", help="a popa3d binary instead of apt-get download")
    parser.add_argument("--raw-out", help="append every pop3bench JSON result to this file")
    parser.add_argument("--bench-dir", default=str(DEFAULT_BENCH_DIR),
                        help="where pop3bench.py and mkspool.py are (../shared/bench)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, normal, small in (("size", "300M", "30M"), ("messages", 20000, 2000),
                                ("repeat", 3, 1), ("session_seconds", 10.0, 3.0),
                                ("idle_sessions", 100, 20)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else normal)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.qpopper_modes = [m for m in args.qpopper_modes.split(",") if m]
    bad = (set(args.scenarios) - {"bigbox", "sessions", "idle"}) or \
        (set(args.qpopper_modes) - {"normal", "server"})
    if bad or not args.qpopper_modes or args.repeat < 1 or not args.concurrency:
        parser.error(f"bad --scenarios/--qpopper-modes/--repeat/--concurrency {sorted(bad)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Path(args.bench_dir)
    benchlib.require_runnable("vs_reference.py", bench, "it creates users, a PAM file, servers",
                              [("systemd-socket-activate", "systemd")])
    benchlib.clean_up_on_signals()
    started = time.time()
    raw_out = open(args.raw_out, "a") if args.raw_out else None
    n_users = max(args.idle_sessions if "idle" in args.scenarios else 0, max(args.concurrency))
    try:
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(world_readable_tmpdir("qpt-vsref-"))
            binary, pam_text = stack.enter_context(reference_binary(args.reference_binary, work))
            created = stack.enter_context(popa3d_prerequisites(pam_text))
            if created:
                print(f"created for popa3d (removed at the end): {', '.join(created)}")
            pam = stack.enter_context(installed_pam_service(STOCK_POP3, tag="bench"))
            stack.enter_context(prelogin_account())     # the harness's --prelogin-user
            users = stack.enter_context(SystemUsers())
            print(f"making {n_users + 1} users and the spools ...", flush=True)
            big_user = users.create("big", shell="/usr/sbin/nologin", crypt_method=None)
            small_users = [users.create("s", shell="/usr/sbin/nologin", crypt_method=None)
                           for _ in range(n_users)]
            restore = write_restore_script(work)
            master = os.path.join(work, "big.mbox")
            spool = make_spool(bench, master, seed=BIG_SEED, user=BENCH_USER, size=args.size,
                               count=args.messages or None)
            small_masters = []
            for i in range(n_users):
                small_masters.append(os.path.join(work, f"small{i}.mbox"))
                make_spool(bench, small_masters[-1], seed=SMALL_SEED + i, user=BENCH_USER,
                           count=10)
            users_file = os.path.join(work, "users.txt")
            Path(users_file).write_text("".join(f"{u.name}:{u.password}\n" for u in small_users))
            os.chmod(users_file, 0o600)
            stack.callback(remove_popa3d_spools, [big_user, *small_users])

            proc, port = stack.enter_context(popa3d_server(binary, work))
            reference = Target(REFERENCE, port, proc.pid, POPA3D_SPOOL_DIR)
            mine = []
            for mode in args.qpopper_modes:
                server, spool_dir = stack.enter_context(
                    qpopper_server(work, pam, mode, args.idle_sessions + 50))
                cache = (".%s.cache",) if mode == "server" else ()
                mine.append(Target(f"qpopper-{mode}", server.port, server.pid, spool_dir, cache))
            targets = [reference, *mine]
            small = (restore, small_masters, small_users)
            print("servers: " + ", ".join(f"{t.label} 127.0.0.1:{t.port}" for t in targets))
            if "bigbox" in args.scenarios:
                print(f"bigbox: {spool.get('messages', spool.get('count'))} messages, "
                      f"{spool.get('bytes', spool.get('total_bytes'))} bytes", flush=True)
                run_bigbox(bench, targets, big_user, master, restore, args, raw_out)
            if "sessions" in args.scenarios:
                run_sessions(bench, targets, users_file, small, args, raw_out)
            if "idle" in args.scenarios:
                run_idle(bench, targets, users_file, small, args, raw_out)
    except KeyboardInterrupt:
        print("vs_reference.py: interrupted; servers stopped, users and files removed",
              file=sys.stderr)
        return 130
    finally:
        if raw_out:
            raw_out.close()
    medians, ratios = report(reference, mine, args, spool)
    print()
    print(json.dumps({
        "benchmark": "vs_reference", "reference": REFERENCE,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "params": {"size": args.size, "messages": args.messages, "repeat": args.repeat,
                   "session_seconds": args.session_seconds, "concurrency": args.concurrency,
                   "idle_sessions": args.idle_sessions, "scenarios": args.scenarios,
                   "verify": args.verify, "quickack": True},
        "spool": {k: spool.get(k) for k in ("messages", "bytes", "seed")},
        "medians": medians,
        "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
