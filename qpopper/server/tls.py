"""TLS with pyOpenSSL: the server context built from the tls-* options, and the TLS byte channel
a session switches to (implicit TLS on port 995, or after STLS).

The master never reads the certificate or the key (docs/privsep.md, "The TLS key"): at
start-up and on HUP it snapshots the files (TlsIdentity) and checks them by building a
context in a throwaway child, so every mistake in the certificate set-up is a one-line
TlsSetupError at start-up, never a failed handshake at the first client. The master also
makes the context's settings once (a template without identity); the pre-login process of
each connection adds the certificate and key to its own copy when it needs TLS. Session
tickets are off, so TLS sessions are not resumed across connections.

Modern by default (RFC 8996, RFC 9325; docs/internals.md, "TLS"):
- TLS 1.2 and 1.3 only. tls-version keeps Qpopper's values: SSLv2, SSLv3 and TLSv1 are raised
  to the minimum with a warning; default/SSLv23/all mean "every version from the minimum".
- TLS 1.2 offers only ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305);
  TLS 1.3 suites are OpenSSL's (all AEAD). tls-cipher-list replaces the TLS 1.2 list.
- tls-min-version TLSv1 / TLSv1.1 (an extension) re-admits clients that cannot do better. It
  is unsafe (RFC 8996) and logged as such; it also lowers OpenSSL's security level, without
  which OpenSSL 3 would refuse those versions anyway.

Certificates, as in Qpopper's manual: tls-server-cert-file (the chain, which may also hold the
key), tls-private-key-file (a separate unencrypted key), tls-identity-file + tls-passphrase
(SSL Plus' identity file, now a PEM file with the chain and an encrypted key). The passphrase
also opens an encrypted key in the other two files.

The session channel works through memory BIOs: the raw descriptors keep their non-blocking
reads and writes with the session's timeout and hangup handling (channel.Channel), and inetd
mode works on any descriptor pair.

After the handshake the channel names its channel bindings (TlsChannel.channel_bindings), the
plain bytes SCRAM-*-PLUS (auth/sasl.py) ties a login to this TLS connection with:
`tls-exporter` (RFC 9266) on TLS 1.3, and none on TLS 1.2. TLS 1.2's `tls-unique` (RFC 5929)
and exporter are safe only with the Extended Master Secret (RFC 7627: without it a man in the
middle can make two connections share them through resumption), and pyOpenSSL cannot say
whether EMS was negotiated; so TLS 1.2 clients get the SCRAM mechanisms without -PLUS.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import importlib
import os
import re
import syslog
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
import OpenSSL
from OpenSSL import SSL, crypto

from qpopper import limits
from qpopper.files import open_regular_nonblocking, who_else_can_read

# Imported now, not lazily at the first key load: the pre-login process loads the key inside
# its empty chroot, where no module can be imported any more (Debian's cryptography 38 imports
# its backend inside load_pem_private_key).
importlib.import_module("cryptography.hazmat.backends.openssl")

# pyOpenSSL 24.3+ takes cryptography's certificates and keys (its own are deprecated there);
# Debian 12's python3-openssl 23.0 takes only its own X509 and PKey.
TAKES_CRYPTOGRAPHY_OBJECTS = tuple(map(int, OpenSSL.__version__.split(".")[:2])) >= (24, 3)

MODERN_CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""RFC 9325 §4.2: ECDHE with AEAD only, for TLS 1.2 (TLS 1.3 suites are always AEAD)."""

LEGACY_CIPHERS_EXTRA = "ECDHE+AES:@SECLEVEL=0"
"""Added when tls-min-version admits TLS 1.0/1.1, which have no AEAD suites. SECLEVEL 0:
OpenSSL 3 refuses the SHA-1 signatures those versions need at any higher level."""

MIN_VERSIONS = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}
SAFE_MIN_VERSION = "TLSv1.2"
OBSOLETE_TLS_VERSIONS = ("SSLv2", "SSLv3", "TLSv1")
"""tls-version values that named a single obsolete protocol (Qpopper's tls-version)."""

BASE_OPTIONS = (SSL.OP_NO_COMPRESSION            # CRIME
                | SSL.OP_CIPHER_SERVER_PREFERENCE
                | SSL.OP_NO_RENEGOTIATION
                # no session tickets: their key would be made in the master's template context
                # and so sit in every user session's memory (docs/privsep.md, "The TLS key")
                | SSL.OP_NO_TICKET)

_PEM_KEY_RE = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----",
                         re.S)


class TlsSetupError(Exception):
    """The TLS configuration cannot work: one readable line for the administrator."""


@dataclass(frozen=True)
class ServerTls:
    """A built context, and its description for the log."""

    context: SSL.Context
    description: str


def tls_wanted(cfg) -> bool:
    """Does this configuration serve TLS anywhere (STLS, alternate-port, or a tls-listen port)?"""
    return (cfg.tls_support in ("stls", "alternate-port")
            or bool(cfg.tls_listen))


def _build(cfg, read, log=None) -> ServerTls:
    """The context, with every check of the certificate and key (TlsSetupError)."""
    context, min_name = _context(cfg, log)
    chain, key, cert_path, key_path = _load_identity(cfg, read)
    _check_validity(chain[0], f"{_identity_paths(cfg)[0][1]} {cert_path}")
    certs = chain if TAKES_CRYPTOGRAPHY_OBJECTS else [crypto.X509.from_cryptography(cert)
                                                      for cert in chain]
    for n, cert in enumerate(certs):
        (context.add_extra_chain_cert if n else context.use_certificate)(cert)
    try:
        context.use_privatekey(key if TAKES_CRYPTOGRAPHY_OBJECTS
                               else crypto.PKey.from_cryptography_key(key))
        context.check_privatekey()
    except (SSL.Error, crypto.Error, TypeError):
        (_, cert_option), *rest = _identity_paths(cfg)
        key_option = rest[0][1] if rest else cert_option
        raise TlsSetupError(f"{key_option} {key_path}: the private key does not match the "
                            f"certificate in {cert_option} {cert_path}") from None
    subject = chain[0].subject.rfc4514_string()
    return ServerTls(context, f"{subject} from {cert_path}, {min_name} and later")


def _context(cfg, log=None) -> tuple[SSL.Context, str]:
    """A server context with the tls-* settings, no identity yet; (context, minimum version)."""
    warn = log or (lambda priority, text: None)
    min_name = _effective_min_version(cfg, warn)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(MIN_VERSIONS[min_name])
    options = BASE_OPTIONS | int(cfg.tls_options or 0)
    if cfg.tls_workarounds:
        options |= SSL.OP_ALL
    context.set_options(options)
    ciphers = _cipher_list(cfg, min_name)
    try:
        context.set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeError):
        raise TlsSetupError(f"tls-cipher-list {cfg.tls_cipher_list or ciphers!r} selects no "
                            f"usable cipher") from None
    return context, min_name


class TlsIdentity:
    """The certificate and key files, opened (as root) but not read: what the master and the
    monitors hold (docs/privsep.md, "The TLS key"). Only the process that does handshakes —
    the unprivileged pre-login process — reads them, with `build()`; the master checks them
    at start-up and HUP in a throwaway child (`open_server_tls`). So the key never enters
    the memory of the master, of a monitor, or of a user session forked from one."""

    def __init__(self, cfg, fds: dict[str, int], description: str = ""):
        self.cfg = cfg
        self.fds = fds                   # path -> descriptor (O_RDONLY, close-on-exec)
        self.description = description
        self.template: SSL.Context | None = None   # the settings, never an identity here

    @classmethod
    def open(cls, cfg) -> "TlsIdentity":
        fds: dict[str, int] = {}
        try:
            for path, option in _identity_paths(cfg):
                if path not in fds:
                    try:
                        fds[path] = _snapshot(path)
                    except OSError as exc:
                        raise TlsSetupError(f"{option} {path}: {exc.strerror or exc}") from None
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return cls(cfg, fds)

    def build(self, log=None) -> ServerTls:
        """The context, from the snapshot the master checked (open_server_tls), loaded by
        OpenSSL directly: ~0.1 ms per connection, where the checks (cryptography's RSA key
        validation) cost ~35 ms for a 2048-bit key. TlsSetupError if it cannot be loaded."""
        (cert_path, _), *rest = _identity_paths(self.cfg)
        key_path = rest[0][0] if rest else cert_path
        # the master's template: this process's copy is the one that gets the identity
        context = self.template or _context(self.cfg)[0]
        passphrase = self.cfg.tls_passphrase.encode() if self.cfg.tls_passphrase else None
        try:
            blocks = _PEM_CERT_RE.findall(_pread_all(self.fds[cert_path]))
            pem_key = _PEM_KEY_RE.search(_pread_all(self.fds[key_path])).group(0)
            if TAKES_CRYPTOGRAPHY_OBJECTS:      # checked by the master: no RSA validation
                chain = [x509.load_pem_x509_certificate(block) for block in blocks]
                key = _checked_key(pem_key, passphrase)
            else:
                chain = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
                key = crypto.load_privatekey(crypto.FILETYPE_PEM, pem_key, passphrase=passphrase)
            for n, cert in enumerate(chain):
                (context.add_extra_chain_cert if n else context.use_certificate)(cert)
            context.use_privatekey(key)
            context.check_privatekey()
        except (OSError, KeyError, IndexError, AttributeError, TypeError, ValueError,
                SSL.Error, crypto.Error) as exc:
            raise TlsSetupError(f"{cert_path}: the checked certificate cannot be loaded now "
                                f"({type(exc).__name__})") from None
        return ServerTls(context, self.description)

    def check(self, log=None) -> ServerTls:
        """The context, with every check (build_server_tls's, from the snapshot)."""
        def read(path: str, option: str) -> bytes:
            fd = self.fds.get(path)
            if fd is None:
                raise TlsSetupError(f"{option} {path}: not opened")
            try:
                return _pread_all(fd)
            except OSError as exc:
                raise TlsSetupError(f"{option} {path}: {exc.strerror or exc}") from None
        return _build(self.cfg, read, log)

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}


def open_server_tls(cfg, log=None) -> TlsIdentity | None:
    """The TLS identity for a server, checked, or None when no TLS is configured. The check
    builds a context in a forked child, so this process never holds the key; its one-line
    verdict comes back through a pipe (TlsSetupError: one line)."""
    if not tls_wanted(cfg):
        return None
    identity = TlsIdentity.open(cfg)
    try:
        identity.description = _check_in_child(identity, log)
    except BaseException:
        identity.close()
        raise
    # The context's settings, without the identity, made here once: OpenSSL's one-time set-up
    # (configuration, providers, cipher lists) is not repeated in every pre-login process,
    # which only adds the certificate and key to its own copy (build).
    identity.template = _context(cfg)[0]
    return identity


def _checked_key(pem_key: bytes, passphrase: bytes | None):
    """The key the master checked, without the RSA validation again; a passphrase given for
    a clear key is not used, as the master's check (_load_identity) allows."""
    try:
        return serialization.load_pem_private_key(pem_key, passphrase,
                                                  unsafe_skip_rsa_key_validation=True)
    except TypeError:
        if passphrase is None:
            raise
        return serialization.load_pem_private_key(pem_key, None,
                                                  unsafe_skip_rsa_key_validation=True)


def _check_in_child(identity: TlsIdentity, log) -> str:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:                                            # the throwaway checker
        status = 1
        try:
            os.close(read_end)
            try:
                verdict = "ok " + identity.check(log).description
                status = 0
            except TlsSetupError as exc:
                verdict = "error " + str(exc)
            os.write(write_end, verdict.encode("utf-8", "replace")[:4000])
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            verdict = pipe.read().decode("utf-8", "replace")
    finally:
        os.waitpid(pid, 0)
    kind, _, text = verdict.partition(" ")
    if kind != "ok":
        raise TlsSetupError(text or "checking the certificate and key failed")
    return text


def _snapshot(path: str) -> int:
    """A sealed in-memory copy of the file, made by the kernel (sendfile into a memfd): the
    identity stays as it was at start-up or HUP however the file is rewritten later, and the
    bytes never pass through this process's memory. A FIFO put in the file's place is refused
    at once, not waited on in open(2) (files.open_regular_nonblocking: at a reload, by the
    master, which would accept no one meanwhile); a file larger than MAX_TLS_FILE_OCTETS is
    refused (EFBIG: the caller names the option and the file)."""
    fd = open_regular_nonblocking(path)
    try:
        size = os.fstat(fd).st_size
        if size > limits.MAX_TLS_FILE_OCTETS:
            raise OSError(errno.EFBIG, f"{size} octets, more than a certificate chain or key "
                                       f"needs (at most {limits.MAX_TLS_FILE_OCTETS})")
        copy = os.memfd_create("qpopper-tls-identity", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            offset = 0
            while offset < size:
                sent = os.sendfile(copy, fd, offset, size - offset)
                if sent == 0:
                    break
                offset += sent
            fcntl.fcntl(copy, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                        | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        except BaseException:
            os.close(copy)
            raise
        return copy
    finally:
        os.close(fd)


def _pread_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _effective_min_version(cfg, warn) -> str:
    min_name = cfg.tls_min_version or SAFE_MIN_VERSION
    if cfg.tls_version in OBSOLETE_TLS_VERSIONS:
        warn(syslog.LOG_WARNING,
             f"tls-version {cfg.tls_version} is obsolete and unsafe; using {min_name} and later "
             f"instead (tls-min-version)")
    if MIN_VERSIONS[min_name] < MIN_VERSIONS[SAFE_MIN_VERSION]:
        warn(syslog.LOG_WARNING,
             f"tls-min-version {min_name} admits TLS versions RFC 8996 deprecated: unsafe, "
             f"only for clients that cannot do TLS 1.2")
    return min_name


def _cipher_list(cfg, min_name: str) -> str:
    legacy = MIN_VERSIONS[min_name] < SSL.TLS1_2_VERSION
    if cfg.tls_cipher_list:
        ciphers = cfg.tls_cipher_list
        if legacy and "@SECLEVEL" not in ciphers:
            ciphers += ":@SECLEVEL=0"
        return ciphers
    return f"{MODERN_CIPHERS_TLS12}:{LEGACY_CIPHERS_EXTRA}" if legacy else MODERN_CIPHERS_TLS12


# --- the certificate and the key --------------------------------------------------------------
def _identity_paths(cfg) -> list[tuple[str, str]]:
    """(path, option) of each file the identity is read from: the certificate (or identity)
    file, then the key file when it is a separate one."""
    if cfg.tls_server_cert_file:
        cert = (cfg.tls_server_cert_file, "tls-server-cert-file")
    elif cfg.tls_identity_file:
        cert = (cfg.tls_identity_file, "tls-identity-file")
    else:
        wanted_by = (f"tls-support {cfg.tls_support}" if cfg.tls_support != "default"
                     else "tls-listen")
        raise TlsSetupError(f"{wanted_by} needs a certificate: set tls-server-cert-file (or "
                            f"tls-identity-file)")
    if cfg.tls_private_key_file and cfg.tls_private_key_file != cert[0]:
        return [cert, (cfg.tls_private_key_file, "tls-private-key-file")]
    return [cert]


def warn_of_a_readable_key(cfg, log) -> None:
    """Warn of a private key someone other than root can read (files.who_else_can_read: a
    non-root owner, every local user through the directories above it, another hard link; a
    key in a 0700 directory of root's is safe whatever its own mode). Start-up, reload and
    --check-config say it; it does not stop the server. (A readable tls-passphrase:
    preflight's own warning, by the same rule.)"""
    paths = _identity_paths(cfg)
    key_path = paths[1][0] if len(paths) > 1 else paths[0][0]
    why = who_else_can_read(key_path)
    if why is not None:
        log(syslog.LOG_WARNING, f"the TLS private key in {key_path}: {why}; make it a file of "
                                f"root's that others cannot read (chown root, chmod o-r)")


def _load_identity(cfg, read):
    """(certificate chain, private key, certificate path, key path) from the options;
    `read(path, option)` gives a file's bytes."""
    (cert_path, option), *_ = _identity_paths(cfg)
    cert_data = read(cert_path, option)
    try:
        chain = _pem_certificates(cert_data)
    except ValueError:
        chain = []
    if not chain:
        raise TlsSetupError(f"{option} {cert_path}: no PEM certificate in it")
    key_path = cfg.tls_private_key_file or cert_path
    key_where = f"{'tls-private-key-file' if key_path != cert_path else option} {key_path}"
    key_data = (cert_data if key_path == cert_path
                else read(key_path, "tls-private-key-file"))
    match = _PEM_KEY_RE.search(key_data)
    if match is None:
        hint = "" if cfg.tls_private_key_file else " (set tls-private-key-file)"
        raise TlsSetupError(f"{key_where}: no PEM private key in it{hint}")
    passphrase = cfg.tls_passphrase.encode() if cfg.tls_passphrase else None
    try:
        key = serialization.load_pem_private_key(match.group(0), password=passphrase)
    except TypeError:
        # encrypted without a passphrase, or a passphrase given for a clear key
        if passphrase is None:
            raise TlsSetupError(f"{key_where}: the private key is encrypted; set "
                                f"tls-passphrase") from None
        key = serialization.load_pem_private_key(match.group(0), password=None)
    except ValueError:
        if passphrase is not None:
            raise TlsSetupError(f"{key_where}: cannot decrypt the private key with "
                                f"tls-passphrase (wrong passphrase?)") from None
        raise TlsSetupError(f"{key_where}: the private key cannot be read") from None
    return chain, key, cert_path, key_path


def _check_validity(cert: x509.Certificate, where: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after, not_before = _utc(cert, "not_valid_after"), _utc(cert, "not_valid_before")
    if not_after < now:
        raise TlsSetupError(f"{where}: the certificate expired on "
                            f"{not_after:%Y-%m-%d %H:%M} UTC")
    if not_before > now:
        raise TlsSetupError(f"{where}: the certificate is not valid before "
                            f"{not_before:%Y-%m-%d %H:%M} UTC")


# Debian 12's python3-cryptography is 38 (the packaged server runs on it): it lacks
# x509.load_pem_x509_certificates (39) and Certificate.not_valid_*_utc (42).
_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def _pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in order (ValueError for a malformed one)."""
    return [x509.load_pem_x509_certificate(block) for block in _PEM_CERT_RE.findall(data)]


def _utc(cert: x509.Certificate, name: str) -> datetime.datetime:
    aware = getattr(cert, name + "_utc", None)
    if aware is not None:
        return aware
    return getattr(cert, name).replace(tzinfo=datetime.timezone.utc)
