"""The session's TLS channel: channel.Channel's interface over a pyOpenSSL connection on
memory BIOs, so that the handshake and every record go through the raw channel's bounded,
interruptible reads and writes (docs/internals.md, "TLS"). The contexts it is given are
made by tls.py."""

from __future__ import annotations

import os
import time

from OpenSSL import SSL

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_OCTETS = 32
"""RFC 9266 §2: tls-exporter is 32 octets of the TLS exporter with this label and an empty
context."""
RECORD_OCTETS = 16 * 1024
"""One TLS record's worth of plaintext: writes are cut at this size."""
ALERT_WRITE_TIMEOUT_S = 10
"""The longest wait to hand the client a record OpenSSL wrote while reading (an alert, a
KeyUpdate answer): a few dozen octets, which only a client that stopped reading delays."""
RECORD_OVERHEAD_OCTETS = 256
"""More than a record adds (header, MAC or tag, padding, TLS 1.3 content type)."""


class HandshakeFailed(Exception):
    """The client did not complete a TLS handshake (reason in the text, for the log)."""


class TlsChannel:
    """channel.Channel's interface (read, write_all, close, peer, sock) over TLS.

    `raw` is the plaintext channel: ciphertext goes through its bounded, interruptible reads
    and writes; OpenSSL works on memory BIOs in between.
    """

    def __init__(self, raw, context: SSL.Context):
        self.raw = raw
        self.sock = raw.sock
        self.in_fd, self.out_fd = raw.in_fd, raw.out_fd
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()
        # the raw channel's "client gone" exception (channel.ChannelClosed): this module sits
        # below session.py and must not import it
        self.closed_error = getattr(raw, "closed_error", ConnectionError)
        self._closed_from = None
        self._close_notify_received = False
        self.closed = False                  # close() sent our close_notify: nothing more
        # ciphertext was fed since OpenSSL last said "want read": a recv() may succeed. Saves
        # a raised WantReadError (costly in pyOpenSSL) per command.
        self._input_pending = False

    def peer(self):
        return self.raw.peer()

    # --- handshake -------------------------------------------------------------------------------
    def handshake(self, timeout_s: float, wake_fd: int | None = None,
                  interrupted=lambda: False) -> None:
        """Complete the server side of the handshake within timeout_s, or HandshakeFailed."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                self._flush_quietly()                 # the alert tells the client why
                raise HandshakeFailed(describe_ssl_error(exc)) from None
            else:
                try:
                    self._flush(max(0.1, deadline - time.monotonic()))
                except self.closed_error as exc:
                    raise HandshakeFailed(f"client gone: {exc}") from None
                self._input_pending = True    # commands may have come with the Finished
                return
            remaining = deadline - time.monotonic()
            try:
                self._flush(max(0.1, remaining))
            except self.closed_error as exc:
                raise HandshakeFailed(f"client gone: {exc}") from None
            data = self.raw.read(max(0.0, remaining), wake_fd, interrupted)
            if data is None:
                raise HandshakeFailed("timed out")
            if not data:
                raise HandshakeFailed("the client closed the connection")
            self.conn.bio_write(data)

    def channel_bindings(self) -> dict[str, bytes]:
        """The channel bindings of the completed handshake, by RFC 5056 name: tls-exporter on
        TLS 1.3 (RFC 9266; tls-unique is not defined there). Nothing on TLS 1.2, where both
        are unsafe without the Extended Master Secret, which pyOpenSSL cannot report (RFC
        7627, module docstring). A value OpenSSL cannot give is left out, and with it the
        PLUS mechanisms that need it."""
        if self.conn.get_protocol_version() < SSL.TLS1_3_VERSION:
            return {}
        try:
            return {"tls-exporter": self.conn.export_keying_material(
                EXPORTER_LABEL, EXPORTER_OCTETS, b"")}
        except SSL.Error:
            return {}

    def summary(self) -> str:
        """`TLSv1.3, TLS_AES_256_GCM_SHA384, 256 bits` for the log."""
        return (f"{self.conn.get_protocol_version_name()}, {self.conn.get_cipher_name()}, "
                f"{self.conn.get_cipher_bits()} bits")

    # --- the Channel interface ----------------------------------------------------------------
    def read(self, timeout_s: float, wake_fd: int | None = None,
             interrupted=lambda: False) -> bytes | None:
        """Decrypted bytes; b'' at EOF (close_notify, a TCP close or a TLS error); None on
        timeout or interruption (as Channel.read)."""
        while True:
            if self._input_pending:
                plain = self._decrypted()
                if plain is not None:
                    return plain
            data = self.raw.read(timeout_s, wake_fd, interrupted)
            if not data:
                return data                            # None (timeout) or b'' (EOF)
            self.conn.bio_write(data)
            self._input_pending = True

    def read_available(self) -> list[bytes]:
        """Without waiting: the plaintext OpenSSL can give now, after at most one
        non-blocking read of ciphertext; [] when there is none yet, a b'' item at EOF.
        For a relay that polls the raw descriptor itself (prelogin.relay)."""
        chunks = []
        if not self._input_pending:
            try:
                data = os.read(self.in_fd, RECORD_OCTETS + RECORD_OVERHEAD_OCTETS)
            except BlockingIOError:
                return chunks
            except OSError:
                data = b""
            if not data:
                return [b""]
            self.conn.bio_write(data)
            self._input_pending = True
        while (plain := self._decrypted()) is not None:
            chunks.append(plain)
            if not plain:
                break
        return chunks

    def _decrypted(self) -> bytes | None:
        """One record's plaintext, if OpenSSL has one; None when it needs more ciphertext;
        b'' at the end (close_notify, or a TLS error, kept for the log)."""
        try:
            return self.conn.recv(RECORD_OCTETS)
        except SSL.WantReadError:
            self._input_pending = False
            # what OpenSSL wrote meanwhile (an alert refusing a renegotiation, a KeyUpdate
            # answer) leaves now: the client may be waiting for it, not for a reply
            try:
                self._flush(ALERT_WRITE_TIMEOUT_S)
            except self.closed_error as exc:
                # taken from OpenSSL and not all sent: the stream cannot go on
                self._closed_from = f"client gone: {exc}"
                return b""
            return None
        except SSL.ZeroReturnError:
            self._close_notify_received = True
            return b""
        except SSL.Error as exc:
            self._closed_from = describe_ssl_error(exc)
            return b""

    def replies_may_follow_end(self) -> bool:
        """After the client's end of input, whether replies may still go to it: yes after a
        TCP FIN (a client that shut its sending side) or TLS 1.3's close_notify, which ends
        one direction (RFC 8446 §6.1); no after TLS 1.2's, which wants ours at once and
        pending writes dropped (RFC 5246 §7.2.1), or after a TLS error."""
        if self._closed_from is not None:
            return False
        return (not self._close_notify_received
                or self.conn.get_protocol_version() >= SSL.TLS1_3_VERSION)

    def write_all(self, data, timeout_s: float) -> None:
        view = memoryview(data)
        try:
            for start in range(0, len(view), RECORD_OCTETS):
                self.conn.send(view[start:start + RECORD_OCTETS])
        except SSL.Error as exc:
            raise self.closed_error(describe_ssl_error(exc)) from None
        self._flush(timeout_s, expected=len(view))

    def write_vector(self, pieces: list, timeout_s: float) -> None:
        """channel.Channel.write_vector: joined, so the records are as big as write_all's."""
        self.write_all(b"".join(pieces), timeout_s)

    def close(self) -> None:
        self.closed = True
        try:
            self.conn.shutdown()                       # close_notify
        except SSL.Error:
            pass
        self._flush_quietly()
        self.raw.close()

    # --- ciphertext out -----------------------------------------------------------------------
    def _pending_output(self, expected: int = 0) -> bytes:
        """Everything OpenSSL wrote. Asking for more than the records of `expected` plaintext
        octets can take means one bio_read usually drains it (an empty BIO raises)."""
        size = expected + (expected // RECORD_OCTETS + 1) * RECORD_OVERHEAD_OCTETS + 4096
        chunks = []
        while True:
            try:
                chunk = self.conn.bio_read(size)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < size:
                break
        return b"".join(chunks)

    def _flush(self, timeout_s: float, expected: int = 0) -> None:
        data = self._pending_output(expected)
        if data:
            self.raw.write_all(data, timeout_s)

    def _flush_quietly(self) -> None:
        try:
            self._flush(1.0)
        except Exception:          # the client may already be gone; nothing to tell anyone
            pass


def describe_ssl_error(exc: SSL.Error) -> str:
    """OpenSSL's error queue as one short line (`wrong version number`, `no shared cipher`)."""
    reasons = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return "; ".join(reasons) or type(exc).__name__
