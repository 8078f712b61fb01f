"""What the benchmark scripts share: where the shared tools are, the checks before a run, and
seeded spools from ../shared/bench/mkspool.py. Imported by bench/*.py run as scripts (their
directory is on sys.path); they put the repository on sys.path for tests.* themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BENCH_DIR = REPO.parent / "shared" / "bench"


def refusal(script: str, bench: Path, root_for: str) -> str | None:
    """Why the script cannot run (one line), or None: it must be root and find pop3bench.py."""
    if os.geteuid() != 0:
        return f"{script}: run as root ({root_for})"
    if not (bench / "pop3bench.py").exists():
        return f"{script}: no pop3bench.py in {bench} (use --bench-dir)"
    return None


def make_spool(bench: Path, out: str, *, seed: int, user: str, size: str | None = None,
               count: int | None = None) -> dict:
    """A seeded mbox for `user` at `out`; mkspool.py's summary (messages, bytes, seed)."""
    cmd = [sys.executable, str(bench / "mkspool.py"), "--seed", str(seed), "--user", user,
           "-o", out]
    if size:
        cmd += ["-s", size]
    if count:
        cmd += ["-n", str(count)]
    made = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(made.stderr.strip().splitlines()[-1])
