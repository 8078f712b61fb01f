#!/usr/bin/env python3
"""qpopper-py against its peers, popa3d and Dovecot, side by side in one run: the table of the
performance goals (bench/README.md, "vs_peers.py"), as ratios to the best peer.

A benchmark, not a test: run it by hand, as root, with the venv (`make bench`):

    .venv/bin/python bench/vs_peers.py                 # 3 rounds (~15 min)
    .venv/bin/python bench/vs_peers.py --quick         # smoke: 1 round, 1,000 messages (~3 min)

Every figure is the median of N rounds; in every round each figure is measured on every server
one after the other, the order turned by one place each round. Servers, all on free 127.0.0.1
ports, started once for the run and stopped at its end, real PAM users (common-auth +
common-account) for all:
- qpopper-py (this tree): one master in server mode with its own brakes file, session limits
  raised, a pre-login account, plain and implicit TLS, mbox users and Maildir users
  (`maildir` pattern); when the option `auth-cache-size` exists, a second master with it set
  (the sessions row and the warm mbox and Maildir rows, each after a login that fills the
  authentication cache, so the measured login is a hit);
- popa3d (Debian's, fetched with apt-get download, never installed) under
  systemd-socket-activate;
- Dovecot (dovecot-core + dovecot-pop3d, installed when missing, its service disabled): one
  instance of this run on mbox spools, one on Maildirs.

Prints the table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qpopper import options as qpopper_options  # noqa: E402
from tests.helpers.pam_service import STOCK_POP3, installed_pam_service  # noqa: E402
from tests.helpers.sysusers import (SystemUsers, prelogin_account,  # noqa: E402
                                    world_readable_tmpdir)
from tests.helpers.testpki import TestPki  # noqa: E402

import benchlib  # noqa: E402
from benchlib import (DEFAULT_BENCH_DIR, POPA3D_SPOOL_DIR,  # noqa: E402
                      MTIME_BACKDATE_S, Target, dovecot, idle, load_pop3bench, make_spool,
                      popa3d_prerequisites, popa3d_server, qpopper, reference_binary,
                      remove_popa3d_spools, sessions)

DEBIAN_PACKAGES = ("dovecot-core", "dovecot-pop3d")
BIG_SEED = 159
SMALL_SEED = 100
BENCH_USER = "qptbench"          # the From_ lines' name; the spools are copied to every user
PEERS = ("popa3d", "dovecot")
TITLES = {"qpopper": "qpopper-py", "qpopper-cache": "qpopper-py + auth cache",
          "popa3d": "popa3d", "dovecot": "Dovecot"}
AUTH_CACHE = "auth-cache-size"
PRELOGIN_ACCOUNT = "qpt-peerslogin"   # its own: privsep_cost.py removes qpt-benchlogin at its end


# ---------------------------------------------------------------- mailboxes

def mbox_to_maildir(mbox: str, dest: str) -> int:
    """The messages of a mkspool mbox as files in dest/new (the From_ line left out; body
    lines stay as mkspool wrote them), named as a delivery agent does: time, microseconds,
    process, host. Returns the number of messages."""
    data = Path(mbox).read_bytes()
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(dest, sub))
    messages = re.split(rb"\n(?=From )", data)
    base = int(time.time()) - 86400
    for i, message in enumerate(messages):
        body = message[message.index(b"\n") + 1:]
        name = f"{base + i}.M{i:06d}P4242Q{i}.qptbench"
        Path(dest, "new", name).write_bytes(body if body.endswith(b"\n") else body + b"\n")
    return len(messages)


def maildir_restore(master: str, dest: str, user: str) -> str:
    """Shell command: a fresh copy of the Maildir master as dest (no index of any server),
    owned by user, new/ and cur/ dated back (an index written within two seconds of a change
    is not trusted: docs/maildir.md, "The index")."""
    q = shlex.quote
    back = f"@$(( $(date +%s) - {MTIME_BACKDATE_S} ))"
    return (f"rm -rf {q(dest)} && cp -a {q(master)} {q(dest)} && chown -R {q(user)}: {q(dest)}"
            f" && touch -d {back} {q(dest)}/new {q(dest)}/cur")


# ---------------------------------------------------------------- figures

class Server:
    """One server under test: its plain and TLS targets, where its big mailboxes are and the
    shell commands that make them fresh (cold: no cache or index of the server)."""

    def __init__(self, name: str, plain: Target, tls: Target | None):
        self.name, self.plain, self.tls = name, plain, tls
        self.fresh_mbox: dict[str, str] = {}        # user name -> shell command
        self.fresh_maildir: dict[str, str] = {}
        self.runs: dict[str, list[float]] = {}

    def record(self, figure: str, value) -> None:
        if value is not None:
            self.runs.setdefault(figure, []).append(value)

    def median(self, figure: str):
        values = self.runs.get(figure)
        return statistics.median(values) if values else None


def bigbox_args(target: Target, user, *extra: str) -> list[str]:
    return ["--user", user.name, "--password", user.password, "--quickack", "--no-verify",
            *(["--tls"] if target.mode == "tls" else []), *extra]


def bigbox(ctx, target: Target, user, *extra: str) -> dict:
    data = benchlib.pop3bench(ctx.bench, "bigbox", target.port, target.label,
                              *bigbox_args(target, user, *extra), raw_out=ctx.raw_out)
    return data.get("median", data)


def retr_all(ctx, target: Target, users) -> tuple[float | None, float | None]:
    """RETR of every message by one client per user, all at once (`--retr-clients`): the
    server's throughput is the wire bytes of all of them over the longest RETR phase, so one
    saturated Python client no longer caps it. Also the busiest client's CPU (cores)."""
    runs = [data.get("median", data) for data in benchlib.pop3bench_together(
        ctx.bench, "bigbox", target.port, target.label,
        [bigbox_args(target, user, "--pipeline", str(ctx.args.in_flight)) for user in users],
        raw_out=ctx.raw_out)]
    longest = max((r.get("retr_s") or 0) for r in runs)
    if not longest or any(r.get("retr_wire_bytes") is None for r in runs):
        return None, None
    rate = sum(r["retr_wire_bytes"] for r in runs) / longest / 1e6
    return rate, max(r.get("retr_client_cpu_frac") or 0 for r in runs)


def pass_to_stat(data: dict) -> float | None:
    if data.get("pass_s") is None or data.get("stat_s") is None:
        return None
    return data["pass_s"] + data["stat_s"]


def fig_sessions(ctx, server: Server) -> dict:
    med = sessions(ctx.bench, ctx.pb, server.plain, ctx.users_file, ctx.args.clients,
                   ctx.args.session_seconds, ctx.raw_out)
    return {"sessions": med.get("sessions_per_s"),
            "sessions_cpu_ms": med.get("server_cpu_ms_per_session")}


def cold_warm_retr(ctx, server: Server, users, fresh: dict[str, str], prefix: str) -> dict:
    """PASS→STAT on a fresh mailbox (cold), again (warm), then RETR of all of it by every
    user at once; each other user's mailbox is made fresh and opened once first, so all of
    them are in the state of the first (the server's cache or index written)."""
    first, others = users[0], users[1:]
    out = {f"{prefix}cold": pass_to_stat(bigbox(ctx, server.plain, first, "--no-retr",
                                                "--before", fresh[first.name])),
           f"{prefix}warm": pass_to_stat(bigbox(ctx, server.plain, first, "--no-retr"))}
    for user in others:
        bigbox(ctx, server.plain, user, "--no-retr", "--before", fresh[user.name])
    out[f"{prefix}retr"], out[f"{prefix}retr_client_cpu"] = retr_all(ctx, server.plain, users)
    return out


def fig_mbox(ctx, server: Server) -> dict:
    """Cold and warm PASS→STAT, RETR all plain and TLS, QUIT after DELE of all."""
    out = cold_warm_retr(ctx, server, ctx.big_users, server.fresh_mbox, "mbox_")
    out["retr"], out["retr_client_cpu"] = out.pop("mbox_retr"), out.pop("mbox_retr_client_cpu")
    if server.tls:
        out["retr_tls"], out["retr_tls_client_cpu"] = retr_all(ctx, server.tls, ctx.big_users)
    user = ctx.big_users[0]
    out["quit_dele"] = bigbox(ctx, server.plain, user, "--no-retr", "--dele",
                              "--before", server.fresh_mbox[user.name]).get("quit_s")
    return out


def fig_maildir(ctx, server: Server) -> dict:
    return cold_warm_retr(ctx, server, ctx.maildir_users, server.fresh_maildir, "maildir_")


def fig_warm_auth_cache(ctx, server: Server) -> dict:
    """The warm rows on the master with auth-cache-size: per mailbox one login on a fresh copy
    (not counted: it fills the authentication cache and writes the mailbox's cache or index),
    then the measured one, whose login is a cache hit (bench/README.md, "vs_peers.py")."""
    out = {}
    for prefix, user, fresh in (("mbox_", ctx.big_users[0], server.fresh_mbox),
                                ("maildir_", ctx.maildir_users[0], server.fresh_maildir)):
        bigbox(ctx, server.plain, user, "--no-retr", "--before", fresh[user.name])
        out[f"{prefix}warm"] = pass_to_stat(bigbox(ctx, server.plain, user, "--no-retr"))
    return out


def fig_idle(ctx, server: Server) -> dict:
    held = idle(ctx.pb, server.plain, ctx.small_users, ctx.args.idle_sessions)
    return {"idle_pss": held["pss_kb_per_session"] / 1024}


# figure key, label, higher is better, the measurement that records it
ROWS = (
    ("sessions", "sessions/s, {clients} clients (connect, USER/PASS, STAT, QUIT)", True),
    ("mbox_cold", "PASS sent → STAT answered, fresh {messages}-message {mb} MB mbox (cold) s",
     False),
    ("mbox_warm", "PASS → STAT, same mbox again (warm: server mode's cache) s", False),
    ("retr", "RETR all, {retr_clients} clients at once, {in_flight} in flight each, MB/s", True),
    ("retr_tls", "RETR all over implicit TLS, same, MB/s (popa3d has none: against Dovecot)",
     True),
    ("quit_dele", "QUIT after DELE of all s", False),
    ("idle_pss", "idle authenticated session, PSS MiB ({idle} held)", False),
    ("maildir_cold", "Maildir: PASS → STAT, fresh {messages}-message Maildir (cold) s", False),
    ("maildir_warm", "Maildir: PASS → STAT again (warm: index) s", False),
    ("maildir_retr", "Maildir: RETR all, {retr_clients} clients, {in_flight} in flight each, "
     "MB/s", True),
)
MEASURES = ((fig_sessions, ("qpopper", "qpopper-cache", "popa3d", "dovecot")),
            (fig_idle, ("qpopper", "popa3d", "dovecot")),
            (fig_mbox, ("qpopper", "popa3d", "dovecot")),
            (fig_maildir, ("qpopper", "dovecot-maildir")),
            (fig_warm_auth_cache, ("qpopper-cache",)))
WITH_AUTH_CACHE = ("sessions", "mbox_warm", "maildir_warm")
"""The rows the auth-cache master is measured on; their ratios are shown with it too."""


def show(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def report(servers: dict[str, Server], args, spool: dict) -> dict:
    names = ["qpopper", *(["qpopper-cache"] if "qpopper-cache" in servers else []), *PEERS]
    fill = {"clients": args.clients, "in_flight": args.in_flight, "idle": args.idle_sessions,
            "retr_clients": args.retr_clients,
            "messages": f"{spool['messages']:,}", "mb": round(spool["bytes"] / 1e6)}
    print(f"\n| figure | {' | '.join(TITLES[n] for n in names)} | qpopper-py / best peer "
          "| qpopper-py / popa3d |")
    print("|---" * (len(names) + 3) + "|")
    summary = {}
    for key, label, higher in ROWS:
        peer_names = ("dovecot-maildir",) if key.startswith("maildir") else PEERS
        values = {n: servers[n].median(key) for n in names if n in servers}
        peers = [v for v in (servers[p].median(key) for p in peer_names if p in servers)
                 if v is not None]
        if key.startswith("maildir"):
            values["dovecot"] = servers["dovecot-maildir"].median(key)
        best = (max(peers) if higher else min(peers)) if peers else None
        mine = values.get("qpopper")
        ratio = round(mine / best, 2) if mine is not None and best else None
        cells = [show(values.get(n)) for n in names]
        direction = "higher is better" if higher else "lower is better"
        popa3d = values.get("popa3d")
        to_popa3d = round(mine / popa3d, 2) if mine is not None and popa3d else None
        cached = values.get("qpopper-cache") if key in WITH_AUTH_CACHE else None
        cached_ratio = round(cached / best, 2) if cached and best else None
        cached_to_popa3d = round(cached / popa3d, 2) if cached and popa3d else None
        print(f"| {label.format(**fill)} | {' | '.join(cells)} | "
              f"{'—' if ratio is None else f'{ratio:.2f}×'}"
              f"{'' if cached_ratio is None else f' (with the auth cache {cached_ratio:.2f}×)'}"
              f" ({direction}) | {'—' if to_popa3d is None else f'{to_popa3d:.2f}×'}"
              f"{'' if cached_to_popa3d is None else f' (with the auth cache {cached_to_popa3d:.2f}×)'}"
              " |")
        summary[key] = {"values": values, "ratio_to_best_peer": ratio,
                        "ratio_to_popa3d": to_popa3d,
                        "auth_cache_ratio_to_best_peer": cached_ratio,
                        "auth_cache_ratio_to_popa3d": cached_to_popa3d}
    plain, tls = servers["qpopper"].median("retr"), servers["qpopper"].median("retr_tls")
    if plain and tls:
        print(f"\nqpopper-py RETR over TLS / plain: {tls / plain:.2f}")
    cpu = {n: servers[n].median("retr_client_cpu") for n in servers}
    print("busiest client's CPU during RETR (cores; near 1.0: the Python clients are the "
          "limit): " +
          ", ".join(f"{n} {c}" for n, c in cpu.items() if c is not None))
    return summary


# ---------------------------------------------------------------- set-up and main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, 1,000 messages (16 MB), 3 s sessions, 10 idle")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--size", default="159M", help="the big mailbox's size (mkspool -s)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=8, help="RETR commands in flight")
    parser.add_argument("--retr-clients", type=int, default=2,
                        help="RETR rows: clients at once, each its own user and copy of the "
                             "big mailbox (one Python client can saturate a core)")
    parser.add_argument("--session-seconds", type=float, default=6)
    parser.add_argument("--idle-sessions", type=int, default=50)
    parser.add_argument("--reference-binary", help="a popa3d to use instead of Debian's")
    parser.add_argument("--raw-out", help="append every pop3bench JSON line to this file")
    parser.add_argument("--bench-dir", default=str(DEFAULT_BENCH_DIR),
                        help="where pop3bench.py and mkspool.py are (../shared/bench)")
    args = parser.parse_args(argv)
    if args.quick:              # what the command line leaves at its default
        quick = {"rounds": 1, "messages": 1000, "size": "16M", "session_seconds": 3,
                 "idle_sessions": 10}
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if min(args.rounds, args.messages, args.idle_sessions, args.clients, args.retr_clients) < 1:
        parser.error("--rounds, --messages, --clients, --retr-clients and --idle-sessions "
                     "must be positive")
    return args


def start_servers(stack, ctx, work, pam, pki) -> dict[str, Server]:
    limit = ctx.args.idle_sessions + 50
    servers = {}
    for name in ("qpopper", "qpopper-cache"):
        if name == "qpopper-cache" and not qpopper_options.lookup(AUTH_CACHE):
            continue
        extra = {"auth_cache_size": 1000} if name == "qpopper-cache" else {}
        maildirs = os.path.join(work, f"{name}-maildir")
        os.mkdir(maildirs, 0o755)
        server, tls_port, spool_dir = stack.enter_context(qpopper(
            work, name, str(REPO), pam, pki, limit, PRELOGIN_ACCOUNT, server_mode=True,
            reverse_lookup=False, maildir=f"{maildirs}/%u", **extra))
        s = servers[name] = Server(name, Target(name, "plain", server.port, server.pid),
                                   Target(name, "tls", tls_port, server.pid))
        s.fresh_mbox = ctx.mbox_restores(spool_dir, f"{spool_dir}/.{{user}}.cache")
        s.fresh_maildir = ctx.maildir_restores(maildirs)
        ctx.small_spools(spool_dir)
    binary, pam_text = stack.enter_context(reference_binary(ctx.args.reference_binary, work))
    created = stack.enter_context(popa3d_prerequisites(pam_text))
    if created:
        print(f"created for popa3d (removed at the end): {', '.join(created)}")
    proc, port = stack.enter_context(popa3d_server(binary, work))
    s = servers["popa3d"] = Server("popa3d", Target("popa3d", "plain", port, proc.pid), None)
    s.fresh_mbox = ctx.mbox_restores(POPA3D_SPOOL_DIR, None)
    ctx.small_spools(POPA3D_SPOOL_DIR)
    # Dovecot keeps its mbox index out of the home directory, where a cold start removes it.
    index = os.path.join(work, "dovecot-index")
    os.mkdir(index, 0o755)
    for user in (*ctx.big_users, *ctx.small_users):
        os.mkdir(os.path.join(index, user.name), 0o700)
        os.chown(os.path.join(index, user.name), user.uid, user.gid)
    proc, port, tls_port, spool_dir = stack.enter_context(dovecot(
        work, pam, pki, limit, mail_location=f"mbox:~/mail:INBOX={{spool_dir}}/%u:"
                                             f"INDEX={index}/%u"))
    s = servers["dovecot"] = Server("dovecot", Target("dovecot", "plain", port, proc.pid),
                                    Target("dovecot", "tls", tls_port, proc.pid))
    s.fresh_mbox = ctx.mbox_restores(spool_dir, f"{index}/{{user}}/*")
    ctx.small_spools(spool_dir)
    proc, port, tls_port, spool_dir = stack.enter_context(dovecot(
        work, pam, pki, limit, name="dovecot-maildir", mail_location="maildir:{spool_dir}/%u"))
    s = servers["dovecot-maildir"] = Server(
        "dovecot-maildir", Target("dovecot-maildir", "plain", port, proc.pid), None)
    s.fresh_maildir = ctx.maildir_restores(spool_dir)
    return servers


class Context:
    """What every measurement needs: the tools, the users and the mailboxes' masters."""

    def __init__(self, args, bench: Path, work: str, raw_out):
        self.args, self.bench, self.work, self.raw_out = args, bench, work, raw_out
        self.pb = load_pop3bench(bench)
        self.restore = benchlib.write_restore_script(work)

    def mbox_restores(self, spool_dir: str, stale: str | None) -> dict[str, str]:
        """Per big user, the shell command making a fresh copy of the big mbox, `stale` (a
        glob, a server's cache or index) removed."""
        commands = {}
        for user in (u.name for u in self.big_users):
            command = " ".join(shlex.quote(a) for a in (self.restore, self.big_master,
                                                        os.path.join(spool_dir, user), user))
            commands[user] = command + (f" && rm -rf {stale.format(user=user)}" if stale else "")
        return commands

    def maildir_restores(self, maildirs: str) -> dict[str, str]:
        return {u.name: maildir_restore(self.maildir_master, os.path.join(maildirs, u.name),
                                        u.name) for u in self.maildir_users}

    def small_spools(self, spool_dir: str) -> None:
        for user, master in zip(self.small_users, self.small_masters):
            subprocess.run([self.restore, master, os.path.join(spool_dir, user.name),
                            user.name], check=True, timeout=60)


def make_mailboxes(ctx, users) -> dict:
    args, work = ctx.args, ctx.work
    n_small = max(args.idle_sessions, args.clients)
    print(f"making {n_small + 2 * args.retr_clients} users, their mailboxes ({args.messages:,} messages) and a "
          "certificate ...", flush=True)
    # yescrypt, as Debian's PAM sets it (tests/helpers/sysusers.py): all three servers pay it
    ctx.small_users = [users.create("p", shell="/usr/sbin/nologin", crypt_method=None)
                       for _ in range(n_small)]
    ctx.big_users = [users.create("b", shell="/usr/sbin/nologin", crypt_method=None)
                     for _ in range(args.retr_clients)]
    ctx.maildir_users = [users.create("m", shell="/usr/sbin/nologin", crypt_method=None)
                         for _ in range(args.retr_clients)]
    ctx.small_masters = []
    for i in range(n_small):
        ctx.small_masters.append(os.path.join(work, f"small{i}.mbox"))
        make_spool(ctx.bench, ctx.small_masters[-1], seed=SMALL_SEED + i, user=BENCH_USER,
                   count=10)
    ctx.big_master = os.path.join(work, "big.mbox")
    spool = make_spool(ctx.bench, ctx.big_master, seed=BIG_SEED, user=BENCH_USER,
                       count=args.messages, size=args.size)
    spool["bytes"] = os.path.getsize(ctx.big_master)
    ctx.maildir_master = os.path.join(work, "maildir-master")
    spool["maildir_messages"] = mbox_to_maildir(ctx.big_master, ctx.maildir_master)
    ctx.users_file = os.path.join(work, "users.txt")
    Path(ctx.users_file).write_text("".join(f"{u.name}:{u.password}\n"
                                            for u in ctx.small_users))
    os.chmod(ctx.users_file, 0o600)
    return spool


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Path(args.bench_dir)
    if os.geteuid() == 0:
        benchlib.ensure_debian_packages(DEBIAN_PACKAGES)
    benchlib.require_runnable("vs_peers.py", bench,
                              "it creates users, PAM files, servers",
                              [("systemd-socket-activate", "systemd"),
                               ("dovecot", "dovecot-core")])
    benchlib.clean_up_on_signals()
    started = time.time()
    raw_out = open(args.raw_out, "a") if args.raw_out else None
    loads = [os.getloadavg()]
    try:
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(world_readable_tmpdir("qpt-peers-"))
            ctx = Context(args, bench, work, raw_out)
            pam = stack.enter_context(installed_pam_service(STOCK_POP3, tag="bench"))
            stack.enter_context(prelogin_account(PRELOGIN_ACCOUNT))
            users = stack.enter_context(SystemUsers())
            spool = make_mailboxes(ctx, users)
            stack.callback(remove_popa3d_spools, [*ctx.big_users, *ctx.small_users])
            pki = TestPki(os.path.join(work, "pki")).server("bench")
            servers = start_servers(stack, ctx, work, pam, pki)
            print("servers: " + ", ".join(f"{s.name} {s.plain.port}" for s in servers.values()))
            print("warm-up (not counted) ...", flush=True)
            for name in ("qpopper", "qpopper-cache", *PEERS):
                if name in servers:
                    sessions(bench, ctx.pb, servers[name].plain, ctx.users_file, args.clients, 2)
            for rnd in range(args.rounds):
                loads.append(os.getloadavg())
                print(f"round {rnd + 1}/{args.rounds}, load average {loads[-1][0]:.2f}",
                      flush=True)
                for measure, names in MEASURES:
                    present = [servers[n] for n in names if n in servers]
                    turn = rnd % len(present)
                    for server in present[turn:] + present[:turn]:
                        for key, value in measure(ctx, server).items():
                            server.record(key, value)
    except KeyboardInterrupt:
        print("vs_peers.py: interrupted; servers stopped, users and files removed",
              file=sys.stderr)
        return 130
    finally:
        if raw_out:
            raw_out.close()
    loads.append(os.getloadavg())
    summary = report(servers, args, spool)
    print(f"load averages (1/5/15 min) at the start, each round and the end: "
          f"{'; '.join(' '.join(f'{x:.2f}' for x in load) for load in loads)}")
    print(json.dumps({
        "benchmark": "vs_peers",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "params": {"rounds": args.rounds, "messages": args.messages, "bytes": spool["bytes"],
                   "clients": args.clients, "in_flight": args.in_flight,
                   "retr_clients": args.retr_clients,
                   "idle_sessions": args.idle_sessions, "session_seconds": args.session_seconds},
        "load_averages": loads,
        "runs": {name: s.runs for name, s in servers.items()},
        "figures": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
