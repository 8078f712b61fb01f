"""What every fuzz target shares: the rule that only its documented exceptions may escape,
the memory watch, corpus replay, and the list of targets (docs/fuzzing.md).

A target is a module fuzz/targets/<name>.py with
    ALLOWED: tuple of exception types the surface documents (anything else is a finding)
    MAX_LEN: the longest input worth generating
    one_input(data: bytes) -> None: drive the surface with `data`, assert its invariants
and a seed corpus in fuzz/corpus/<name>/ (optionally a libFuzzer dictionary
fuzz/dicts/<name>.dict). Nothing here imports qpopper: fuzz/run.py instruments qpopper's
modules as the target imports them, which only works for modules not yet imported.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
DICT_DIR = FUZZ_DIR / "dicts"

RSS_WARMUP_RUNS = 50_000
"""Executions before the memory baseline is taken (imports, caches and libFuzzer's first
corpus pass are done by then)."""
RSS_CHECK_EVERY = 10_000
RSS_GROWTH_LIMIT_KB = 4 * 1024
"""Growth of the resident set over the baseline that counts as a finding: a leak of 4 octets
per input fails a million-input run. What is fixed (caches, libFuzzer's in-memory corpus of
a few hundred small inputs) stays far below it; the config target's 1 MiB read buffers grew
it by 7.6 MB (docs/fuzzing.md, Findings)."""


class MemoryGrowth(AssertionError):
    """The process grew by more than RSS_GROWTH_LIMIT_KB since the warm-up."""


def target_names() -> list[str]:
    return sorted(p.stem for p in (FUZZ_DIR / "targets").glob("*.py") if not p.stem.startswith("_"))


def load_target(name: str) -> ModuleType:
    if name not in target_names():
        raise SystemExit(f"fuzz: no target {name!r} (targets: {', '.join(target_names())})")
    return importlib.import_module(f"fuzz.targets.{name}")


def check(target: ModuleType, data: bytes) -> None:
    """One input through the target; documented exceptions are an answer, not a finding."""
    try:
        target.one_input(data)
    except target.ALLOWED:
        pass


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssWatch:
    """Counts executions; after the warm-up, fails the run when the resident set has grown
    past the limit, and reports it every `report_every` executions (docs/fuzzing.md)."""

    def __init__(self, report_every: int = 100_000):
        self.runs = 0
        self.baseline: int | None = None
        self.report_every = report_every

    def tick(self) -> None:
        self.runs += 1
        if self.runs % RSS_CHECK_EVERY:
            return
        now = rss_kb()
        if self.runs == RSS_WARMUP_RUNS:
            self.baseline = now
        if self.runs % self.report_every == 0:
            print(f"#rss runs={self.runs} rss_kb={now} baseline_kb={self.baseline}",
                  file=sys.stderr, flush=True)
        if self.baseline is not None and now - self.baseline > RSS_GROWTH_LIMIT_KB:
            raise MemoryGrowth(f"resident set grew from {self.baseline} kB to {now} kB "
                               f"in {self.runs} executions")


def corpus_files(name: str) -> list[Path]:
    directory = CORPUS_DIR / name
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def replay(name: str) -> int:
    """Every seed of the target's corpus through check(); returns how many."""
    target = load_target(name)
    files = corpus_files(name)
    for path in files:
        try:
            check(target, path.read_bytes())
        except BaseException as exc:
            raise AssertionError(f"fuzz target {name}: {path.name} raised "
                                 f"{type(exc).__name__}: {exc}") from exc
    return len(files)


def scratch_dir(name: str) -> Path:
    """A directory for a target's files, removed at exit: in memory (/dev/shm) when there is
    one, since the spool code fsyncs and a disk would set the pace. libFuzzer ends the process
    without Python's exit handlers, so the directories of processes that are gone are removed
    here too (their names carry the pid)."""
    parent = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    for old in parent.glob("qpopper-fuzz-*-pid*-*"):
        pid = old.name.rpartition("-pid")[2].partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"qpopper-fuzz-{name}-pid{os.getpid()}-", dir=parent))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
