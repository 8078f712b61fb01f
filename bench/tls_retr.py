#!/usr/bin/env python3
"""RETR throughput of qpopper-py over TLS against plain text, for one large spool.

A benchmark, not a test: run it by hand (as root, from the repository root, with the venv):

    .venv/bin/python bench/tls_retr.py                 # 100 MB spool, 3 runs per mode
    .venv/bin/python bench/tls_retr.py --size 300M --repeat 5 --chunky-writes never

What it does: makes a throw-away user (`qpt...`, removed afterwards), a test PAM service, a
seeded spool with ../shared/bench/mkspool.py, a self-signed certificate (the `cryptography`
package), and starts one real master serving STLS on one loopback port and TLS from the first
byte (tls-listen) on another. Then ../shared/bench/pop3bench.py `bigbox` RETRs every message
in three modes — plain, STLS, implicit TLS — restoring the spool before each run, and prints
the median RETR MB/s of each mode and its ratio to plain text. The client is Python: watch
`client_cpu` (near 1.0 means the client, not the server, is the limit).

Only 127.0.0.1 is contacted. Generated spools live in a temp directory, never in the tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.pam_service import installed_pam_service  # noqa: E402
from tests.helpers.sysusers import (SystemUsers, prelogin_account,  # noqa: E402
                                    world_readable_tmpdir)
from tests.helpers.testpki import TestPki  # noqa: E402
from tests.server_harness import (PopperServer, free_port, make_spool_dir,  # noqa: E402
                                  write_config)

import benchlib  # noqa: E402
from benchlib import DEFAULT_BENCH_DIR, make_spool  # noqa: E402

SUMMARY_KEYS = ("retr_MBps", "retr_msgs_per_s", "retr_s", "retr_wire_bytes",
                "retr_client_cpu_frac", "retr_machine_busy_cores", "session_start_s",
                "check_failures")
MODES = (("plain", "port", []), ("stls", "port", ["--stls"]), ("tls", "tls_port", ["--tls"]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="100M", help="spool size for mkspool.py (100M)")
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (medians)")
    parser.add_argument("--chunky-writes", default="default",
                        choices=("default", "always", "never", "tls"))
    parser.add_argument("--verify", action="store_true",
                        help="let pop3bench check every message (costs client CPU)")
    parser.add_argument("--bench-dir", default=str(DEFAULT_BENCH_DIR),
                        help="where pop3bench.py and mkspool.py are (../shared/bench)")
    parser.add_argument("--pipeline", type=int, default=1,
                        help="RETR commands in flight (vs_peers.py uses 8, with --quickack)")
    parser.add_argument("--modes", default="plain,stls,tls",
                        help="which of plain, stls, tls to run (plain is the ratios' base)")
    args = parser.parse_args(argv)
    unknown = set(args.modes.split(",")) - {name for name, _, _ in MODES}
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))} (plain, stls, tls)")
    return args


def run_mode(bench: Path, port: int, flags: list[str], user, restore: str, args) -> dict:
    cmd = [sys.executable, str(bench / "pop3bench.py"), "bigbox", "--host", "127.0.0.1",
           "--port", str(port), "--user", user.name, "--password", user.password,
           "--repeat", str(args.repeat), "--before", restore, "--timeout", "600", *flags]
    if not args.verify:
        cmd.append("--no-verify")
    if args.pipeline > 1:
        cmd += ["--pipeline", str(args.pipeline), "--quickack"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"pop3bench failed ({' '.join(flags) or 'plain'}):\n{result.stderr}"
                         f"{result.stdout[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Path(args.bench_dir)
    benchlib.require_runnable("tls_retr.py", bench, "it creates a user and a PAM service")
    with world_readable_tmpdir("qpt-bench-") as work, SystemUsers() as users, \
            installed_pam_service() as pam, prelogin_account():   # the server's --prelogin-user
        user = users.create("bn", crypt_method=None)
        spool_dir = make_spool_dir(work)
        master_copy = os.path.join(work, "big.mbox")
        summary = make_spool(bench, master_copy, seed=args.seed, user=user.name, size=args.size)
        spool = os.path.join(spool_dir, user.name)
        restore = (f"cp {master_copy} {spool} && chown {user.name}:mail {spool} && "
                   f"chmod 600 {spool}")
        pki = TestPki(os.path.join(work, "pki"))
        identity = pki.server("bench")
        config = write_config(os.path.join(work, "qpopper.config"), spool_dir=spool_dir,
                              pam_service=pam, timeout=600, reverse_lookup=False,
                              tls_support="stls", chunky_writes=args.chunky_writes,
                              tls_server_cert_file=identity.combined_file)
        tls_port = free_port()
        server = PopperServer(work, config, extra_args=(f"--tls-listen=127.0.0.1:{tls_port}",))
        server.tls_port = tls_port
        subprocess.run(restore, shell=True, check=True)
        with server:                      # __enter__ starts it (once)
            results = {}
            for name, port_attr, flags in MODES:
                if name not in args.modes.split(","):
                    continue
                started = time.monotonic()
                results[name] = run_mode(bench, getattr(server, port_attr), flags, user,
                                         restore, args)
                results[name]["wall_s"] = time.monotonic() - started
    report(summary, results, args)
    return 0


def report(summary: dict, results: dict, args) -> None:
    plain = results.get("plain", {"median": {}})["median"].get("retr_MBps") or 0.0
    print(f"spool: {summary.get('messages', summary.get('count', '?'))} messages, "
          f"{summary.get('bytes', summary.get('total_bytes', '?'))} bytes "
          f"(mkspool -s {args.size} --seed {args.seed}); chunky-writes {args.chunky_writes}; "
          f"{args.repeat} run(s) per mode, medians; verify {'on' if args.verify else 'off'}")
    print(f"{'mode':<6} {'RETR MB/s':>10} {'vs plain':>9} {'msgs/s':>9} {'client_cpu':>10} "
          f"{'login s':>8}")
    for name, data in results.items():
        median = data["median"]
        mbps = median.get("retr_MBps") or 0.0
        ratio = f"{mbps / plain:.2f}" if plain else "—"      # no plain run: no ratio
        print(f"{name:<6} {mbps:>10.1f} {ratio:>9} "
              f"{median.get('retr_msgs_per_s', 0):>9.0f} "
              f"{median.get('retr_client_cpu_frac', 0):>10.2f} "
              f"{median.get('session_start_s', 0):>8.3f}")
    print(json.dumps({"benchmark": "tls_retr", "size": args.size,
                      "chunky_writes": args.chunky_writes,
                      "medians": {name: {key: data["median"].get(key) for key in SUMMARY_KEYS}
                                  for name, data in results.items()}}))


if __name__ == "__main__":
    sys.exit(main())
