"""The states of a POP3 conversation (RFC 1939 §3), and CLOSED once it is over."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"
