"""What every forked process of the server shares: how it ends (never back into its
parent's code), and the error that ends a connection whose pre-login process misbehaved."""

from __future__ import annotations

import os
import syslog
from typing import NoReturn


def log_failure(log, what: str, exc: BaseException, priority: int = syslog.LOG_ERR) -> None:
    """A forked process's last word before os._exit: logging must not stop the exit."""
    try:
        log(priority, f"{what} failed: {type(exc).__name__}: {exc}")
    except BaseException:
        pass


def exit_after(log, what: str, body) -> NoReturn:
    """The end of every forked child: run `body()` and leave with the status it returns,
    through os._exit — a child never falls back into its parent's code, whatever it
    raised (logged as `what` failed)."""
    status = 1
    try:
        status = body()
    except BaseException as exc:
        log_failure(log, what, exc)
    finally:
        os._exit(status)


class ProtocolViolation(Exception):
    """The pre-login process sent what it never should: the connection ends."""
