#!/usr/bin/env python3
"""The warm open in-process: what a session spends between PASS and STAT when server mode's
cache (mbox) or the Maildir index is valid, without PAM, sockets or fork (bench/README.md,
"warm_open.py"). CPU time (`time.process_time()`), best of N, so that a shared machine's load
does not show in the figure.

    .venv/bin/python bench/warm_open.py                  # 10,000 messages, best of 7
    .venv/bin/python bench/warm_open.py --profile        # and a cProfile of each open

The mailboxes are made once in a temporary directory (mkspool.py, as vs_peers.py does, and the
same messages as Maildir files) and removed at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qpopper.config import Config  # noqa: E402
from qpopper.spool.maildir_drop import MaildirDrop  # noqa: E402
from qpopper.spool.maildrop import Maildrop  # noqa: E402
from qpopper.spool.paths import SpoolPaths  # noqa: E402

import benchlib  # noqa: E402
from vs_peers import BIG_SEED, BENCH_USER, mbox_to_maildir  # noqa: E402


def mbox_open(cfg, paths) -> int:
    drop = Maildrop.open(cfg, paths, BENCH_USER)
    n = len(drop.messages)
    drop.update(set(), set())
    return n


def maildir_open(path: str) -> int:
    drop = MaildirDrop.open(path, BENCH_USER)
    n = len(drop.messages)
    drop.restore()
    return n


def best_cpu(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--size", default="40M", help="the mbox's size (mkspool -s); the warm "
                        "open reads only the cache and two 4 KiB probes of it")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--bench-dir", default=str(benchlib.DEFAULT_BENCH_DIR))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qpt-warm-") as work:
        spool_dir = os.path.join(work, "spool")
        os.mkdir(spool_dir)
        cfg = Config.defaults().replace(spool_dir=spool_dir, server_mode=True)
        paths = SpoolPaths.for_user(cfg, BENCH_USER, None)
        benchlib.make_spool(Path(args.bench_dir), paths.spool, seed=BIG_SEED, user=BENCH_USER,
                            count=args.messages, size=args.size)
        maildir = os.path.join(work, "Maildir")
        mbox_to_maildir(paths.spool, maildir)
        past = time.time() - 60                 # the index is trusted once new/ settled
        for sub in ("new", "cur"):
            os.utime(os.path.join(maildir, sub), (past, past))
        cold = {"mbox": best_cpu(lambda: mbox_open(cfg, paths), 1),
                "maildir": best_cpu(lambda: maildir_open(maildir), 1)}
        mbox_open(cfg, paths)                  # the cache of the clean spool
        opens = {"mbox": lambda: mbox_open(cfg, paths), "maildir": lambda: maildir_open(maildir)}
        for name, fn in opens.items():
            n = fn()
            warm = best_cpu(fn, args.rounds)
            print(f"{name}: {n} messages, first open {cold[name]:.4f} s CPU, warm open "
                  f"{warm:.4f} s CPU (best of {args.rounds})")
            if args.profile:
                profile = cProfile.Profile()
                profile.runcall(fn)
                pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
