"""How replies reach the client: collected into large writes (chunky-writes), big blocks
sent without a copy, and a client gone mid-write noted instead of raised."""

from __future__ import annotations

import syslog

from qpopper import limits
from qpopper.server.channel import ChannelClosed


class ReplyWriter:
    """Part of Session (server/session.py), kept apart so the session's loop reads on its
    own: uses its channel, cfg, tls_active, log, client_ip, _out and _closed."""

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        if not self._out and len(data) >= limits.COPY_CHUNK_OCTETS:
            self._send(data)                # a big block (RETR of a big message): no copy
            return
        self._out += data
        if not self._aggregate() or len(self._out) >= limits.COPY_CHUNK_OCTETS:
            self.flush()

    def flush(self) -> None:
        if self._closed or not self._out:
            self._out.clear()
            return
        data, self._out = self._out, bytearray()   # hand the buffer itself over: no copy
        self._send(data)

    def _send(self, data: bytes | bytearray) -> None:
        try:
            self.channel.write_all(data, self.cfg.timeout)
        except ChannelClosed as exc:
            self._closed = True
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
