"""SCRAM (RFC 5802, RFC 7677): the arithmetic, shared by popauth (making verifiers), the
server's SASL mechanism and the tests. The -PLUS variants (channel binding) use the same
arithmetic and verifiers: only the c= attribute differs (auth/sasl.py checks it).

The pop.auth store keeps, per user and mechanism, salt, iteration count, StoredKey and
ServerKey: enough to check a client's proof and prove the server's own knowledge, not enough
to log in as the user (RFC 5802 §9). Usernames and passwords are used as given (UTF-8);
SASLprep is not applied (the names and secrets popauth accepts are printable text).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

MECHANISMS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
"""Mechanism name -> hashlib name; the order popauth stores and CAPA lists them."""

DEFAULT_ITERATIONS = 4096
"""RFC 7677 §4: at least 4096 iterations for SCRAM-SHA-256 (RFC 5802 §5.1: 4096 too)."""

SALT_OCTETS = 16


@dataclass(frozen=True)
class Verifier:
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hash_name(mechanism: str) -> str:
    return MECHANISMS[mechanism]


def salted_password(mechanism: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802 §2.2 is PBKDF2 with HMAC-H and one block."""
    return hashlib.pbkdf2_hmac(_hash_name(mechanism), password, salt, iterations)


def hmac_h(mechanism: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, _hash_name(mechanism)).digest()


def h(mechanism: str, data: bytes) -> bytes:
    return hashlib.new(_hash_name(mechanism), data).digest()


def client_key(mechanism: str, salted: bytes) -> bytes:
    return hmac_h(mechanism, salted, b"Client Key")


def make_verifier(mechanism: str, password: str, *, salt: bytes | None = None,
                  iterations: int = DEFAULT_ITERATIONS) -> Verifier:
    salt = os.urandom(SALT_OCTETS) if salt is None else salt
    salted = salted_password(mechanism, password.encode("utf-8"), salt, iterations)
    return Verifier(mechanism, salt, iterations,
                    stored_key=h(mechanism, client_key(mechanism, salted)),
                    server_key=hmac_h(mechanism, salted, b"Server Key"))


def client_proof(mechanism: str, salted: bytes, auth_message: bytes) -> bytes:
    """What a client sends as p= (tests use it to play the client)."""
    key = client_key(mechanism, salted)
    signature = hmac_h(mechanism, h(mechanism, key), auth_message)
    return bytes(a ^ b for a, b in zip(key, signature))


def proof_is_valid(verifier: Verifier, auth_message: bytes, proof: bytes) -> bool:
    """RFC 5802 §3: ClientKey = proof XOR HMAC(StoredKey, AuthMessage); H(ClientKey) must be
    StoredKey (compared in constant time)."""
    signature = hmac_h(verifier.mechanism, verifier.stored_key, auth_message)
    if len(proof) != len(signature):
        return False
    key = bytes(a ^ b for a, b in zip(proof, signature))
    return hmac.compare_digest(h(verifier.mechanism, key), verifier.stored_key)


def server_signature(verifier: Verifier, auth_message: bytes) -> bytes:
    return hmac_h(verifier.mechanism, verifier.server_key, auth_message)


def is_cb_name(text: str) -> bool:
    """RFC 5802 §7 cb-name = 1*(ALPHA / DIGIT / "." / "-") (`tls-unique`, `tls-exporter`)."""
    return bool(text) and all(ch.isascii() and (ch.isalnum() or ch in ".-") for ch in text)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def escape_name(name: str) -> str:
    """RFC 5802 §5.1 saslname: ',' -> '=2C', '=' -> '=3D'."""
    return name.replace("=", "=3D").replace(",", "=2C")


def unescape_name(text: str) -> str | None:
    """The inverse; None for a '=' not followed by 2C or 3D (the RFC's 'invalid-encoding')."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "=":
            code = text[i + 1:i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                return None
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
