"""Run one fuzz target under atheris (libFuzzer), or replay its corpus.

    python -m fuzz.run TARGET [--seconds N | --runs N] [--work DIR] [LIBFUZZER_FLAG ...]
    python -m fuzz.run TARGET --replay [FILE ...]   every seed (or these files) once, no atheris
    python -m fuzz.run TARGET --merge-from DIR      add DIR's inputs that cover something new
                                                    to the seeds (libFuzzer -merge=1)
    python -m fuzz.run --list

New inputs that reach new code go to the work directory (default .fuzz-work/TARGET, outside
git); the repository's seeds (fuzz/corpus/TARGET) are read, not written. A finding (an
exception the target does not document, a hang past --timeout, memory growth) stops the run
with the input saved as fuzz-findings/TARGET-crash-... and a non-zero exit
(docs/fuzzing.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fuzz import harness

PER_INPUT_TIMEOUT = 10        # seconds; libFuzzer reports a longer input as a hang
RSS_LIMIT_MB = 1024


def libfuzzer_argv(name: str, target, args, extra: list[str]) -> list[str]:
    work = Path(args.work or Path(".fuzz-work") / name)
    work.mkdir(parents=True, exist_ok=True)
    findings = Path(args.findings)
    findings.mkdir(parents=True, exist_ok=True)
    # libFuzzer runs argv[0] again through the shell for -merge and -fork: make it a command
    # that starts this target, not the path of this module
    command = f"{shlex.quote(sys.executable)} -m fuzz.run {shlex.quote(name)}"
    argv = [command, f"-timeout={args.timeout}", f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={target.MAX_LEN}", f"-artifact_prefix={findings}/{name}-",
            "-print_final_stats=1"]
    if args.seconds is not None:
        argv.append(f"-max_total_time={args.seconds}")
    if args.runs is not None:
        argv.append(f"-runs={args.runs}")
    dictionary = harness.DICT_DIR / f"{name}.dict"
    if dictionary.is_file():
        argv.append(f"-dict={dictionary}")
    seeds = harness.CORPUS_DIR / name
    if args.merge_from:
        return argv + ["-merge=1"] + extra + [str(seeds), args.merge_from]
    return argv + extra + [str(work)] + ([str(seeds)] if seeds.is_dir() else [])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run")
    parser.add_argument("target", nargs="?")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--replay", action="store_true")
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--timeout", type=int, default=PER_INPUT_TIMEOUT)
    parser.add_argument("--work")
    parser.add_argument("--merge-from")
    parser.add_argument("--findings", default="fuzz-findings")
    args, extra = parser.parse_known_args()
    if args.list:
        print("\n".join(harness.target_names()))
        return 0
    if not args.target:
        parser.error("name a target (--list shows them)")
    if args.replay:
        if extra:                                  # these inputs, a finding's traceback shown
            target = harness.load_target(args.target)
            for path in extra:
                harness.check(target, Path(path).read_bytes())
            print(f"{args.target}: {len(extra)} inputs replayed")
        else:
            print(f"{args.target}: {harness.replay(args.target)} seeds replayed")
        return 0
    try:
        import atheris
    except ImportError:
        print("fuzz: atheris is not installed (make venv installs it)", file=sys.stderr)
        return 2
    with atheris.instrument_imports(include=["qpopper"]):
        target = harness.load_target(args.target)
    watch = harness.RssWatch()

    def test_one_input(data: bytes) -> None:
        harness.check(target, data)
        watch.tick()

    atheris.Setup(libfuzzer_argv(args.target, target, args, extra), test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
