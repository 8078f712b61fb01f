"""How replies reach the client: collected into large vectored writes (chunky-writes), never
copied into one buffer, and a client gone mid-write noted instead of raised."""

from __future__ import annotations

import syslog

from qpopper import limits
from qpopper.server.channel import ChannelClosed

FLUSH_OCTETS = 4 * limits.COPY_CHUNK_OCTETS
"""Collected replies go out once they reach this size (and at the end of every batch of
commands): 8 pipelined RETRs of a typical message are one writev(2). Bigger writes cost the
kernel less per byte; this bounds what a session holds (docs/internals.md, "Server")."""


class ReplyWriter:
    """Part of Session (server/session.py), kept apart so the session's loop reads on its
    own: uses its channel, cfg, tls_active, log and client_ip. Every write must be bytes (never
    changed afterwards: the pieces are held, not copied, until the flush)."""

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._out_size = 0
        # env.client_gone (docs/internals.md, "Protocol"): a write found the client gone;
        # output is dropped, and the protocol acts on no further command
        self.client_gone = False

    def write(self, data: bytes) -> None:
        if self.client_gone or not data:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_OCTETS or not self._aggregate():
            self.flush()

    def flush(self) -> None:
        if not self._out:
            return
        pieces, self._out, self._out_size = self._out, [], 0
        if self.client_gone:
            return
        try:
            self.channel.write_vector(pieces, self.cfg.timeout)
        except ChannelClosed as exc:
            self.client_gone = True
            self.log(syslog.LOG_DEBUG, f"client {self.client_ip} gone during write: {exc}")

    def _aggregate(self) -> bool:
        """chunky-writes: default/always aggregate; never: write each piece as it comes;
        tls (the table maps 'ssl' to it): aggregate only when TLS is active (small TLS
        records are expensive)."""
        mode = self.cfg.chunky_writes
        if mode == "never":
            return False
        if mode == "tls":
            return self.tls_active
        return True
