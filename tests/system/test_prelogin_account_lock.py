"""tests/helpers/sysusers.py prelogin_account: two test runs (or two pytest-xdist workers of
one run) that start together share the pre-login account; neither waits for the other's
whole run before it may use it."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.sysusers import PRELOGIN_CHANGE_LOCKS, PRELOGIN_LOCKS, account_exists

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
NAME = "qpt-h143-prelogin"

# One test run: its first look at the account meets the other run's first look (both find
# it missing, as two runs started together do), then it uses the account while it waits for
# the other run to be using it too.
RUN = r"""
import os, sys, time
from tests.helpers import sysusers
me, other, name, rendezvous = sys.argv[1:5]
real = sysusers.account_exists
calls = []

def meet(tag, seconds):
    open(os.path.join(rendezvous, f"{tag}-{me}"), "w").close()
    deadline = time.monotonic() + seconds
    while not os.path.exists(os.path.join(rendezvous, f"{tag}-{other}")):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

def first_look_together(account):
    if not calls:
        calls.append(1)
        meet("checked", 2)       # looks made one at a time never meet: on after 2 s
    return real(account)

sysusers.account_exists = first_look_together
with sysusers.prelogin_account(name):
    if not meet("using", 20):
        sys.exit(f"run {me}: run {other} could not use the account while run {me} did")
"""


def test_two_runs_that_start_together_both_use_the_account_at_once(tmp_path):
    try:
        pwd.getpwnam(NAME)
        pytest.fail(f"{NAME} exists before the test")
    except KeyError:
        pass
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runs = [subprocess.Popen([sys.executable, "-c", RUN, me, other, NAME, str(tmp_path)],
                             cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
            for me, other in (("a", "b"), ("b", "a"))]
    try:
        results = [(run.returncode, err) for run in runs
                   for _, err in [run.communicate(timeout=90)]]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.communicate()
        gone = not account_exists(NAME)
        subprocess.run(["userdel", NAME], capture_output=True, timeout=30)
        for locks in (PRELOGIN_LOCKS, PRELOGIN_CHANGE_LOCKS):
            Path(locks.format(name=NAME)).unlink(missing_ok=True)
    assert results == [(0, ""), (0, "")]
    assert gone, f"{NAME} is left after both runs ended"

