"""A throw-away certificate authority for TLS tests, made with the `cryptography` package
(pyOpenSSL's own dependency): a CA, server certificates for 127.0.0.1 / localhost signed by it,
and the broken variants the start-up checks must catch.

    pki = TestPki(directory)
    pki.ca_file                         # PEM of the CA, for clients to verify against
    pki.server("good")                  # Identity(cert_file, key_file, combined_file)
    pki.server("old", expired=True)
    pki.identity_file("id", "passphrase")   # chain + encrypted key in one PEM
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    cert_file: str          # the certificate only
    key_file: str           # the unencrypted key only
    combined_file: str      # certificate followed by its key
    common_name: str


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key, passphrase: str | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class TestPki:
    __test__ = False        # not a pytest class

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.ca_key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("qpopper-py test CA")).issuer_name(_name("qpopper-py test CA"))
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(self.ca_key, hashes.SHA256()))
        self.ca_file = self._write("ca.pem", self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        return path

    def _server_cert(self, key, common_name: str, *, expired: bool = False):
        now = datetime.datetime.now(datetime.timezone.utc)
        before, after = ((now - 10 * DAY, now - DAY) if expired else (now - DAY, now + 30 * DAY))
        return (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(before).not_valid_after(after)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self.ca_key, hashes.SHA256()))

    def server(self, name: str, *, expired: bool = False, common_name: str | None = None
               ) -> Identity:
        key = _key()
        common_name = common_name or f"{name}.qpopper-test"
        cert_pem = self._server_cert(key, common_name, expired=expired).public_bytes(
            serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        return Identity(self._write(f"{name}.crt", cert_pem), self._write(f"{name}.key", key_pem),
                        self._write(f"{name}.pem", cert_pem + key_pem), common_name)

    def identity_file(self, name: str, passphrase: str) -> str:
        """SSL Plus style: the certificate and its key encrypted with `passphrase`, one file."""
        key = _key()
        cert_pem = self._server_cert(key, f"{name}.qpopper-test").public_bytes(
            serialization.Encoding.PEM)
        return self._write(f"{name}.pem", cert_pem + _key_pem(key, passphrase))

    def stray_key(self, name: str) -> str:
        """A key that belongs to no certificate."""
        return self._write(f"{name}.key", _key_pem(_key()))
