"""USER/PASS through PAM (python-pam), with account management.

Runs as root, in the session child, before privileges are dropped: pam_unix reads /etc/shadow.

python-pam's `PamAuthenticator.authenticate()` runs pam_start → pam_authenticate →
pam_acct_mgmt (→ pam_setcred, which we skip: a POP session establishes no credentials) →
pam_end, and leaves the PAM return code in `.code`. We use that public flow and only hook the
instance's own `pam_authenticate` binding (python-pam keeps the libpam functions as per-instance
attributes for exactly this) to set PAM_RHOST first, so pam_unix's failure lines and
pam_access rules see the client address, and, for APOP, to replace the password step by the
already-verified digest so that only pam_acct_mgmt decides.

poppassd changes passwords with `change_password`: pam_chauthtok, which python-pam does not
bind. It reuses python-pam's libpam bindings (pam_start, pam_set_item, pam_strerror,
pam_end, calloc) and its ctypes structures, binds pam_chauthtok itself, and brings the one
thing python-pam's conversation cannot do: answer several prompts with different passwords.

The password is handed to libpam and to nothing else: it is never logged, never put in an
exception, and the result carries only PAM's code and reason.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass

import pam as python_pam
import pam.__internals as python_pam_internals
from pam.__internals import PamConv, PamHandle, PamResponse, conv_func

from qpopper.auth import pam_delay

# PAM return codes we tell apart (Linux-PAM's _pam_types.h, re-exported by python-pam).
PAM_SUCCESS = python_pam.PAM_SUCCESS
PAM_ACCT_EXPIRED = python_pam.PAM_ACCT_EXPIRED            # account expired (chage -E / usermod -e)
PAM_NEW_AUTHTOK_REQD = python_pam.PAM_NEW_AUTHTOK_REQD    # password expired (chage -d 0, max age)
PAM_AUTHTOK_EXPIRED = python_pam.PAM_AUTHTOK_EXPIRED      # ... and past its inactivity period
PAM_RHOST = python_pam.PAM_RHOST
PAM_FAIL_DELAY = 10                                       # _pam_types.h: the delay function
PAM_AUTHTOK_ERR = python_pam.PAM_AUTHTOK_ERR              # a password module refused the new one
PAM_MAXTRIES = python_pam.PAM_MAXTRIES                    # ... each time it asked (pwquality retry=N)

NEW_PASSWORD_REFUSED = frozenset({PAM_AUTHTOK_ERR, PAM_MAXTRIES})
"""change_password's codes for "the password stack will not take this new password"
(pam_pwquality, pam_pwhistory, pam_deny): the user may pick another."""

LIBPAM = "libpam.so.0"
"""Linux-PAM's soname: already loaded by python-pam, so dlopen only finds it again."""

OLD_PASSWORD_PROMPTS = ("current", "old")
"""A hidden prompt naming one of these asks for the old password (pam_unix's "Current
password: "); every other hidden prompt asks for the new one ("New password: ", "Retype new
password: ")."""

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
    password_code: int | None = None
    """What the password step alone (pam_authenticate) said, when it ran: all the
    authentication cache may remember (docs/auth-cache.md); acct_mgmt's say is never kept.
    On a cache hit, the remembered PAM_SUCCESS."""
    fail_delay_s: float = 0.0
    """The failure delay the stack asked for at the password step (pam_unix's 2 s unless
    nodelay, pam_faildelay's), as libpam drew it for this attempt; 0 when the step did not
    run. Waited here when the step failed. After a right password that the account step
    refused, a caller that answers the refusal as a wrong password waits it first, as a
    wrong password waited it inside PAM
    (docs/operations.md, "An expired account or password");
    the authentication cache keeps its base (fail_delay_base_us), to draw it again."""
    password_step_s: float = 0.0
    """How long the password step itself took (pam_authenticate: pam_unix's yescrypt, a
    directory's bind), without the failure delay, which qpopper waits after it; 0 when the
    step did not run. The authentication cache keeps it with the verdict and waits it again
    before a refusal answered from the cache, so that refusal costs what PAM's does
    (docs/auth-cache.md, "Timing")."""
    account_step_ran: bool = False
    """pam_acct_mgmt was asked (through qpopper's hook): its code is the account step's."""
    fail_delay_base_us: int | None = None
    """The base delay libpam drew fail_delay_s from (pam_delay.base_of), when the password
    step ran and its draw is libpam 1.5's: the authentication cache keeps it to draw the
    delay again in the second of a refusal it answers; None otherwise."""

    @property
    def system_error(self) -> bool:
        return self.code in SYSTEM_ERRORS

    @property
    def owed_delay_s(self) -> float:
        """What a refusal of this attempt answered as a wrong password still has to wait to
        take as long as one: the drawn failure delay when the password step said yes (a
        wrong password waited it inside PAM); 0 when it said no (waited already) or did
        not run."""
        return self.fail_delay_s if self.password_code == PAM_SUCCESS else 0.0


BYPASSED_WRAPPER = ("python-pam did not call pam_authenticate and pam_acct_mgmt through "
                    "qpopper's hooks (an unsupported python-pam version)")

_DELAY_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
"""void (*)(int status, unsigned usec, void *appdata): pam_fail_delay(3)'s PAM_FAIL_DELAY."""


def _with_rhost(authenticator, rhost: str | None, replace_auth_step: bool,
                account_answer: int | None = None) -> dict:
    """Wrap the instance's pam_authenticate binding: set PAM_RHOST, then authenticate, and
    wait the stack's failure delay when it fails, as libpam would.

    With `replace_auth_step` the password step reports success without asking any module:
    used after APOP has proved the user's secret, so the PAM stack only runs pam_acct_mgmt.
    With `account_answer` the account step reports that code without asking any module: it
    has just been asked (password_cache.pam_or_cached). Returns a dict that gets the
    password step's own code ("code"), its own time without the failure delay ("step_s"),
    the wall-clock second around it ("second", "second_after") and the failure delay libpam
    drew for it ("fail_delay_s", "fail_delay_us") once it has run.
    """
    real_authenticate = authenticator.pam_authenticate
    real_start, real_account_step = authenticator.pam_start, authenticator.pam_acct_mgmt
    set_item = authenticator.pam_set_item
    asked: dict[str, int | float] = {}

    def pam_start(*args):
        code = real_start(*args)
        asked["started"] = code == PAM_SUCCESS
        return code

    def pam_acct_mgmt(handle, flags):
        asked["account_step"] = True
        if account_answer is not None:
            return account_answer
        return real_account_step(handle, flags)

    def note_delay(_status, usec, _appdata):
        asked["fail_delay_us"] = usec
        asked["fail_delay_s"] = usec / 1e6

    delay_function = _DELAY_FUNCTION(note_delay)

    def pam_authenticate(handle, flags):
        asked["through_wrapper"] = True
        _set_rhost(set_item, handle, rhost)
        if replace_auth_step:
            return PAM_SUCCESS
        # libpam then hands its failure delay to note_delay, after a success too, instead
        # of waiting it itself: the wait is ours, below, and known for a later refusal.
        set_item(handle, PAM_FAIL_DELAY, ctypes.cast(delay_function, ctypes.c_void_p))
        started, asked["second"] = time.monotonic(), pam_delay.wall_second()
        asked["code"] = code = real_authenticate(handle, flags)
        asked["step_s"] = time.monotonic() - started
        asked["second_after"] = pam_delay.wall_second()
        if code != PAM_SUCCESS:
            time.sleep(asked.get("fail_delay_s", 0.0))
        return code

    authenticator.pam_authenticate = pam_authenticate
    authenticator.pam_start, authenticator.pam_acct_mgmt = pam_start, pam_acct_mgmt
    return asked


def _bypassed(asked: dict, code: int) -> bool:
    """Did python-pam run PAM otherwise than through the hooks (an unsupported version)?
    A yes needs both steps through them (the password step's hook: PAM_RHOST, the failure
    delay, APOP's replaced step; the account step: an expired account); any other answer
    of a transaction that started needs the password step's (a refusal owes its delay)."""
    if code in (PAM_SUCCESS, PAM_NEW_AUTHTOK_REQD):
        return not (asked.get("through_wrapper") and asked.get("account_step"))
    return bool(asked.get("started")) and not asked.get("through_wrapper") \
        and code not in SYSTEM_ERRORS


_found_libraries: dict[str, str] = {}
"""find_library's answers in this process (and, inherited, in its forks): see below."""


def _find_library_once(name: str) -> str | None:
    """ctypes.util.find_library, each name's answer kept for the life of the process. A name
    not found is looked up again the next time (libpam installed since)."""
    found = _found_libraries.get(name)
    if found is None:
        found = ctypes.util.find_library(name)
        if found:
            _found_libraries[name] = found
    return found


# python-pam finds libpam and libpam_misc with ctypes.util.find_library, which runs
# `/sbin/ldconfig -p`, a fork+exec each: 2.1 once per process (its bindings are the class's),
# 2.0.x (Debian's python3-pampy) in every PamAuthenticator(), that is twice per login. Only
# the lookup is kept: each transaction still constructs its own PamAuthenticator (its own
# handle, conversation, messages and qpopper's hooks), whose CDLL of a soname already loaded
# is dlopen finding it again. Replaced only where python-pam calls ctypes' own function.
if getattr(python_pam_internals, "find_library", None) is ctypes.util.find_library:
    python_pam_internals.find_library = _find_library_once


def preload(service: str | None = None) -> None:
    """Load libpam's bindings now, in the master, before it forks sessions; with `service`,
    also keep that service's modules loaded (pin_modules).

    python-pam binds libpam on the first PamAuthenticator (2.1: once per process; 2.0.x:
    in every instance, from the libraries' names _find_library_once keeps), finding the
    libraries with ctypes.util.find_library, which runs `/sbin/ldconfig -p` (twice). Done in
    the master, every forked session inherits the bindings and the names instead of paying
    two fork+execs per login. A missing libpam is not an error here: each session reports
    it as [SYS/TEMP] when it tries.
    """
    with contextlib.suppress(*_LIBPAM_UNLOADABLE):
        python_pam.PamAuthenticator()
        pam_delay.draws_from_the_second()       # libpam mapped now: asked once, inherited
        if service:
            pin_modules(service)


_pinned: list[ctypes.CDLL] = []
"""References this process holds on the libraries pam_start loaded (pin_modules)."""


def pin_modules(service: str) -> list[str]:
    """Keep the modules of /etc/pam.d/`service` (and the libraries they need) loaded in this
    process, so that a forked session's pam_start finds them mapped and relocated instead of
    loading them again, and its pam_end does not unload them (docs/privsep.md,
    "PAM modules stay loaded in the master"). pam_start loads every module the service's
    four stacks name; nothing is authenticated and no module function runs, only the
    libraries' constructors. A reference is taken on each file it loaded, then pam_end. Called again
    (HUP), it first lets go of what it held, so an upgraded module file is loaded afresh.
    Returns the pinned paths; none when PAM cannot start the service (each login will say)."""
    release_modules()
    authenticator = python_pam.PamAuthenticator()
    before = _mapped_libraries()
    conv = PamConv(conv_func(lambda *_: python_pam.PAM_CONV_ERR), None)
    handle = PamHandle()
    code = authenticator.pam_start(service.encode(), None, ctypes.byref(conv),
                                   ctypes.byref(handle))
    if code != PAM_SUCCESS:
        return []
    try:
        for path in sorted(_mapped_libraries() - before):
            with contextlib.suppress(OSError):   # mapped but not a dlopen'able library
                _pinned.append(ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_NOLOAD))
    finally:
        authenticator.pam_end(handle, code)
    return [lib._name for lib in _pinned]


def release_modules() -> None:
    """Drop pin_modules' references (the libraries unload if nothing else holds them)."""
    while _pinned:
        _ctypes.dlclose(_pinned.pop()._handle)


def _mapped_libraries() -> set[str]:
    """The shared objects mapped into this process (/proc/self/maps)."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)          # address perms offset dev inode path
            if len(fields) == 6 and ".so" in fields[5].rsplit("/", 1)[-1]:
                paths.add(fields[5].rstrip("\n"))
    return paths


def _run(service: str, user: str, password: str, rhost: str | None, *,
         check_password_expired: bool, account_only: bool,
         account_answer: int | None = None) -> PamResult:
    try:
        authenticator = python_pam.PamAuthenticator()
    except _LIBPAM_UNLOADABLE as exc:
        return PamResult(False, python_pam.PAM_SYSTEM_ERR, f"cannot load libpam: {exc}")
    asked = _with_rhost(authenticator, rhost, replace_auth_step=account_only,
                        account_answer=account_answer)
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
    if _bypassed(asked, code):
        # python-pam is not pinned: a version that called libpam otherwise than through the
        # instance's bindings would drop PAM_RHOST and the failure delay's capture (an
        # expired account's right password answered sooner than a wrong one), run APOP's
        # password step for real, or skip the account step, without a sound. Not trusted:
        # every login fails loudly until qpopper is mended.
        return PamResult(False, python_pam.PAM_SYSTEM_ERR, BYPASSED_WRAPPER)
    said = {"password_code": asked.get("code"),
            "account_step_ran": bool(asked.get("account_step")),
            "fail_delay_s": float(asked.get("fail_delay_s", 0.0)),
            "password_step_s": float(asked.get("step_s", 0.0))}
    if ("code" in asked and asked["second"] == asked["second_after"]
            and pam_delay.draws_from_the_second()):
        # the base libpam drew it from, in the step's second (none when a second turned
        # during the step: libpam's reading of the clock could be either's)
        said["fail_delay_base_us"] = pam_delay.base_of(int(asked.get("fail_delay_us", 0)),
                                                       (int(asked["second"]),))
    if code == PAM_SUCCESS:
        return PamResult(True, code, reason, **said)
    if code == PAM_NEW_AUTHTOK_REQD:
        # pam_unix's acct_mgmt: the password must be changed (chage -d 0, maximum age
        # passed). It comes only after the password (or APOP digest) was verified. Past the
        # inactivity period pam_unix says PAM_AUTHTOK_EXPIRED instead: always refused.
        # check-password-expired (manual: "Disabling prevents Qpopper from checking for
        # expired passwords") decides whether it refuses the login.
        return PamResult(not check_password_expired, code, reason, password_expired=True,
                         **said)
    return PamResult(False, code, reason, **said)


def authenticate(service: str, user: str, password: str, rhost: str | None = None, *,
                 check_password_expired: bool = True,
                 account_answer: int | None = None) -> PamResult:
    """pam_authenticate + pam_acct_mgmt for `user` through /etc/pam.d/`service`.

    Refused when the password is wrong, the user unknown, the account locked (pam_unix: the
    hash starts with `!`) or expired; an expired password refuses only when
    `check_password_expired`. `account_answer`: what pam_acct_mgmt said a moment ago, given
    again instead of asking its modules twice (a directory's timeout twice in an outage).
    """
    return _run(service, user, password, rhost,
                check_password_expired=check_password_expired, account_only=False,
                account_answer=account_answer)


def check_account(service: str, user: str, rhost: str | None = None, *,
                  check_password_expired: bool = True) -> PamResult:
    """pam_acct_mgmt only: may this (already authenticated, e.g. by APOP) user log in now?"""
    return _run(service, user, "", rhost,
                check_password_expired=check_password_expired, account_only=True)


def change_password(service: str, user: str, old_password: str, new_password: str,
                    rhost: str | None = None) -> PamResult:
    """pam_chauthtok for `user` through /etc/pam.d/`service`'s password stack, so its
    modules (pam_pwquality, pam_pwhistory, pam_unix) decide as for passwd(1). The caller has
    already proved the old password with `authenticate`: run as root, pam_unix does not ask
    for it, but a module that does gets it. The text modules show (a pwquality reason) goes
    into `reason`, withheld if it quotes a password."""
    old, new = (password.encode("utf-8", "surrogateescape")
                for password in (old_password, new_password))
    if b"\0" in old + new:
        return PamResult(False, PAM_AUTHTOK_ERR, "NUL byte in a password")
    try:
        authenticator = python_pam.PamAuthenticator()
        chauthtok = _pam_chauthtok()
    except _LIBPAM_UNLOADABLE as exc:
        return PamResult(False, python_pam.PAM_SYSTEM_ERR, f"cannot load libpam: {exc}")
    shown: list[str] = []
    conversation = conv_func(_password_conversation(authenticator.calloc, old, new, shown))
    conv = PamConv(conversation, None)
    handle = PamHandle()
    code = authenticator.pam_start(service.encode(), user.encode(), ctypes.byref(conv),
                                   ctypes.byref(handle))
    if code != PAM_SUCCESS:
        return PamResult(False, code, "pam_start failed")
    try:
        _set_rhost(authenticator.pam_set_item, handle, rhost)
        code = chauthtok(handle, 0)
        reason = authenticator.pam_strerror(handle, code).decode("utf-8", "replace")
    finally:
        authenticator.pam_end(handle, code)
    said = "; ".join(text for text in shown if new_password not in text
                     and old_password not in text)
    return PamResult(code == PAM_SUCCESS, code, f"{reason}: {said}" if said else reason)


def _pam_chauthtok():
    chauthtok = ctypes.CDLL(LIBPAM).pam_chauthtok
    chauthtok.restype = ctypes.c_int
    chauthtok.argtypes = [PamHandle, ctypes.c_int]
    return chauthtok


def _password_conversation(calloc, old: bytes, new: bytes, shown: list[str]):
    """The PAM conversation of a password change: each hidden prompt answered with the old or
    the new password (OLD_PASSWORD_PROMPTS), echoed prompts with nothing, the modules' texts
    kept in `shown`. libpam frees the answers, so they are calloc'd, as python-pam does."""

    def answer_for(style: int, prompt: str) -> bytes | None:
        if style == python_pam.PAM_PROMPT_ECHO_OFF:
            return old if any(word in prompt.lower() for word in OLD_PASSWORD_PROMPTS) else new
        if style in (python_pam.PAM_ERROR_MSG, python_pam.PAM_TEXT_INFO):
            shown.append(prompt.strip())
        return None

    def converse(count, messages, responses, _appdata):
        try:
            answers = ctypes.cast(calloc(count, ctypes.sizeof(PamResponse)),
                                  ctypes.POINTER(PamResponse))
            for i in range(count):
                message = messages[i].contents
                answer = answer_for(message.msg_style,
                                    (message.msg or b"").decode("utf-8", "replace"))
                if answer is not None:
                    copy = calloc(len(answer) + 1, 1)
                    ctypes.memmove(copy, answer, len(answer))
                    answers[i].resp = copy
            responses[0] = answers
            return PAM_SUCCESS
        except Exception:          # nothing may escape into libpam's C stack
            return python_pam.PAM_CONV_ERR

    return converse


def _set_rhost(set_item, handle, rhost: str | None) -> None:
    """PAM_RHOST, the client's address, for the modules (pam_access, the logs)."""
    if rhost:
        # pam_set_item copies string items, so the buffer may die after the call.
        set_item(handle, PAM_RHOST, ctypes.c_char_p(rhost.encode("ascii", "replace")))
