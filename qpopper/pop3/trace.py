"""The dialogue trace of `-d` / `-t FILE` (Qpopper's debug records): each client command and
the first line of each reply, with the session's state, secrets masked (docs/operations.md,
"Tracing a session"). Pure text functions: the protocol logs what they return at LOG_DEBUG.

What is never shown: PASS's argument, APOP's digest, AUTH's initial response, every line the
client sends inside an exchange (SASL responses, XTND XMIT message lines), and a line whose
verb is not a command of the current state (a client out of step may send its password as a
line of its own).
"""

from __future__ import annotations

from typing import Container

HIDDEN = "<hidden>"
SHOWN_ARGUMENTS = {"PASS": 0, "APOP": 1, "AUTH": 1}
"""Verbs whose arguments are secrets after the first N (APOP's name, AUTH's mechanism)."""


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def received_command(line: bytes, verbs: Container[str]) -> str:
    """A command line as the trace shows it; `verbs`: the commands of the current state."""
    words = line.split()
    verb = _text(words[0]).upper() if words else ""
    if not words or not verb.isascii() or verb not in verbs:
        return f"{HIDDEN} ({len(line)} octets, not a command here)"
    args = words[1:]
    shown = SHOWN_ARGUMENTS.get(verb)
    if shown is None or len(args) <= shown:
        return _text(line)
    return " ".join([verb, *(_text(arg) for arg in args[:shown]), HIDDEN])


def received_continuation(line: bytes) -> str:
    """A line inside an exchange (a SASL response, a message line of XTND XMIT)."""
    return f"{HIDDEN} ({len(line)} octets inside an exchange)"


def sent_first_line(data: bytes) -> str:
    """The first line of a reply, without its line end."""
    return _text(data.split(b"\r\n", 1)[0])


def trace_record(state: str, direction: str, text: str) -> str:
    return f"{state} {direction}: \"{text}\""
