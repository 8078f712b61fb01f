"""USER/PASS through PAM (python-pam), with account management.

Runs as root, in the session child, before privileges are dropped: pam_unix reads /etc/shadow.

python-pam's `PamAuthenticator.authenticate()` runs pam_start → pam_authenticate →
pam_acct_mgmt (→ pam_setcred, which we skip: a POP session establishes no credentials) →
pam_end, and leaves the PAM return code in `.code`. We use that public flow and only hook the
instance's own `pam_authenticate` binding (python-pam keeps the libpam functions as per-instance
attributes for exactly this) to set PAM_RHOST first, so pam_unix's failure lines and
pam_access rules see the client address, and, for APOP, to replace the password step by the
already-verified digest so that only pam_acct_mgmt decides.

The password is handed to libpam and to nothing else: it is never logged, never put in an
exception, and the result carries only PAM's code and reason.
"""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass

import pam as python_pam

# PAM return codes we tell apart (Linux-PAM's _pam_types.h, re-exported by python-pam).
PAM_SUCCESS = python_pam.PAM_SUCCESS
PAM_ACCT_EXPIRED = python_pam.PAM_ACCT_EXPIRED            # account expired (chage -E / usermod -e)
PAM_NEW_AUTHTOK_REQD = python_pam.PAM_NEW_AUTHTOK_REQD    # password expired (chage -d 0, max age)
PAM_RHOST = python_pam.PAM_RHOST

SYSTEM_ERRORS = frozenset({
    python_pam.PAM_OPEN_ERR, python_pam.PAM_SYMBOL_ERR, python_pam.PAM_SERVICE_ERR,
    python_pam.PAM_SYSTEM_ERR, python_pam.PAM_BUF_ERR, python_pam.PAM_AUTHINFO_UNAVAIL,
    python_pam.PAM_CONV_ERR, python_pam.PAM_ABORT, python_pam.PAM_MODULE_UNKNOWN,
    python_pam.PAM_BAD_ITEM,
})
"""Codes that say "PAM could not decide" (a broken stack, a module that will not load, an
unreachable directory), not "these credentials are wrong": the client gets [SYS/TEMP]."""


_LIBPAM_UNLOADABLE = (OSError, AttributeError, TypeError)
"""What python-pam's first PamAuthenticator() raises when libpam is missing or unloadable."""


@dataclass(frozen=True)
class PamResult:
    """What PAM said. `reason` is libpam's pam_strerror text: for logs, never for clients."""

    ok: bool
    code: int
    reason: str
    password_expired: bool = False   # acct_mgmt's only objection was an expired password

    @property
    def system_error(self) -> bool:
        return self.code in SYSTEM_ERRORS


def _with_rhost(authenticator, rhost: str | None, replace_auth_step: bool):
    """Wrap the instance's pam_authenticate binding: set PAM_RHOST, then authenticate.

    With `replace_auth_step` the password step reports success without asking any module:
    used after APOP has proved the user's secret, so the PAM stack only runs pam_acct_mgmt.
    """
    real_authenticate = authenticator.pam_authenticate
    set_item = authenticator.pam_set_item

    def pam_authenticate(handle, flags):
        if rhost:
            # pam_set_item copies string items, so the buffer may die after the call.
            set_item(handle, PAM_RHOST, ctypes.c_char_p(rhost.encode("ascii", "replace")))
        if replace_auth_step:
            return PAM_SUCCESS
        return real_authenticate(handle, flags)

    authenticator.pam_authenticate = pam_authenticate


def preload() -> None:
    """Load libpam's bindings now, in the master, before it forks sessions.

    python-pam binds libpam once per process, on the first PamAuthenticator, and finds the
    libraries with ctypes.util.find_library, which runs `/sbin/ldconfig -p` (twice). Done in
    the master, every forked session inherits the bindings instead of paying two fork+execs
    per login. A missing libpam is not an error here: each session reports it as
    [SYS/TEMP] when it tries.
    """
    with contextlib.suppress(*_LIBPAM_UNLOADABLE):
        python_pam.PamAuthenticator()


def _run(service: str, user: str, password: str, rhost: str | None, *,
         check_password_expired: bool, account_only: bool) -> PamResult:
    try:
        authenticator = python_pam.PamAuthenticator()
    except _LIBPAM_UNLOADABLE as exc:
        return PamResult(False, python_pam.PAM_SYSTEM_ERR, f"cannot load libpam: {exc}")
    _with_rhost(authenticator, rhost, replace_auth_step=account_only)
    # The client's original bytes (docs/internals.md): a Latin-1 password arrives as
    # surrogate escapes, which python-pam's own str.encode("utf-8") would refuse.
    secret = password.encode("utf-8", "surrogateescape")
    try:
        authenticator.authenticate(user, secret, service=service, resetcreds=False)
    except ValueError:
        # python-pam refuses NUL bytes in user, password or service. The protocol layer
        # already rejects such names; a NUL in a password can never match.
        return PamResult(False, python_pam.PAM_AUTH_ERR, "NUL byte in credentials")
    code = int(authenticator.code)
    reason = authenticator.reason
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    reason = str(reason or "")
    if code == PAM_SUCCESS:
        return PamResult(True, code, reason)
    if code == PAM_NEW_AUTHTOK_REQD:
        # pam_unix's acct_mgmt: the password must be changed (chage -d 0, maximum age
        # passed). It comes only after the password (or APOP digest) was verified. Past the
        # inactivity period pam_unix says PAM_AUTHTOK_EXPIRED instead: always refused.
        # check-password-expired (manual: "Disabling prevents Qpopper from checking for
        # expired passwords") decides whether it refuses the login.
        return PamResult(not check_password_expired, code, reason, password_expired=True)
    return PamResult(False, code, reason)


def authenticate(service: str, user: str, password: str, rhost: str | None = None, *,
                 check_password_expired: bool = True) -> PamResult:
    """pam_authenticate + pam_acct_mgmt for `user` through /etc/pam.d/`service`.

    Refused when the password is wrong, the user unknown, the account locked (pam_unix: the
    hash starts with `!`) or expired; an expired password refuses only when
    `check_password_expired`.
    """
    return _run(service, user, password, rhost,
                check_password_expired=check_password_expired, account_only=False)


def check_account(service: str, user: str, rhost: str | None = None, *,
                  check_password_expired: bool = True) -> PamResult:
    """pam_acct_mgmt only: may this (already authenticated, e.g. by APOP) user log in now?"""
    return _run(service, user, "", rhost,
                check_password_expired=check_password_expired, account_only=True)
