"""SCRAM arithmetic (qpopper/auth/scram.py) against the RFCs' own test vectors (the SCRAM
client of the SASL and server tests is tests/helpers/scram_client.py)."""

from __future__ import annotations

import base64

import pytest

from qpopper.auth import scram

# RFC 7677 §3 (SCRAM-SHA-256), user "user", password "pencil".
RFC7677 = dict(
    mechanism="SCRAM-SHA-256", password="pencil",
    client_first_bare="n=user,r=rOprNGfwEbeRWgbNEkqO",
    server_first="r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                 "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    client_final_without_proof="c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    proof="dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    server_signature="6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    salt="W22ZaJ0SNY7soEsUEjb6gQ==")
# RFC 5802 §5 (SCRAM-SHA-1), same user and password.
RFC5802 = dict(
    mechanism="SCRAM-SHA-1", password="pencil",
    client_first_bare="n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    server_first="r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    client_final_without_proof="c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
    proof="v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    server_signature="rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    salt="QSXCR+Q6sek8bf92")


@pytest.mark.parametrize("vector", [RFC7677, RFC5802], ids=["RFC7677", "RFC5802"])
def test_rfc_test_vector(vector):
    mechanism = vector["mechanism"]
    salt = base64.b64decode(vector["salt"])
    auth_message = ",".join([vector["client_first_bare"], vector["server_first"],
                             vector["client_final_without_proof"]]).encode()
    # The client side, from the RFC's algorithm, gives the RFC's proof ...
    salted = scram.salted_password(mechanism, b"pencil", salt, 4096)
    assert scram.b64(scram.client_proof(mechanism, salted, auth_message)) == vector["proof"]
    # ... the verifier popauth stores accepts exactly that proof ...
    verifier = scram.make_verifier(mechanism, vector["password"], salt=salt, iterations=4096)
    proof = base64.b64decode(vector["proof"])
    assert scram.proof_is_valid(verifier, auth_message, proof)
    assert not scram.proof_is_valid(verifier, auth_message, bytes([proof[0] ^ 1]) + proof[1:])
    assert not scram.proof_is_valid(verifier, auth_message + b"x", proof)
    assert not scram.proof_is_valid(verifier, auth_message, proof[:-1])
    # ... and the server's signature is the RFC's.
    assert scram.b64(scram.server_signature(verifier, auth_message)) == vector["server_signature"]


def test_verifiers_are_salted_and_iterated():
    a = scram.make_verifier("SCRAM-SHA-256", "same secret")
    b = scram.make_verifier("SCRAM-SHA-256", "same secret")
    assert a.iterations >= 4096 and len(a.salt) == 16
    assert a.salt != b.salt and a.stored_key != b.stored_key


def test_saslname_escaping_round_trips():
    assert scram.escape_name("a,b=c") == "a=2Cb=3Dc"
    assert scram.unescape_name("a=2Cb=3Dc") == "a,b=c"
    assert scram.unescape_name("bad=2X") is None
