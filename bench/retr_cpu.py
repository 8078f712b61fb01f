#!/usr/bin/env python3
"""RETR of every message in-process: the CPU the session spends between a batch of pipelined
RETR commands and its writev, without sockets, fork or login (bench/README.md, "retr_cpu.py").

The real Protocol and server-mode maildrop (the test transcripts' Spool, its table
authenticator), replies through the session's ReplyWriter and Channel into /dev/null, 8 RETRs
per read as `pop3bench --pipeline 8` sends them. CPU time (`time.process_time()`), best of N,
once per wire conversion: the compiled qpopper.spool._wire (when built) and the pure-Python
definition (docs/accelerators.md).

    .venv/bin/python bench/retr_cpu.py                   # 10,000 messages, 159 MB, best of 5
    .venv/bin/python bench/retr_cpu.py --profile c       # and a cProfile of one C run

The spool is made once (mkspool.py, seed 159, as vs_peers.py's big mailbox) in a temporary
directory and removed at the end.
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
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qpopper.server.channel import Channel  # noqa: E402
from qpopper.server.reply_writer import ReplyWriter  # noqa: E402
from qpopper.spool import mbox_send  # noqa: E402
from tests.transcripts.harness import Spool, extended_session  # noqa: E402

import benchlib  # noqa: E402
from vs_peers import BIG_SEED, BENCH_USER  # noqa: E402

PIPELINE = 8
USER = "alice"                  # the transcripts' table authenticator knows her
IMPLS = {"c": mbox_send.wire_join_c, "python": mbox_send.wire_join_python}


def use_impl(impl: Callable) -> None:
    """mbox_send converts with this implementation of wire_join."""
    mbox_send.wire_join = impl


class NullWriter(ReplyWriter):
    """What Session gives ReplyWriter, writing to /dev/null."""

    def __init__(self, cfg, fd: int):
        super().__init__()
        self.cfg, self.channel, self.client_ip = cfg, Channel(fd, fd), "127.0.0.1"
        self.tls_active = False

    def log(self, priority: int, text: str) -> None:
        raise RuntimeError(text)


def retr_all(spool: Spool, null_fd: int, profiler=None) -> tuple[float, int]:
    """CPU seconds of RETR of every message (after login and the server-mode open, which
    neither the time nor the profile includes), and the number of messages."""
    pop = extended_session(spool, server_mode=True)
    reply = pop.login(USER)
    assert reply.startswith(b"+OK"), reply
    count = len(pop.proto.trans.messages)
    writer = NullWriter(pop.env.cfg, null_fd)
    pop.env.write = writer.write
    batches = [b"".join(b"RETR %d\r\n" % n for n in range(start, min(start + PIPELINE, count + 1)))
               for start in range(1, count + 1, PIPELINE)]
    feed = pop.proto.feed
    if profiler:
        profiler.enable()
    start = time.process_time()
    for batch in batches:
        feed(batch)
        writer.flush()
    spent = time.process_time() - start
    if profiler:
        profiler.disable()
    spool.close()
    return spent, count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", default="159M", help="the mailbox's size (mkspool -s)")
    parser.add_argument("--count", type=int, default=10_000, help="messages (mkspool -n)")
    parser.add_argument("--profile", choices=sorted(IMPLS), help="cProfile one run with it")
    parser.add_argument("--bench-dir", default=str(REPO.parent / "shared" / "bench"),
                        help="where mkspool.py is (../shared/bench)")
    args = parser.parse_args(argv)
    impls = {name: impl for name, impl in IMPLS.items() if impl is not None}
    if "c" not in impls:
        print("retr_cpu: qpopper.spool._wire is not built: the pure-Python conversion only",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="qpopper-retr-cpu-") as work:
        spool = Spool(Path(work) / "spool")
        made = benchlib.make_spool(Path(args.bench_dir), str(spool.dir / USER),
                                   seed=BIG_SEED, user=BENCH_USER, size=args.size,
                                   count=args.count)
        print(f"spool: {made['messages']} messages, {made['bytes'] / 1e6:.1f} MB")
        null_fd = os.open(os.devnull, os.O_WRONLY)
        try:
            best = {name: float("inf") for name in impls}
            for _ in range(args.rounds):               # alternated: the load drifts alike
                for name, impl in impls.items():
                    use_impl(impl)
                    spent, count = retr_all(spool, null_fd)
                    best[name] = min(best[name], spent)
            for name, spent in best.items():
                print(f"RETR all ({count} messages), wire {name}: {spent:.3f} s CPU "
                      f"(best of {args.rounds}), {spent / count * 1e6:.1f} µs per message")
            if args.profile:
                use_impl(impls[args.profile])
                profiler = cProfile.Profile()
                retr_all(spool, null_fd, profiler)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        finally:
            os.close(null_fd)
            use_impl(impls.get("c", IMPLS["python"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
