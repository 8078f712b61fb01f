"""`sudo popauth`'s checks of a current secret take turns on the store's directory (flock):
one waits for the check before it, at most CHECK_TURN_WAIT_S, then is refused."""
from __future__ import annotations

import fcntl
import os
import time

import pytest

from qpopper.auth.store import PopAuthStore
from qpopper.tools import popauth


def store_in(tmp_path) -> PopAuthStore:
    return PopAuthStore(str(tmp_path / "pop.auth"), os.getuid())


def test_a_check_waits_for_the_turn_then_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(popauth, "CHECK_TURN_WAIT_S", 0.5)
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)              # another check holds the turn
        started = time.monotonic()
        with pytest.raises(popauth.Refusal, match="taking its turn; try again later"):
            with popauth._checks_in_turn(store_in(tmp_path)):
                pytest.fail("entered while another check held the turn")
        assert time.monotonic() - started >= 0.5        # it waited before giving up
    finally:
        os.close(holder)


def test_a_check_takes_the_turn_once_it_is_free_and_holds_it(tmp_path, monkeypatch):
    monkeypatch.setattr(popauth, "CHECK_TURN_WAIT_S", 5)
    with popauth._checks_in_turn(store_in(tmp_path)):
        other = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    other = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the check
    finally:
        os.close(other)
