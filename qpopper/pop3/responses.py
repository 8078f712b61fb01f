"""POP3 replies: response codes, refusals as values, +OK/-ERR rendering, multi-line framing.

Handlers return a reply or raise PopError; this module is the one place that renders
`-ERR [CODE] text`. Clients never see exception text, paths or errno.
"""

from __future__ import annotations

import enum

CRLF = b"\r\n"
TERMINATOR = b".\r\n"


TOO_MANY_CONNECTIONS = "Too many connections; try again later"
"""-ERR [SYS/TEMP] when the connection limits are reached: the master's refusal of a newcomer,
and the last words of a connection that had not logged in, ended to make room."""


class RespCode(enum.Enum):
    """RFC 2449 §8 / RFC 3206 extended response codes."""

    IN_USE = "IN-USE"
    LOGIN_DELAY = "LOGIN-DELAY"
    SYS_TEMP = "SYS/TEMP"
    SYS_PERM = "SYS/PERM"
    AUTH = "AUTH"


class PopError(Exception):
    """A refusal sent to the client as `-ERR [code] text`.

    `close=True` asks the session to disconnect after the reply (bad-command budget,
    fatal spool errors). `log` is an optional line for syslog only — never shown to the client.
    """

    def __init__(self, text: str, code: RespCode | None = None, *, close: bool = False,
                 log: str | None = None):
        super().__init__(text)
        self.text = text
        self.code = code
        self.close = close
        self.log = log

    def render(self) -> bytes:
        return err(self.text, self.code)


def _line(prefix: str, text: str) -> bytes:
    line = f"{prefix} {text}" if text else prefix
    # Replies are built from our own texts plus user-supplied names that were already checked;
    # still, never let a CR/LF through into the protocol stream.
    line = line.replace("\r", " ").replace("\n", " ")
    return line.encode("utf-8", "replace") + CRLF


def ok(text: str = "") -> bytes:
    """`+OK text` CRLF."""
    return _line("+OK", text)


def err(text: str, code: RespCode | None = None) -> bytes:
    """`-ERR [CODE] text` CRLF."""
    if code is not None:
        text = f"[{code.value}] {text}"
    return _line("-ERR", text)


def dot_stuff(line: bytes) -> bytes:
    """RFC 1939 §3: a line of a multi-line reply that starts with '.' gets one more '.'."""
    return b"." + line if line.startswith(b".") else line
