"""The Authenticator's policy checks: the clear-text-password rules, auth-file and
nonauth-file, the shell, the uid block, what PAM said, and the accounts a login maps to
(docs/compatibility.md, "Logins and their failures"; what counts as a failure and what as a
policy refusal: docs/internals.md, "Auth")."""

from __future__ import annotations

import ipaddress
import os
import pwd
import syslog
from typing import NoReturn

from qpopper import limits
from qpopper.files import open_regular_nonblocking
from qpopper.auth import challenges
from qpopper.pop3.responses import PopError, RespCode
from qpopper.auth import Login, is_possible_user_name
from qpopper.auth import pam as pam_auth
from qpopper.auth.sasl import (CLEAR_TEXT_TLS_ONLY, NEEDS_STRONGER_AUTH,
                               stronger_auth_text)


SHELLS_FILE = "/etc/shells"
WILDCARD_SHELL = "/POPPER/ANY/SHELL/"
"""Listed in /etc/shells, it lets every shell through CHECK_SHELL (Qpopper's WILDCARD_SHELL)."""

# Reply texts (docs/compatibility.md, "Logins and their failures"). One text for "no such user" and "wrong password".
BAD_PASSWORD = 'Password supplied for "{user}" is incorrect.'
BAD_DIGEST = challenges.AUTHENTICATION_FAILURE
NO_STORE_SECRET = ('No {mechanism} secret is stored for "{user}"; log in with USER/PASS or '
                   'AUTH PLAIN')
"""A store mechanism for a name without a secret (user-database system): no response code,
since the credentials are not at fault (docs/internals.md, "Store mechanisms")."""
UID_BLOCKED = f"Access is blocked for UIDs below {limits.BLOCKED_UID_MAX}"
PERMISSION_DENIED = "Permission denied."
ACCESS_LIST_UNAVAILABLE = "POP access list not available"
"""-ERR [SYS/PERM] when auth-file or nonauth-file cannot be read: the server's mistake, not
the user's credentials ([AUTH] would make the client ask for the password again)."""
CLEAR_TEXT_LOCAL_ONLY = "Clear text passwords are permitted only from the local host"
PAM_UNAVAILABLE = "Unable to check your credentials now; try again later"
EXPIRED = 'The password of "{user}" has expired'
"""-ERR [AUTH] when PAM's account step says the password must be changed after the credentials
were proved (RFC 3206 names an expired account as an AUTH problem): the one refusal of the
account step that tells whoever proved them, so the user renews instead of retyping; every
other one is answered as a wrong guess (docs/internals.md, "Failures and policy refusals")."""
PASSWORD_EXPIRY_CODES = frozenset({pam_auth.PAM_NEW_AUTHTOK_REQD, pam_auth.PAM_AUTHTOK_EXPIRED})
NO_SHELL = "No user shell defined"
SHELL_NOT_FOUND = '"{user}": shell not found.'

USER_DB_SYSTEM = "system"
USER_DB_POP_AUTH = "pop-auth"


def failure_line(user: str, client_host: str, client_ip: str) -> str:
    """Qpopper's record of a failed login, logged at LOG_NOTICE."""
    return f"[AUTH] Failed attempted login to {user} from host ({client_host}) {client_ip}"


def policy_line(user: str, mechanism: str, client_ip: str, reason: str) -> str:
    """A refusal for policy, not for wrong credentials: not `LOGIN FAILED`, so fail2ban's
    filter does not count it (logged at LOG_NOTICE)."""
    shown = user.replace(",", "?") or "?"
    return (f"LOGIN REFUSED (policy), user={shown}, method={mechanism}, ip=[{client_ip}], "
            f"reason={reason}")


def account_line(user: str, mechanism: str, client_ip: str, reason: str) -> str:
    """Proved credentials that PAM's account step refused (an expired account or password,
    pam_access, pam_time), logged at LOG_NOTICE: why. One answered as a wrong password is
    logged `LOGIN FAILED` too (Brakes.note_failure); an expired password is not."""
    shown = user.replace(",", "?") or "?"
    return (f"LOGIN REFUSED (account), user={shown}, method={mechanism}, ip=[{client_ip}], "
            f"reason={reason}")


def account_undecided_line(service: str) -> str:
    """Logged (LOG_WARNING) when right credentials first find PAM's account step unable to
    decide (Brakes.record_failure marks it)."""
    return (f"PAM's account step (service {service}) cannot decide (its directory down?): "
            f"for {limits.ACCOUNT_UNDECIDED_S} s after the last such login, failed logins are "
            f"answered [SYS/TEMP] as right passwords are")


def store_mechanisms_offered(cfg) -> bool:
    """store-mechanisms: APOP, CRAM-MD5 and SCRAM are offered (when a store exists) if `on`,
    or if `auto` and the store is the user database (docs/internals.md, "Store mechanisms")."""
    setting = cfg.store_mechanisms
    return setting == "on" or (setting == "auto" and cfg.user_database == USER_DB_POP_AUTH)


def is_loopback(client_ip: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped 127.* (clear-text-password=local)."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def open_user_list(path: str):
    """auth-file or nonauth-file, open for reading as text: a FIFO in its place is refused at
    once, not waited on (files.open_regular_nonblocking)."""
    fd = open_regular_nonblocking(path)
    try:
        return open(fd, encoding="utf-8", errors="replace")
    except BaseException:
        os.close(fd)
        raise


def _listed_names(lines) -> set[str]:
    """One name per line, blank lines and #-comments skipped (/etc/shells, auth-file,
    nonauth-file)."""
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def shell_allowed(shell: str, shells_file: str = SHELLS_FILE) -> str | None:
    """CHECK_SHELL: None when the shell may log in, else the refusal text's template.

    Debian's mail-only accounts have /usr/sbin/nologin, which is not in /etc/shells: with
    check-shell on they are refused, as Qpopper refuses them (hence check-shell is off by
    default, like Qpopper's CHECK_SHELL compile switch)."""
    if not shell:
        return NO_SHELL
    try:
        with open(shells_file, encoding="utf-8", errors="replace") as f:
            listed = _listed_names(f)
    except OSError:
        listed = set()
    if shell in listed or WILDCARD_SHELL in listed or WILDCARD_SHELL.rstrip("/") in listed:
        return None
    return SHELL_NOT_FOUND


class PolicyChecks:
    """Part of Authenticator (auth/policy.py): see the module docstring."""

    def _check_proof_policies(self, user, mechanism, host, client_ip, authid, *, store: bool,
                              proved=None, record: bool = True) -> Login:
        if not is_possible_user_name(user):
            self._refuse(user, host, client_ip, BAD_DIGEST, "invalid user name")
        if store and not self.apop_enabled:
            self._refuse_policy(user, client_ip, BAD_DIGEST, f"{mechanism} is not offered "
                                                             f"(store-mechanisms)")
        if store:
            self.store.check_file()        # [SYS/PERM] wrong mode or owner: not an auth failure
        shared_account = store and self.user_database == USER_DB_POP_AUTH
        if store and not shared_account and not self._has_store_secret(user, mechanism):
            # A system user without a secret: say so, so that the user (or a client that
            # tries the next mechanism) turns to the password. With user-database pop-auth
            # a name without a secret is no user at all: a wrong proof below.
            self._refuse_policy(user, client_ip, NO_STORE_SECRET.format(
                mechanism=mechanism.removeprefix("AUTH "), user=user),
                f"no {mechanism} secret in the pop.auth store", code=None)
        if shared_account:
            account = self._store_account(user, host, client_ip)
        else:
            account = self._system_account(user, host, client_ip, BAD_DIGEST)
        # One reply for "not in the store" and "wrong proof": neither reveals which names
        # have secrets (Qpopper said "not authenticated" for the first).
        if proved is not None and not proved():
            self._refuse(user, host, client_ip, BAD_DIGEST,
                         f"wrong {mechanism} proof, or no secret in the pop.auth store")
        self._check_auth_files(user, host, client_ip)      # after the proof: see the docstring
        if self.user_database == USER_DB_SYSTEM or not store:
            # The proof showed the secret; PAM still decides whether the account may log in
            # now (expired account, pam_access or pam_time rules, ...). `usermod -L` locks
            # only the system password, so, as in Qpopper, it does not stop APOP: expire the
            # account (usermod -e 1) or remove the user's secret to stop it.
            result = pam_auth.check_account(self.cfg.pam_service, user, client_ip,
                                            check_password_expired=self._check_password_expired())
            self._check_pam_said_yes(result, user, host, client_ip, BAD_DIGEST,
                                     f"PAM account check ({self.cfg.pam_service})",
                                     proved=True)
            self._note_password_expired(user, result)
            self._check_shell(user, account, host, client_ip)
        return self._success(user, account, mechanism, host, client_ip, authid,
                             shared_account=shared_account, record=record)

    # ---- policies -------------------------------------------------------------------------
    def _check_clear_text_transport(self, user, host, client_ip, tls_active) -> None:
        """clear-text-password never / local / tls: they depend on the
        connection only, the same for every name, so they are checked first."""
        policy = self.cfg.clear_text_password
        if policy == "always":
            return
        if policy == "never":
            # the store's mechanisms, or GSSAPI (the one other that is not clear text)
            text = stronger_auth_text(self.apop_enabled or bool(self.cfg.kerberos),
                                      self.apop_enabled)
            self._refuse_policy(user, client_ip, text, "clear-text-password never")
        if policy == "local" and not is_loopback(client_ip):
            self._refuse_policy(user, client_ip, CLEAR_TEXT_LOCAL_ONLY,
                                "clear-text-password local, client not on loopback")
        if policy in ("tls", "ssl") and not tls_active:
            self._refuse_policy(user, client_ip, CLEAR_TEXT_TLS_ONLY,
                                "clear-text-password tls, session not in TLS")

    def _check_clear_text_for_store_users(self, user, host, client_ip) -> None:
        """clear-text-password default: users with an APOP secret must use it,
        so that their system password is not sent in clear again. (With user-database
        pop-auth the store's secret IS the POP password; there is no other password to
        protect, so `default` lets it through.) Asked only once PAM accepted the password:
        refusing sooner answered at once, and differently, for exactly the names the store
        holds, and so told anyone which names those are (Qpopper refuses first)."""
        if (self.cfg.clear_text_password == "default" and self.user_database == USER_DB_SYSTEM
                and self.apop_enabled and self.store.has_user(user)):
            self._refuse_policy(user, client_ip, NEEDS_STRONGER_AUTH,
                                "clear-text-password default, user is in the APOP database")

    def _check_auth_files(self, user, host, client_ip) -> None:
        """auth-file: only listed users; nonauth-file: listed users refused.
        Asked only after the password or proof was accepted: `Permission denied.` for a
        wrong password would tell which names the lists hold.

        A configured file that cannot be read (missing too) refuses everyone: it is a
        policy we cannot honour. [SYS/PERM], not [AUTH]: the credentials were right, and it
        does not clear without the administrator (RFC 3206); the log says why, and the
        start-up checks refuse such a file (preflight.check_user_lists)."""
        for name, admitted in (("auth-file", True), ("nonauth-file", False)):
            path = self.cfg.get(name)
            if not path:
                continue
            listed = self._read_user_list(path)
            if listed is None:
                self._refuse_policy(user, client_ip, ACCESS_LIST_UNAVAILABLE,
                                    f"{name} {path} unreadable", RespCode.SYS_PERM)
            if (user in listed) != admitted:
                self._refuse_policy(user, client_ip, PERMISSION_DENIED,
                                    f"not listed in auth-file {path}" if admitted
                                    else f"listed in nonauth-file {path}")

    def _read_user_list(self, path: str) -> set[str] | None:
        try:
            with open_user_list(path) as f:
                return _listed_names(f)
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"cannot read user list {path}: {exc.strerror}")
            return None

    def _check_shell(self, user, account: pwd.struct_passwd, host, client_ip) -> None:
        if not self.cfg.check_shell:
            return
        refusal = shell_allowed(account.pw_shell)
        if refusal is not None:
            self._refuse_policy(user, client_ip, refusal.format(user=user),
                                f"shell {account.pw_shell!r} not in {SHELLS_FILE}")

    def _check_pam_said_yes(self, result: pam_auth.PamResult, user, host, client_ip, text,
                            what: str, *, proved: bool = False) -> None:
        """A PAM stack that could not decide is a system failure, not a wrong password;
        a PAM no is refused with `text` (the log says `what` asked and PAM's reason) as a
        failure, unless the credentials were proved (`proved`: a store secret; or PAM's own
        password step said yes) and only the account step refused: then it is logged why,
        and, but for an expired password, answered, waited, braked and logged as a wrong
        guess (docs/internals.md, "Failures and policy refusals")."""
        if result.system_error:
            if proved or result.password_code == pam_auth.PAM_SUCCESS:
                self._account_step_undecided(user, client_ip, result)
            # Else no guess was judged: not braked, not a failed login. But each one may
            # have cost a directory timeout: it counts towards the connection's cap all the
            # same.
            self.failures += 1
            raise PopError(PAM_UNAVAILABLE, RespCode.SYS_TEMP,
                           close=self.failures >= limits.MAX_AUTH_FAILURES_PER_CONNECTION,
                           log=f"PAM service {self.cfg.pam_service}: {result.reason} "
                               f"({result.code})")
        if result.ok:
            return
        reason = f"{what}: {result.reason} ({result.code})"
        if not (proved or result.password_code == pam_auth.PAM_SUCCESS):
            self._refuse(user, host, client_ip, text, reason)          # a wrong guess
        # Only an expired password is told (and not braked): an expired account, pam_access
        # or pam_time get the wrong guess's text, or a barred account's password could be
        # guessed through POP; after as long a wait, braked and logged for fail2ban as a
        # wrong guess (else the next attempt's brake, or a ban, would tell them apart).
        if result.code in PASSWORD_EXPIRY_CODES:
            self._refuse_policy(user, client_ip, EXPIRED.format(user=user), reason,
                                line=account_line)
        # why (LOGIN REFUSED (account)); then Qpopper's failure line and, while it is
        # waited, `LOGIN FAILED`, as for a wrong guess (poppassd logs them in this order too)
        answer, code = self._wrong_guess_reply(text)
        self.log(syslog.LOG_NOTICE, account_line(user, self._method, client_ip, reason))
        self.log(syslog.LOG_NOTICE, failure_line(user, host, client_ip))
        self.brakes.wait_as_wrong_guess(result, client_ip, user, self._method,
                                        self.cfg.auth_failure_delay or 0, sleep=self.sleep)
        self._count_refusal(client_ip, answer, code, failed=True)

    def _count_refusal(self, client_ip, text, code: RespCode | None, *,
                       failed: bool) -> NoReturn:
        """Count a refusal towards limits.MAX_AUTH_FAILURES_PER_CONNECTION and raise it; the
        last one closes the connection (its log line says `failed` logins, answered as wrong
        guesses, or refused ones). Never returns."""
        self.failures += 1
        if self.failures < limits.MAX_AUTH_FAILURES_PER_CONNECTION:
            raise PopError(text, code)
        if failed:
            raise PopError(text, code, close=True, log=f"{client_ip}: {self.failures} failed "
                                                       f"logins on one connection; closing it")
        raise PopError(text, code, close=True, log=f"{client_ip}: {self.failures} refused "
                                                   f"logins on one connection; closing it")

    def _account_step_undecided(self, user, client_ip, result: pam_auth.PamResult) -> None:
        """Right credentials, and PAM's account step could not decide (pam_sss, pam_ldap:
        their directory down). Answered "try again later", as every wrong guess is from now
        on (Brakes.record_failure marks it), and first waited, counted and held as a wrong
        guess, so that neither its time nor the next attempt's brake tells the credentials
        were right; but not logged `LOGIN FAILED`: the client is not guessing, and fail2ban
        would ban every client polling through the outage
        (docs/operations.md, "When PAM's account step cannot decide")."""
        if not self.brakes.account_undecided():         # a read, as a wrong guess's reply
            self.log(syslog.LOG_WARNING, account_undecided_line(self.cfg.pam_service))
        self.brakes.wait_as_wrong_guess(result, client_ip, user, self._method,
                                        self.cfg.auth_failure_delay or 0, sleep=self.sleep,
                                        account_undecided=True)

    def _wrong_guess_reply(self, text: str) -> tuple[str, RespCode]:
        """What a wrong guess, or a refusal answered as one, is told: `text` with [AUTH];
        while PAM's account step is marked unable to decide (_account_step_undecided),
        the "try again later" that right credentials get meanwhile."""
        if (self.user_database == USER_DB_SYSTEM
                and self.brakes.account_undecided()):
            return PAM_UNAVAILABLE, RespCode.SYS_TEMP
        return text, RespCode.AUTH

    def _check_password_expired(self) -> bool:
        return bool(self.cfg.check_password_expired)

    def _note_password_expired(self, user, result: pam_auth.PamResult) -> None:
        if result.password_expired:
            self.log(syslog.LOG_INFO, f'password of "{user}" has expired; login allowed '
                                      f"(check-password-expired is off)")

    # ---- accounts -------------------------------------------------------------------------
    @staticmethod
    def _known_account(user) -> pwd.struct_passwd | None:
        try:
            return pwd.getpwnam(user)
        except KeyError:
            return None

    def _system_account(self, user, host, client_ip, unknown_text) -> pwd.struct_passwd:
        account = self._known_account(user)
        if account is None:
            self._refuse(user, host, client_ip, unknown_text, "no such user")
        self._check_uid(user, account, host, client_ip)
        return account

    def _store_account(self, user, host, client_ip) -> pwd.struct_passwd:
        """The account every pop.auth-only user maps to (see the module docstring)."""
        try:
            if os.geteuid() == 0:
                account = pwd.getpwnam(self.cfg.pop_auth_owner)
            else:
                account = pwd.getpwuid(os.getuid())
        except KeyError:
            raise PopError("POP authentication DB owner account not found", RespCode.SYS_PERM,
                           log="user-database pop-auth: the pop-auth-owner account does not exist"
                           ) from None
        self._check_uid(user, account, host, client_ip)
        return account

    def _check_uid(self, user, account: pwd.struct_passwd, host, client_ip) -> None:
        if account.pw_uid <= limits.BLOCKED_UID_MAX:
            self._refuse_policy(user, client_ip, UID_BLOCKED, f"uid {account.pw_uid} is blocked")
