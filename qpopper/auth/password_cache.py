"""The connection's side of the authentication cache (docs/auth-cache.md).

Runs as root, in the monitor's authentication process, around the one PAM call of
USER/PASS, AUTH PLAIN and AUTH LOGIN: policy.Authenticator.check_password calls
pam_or_cached. The cache itself lives in a long-lived root process the master starts
(server/auth_cache.py); the authentication process reaches it through a socket the monitor
inherited from the master. The pre-login process closes it first thing, and the monitor as
soon as it has forked the authentication process.

What is remembered is only what PAM's password step (pam_authenticate) said about one
password for one account, under a key that is a salted scrypt hash:

    key = scrypt(pam-service, user name, uid, shadow stamp, password;
                 salt random per master start)

- the password step's yes: a later login with the same name, uid, shadow stamp and
  password skips pam_authenticate; pam_acct_mgmt (expired account, pam_access, pam_time, an
  expired password) still runs every time, and so do every policy of the authenticator. When
  it does not let the user in, PAM is asked whole, as without the cache (a refusal must take
  what a wrong password takes now);
- its no (PAM_AUTH_ERR, PAM_USER_UNKNOWN only), with the password step's own time and the
  base of the failure delay libpam drew: refused as PAM would, with PAM's reason, after that
  time and the delay libpam would draw in this second (auth/pam_delay.py), and counted,
  delayed and braked as any failure is (the authenticator does that);
- nothing else: system errors, acct_mgmt's refusals, PAM_MAXTRIES, ... are asked afresh.
A login that succeeds from the cache waits nothing.
The uid and the shadow stamp (the account's shadow hash and its last-change day, read with
getspnam; empty for an account without a shadow entry, e.g. from LDAP) are in the key, so that
a name reused for a new account never inherits the old account's password, even with the same
uid, and a changed or locked shadow password no longer matches what was remembered. The cache
process never sees a name or a password, only keys.

A login never depends on the cache: when its process does not answer within
limits.AUTH_CACHE_REPLY_TIMEOUT_S, or its queue is full, PAM is asked.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

from qpopper import limits
from qpopper.auth import pam as pam_auth
from qpopper.auth import pam_delay
from qpopper.server import monitor_wire as wire

SALT_OCTETS = 32
KEY_OCTETS = 32
SCRYPT_COST = {"n": 2 ** 11, "r": 8, "p": 1, "maxmem": 8 * 1024 * 1024}
"""About 4 ms and 2 MiB per key on the bench machine, a tenth of pam_unix's yescrypt: the
cache still saves most of a login's PAM time, while a copy of the cache process's memory
(keys) plus a monitor's (the salt) costs an attacker scrypt, not SHA-256, per guess."""

RIGHT = "right"
"""The verdict for a password the password step accepted."""

MAX_REMEMBERED_DELAY_S = 60.0
"""The largest base of PAM's failure delay a remembered refusal draws from (pam_faildelay's
delay is the administrator's: this only bounds what a corrupt verdict could ask)."""

MAX_REMEMBERED_STEP_S = 30.0
"""The most a remembered refusal waits of the password step's own time: a directory's bind
(pam_ldap's bind_timelimit, 30 s by default) fits; a step that timed out says a system
error, which is never remembered. Only bounds what a corrupt verdict could ask."""

REMEMBERED_REFUSALS = {
    pam_auth.python_pam.PAM_AUTH_ERR: "Authentication failure",
    pam_auth.python_pam.PAM_USER_UNKNOWN: "User not known to the underlying authentication module",
}
"""The password step's answers that mean "not this password" (pam_strerror's texts, which
the log line of a refusal shows whether the answer came from PAM or from the cache)."""


def derive_key(salt: bytes, service: str, user: str, uid: int | None, password: str,
               stamp: bytes = b"") -> bytes:
    """The cache key of one password check: every part length-prefixed, so no two different
    checks share their material. `stamp`: shadow_stamp's (b"": no shadow entry)."""
    parts = (b"qpopper auth cache 2", service.encode("utf-8", "surrogateescape"),
             user.encode("utf-8", "surrogateescape"), str(-1 if uid is None else uid).encode(),
             stamp, password.encode("utf-8", "surrogateescape"))
    material = b"".join(struct.pack(">I", len(part)) + part for part in parts)
    return hashlib.scrypt(material, salt=salt, dklen=KEY_OCTETS, **SCRYPT_COST)


class _Spwd(ctypes.Structure):
    """glibc's struct spwd (shadow.h)."""
    _fields_ = [("sp_namp", ctypes.c_char_p), ("sp_pwdp", ctypes.c_char_p),
                ("sp_lstchg", ctypes.c_long), ("sp_min", ctypes.c_long),
                ("sp_max", ctypes.c_long), ("sp_warn", ctypes.c_long),
                ("sp_inact", ctypes.c_long), ("sp_expire", ctypes.c_long),
                ("sp_flag", ctypes.c_ulong)]


@functools.cache
def _getspnam():
    """libc's getspnam, typed once per process (the lookup runs at every cached login)."""
    getspnam = ctypes.CDLL(None).getspnam        # libc's, through NSS (nsswitch's shadow)
    getspnam.restype = ctypes.POINTER(_Spwd)
    getspnam.argtypes = [ctypes.c_char_p]
    return getspnam


def shadow_stamp(user: str) -> bytes:
    """What changes with each account and each password set
    (docs/auth-cache.md, "What is remembered, and under which key"): the shadow entry's hash
    and last-change day, as one string; b"" when there is no shadow entry (an account from
    LDAP or SSSD, an unknown name, not root). Read as root in the authentication process;
    the spwd module would do the same but is deprecated (it warns)."""
    if "\0" in user:
        return b""
    entry = _getspnam()(user.encode("utf-8", "surrogateescape"))
    if not entry:
        return b""
    spwd = entry.contents
    return (spwd.sp_pwdp or b"") + b"\0" + str(spwd.sp_lstchg).encode()


class Replay(NamedTuple):
    """What PAM's password step cost, kept with a wrong password's verdict: a refusal
    answered from the cache waits the step's time again and a failure delay drawn from the
    same base in its own second, so that it takes as long as PAM's refusal would now."""

    step_s: float
    """The password step's own time (pam.PamResult.password_step_s)."""
    base_us: int
    """The failure delay's base (pam.PamResult.fail_delay_base_us)."""


def verdict_of(result: pam_auth.PamResult) -> str | None:
    """What may be remembered of a PAM answer: RIGHT; a refusal's code with the base of the
    failure delay libpam drew for it and the password step's own time, both in whole
    microseconds, "7 2000000 47210", which a refusal answered from it waits again
    (pam_or_cached); or None. A refusal whose delay's base is not known (a libpam that
    draws otherwise) is not remembered: replaying its draw would not be libpam's now; nor one
    whose step took longer than a replay may wait (MAX_REMEMBERED_STEP_S)."""
    if result.password_code == pam_auth.PAM_SUCCESS:
        return RIGHT
    if (result.password_code in REMEMBERED_REFUSALS and result.fail_delay_base_us is not None
            and result.password_step_s <= MAX_REMEMBERED_STEP_S):
        return (f"{result.password_code} {result.fail_delay_base_us} "
                f"{_microseconds(result.password_step_s)}")
    return None


def _microseconds(seconds: float) -> int:
    return max(0, round(seconds * 1e6)) if math.isfinite(seconds) else 0


def is_right(verdict: str | None) -> bool:
    """Does `verdict` say right (for a lookup, and for the cache process's choice of TTL)?"""
    return verdict == RIGHT


def stored_count(text: str) -> int | None:
    """A count the cache stored as text (a time in ns or µs, a PAM code): up to 20 ASCII
    digits, else None (int() would take other digits, and any length)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def _replay(base_us: str, step_us: str) -> Replay | None:
    """A verdict's two times, each within its cap; None unless both are stored counts."""
    base, step = stored_count(base_us), stored_count(step_us)
    if base is None or step is None:
        return None
    return Replay(step_s=min(step / 1e6, MAX_REMEMBERED_STEP_S),
                  base_us=min(base, int(MAX_REMEMBERED_DELAY_S * 1e6)))


def remembered_refusal(verdict: str | None) -> tuple[int, Replay] | None:
    """(code, what to replay) of a remembered refusal (verdict_of); None for anything else,
    and for a verdict not in verdict_of's form (a miss: PAM is asked)."""
    fields = (verdict or "").split(" ")
    if len(fields) != 3:
        return None
    code, replay = stored_count(fields[0]), _replay(fields[1], fields[2])
    if code not in REMEMBERED_REFUSALS or replay is None:
        return None
    return code, replay


@dataclass(frozen=True)
class PasswordCache:
    """A monitor's handle on the cache process. `fd`: the request end of the master's socket
    pair, as a bare descriptor (the monitor closes it by number before it forks the pre-login
    process and before it becomes the user session: no socket object may close it again
    later, when the number may be someone else's). `generation`: the master's reload count
    when it forked this monitor; the cache process ignores other generations, so nothing
    learnt before a HUP outlives it."""

    fd: int
    salt: bytes
    generation: int

    def lookup(self, key: bytes) -> str | None:
        """The verdict remembered for `key`, or None (not remembered, or no answer in time)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            frame = wire.encode(wire.Kind.CACHE_LOOKUP, str(self.generation), key)
            try:
                self._send(frame, [theirs.fileno()])
            finally:
                theirs.close()
            if not select.select([ours], [], [], limits.AUTH_CACHE_REPLY_TIMEOUT_S)[0]:
                return None
            answer = wire.receive(ours, {wire.Kind.CACHE_VERDICT})
        except (OSError, wire.FrameError):
            return None
        finally:
            ours.close()
        verdict = answer.text(0) if answer is not None else ""
        return verdict or None

    def remember(self, key: bytes, verdict: str, asked_at_ns: int) -> None:
        """Tell the cache process; no answer is awaited, and a full queue just drops it."""
        frame = wire.encode(wire.Kind.CACHE_STORE, str(self.generation), key, verdict,
                            str(asked_at_ns))
        try:
            self._send(frame, [])
        except OSError:
            pass

    def _send(self, frame: bytes, fds: list[int]) -> None:
        sock = socket.socket(fileno=self.fd)
        try:
            socket.send_fds(sock, [frame], fds, socket.MSG_DONTWAIT)
        finally:
            sock.detach()


def new_salt() -> bytes:
    return os.urandom(SALT_OCTETS)


def pam_or_cached(cache: PasswordCache | None, service: str, user: str, uid: int | None,
                 password: str, rhost: str | None, *,
                 check_password_expired: bool) -> pam_auth.PamResult:
    """pam_auth.authenticate, or its remembered password step followed by a fresh account
    check (pam_auth.check_account) that lets the user in. `uid`: the account's, None for a
    name NSS does not know."""
    if cache is None:
        return pam_auth.authenticate(service, user, password, rhost,
                                     check_password_expired=check_password_expired)
    key = derive_key(cache.salt, service, user, uid, password, shadow_stamp(user))
    verdict = cache.lookup(key)
    # A name NSS does not know is asked of PAM whole even on a hit: refused "no such user"
    # after a right password, it owes the failure delay that only the password step draws.
    if is_right(verdict) and uid is not None:
        # The password step's yes, remembered: a refusal now is acct_mgmt's, as without
        # the cache (docs/internals.md, "Failures and policy refusals").
        account = pam_auth.check_account(service, user, rhost,
                                         check_password_expired=check_password_expired)
        if account.ok or account.password_expired:
            return replace(account, password_code=pam_auth.PAM_SUCCESS)
        # Refused or undecided, it is answered as a wrong password: PAM is asked whole, as
        # without the cache, so it takes what a wrong password takes now (libpam 1.5 draws
        # the failure delay from the wall-clock second: one remembered from another second
        # stood out beside a guess sent in the same second), and in a whole outage its
        # password step errs as a wrong one's does (docs/auth-cache.md, "Timing"). Its
        # account step is not asked twice: it answers what it just said (when it was asked:
        # a pam_start that failed is no answer of its).
        return _asked_whole(cache, key, service, user, password, rhost, check_password_expired,
                            account_answer=account.code if account.account_step_ran else None)
    refusal = remembered_refusal(verdict)
    if refusal is not None:
        # The password step's time, and the failure delay libpam draws in this second: a
        # remembered wrong password takes what a fresh one takes now.
        code, replay = refusal
        delay_s = pam_delay.drawn_delay_us(pam_delay.wall_second(), replay.base_us) / 1e6
        time.sleep(replay.step_s + delay_s)
        return pam_auth.PamResult(False, code, REMEMBERED_REFUSALS[code], fail_delay_s=delay_s,
                                  password_step_s=replay.step_s,
                                  fail_delay_base_us=replay.base_us)
    return _asked_whole(cache, key, service, user, password, rhost, check_password_expired)


def _asked_whole(cache: PasswordCache, key: bytes, service: str, user: str, password: str,
                 rhost: str | None, check_password_expired: bool, *,
                 account_answer: int | None = None) -> pam_auth.PamResult:
    """pam_auth.authenticate, and what may be remembered of its answer, remembered."""
    asked_at = time.monotonic_ns()
    result = pam_auth.authenticate(service, user, password, rhost,
                                   check_password_expired=check_password_expired,
                                   account_answer=account_answer)
    verdict = verdict_of(result)
    if verdict is not None:
        cache.remember(key, verdict, asked_at)
    return result
