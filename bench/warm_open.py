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


def mbox_open(cfg, paths):
    """A server-mode session up to STAT; `restore` (an abort) is its end, outside the timing:
    with a valid cache it writes nothing. The first session's QUIT (not timed) writes the
    X-UIDL and Status headers, as the first session of vs_peers.py does."""
    return Maildrop.open(cfg, paths, BENCH_USER)


def maildir_open(path: str):
    return MaildirDrop.open(path, BENCH_USER)


def best_cpu(open_drop, rounds: int) -> tuple[float, int]:
    """The least CPU time of `rounds` opens (the login's part from PASS to STAT), and the
    number of messages."""
    times = []
    for _ in range(rounds):
        start = time.process_time()
        drop = open_drop()
        times.append(time.process_time() - start)
        drop.restore()
    return min(times), len(drop.messages)


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
        start = time.process_time()
        first = mbox_open(cfg, paths)
        first.update(set(), set())      # QUIT, as in vs_peers.py: X-UIDL and Status written
        cold = {"mbox": time.process_time() - start,
                "maildir": best_cpu(lambda: maildir_open(maildir), 1)[0]}
        opens = {"mbox": lambda: mbox_open(cfg, paths), "maildir": lambda: maildir_open(maildir)}
        for name, open_drop in opens.items():
            warm, n = best_cpu(open_drop, args.rounds)
            print(f"{name}: {n} messages, first session {cold[name]:.4f} s CPU, warm open "
                  f"{warm:.4f} s CPU (best of {args.rounds})")
            if args.profile:
                profile = cProfile.Profile()
                drop = profile.runcall(open_drop)
                drop.restore()
                pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
