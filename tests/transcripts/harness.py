"""Transcript harness for the POP3 state machine: byte scripts in, exact bytes out.

A transcript reads like the examples of RFC 1939:

    S: +OK Qpopper (version 4.1.0) at mail.example.org starting.  <TS>
    C: USER alice
    S: +OK Password required for alice.

`C:` lines are sent with CRLF, `S:` lines are expected with CRLF, `S:` lines right after a
`C:` line are that command's reply. `<TS>` stands for the session's APOP timestamp (random by
design); everything else is compared byte for byte. Python escapes (`\\x00`) put raw bytes in.

Every session runs the real Protocol against the real Maildrop on an mbox spool written into
pytest's tmp_path; the authenticator is a small in-test implementation of the contract (a
fixed user table, APOP with the real MD5 digest), because the real PAM / pop.auth ones need
root and belong to the server's tests.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from qpopper.auth import Login
from qpopper.config import Config
from qpopper.extensions import standard_extensions
from qpopper.extensions.submit import MtaSubmitter
from qpopper.pop3.auth_state import BAD_DIGEST, BAD_PASSWORD
from qpopper.pop3.protocol import Protocol
from qpopper.pop3.responses import PopError, RespCode

HOST = "mail.example.org"
CLIENT_HOST = "client.example.net"
CLIENT_IP = "127.0.0.1"
PID = 4242
NOW = 1_700_000_000.0            # the session clock: 2023-11-14 22:13:20 UTC
LOCALTIME = email.utils.formatdate(NOW, localtime=True)

PASSWORDS = {"alice": "wonderland", "bob": "pass word with spaces"}
APOP_SECRETS = {"alice": "tanstaaf"}


def apop_digest(timestamp: str, secret: str) -> str:
    return hashlib.md5((timestamp + secret).encode()).hexdigest()


class TableAuthenticator:
    """The authenticator contract (docs/internals.md) over a fixed user table."""

    banner_timestamp = None       # the protocol makes the APOP timestamp

    def __init__(self, home: str, passwords=None, apop_secrets=None, *, apop_enabled=True):
        self.home = home
        self.passwords = dict(PASSWORDS if passwords is None else passwords)
        self.apop_secrets = dict(APOP_SECRETS if apop_secrets is None else apop_secrets)
        self.apop_enabled = apop_enabled
        self.calls: list[tuple] = []      # what the protocol asked, in order
        self.refused_names: list[tuple] = []   # (shown name, mechanism) refused unchecked

    def has_apop_secret(self, user: str) -> bool:
        return user in self.apop_secrets

    def check_password(self, user, password, client_ip, *, client_host=None, tls_active=False):
        self.calls.append(("password", user, password, client_ip, tls_active))
        if self.passwords.get(user) != password:
            raise PopError(BAD_PASSWORD.format(user=user), RespCode.AUTH)
        return self._login(user, "USER")

    def check_apop(self, user, timestamp, digest, client_ip, *, client_host=None):
        self.calls.append(("apop", user, timestamp, digest, client_ip))
        secret = self.apop_secrets.get(user)
        if secret is None or apop_digest(timestamp, secret) != digest:
            raise PopError(BAD_DIGEST, RespCode.AUTH)
        return self._login(user, "APOP")

    def refuse_user_name(self, user, text, client_ip, *, client_host=None, mechanism="USER"):
        self.refused_names.append((user, mechanism))
        raise PopError(text, RespCode.AUTH)

    def _login(self, user, mechanism):
        return Login(user=user, uid=os.getuid(), gid=os.getgid(), home=self.home,
                     mechanism=mechanism)


class Env:
    """What session.py gives the protocol; output and log records are kept for the test."""

    def __init__(self, cfg, authenticator, *, tls_active=False, start_tls=None):
        self.cfg = cfg
        self.out = bytearray()
        self.logs: list[tuple[int, str]] = []
        self.pid = PID
        self.hostname = HOST
        self.client_host = CLIENT_HOST
        self.client_ip = CLIENT_IP
        self.tls_active = tls_active
        self.start_tls = start_tls
        self.authenticator = authenticator
        self.maildrops: list = []
        self.client_gone = False          # a test sets it: a write found the client gone

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.out += data

    def log(self, priority: int, text: str) -> None:
        self.logs.append((priority, text))

    def flush(self) -> None:
        pass                              # write() keeps everything at once

    def open_maildrop(self, login: Login):
        from qpopper.spool.maildrop import Maildrop
        from qpopper.spool.paths import SpoolPaths

        paths = SpoolPaths.for_user(self.cfg, login.user, login.home)
        drop = Maildrop.open(self.cfg, paths, login.user, log=self.log)
        self.maildrops.append(drop)
        return drop

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


# --- scripts ---------------------------------------------------------------------------------------
@dataclass
class Exchange:
    client: bytes | None          # None: the greeting
    server: bytes = b""


def parse(script: str) -> list[Exchange]:
    """`S:`/`C:` lines → exchanges. Leading indentation and blank lines are ignored."""
    exchanges: list[Exchange] = []
    for raw in script.strip("\n").splitlines():
        line = raw.strip()
        if not line:
            continue
        tag, _, text = line.partition(":")
        text = text[1:] if text.startswith(" ") else text
        data = text.encode("utf-8", "surrogateescape") + b"\r\n"
        if tag == "C":
            exchanges.append(Exchange(data))
        elif tag == "S":
            if not exchanges:
                exchanges.append(Exchange(None))
            exchanges[-1].server += data
        else:
            raise ValueError(f"transcript line without S:/C: tag: {raw!r}")
    return exchanges


def crlf_lines(*lines: bytes | str) -> bytes:
    return b"".join((ln.encode() if isinstance(ln, str) else ln) + b"\r\n" for ln in lines)


# --- sessions --------------------------------------------------------------------------------------
@dataclass
class Pop:
    """One connection: protocol, env, and the spool directory it works on."""

    proto: Protocol
    env: Env
    spool_dir: Path

    def greet(self) -> bytes:
        self.proto.greeting()
        return self.env.take()

    def send(self, data: bytes | str) -> bytes:
        """Feed bytes (a str gets CRLF), return everything the protocol wrote in answer."""
        if isinstance(data, str):
            data = data.encode() + b"\r\n"
        self.proto.feed(data)
        return self.env.take()

    def expand(self, expected: bytes) -> bytes:
        timestamp = self.proto.apop_timestamp
        return expected.replace(b"<TS>", timestamp.encode()) if timestamp else expected

    def login(self, user="alice") -> bytes:
        self.greet()
        self.send(f"USER {user}")
        return self.send(f"PASS {PASSWORDS[user]}")


class Spool:
    """Makes sessions on a spool directory in tmp_path (one user file per user)."""

    def __init__(self, base: Path, cfg: Config | None = None, **cfg_changes):
        self.dir = base
        self.dir.mkdir(parents=True, exist_ok=True)
        self.home = base / "home"
        self.home.mkdir(exist_ok=True)
        cfg = cfg or Config.defaults()
        # The table authenticator knows USER/PASS and APOP only: keep AUTH's mechanisms out
        # of these transcripts (sasl-no-dictionary hides all of them); the SASL transcripts
        # (tests/test_sasl*.py) use the real Authenticator and a real pop.auth store.
        cfg_changes = {"sasl_no_dictionary": True, **cfg_changes}
        self.cfg = cfg.replace(spool_dir=str(self.dir), auth_failure_delay=0, **cfg_changes)
        self._sessions: list[Pop] = []

    def write(self, user: str, mbox: bytes) -> Path:
        path = self.dir / user
        path.write_bytes(mbox)
        return path

    def read(self, user: str) -> bytes:
        path = self.dir / user
        return path.read_bytes() if path.exists() else b""

    def session(self, *, authenticator=None, extensions=None, tls_active=False, start_tls=None,
                **cfg_changes) -> Pop:
        cfg = self.cfg.replace(**cfg_changes) if cfg_changes else self.cfg
        auth = authenticator or TableAuthenticator(str(self.home))
        env = Env(cfg, auth, tls_active=tls_active, start_tls=start_tls)
        proto = Protocol(cfg, env, extensions=extensions)
        proto.now = lambda: NOW
        pop = Pop(proto, env, self.dir)
        self._sessions.append(pop)
        return pop

    def close(self) -> None:
        """End what a test left open: release the maildrops' locks and files, no update."""
        for pop in self._sessions:
            for drop in pop.env.maildrops:
                drop.close()
        self._sessions.clear()


def extended_session(spool: Spool, **cfg_changes) -> Pop:
    """A session with the standard extensions plugged in: XTND (MTA submission), MDEF and
    MIME mangling."""
    return spool.session(extensions=standard_extensions(MtaSubmitter()), **cfg_changes)


def extended_login(spool: Spool, **cfg_changes) -> Pop:
    """alice logged in to an extended_session."""
    pop = extended_session(spool, **cfg_changes)
    pop.login()
    return pop


def spool_fixture(**mboxes: bytes):
    """A test module's `spool` fixture: a Spool in tmp_path holding these users' mbox files
    (`spool = spool_fixture(alice=SPOOL)`), closed after the test."""
    @pytest.fixture
    def spool(tmp_path):
        s = Spool(tmp_path / "spool")
        for user, mbox in mboxes.items():
            s.write(user, mbox)
        yield s
        s.close()
    return spool


# --- running transcripts ---------------------------------------------------------------------------
def run_lockstep(pop: Pop, exchanges: list[Exchange]) -> None:
    """One command at a time; each reply must be exactly the expected bytes."""
    for exchange in exchanges:
        if exchange.client is None:
            got = pop.greet()
        else:
            got = pop.send(exchange.client)
        assert got == pop.expand(exchange.server), (
            f"after {exchange.client!r}:\n got      {got!r}\n expected {pop.expand(exchange.server)!r}")


def run_pipelined(pop: Pop, exchanges: list[Exchange], chunks=None) -> None:
    """Every command at once (chunks None), or cut into the given chunk sizes, cycling:
    the output must be the same bytes as in lockstep."""
    assert exchanges[0].client is None, "a pipelined transcript starts with the greeting"
    got = bytearray(pop.greet())
    stream = b"".join(e.client for e in exchanges[1:])
    if chunks is None:
        pop.proto.feed(stream)
    else:
        pos, i = 0, 0
        while pos < len(stream):
            size = chunks[i % len(chunks)]
            pop.proto.feed(stream[pos:pos + size])
            pos += size
            i += 1
    got += pop.env.take()
    expected = pop.expand(b"".join(e.server for e in exchanges))
    assert bytes(got) == expected, f"\n got      {bytes(got)!r}\n expected {expected!r}"


def awkward_chunkings(seed: int = 1939) -> list[list[int]]:
    """Chunk size patterns that cut lines everywhere: byte by byte, between CR and LF, odd
    primes, and a few seeded random patterns."""
    rng = random.Random(seed)
    return [[1], [2], [3], [7], [13, 1, 2], [254, 1],
            *[[rng.randint(1, 40) for _ in range(17)] for _ in range(3)]]
