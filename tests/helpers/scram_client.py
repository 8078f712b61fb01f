"""A SCRAM client written from the RFCs' algorithm (RFC 5802 §3, RFC 7677), for the SASL and
server tests."""

from __future__ import annotations

import base64
import secrets

from qpopper.auth import scram


class ScramClient:
    """A SCRAM client from RFC 5802 §3 / RFC 7677, for the tests: `first()`, then
    `final(server_first)`, then `check(server_final)`."""

    def __init__(self, mechanism: str, user: str, password: str, *, gs2="n,,",
                 cbind_data: bytes = b""):
        """`cbind_data`: the channel binding a -PLUS client (gs2 `p=...`) sends in c=."""
        self.mechanism, self.user, self.password, self.gs2 = mechanism, user, password, gs2
        self.cbind_data = cbind_data
        self.arithmetic = mechanism.removesuffix("-PLUS")       # -PLUS hashes the same way
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.bare = f"n={scram.escape_name(user)},r={self.nonce}"

    def first(self) -> bytes:
        return (self.gs2 + self.bare).encode()

    def final(self, server_first: bytes, *, wrong_password: bool = False) -> bytes:
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        assert attrs["r"].startswith(self.nonce) and len(attrs["r"]) > len(self.nonce)
        cbind_input = self.gs2.encode() + self.cbind_data        # RFC 5802 §7
        without_proof = f"c={base64.b64encode(cbind_input).decode()},r={attrs['r']}"
        self.auth_message = f"{self.bare},{text},{without_proof}".encode()
        password = self.password + ("x" if wrong_password else "")
        self.salted = scram.salted_password(self.arithmetic, password.encode(),
                                            base64.b64decode(attrs["s"]), int(attrs["i"]))
        proof = scram.client_proof(self.arithmetic, self.salted, self.auth_message)
        return f"{without_proof},p={scram.b64(proof)}".encode()

    def server_signature_ok(self, server_final: bytes) -> bool:
        server_key = scram.hmac_h(self.arithmetic, self.salted, b"Server Key")
        expected = scram.hmac_h(self.arithmetic, server_key, self.auth_message)
        return server_final.decode() == f"v={scram.b64(expected)}"
