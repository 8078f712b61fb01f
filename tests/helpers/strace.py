"""strace attached to a running process tree, for tests that must prove an order of system
calls (what a privileged process did before or after it dropped its privileges)."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

_LINE = re.compile(r"^(\d+) +(\w+)\((.*)\) += (-?\d+|\?)")
_UNFINISHED = re.compile(r"^(\d+) +(\w+)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(\d+) +<\.\.\. (\w+) resumed>(.*)\) += (-?\d+|\?)")


@dataclass(frozen=True)
class Call:
    pid: int
    name: str
    args: str
    result: int | None


@contextlib.contextmanager
def traced(pid: int, out_path: str, calls: str):
    """Trace `pid` and every process it forks from now on (strace -f) for the system calls
    `calls` (strace's -e trace= list, process-creation calls are added); yields a function
    returning the calls recorded so far, in order."""
    strace = shutil.which("strace")
    if strace is None:
        raise AssertionError("strace is not installed (the Makefile's Debian test packages)")
    proc = subprocess.Popen([strace, "-f", "-qq", "-o", out_path,
                             "-e", f"trace={calls},clone,clone3,fork,vfork", "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not _attached(pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"strace did not attach to {pid}: {proc.stderr.read()}")
            time.sleep(0.02)
        yield lambda: read_calls(out_path)
    finally:
        proc.send_signal(signal.SIGINT)          # detaches; the traced processes go on
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _attached(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)


def read_calls(path: str) -> list[Call]:
    """The completed calls in the order they completed (a call another process's output
    interrupted is put together from its `<unfinished ...>` and `resumed>` lines)."""
    calls, pending = [], {}
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if match := _UNFINISHED.match(line):
                pid, name, args = match.groups()
                pending[(pid, name)] = args
                continue
            match = _LINE.match(line)
            if match:
                pid, name, args, result = match.groups()
            elif match := _RESUMED.match(line):
                pid, name, rest, result = match.groups()
                args = pending.pop((pid, name), "") + rest
            else:
                continue
            calls.append(Call(int(pid), name, args, None if result == "?" else int(result)))
    return calls


def creds_at_each_call(calls: list[Call], uid: int) -> list[tuple[Call, bool]]:
    """Each call with whether its process had set all its user ids to `uid` by then
    (setresuid/setuid in it or in an ancestor before the fork), following forks."""
    dropped: dict[int, bool] = {}
    out = []
    for call in calls:
        if call.name in ("setresuid", "setuid", "setreuid") and call.result == 0:
            ids = [int(x) for x in re.findall(r"-?\d+", call.args)]
            dropped[call.pid] = all(i in (uid, -1) for i in ids) and uid in ids
        elif call.name in ("clone", "clone3", "fork", "vfork") and call.result:
            dropped[call.result] = dropped.get(call.pid, False)
        out.append((call, dropped.get(call.pid, False)))
    return out
