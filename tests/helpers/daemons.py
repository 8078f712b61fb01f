"""Stopping a foreground daemon a test started (HAProxy, ganesha.nfsd)."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, signum: int, grace_s: float) -> None:
    """`signum` (the daemon's own way to stop), then KILL after `grace_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
