"""The authenticator the protocol is given: who may log in, how, and from where.

Runs as root, in the authentication process of each connection (docs/privsep.md,
"The authentication process"; in one process only in tests), since pwd, PAM and the store
need it. It implements the protocol's authenticator contract (docs/internals.md, "Auth"):

    apop_enabled, banner_timestamp,
    check_password(user, password, client_ip, *, client_host=None, tls_active=False) -> Login
    check_apop(user, timestamp, digest, client_ip, *, client_host=None) -> Login
    and the SASL steps listed below

and raises PopError on refusal. Order of the checks, and why:
 1. the name itself (auth.is_possible_user_name, the protocol's test too: empty, too long,
    '/', '..', a leading '.' or '-', control characters, ...): refused like a bad password;
 2. clear-text-password never / local / tls (USER/PASS only; docs/compatibility.md, "Clear-text passwords"): they depend
    only on the configuration and the connection, the same answer for every name (never,
    and tls before TLS, are refused by the protocol at USER already: sasl.clear_text_refusal);
 3. the account: uid <= BLOCKED_UID_MAX is refused before PAM is asked; unknown users
    get exactly the bad-password reply — for passwords only AFTER PAM was
    asked (with the unknown name), so that they cost the same time as a wrong password
    (pam_unix's failure delay) and timing does not reveal which accounts exist;
 4. the password through PAM (auth + account management), or the APOP digest against the
    pop.auth store followed by PAM account management;
 5. only after the credentials were proved, the checks that depend on the name and would
    otherwise tell a guesser something about it: clear-text-password default (USER/PASS of
    a user with a pop.auth secret: "use stronger authentication"), auth-file / nonauth-file
    ("Permission denied."), CHECK_SHELL. Qpopper checked the first two
    before the password, so its replies told which names hold an APOP secret or are listed;
    here a wrong password gets the bad-password reply whatever the name (README, "differs").
Two kinds of refusal (docs/internals.md, "Failures and policy refusals"): wrong credentials
are FAILURES (_refuse: Qpopper's failure line, fail2ban's `LOGIN FAILED` line, counted by the
brakes, auth-failure-delay or the brake waited); a refusal no other password would change is a
POLICY refusal (_refuse_policy: its own line, not braked, answered at once), and so is PAM's
account step refusing proved credentials (an expired account: `LOGIN REFUSED (account)`;
answered as a wrong password, it is waited and braked as one). Both count
towards limits.MAX_AUTH_FAILURES_PER_CONNECTION, whose last refusal closes the connection.

Mechanisms and the methods they use (each runs the same checks in the same order):
  USER/PASS, AUTH PLAIN, AUTH LOGIN     check_password (PAM, or the store for pop-auth users)
  APOP, AUTH CRAM-MD5                   check_apop; cram_challenge, check_cram_md5 (the
                                        store's clear secret)
  AUTH SCRAM-SHA-1, AUTH SCRAM-SHA-256  scram_begin, scram_prove (check_scram with the
                                        outcome), scram_accepted once the client accepted
                                        the server's signature (only then is it a login)
  AUTH GSSAPI                           gss_step, gss_offer, gss_choose (challenges.GssSteps;
                                        check_external: Kerberos proved the principal)

User databases (`user-database`):
  system    accounts from NSS (pwd), passwords through PAM service `pam-service`; the pop.auth
            store, when present, holds their APOP secrets (C Qpopper's model).
  pop-auth  the store is the only user database (demo mode, POP-only users): its secrets are
            the passwords for USER/PASS and APOP. Those users have no system account of their
            own: they all map to ONE account, whose uid/gid the Login carries — the
            invoking user when the server does not run as root (demo), the `pop-auth-owner`
            account when it does. The low-UID block applies to that account. Its home is
            not theirs: their Login has home None (no ~/.qpopper-options; home-dir-mail and
            home-dir-misc are refused with this user database, config.load says so).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pwd
import syslog
import time
from typing import NoReturn

from qpopper.server import drac

from qpopper.log import log_login_line
from qpopper.pop3.responses import PopError, RespCode
from qpopper.auth import Login, challenges, is_possible_user_name
from qpopper.auth.password_cache import PasswordCache, pam_or_cached
from qpopper.auth.brakes import Brakes
from qpopper.auth.scram import Verifier
from qpopper.auth.store import (NO_OWNER_UID, DecoyKeyUnusable, PopAuthStore, decoy_key_line,
                                first_telling_of_decoy_key_fault, store_owner_uid)
from qpopper.auth.policy_checks import (BAD_DIGEST, BAD_PASSWORD, USER_DB_POP_AUTH, PolicyChecks,
                                         failure_line, policy_line, store_mechanisms_offered)

class Authenticator(PolicyChecks, challenges.GssSteps):
    """One per session (cheap): `Authenticator(cfg, log)`."""

    def __init__(self, cfg, log, *, store: PopAuthStore | None = None,
                 brakes: Brakes | None = None):
        self.cfg = cfg
        self.log = log
        self.user_database = cfg.user_database
        self.store = store if store is not None else self._store_from_config()
        self.brakes = brakes if brakes is not None else Brakes.from_config(cfg, log)
        self.sleep = time.sleep          # a seam for tests
        self.failures = 0                # refusals on this connection (one Authenticator each)
        self._mechanism = "USER"         # what the attempt under way uses (for the logs)
        self._scram: challenges.ScramState | None = None
        self._scram_login: Login | None = None

    def close(self) -> None:
        """Before the monitor becomes the user session: nothing of root's stays open (the
        brakes file; the pop.auth store is opened per call)."""
        self.brakes.close()

    password_cache: PasswordCache | None = None    # the monitor's (auth/password_cache.py)
    # ---- the contract ---------------------------------------------------------------------
    banner_timestamp: str | None = None
    """The APOP timestamp, when whoever checks APOP made it (the monitor does, for the
    pre-login process's authenticator); None: the protocol makes one (docs/internals.md)."""

    @property
    def apop_enabled(self) -> bool:
        """The store mechanisms (APOP's banner timestamp and verb, CRAM-MD5, SCRAM) are offered:
        a pop.auth store exists and store-mechanisms says so (store_mechanisms_offered)."""
        return (store_mechanisms_offered(self.cfg) and self.store is not None
                and self.store.exists())

    def has_apop_secret(self, user: str) -> bool:
        """The user has an APOP secret. A store with the wrong mode or owner raises
        PopError [SYS/PERM]; no store at all is simply False."""
        if not self.apop_enabled or not is_possible_user_name(user):
            return False
        return self.store.get_secret(user) is not None

    def refuse_user_name(self, user: str, text: str, client_ip: str, *,
                         client_host: str | None = None, mechanism: str = "USER",
                         reason: str = "invalid user name") -> NoReturn:
        """A name the protocol never passes on (is_possible_user_name says no; `user` is
        already printable): refused exactly as a failed login — logged, braked, delayed,
        counted towards the connection's failure cap (whose last refusal closes it) — and
        answered `-ERR [AUTH] text`. Never returns."""
        host = client_host or client_ip
        self._begin(mechanism, client_ip)
        self._refuse(user, host, client_ip, text, reason)

    def check_password(self, user: str, password: str, client_ip: str, *,
                       client_host: str | None = None, tls_active: bool = False,
                       mechanism: str = "USER", authid: str | None = None) -> Login:
        """USER/PASS, and AUTH PLAIN / LOGIN (`mechanism` "AUTH PLAIN", ...: the same
        policies, the same password check). `tls_active`: the session runs inside TLS
        (clear-text-password=tls)."""
        host = client_host or client_ip
        self._begin(mechanism, client_ip)
        bad_password = BAD_PASSWORD.format(user=user)
        if not is_possible_user_name(user):
            self._refuse(user, host, client_ip, bad_password, "invalid user name")
        self._check_clear_text_transport(user, host, client_ip, tls_active)
        if self.user_database == USER_DB_POP_AUTH:
            account = self._store_account(user, host, client_ip)
            secret = self.store.get_secret(user)
            if secret is None or not hmac.compare_digest(
                    secret.encode("utf-8"), password.encode("utf-8", "surrogateescape")):
                self._refuse(user, host, client_ip, bad_password, "wrong pop.auth password")
            self._check_auth_files(user, host, client_ip)
            return self._success(user, account, mechanism, host, client_ip, authid,
                                 shared_account=True)

        # Unknown names go through PAM too and are refused only afterwards: refusing them
        # first would answer ~2 s sooner than pam_unix's failure delay on a wrong password,
        # telling a guesser which accounts exist. The low-UID block stays before PAM:
        # those accounts are the well-known system ones, so it reveals nothing.
        account = self._known_account(user)
        if account is not None:
            self._check_uid(user, account, host, client_ip)
        result = pam_or_cached(self.password_cache, self.cfg.pam_service, user,
                               account.pw_uid if account else None, password, client_ip,
                               check_password_expired=self._check_password_expired())
        # An unknown name is refused as an existing one would be, or the answer would tell
        # the name: during an outage [SYS/TEMP] (_check_pam_said_yes raises it, for every
        # name), else as a wrong password, after the failure delay a password step that
        # said yes (a module that knows names NSS does not) still owes.
        if account is None and not result.system_error:
            self._refuse(user, host, client_ip, bad_password, "no such user", result)
        self._check_pam_said_yes(result, user, host, client_ip, bad_password,
                                 f"PAM service {self.cfg.pam_service}")
        self._check_clear_text_for_store_users(user, host, client_ip)
        self._check_auth_files(user, host, client_ip)
        self._note_password_expired(user, result)
        self._check_shell(user, account, host, client_ip)
        return self._success(user, account, mechanism, host, client_ip, authid)

    def check_apop(self, user: str, timestamp: str, digest: str, client_ip: str, *,
                   client_host: str | None = None) -> Login:
        """APOP: `digest` must be the hex MD5 of `timestamp` (with its <>) + the secret."""
        def proved() -> bool:
            secret = self.store.get_secret(user)
            return secret is not None and _digest_matches(timestamp, secret, digest)
        return self._check_store_proof(user, "APOP", proved, client_ip, client_host)

    def check_cram_md5(self, user: str, challenge: bytes, digest: str, client_ip: str, *,
                       client_host: str | None = None) -> Login:
        """AUTH CRAM-MD5 (RFC 2195): `digest` is the hex HMAC-MD5 of the challenge keyed
        with the user's pop.auth secret (the APOP secret: CRAM needs the clear secret)."""
        def proved() -> bool:
            secret = self.store.get_secret(user)
            if secret is None:
                return False
            expected = hmac.new(secret.encode("utf-8"), challenge, "md5").hexdigest()
            return hmac.compare_digest(expected.encode("ascii"),
                                       digest.lower().encode("ascii", "replace"))
        return self._check_store_proof(user, "AUTH CRAM-MD5", proved, client_ip, client_host,
                                       authid=user)

    def scram_verifier(self, user: str, mechanism: str) -> Verifier | None:
        """The user's SCRAM verifier (None: no store, no such user or no verifier; the
        mechanism then goes on with a made-up one so the reply reveals nothing). A store
        with the wrong mode or owner raises [SYS/PERM]."""
        if not self.apop_enabled or not is_possible_user_name(user):
            return None
        return self.store.get_scram(user, mechanism)

    def check_scram(self, user: str, mechanism: str, proved: bool, client_ip: str, *,
                    client_host: str | None = None) -> Login:
        """The client's proof in a SCRAM exchange: `proved` is whether it matched the
        verifier; every other policy is checked here, as for APOP, and a refusal is a failed
        login like any other. An accepted proof is not a login yet: the server still sends its
        signature, and the client may refuse it (`*`, RFC 5034 §4). So the Login returned is
        not logged, cleared from the brakes nor told to DRAC: the mechanism calls
        `record_login` once the client's empty answer came."""
        return self._check_store_proof(user, f"AUTH {mechanism}", lambda: proved, client_ip,
                                       client_host, authid=user, record=False)

    # ---- the server's half of the challenge mechanisms (auth/challenges.py) ------------------
    @staticmethod
    def cram_challenge(hostname: str) -> bytes:
        """A fresh CRAM-MD5 challenge. Its owner checks the digest against it: the monitor
        keeps it, whatever challenge the pre-login process names later."""
        return challenges.cram_challenge(hostname)

    def scram_begin(self, user: str, mechanism: str, client_nonce: str) -> str:
        """SCRAM server-first for `user` (a decoy for a name without a verifier)."""
        arithmetic = challenges.scram_arithmetic(mechanism)
        self._scram = challenges.ScramState.begin(
            user, mechanism, arithmetic, client_nonce, self.scram_verifier(user, arithmetic),
            (lambda: usable_decoy_key(self.store, self.log)) if self.apop_enabled else None)
        self._scram_login = None
        return self._scram.server_first

    def scram_prove(self, client_first_bare: str, client_final_without_proof: str,
                    proof: bytes, client_ip: str, *,
                    client_host: str | None = None) -> tuple[Login, bytes]:
        """The client's proof against the server-first scram_begin made: (Login, server
        signature), or the refusal of check_scram. Not a login yet (scram_accepted)."""
        state, self._scram = self._scram, None
        if state is None:
            raise PopError(BAD_DIGEST, RespCode.AUTH, close=True,
                           log=f"{client_ip}: SCRAM proof without server-first")
        proved, signature = state.proved(client_first_bare, client_final_without_proof, proof)
        login = self.check_scram(state.user, state.mechanism, proved, client_ip,
                                 client_host=client_host)
        self._scram_login = login
        return login, signature

    def scram_accepted(self, client_ip: str, *, client_host: str | None = None) -> Login | None:
        """The client accepted the server's signature: now it is a login (record_login).
        Returns it; None when no proof was accepted since the last scram_begin."""
        login, self._scram_login = self._scram_login, None
        if login is not None:
            self.record_login(login, client_ip, client_host=client_host)
        return login

    def check_external(self, user: str, mechanism: str, proved: bool, client_ip: str, *,
                       client_host: str | None = None, authid: str | None = None) -> Login:
        """AUTH GSSAPI: Kerberos proved (or failed to prove) who the client is; every other
        policy is checked here, as for APOP, but no pop.auth store is involved."""
        host = client_host or client_ip
        self._begin(mechanism, client_ip)
        if not proved:
            self._refuse(user, host, client_ip, BAD_DIGEST, f"{mechanism} did not prove "
                                                              f"{authid or user}")
        return self._check_proof_policies(user, mechanism, host, client_ip, authid,
                                          store=False)

    def _check_store_proof(self, user, mechanism, proved, client_ip, client_host, *,
                           authid=None, record: bool = True) -> Login:
        """APOP, CRAM-MD5, SCRAM: a proof of the pop.auth secret instead of a password.
        `proved()` is asked only once every check that needs no secret has passed."""
        host = client_host or client_ip
        self._begin(mechanism, client_ip)
        return self._check_proof_policies(user, mechanism, host, client_ip, authid,
                                          store=True, proved=proved, record=record)

    def _store_from_config(self) -> PopAuthStore | None:
        path = self.cfg.pop_auth_file
        if not path:
            return None
        owner_uid = store_owner_uid(self.cfg)   # not root: the store must be our own file
        if owner_uid == NO_OWNER_UID and os.path.lexists(path):
            # No such account: nothing can own the file rightly, so every lookup refuses it
            # ([SYS/PERM]); when there is a store, say why.
            self.log(syslog.LOG_ERR, f"pop-auth-owner account {self.cfg.pop_auth_owner!r} does "
                                     f"not exist: the pop.auth store {path} cannot be used")
        return PopAuthStore(path, owner_uid)

    # ---- outcomes -------------------------------------------------------------------------
    def _begin(self, mechanism: str, client_ip: str) -> None:
        """Every attempt: note the mechanism, then wait the address's brake (before anything
        is checked, so hanging up early cannot shorten it)."""
        self._mechanism = mechanism
        self.brakes.hold_address(client_ip, self.sleep)

    @property
    def _method(self) -> str:
        """The attempt's mechanism as the log lines name it: `AUTH CRAM-MD5` as CRAM-MD5."""
        return self._mechanism.replace("AUTH ", "")

    def _refuse(self, user, host, client_ip, text, reason, pam_result=None) -> NoReturn:
        """Log, count, wait the failure delay, raise `-ERR [AUTH] text` (already formatted:
        a user name may hold braces). `reason` goes to the log only. `pam_result`: PAM's
        answer, when its password step said yes (a name NSS does not know) and still owes its
        failure delay (Brakes.wait_as_wrong_guess). While PAM's account step cannot decide,
        the answer is right credentials' "try again later" (_wrong_guess_reply). Never
        returns."""
        text, code = self._wrong_guess_reply(text)
        if code is not RespCode.AUTH:
            reason += " (answered [SYS/TEMP]: PAM's account step cannot decide)"
        self.log(syslog.LOG_NOTICE, failure_line(user, host, client_ip))
        self.log(syslog.LOG_INFO, f'login of "{user}" refused: {reason}')
        self.brakes.wait_as_wrong_guess(pam_result, client_ip, user, self._method,
                                        self.cfg.auth_failure_delay or 0, sleep=self.sleep)
        self._count_refusal(client_ip, text, code, failed=True)

    def _refuse_policy(self, user, client_ip, text, reason,
                       code: RespCode | None = RespCode.AUTH, *, line=policy_line) -> NoReturn:
        """A refusal that no other password would change: its own log line (`line`: the
        policy line, or account_line: an expired password), and here no brake, no failure
        delay, no Qpopper failure line and no `LOGIN FAILED` (an account refusal answered as
        a wrong password gets those: policy_checks._check_pam_said_yes); counted towards the
        connection's cap. Never returns."""
        self.log(syslog.LOG_NOTICE, line(user, self._method, client_ip, reason))
        self._count_refusal(client_ip, text, code, failed=False)

    def _has_store_secret(self, user, mechanism) -> bool:
        """Does the store hold what `mechanism` needs for `user` (the clear secret for APOP
        and CRAM-MD5, the verifier for SCRAM)?"""
        if mechanism.startswith("AUTH SCRAM-"):
            arithmetic = challenges.scram_arithmetic(mechanism.removeprefix("AUTH "))
            return self.store.get_scram(user, arithmetic) is not None
        return self.store.get_secret(user) is not None

    def _success(self, user, account: pwd.struct_passwd, mechanism, host, client_ip,
                 authid: str | None = None, *, shared_account: bool = False,
                 record: bool = True) -> Login:
        """`shared_account`: a pop.auth user on the one account they all share; its home is
        not theirs (home-dir-mail there would put everyone's mail in one file, its
        ~/.qpopper-options would apply to everyone), so their Login has no home.
        `record` False: the caller calls record_login when the exchange is over (SCRAM)."""
        login = Login(user=user, uid=account.pw_uid, gid=account.pw_gid,
                      home=None if shared_account else account.pw_dir, mechanism=mechanism)
        if record:
            self.record_login(login, client_ip, client_host=host, authid=authid)
        return login

    def record_login(self, login: Login, client_ip: str, *, client_host: str | None = None,
                     authid: str | None = None) -> None:
        """A login has happened: the log-login (sasl-log-login) line, the user name's brake
        cleared, DRAC told. The check_* methods do it themselves, except check_scram."""
        host = client_host or client_ip
        user, mechanism = login.user, login.mechanism
        sasl = mechanism.startswith("AUTH ")
        template = (self.cfg.sasl_log_login or self.cfg.log_login) if sasl else self.cfg.log_login
        if template:
            # %4 the authenticated identity, %5 the mechanism, %6 the SSF: no SASL mechanism
            # here negotiates a security layer, so it is 0 (TLS is not a SASL layer).
            self.log(syslog.LOG_NOTICE, log_login_line(
                template, user, host, client_ip, authid=(authid or user) if sasl else "",
                mechanism=mechanism[5:] if sasl else "", ssf=0 if sasl else ""))
        self.brakes.record_success(user)
        # POP-before-SMTP (docs/compatibility.md, "DRAC"): bounded, logged, never refuses the login. The
        # global drac-host only: per-user option files are read after this point.
        drac.notify_login(self.cfg.drac_host, user, host, client_ip, self.log)


def _digest_matches(timestamp: str, secret: str, digest: str) -> bool:
    expected = hashlib.md5((timestamp + secret).encode("utf-8")).hexdigest().encode("ascii")
    given = digest.strip().lower().encode("ascii", "replace")
    return hmac.compare_digest(expected, given)


def usable_decoy_key(store: PopAuthStore, log) -> bytes | None:
    """The store's SCRAM decoy key; one that cannot be used is logged (once per fault: not
    when this process, or the master before forking it, told it already) and the decoy falls
    back as without one, so a name without a verifier is answered as a name with one
    (docs/internals.md, "Store mechanisms")."""
    try:
        return store.decoy_key()
    except DecoyKeyUnusable as exc:
        if first_telling_of_decoy_key_fault(str(exc)):
            log(syslog.LOG_ERR, decoy_key_line(str(exc)))
        return None
