"""Brute-force brakes: a growing delay per client address and per user name after failed
logins, shared by every connection of the host.

Qpopper only slept a fixed SLEEP_SECONDS after a failure: a guesser simply opened more
connections. Here each failed guess is counted, per client address and per user name
(refusals for policy, such as clear text outside TLS, are not guesses: auth/policy.py; a
refusal of PAM's account step answered as a wrong guess is counted as one), and
  - an ADDRESS that failed more than limits.BRAKE_FREE_FAILURES_PER_ADDRESS times has a brake:
    each further WRONG GUESS from it costs that long before its -ERR. The brake is paid in two
    parts: up to limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S before the attempt is checked (hanging up
    early cannot skip it), the rest after the check, before the answer to a wrong guess (and
    its failure delay). So a
    correct password from a braked address (a shared NAT, a webmail host, the colleague of
    someone who mistyped) waits at most BRAKE_MAX_WAIT_BEFORE_CHECK_S, not the brake.
    A guesser who hangs up once that first part is over (no +OK yet: a wrong guess) gains
    nothing: while a wrong guess from the address is being answered, the address is "held",
    and every new attempt from it waits until that answer is due before being checked. Guesses
    from one address therefore still come at most one brake apart (per connection allowed by
    max-children-per-address), as before; only when nobody from the address is guessing right
    now does a correct password get through quickly;
  - a USER NAME that failed more than limits.BRAKE_FREE_FAILURES_PER_USER times (from anywhere:
    a distributed guesser) makes each further FAILURE wait before its -ERR. Never a success:
    the real user, from an address of their own, is not slowed by someone guessing at them.
The delay starts at limits.BRAKE_FIRST_DELAY_S and doubles per failure up to
`auth-brakes-max-delay`; a record is forgotten limits.BRAKE_WINDOW_S after its last failure,
and a successful login clears its user's record (never the address's: a guesser with an
account of their own could otherwise reset it).
Addresses in `auth-brakes-trusted-networks` (Dovecot's login_trusted_networks: a webmail or
proxy host that relays many users) are neither delayed nor recorded; their failures are still
logged, so fail2ban needs the same networks in its `ignoreip`.
An "address" is the client's addresses.address_group, the key the master's
max-children-per-address counts by too: an IPv4 address (an IPv4-mapped one as itself), or
the /64 of an IPv6 address, since one host may use every address of its /64 and would
otherwise take a fresh one for each guess. Log lines still show the client's own address.
(Rows of an older build, keyed by a single IPv6 address, simply expire.)

The file also carries one mark for the host: PAM's account step could not decide after right
credentials (pam_sss or pam_ldap in the `account` stack, their directory down), in popper or
in poppassd. Those credentials are answered "try again later" ([SYS/TEMP]); while the mark
lasts (limits.ACCOUNT_UNDECIDED_S from the last such answer; a login that succeeds does not
end it: in a partial outage, with some accounts still decided, a guesser's own login would)
every wrong guess and every refusal answered as one gets that answer too, in both programs,
so it does not tell a guesser that the password was right
(docs/operations.md, "When PAM's account step cannot decide").
The right credentials are waited, counted and held as a wrong guess, without its `LOGIN
FAILED` line (fail2ban would ban every polling client of the outage). Each connection is a
process of its own, so the mark must live where they all see it: here.

The same brakes and the same store serve poppassd (tools/poppassd.py): checking an old password
there is one more way to guess it, so its failures count with the POP server's, and each
slows the other (the file is `auth-brakes-file` of the same configuration).

Where the counts live, and why: every connection is a separate process (a forked child of
the master, an inetd child, a systemd Accept=yes instance), so they need a store they all
see. A table in the master would not exist in inetd/systemd mode; a small SQLite file does in
all three. It lives in a root-only directory under /run (tmpfs: gone at reboot, never on a
slow disk), and is written only while the session still runs as root (authentication happens
before privsep drops privileges), so no user can edit it. It is bounded: expired records are
purged at each write and at most limits.BRAKE_MAX_ROWS are kept (oldest dropped first).
A store that cannot be opened (not root, read-only /run) degrades to counting nothing across
connections: the per-connection cap still applies, and the reason is logged once.
One login attempt opens the file once: hold_address opens it, the rest of the attempt
(note_failure or record_success) uses the same connection and closes it. `close()` ends it
early; the authentication process calls it before it ends, and the monitor as soon as it has
forked that process: the monitor becomes the user session, which must not hold the
root-only file (docs/privsep.md, "The authentication process").
"""

from __future__ import annotations

import os
import sqlite3
import stat
import syslog
import time

from qpopper import limits
from qpopper.addresses import address_group, in_networks, parse_networks

ADDRESS = "address"
USER = "user"
HELD = "held"            # an address whose wrong guess is being answered: `last` is when
UNDECIDED = "undecided"  # PAM's account step could not decide (key ""): `last` is until when

_SCHEMA = """CREATE TABLE IF NOT EXISTS failures (
                 kind     TEXT NOT NULL,          -- 'address', 'user', 'held', 'undecided'
                 key      TEXT NOT NULL,
                 count    INTEGER NOT NULL,
                 last     REAL NOT NULL,          -- unix time of the last failure
                                                  -- ('held', 'undecided': until when)
                 PRIMARY KEY (kind, key))"""
_BUSY_TIMEOUT_S = 2.0


def brake_delay(failures: int, free: int, max_delay: float) -> float:
    """Seconds to wait given `failures` recorded so far: 0 up to `free`, then
    BRAKE_FIRST_DELAY_S doubling per failure, capped at `max_delay`."""
    over = failures - free
    if over <= 0 or max_delay <= 0:
        return 0.0
    return min(float(max_delay), limits.BRAKE_FIRST_DELAY_S * 2.0 ** min(over - 1, 30))


def failure_log_line(user: str, mechanism: str, client_ip: str, failures: int,
                     brake: float) -> str:
    """The line fail2ban matches (the filter shipped in debian/fail2ban; the same form as the
    stock `courier-auth` filter's): `LOGIN FAILED, user=U, method=M, ip=[IP], failures=N,
    brake=Xs`. `failures`: this address's failed guesses in the window, this one included;
    `brake`: the address's brake from now on, what each further wrong guess from it costs
    (0.00s while it has no more than the free failures). Commas would end the filter's fields
    early, so a name carrying one is shown with `?`."""
    shown = user.replace(",", "?") or "?"
    return (f"LOGIN FAILED, user={shown}, method={mechanism}, ip=[{client_ip}], "
            f"failures={failures}, brake={brake:.2f}s")


def _storable(key: str) -> str:
    """`key` as SQLite can store it: a name read with surrogateescape (poppassd reads raw
    bytes) would make sqlite3 raise UnicodeEncodeError; its undecodable bytes become
    backslash escapes instead, and the name is counted like any other."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fresh_count(db, kind: str, key: str, now: float) -> int:
    """The failures recorded for (kind, key), or 0 once the last is BRAKE_WINDOW_S old."""
    row = db.execute("SELECT count, last FROM failures WHERE kind = ? AND key = ?",
                     (kind, key)).fetchone()
    if row is None or now - row[1] > limits.BRAKE_WINDOW_S:
        return 0
    return row[0]


def _until(db, kind: str, key: str) -> float:
    """Until when a HELD or UNDECIDED row lasts; 0 without one."""
    row = db.execute("SELECT last FROM failures WHERE kind = ? AND key = ?",
                     (kind, _storable(key))).fetchone()
    return row[0] if row else 0.0


class Brakes:
    """The shared failure counts. Cheap to construct (one per connection); the file is opened
    at the first call of an attempt and closed when the attempt is over, or by close()."""

    def __init__(self, path: str | None, max_delay: float, log, *,
                 clock=time.time, trusted_networks=()):
        self.path = path or None
        self.max_delay = max_delay
        self.log = log
        self.clock = clock
        self.trusted_networks = tuple(trusted_networks)
        self._broken = self.path is None
        self._brake = 0.0          # the address's brake when its attempt under way began
        self._waited = 0.0         # ... and how much of it hold_address waited
        self._db: sqlite3.Connection | None = None     # the attempt's connection
        self._undecided_until = 0.0   # the mark as this process set it: without a file too

    @classmethod
    def from_config(cls, cfg, log) -> "Brakes":
        """auth-brakes-file, auth-brakes-max-delay and auth-brakes-trusted-networks."""
        networks = tuple(net for item in (cfg.auth_brakes_trusted_networks or ())
                         for net in parse_networks(item))
        return cls(cfg.auth_brakes_file, cfg.auth_brakes_max_delay, log,
                   trusted_networks=networks)

    # ---- what the authenticator asks ----------------------------------------------------------
    def is_trusted(self, client_ip: str) -> bool:
        return in_networks(client_ip, self.trusted_networks)

    def address_delay(self, client_ip: str) -> float:
        """The address's brake: what each wrong guess from it costs (its address_group: an
        IPv6 client's /64). 0 for a trusted network."""
        if self.is_trusted(client_ip):
            return 0.0
        return brake_delay(self._count(ADDRESS, address_group(client_ip)),
                           limits.BRAKE_FREE_FAILURES_PER_ADDRESS, self.max_delay)

    def record_failure(self, client_ip: str, user: str, *,
                       account_undecided: bool = False) -> tuple[int, float]:
        """Count one failure; returns (failures of this address, wait before the -ERR that
        the user name's brake asks for). A trusted network's failure is not counted: (0, 0).
        `account_undecided`: the host's mark (_write_mark) is written in the same
        transaction, so that the attempt writes the file no more often than a wrong guess."""
        if account_undecided:
            self._undecided_until = self.clock() + limits.ACCOUNT_UNDECIDED_S
        if self.is_trusted(client_ip):
            if account_undecided:
                self._write(self._write_mark)
            return 0, 0.0
        counts = self._bump([(ADDRESS, address_group(client_ip)), (USER, user)],
                            mark_undecided=account_undecided)
        return counts.get(ADDRESS, 0), self._user_delay(counts.get(USER, 0))

    def _user_delay(self, failures: int) -> float:
        """The user name's brake after `failures` (this one included): its wait before -ERR."""
        return brake_delay(failures, limits.BRAKE_FREE_FAILURES_PER_USER, self.max_delay)

    def hold_address(self, client_ip: str, sleep=time.sleep) -> float:
        """Before an attempt is checked: wait the first part of the address's brake (at most
        limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S), or until a wrong guess from the address now
        being answered is answered, whichever is longer; say so in the log. Returns the
        seconds waited. Every service that checks passwords calls it first."""
        self._brake = self.address_delay(client_ip)
        self._waited = 0.0
        if self._brake <= 0:
            return 0.0
        group = address_group(client_ip)
        held_until = self._with_db(lambda db: _until(db, HELD, group), default=0.0)
        wait = max(min(self._brake, limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S),
                   min(held_until - self.clock(), float(self.max_delay)))
        self.log(syslog.LOG_INFO, f"brute-force brake: {client_ip} waits {wait:.2f}s before "
                                  f"its login attempt is checked (its brake is "
                                  f"{self._brake:.2f}s)")
        sleep(wait)
        self._waited = wait
        return wait

    def note_failure(self, client_ip: str, user: str, method: str, base_delay: float, *,
                     account_undecided: bool = False) -> float:
        """Count one wrong guess and log its fail2ban line; returns the seconds to wait before
        the refusal: the rest of the address's brake that hold_address did not wait, then
        `base_delay` (the service's own failure delay) or the user name's brake when that is
        longer. So a wrong guess costs the whole brake plus the failure delay, as when the
        brake was all waited before the check. While that wait lasts the address is held
        (see the module docstring).
        A refusal answered as a wrong guess (the right password of an expired account, of
        one pam_access bars) comes here too: counted, waited, held and logged for fail2ban
        exactly as one, so it tells a guesser nothing, neither by the brake of the next
        attempt from the address, nor by the time the file's write takes, nor by a ban
        that comes one attempt late; the caller adds `LOGIN REFUSED (account)`, which says
        why (docs/operations.md, "An expired account or password").
        `account_undecided`: right credentials that PAM's account step could not decide: all
        of it, the host's mark written with the count (record_failure), but the `LOGIN
        FAILED` line."""
        trusted = self.is_trusted(client_ip)
        failures, user_delay = self.record_failure(client_ip, user,
                                                   account_undecided=account_undecided)
        rest_of_brake = max(0.0, self._brake - self._waited)
        self._brake = self._waited = 0.0
        delay = rest_of_brake + max(float(base_delay), user_delay)
        if not trusted and (rest_of_brake > 0 or user_delay > 0):
            self._hold(address_group(client_ip), self.clock() + delay)
        self.close()               # the attempt is over: not held open across its delay
        brake_now = 0.0 if trusted else brake_delay(
            failures, limits.BRAKE_FREE_FAILURES_PER_ADDRESS, self.max_delay)
        if not account_undecided:
            self.log(syslog.LOG_NOTICE, failure_log_line(user, method, client_ip, failures,
                                                         brake_now))
        return delay

    def wait_as_wrong_guess(self, result, client_ip: str, user: str, method: str,
                            base_delay: float, *, sleep=time.sleep,
                            since: float | None = None, account_undecided: bool = False) -> None:
        """Take as long before a refusal as a wrong guess does, after the check: first the
        failure delay PAM's password step drew but did not wait (`result`, a pam.PamResult:
        its owed_delay_s, where that step said yes; None when PAM was not asked), as a wrong
        password waited it inside PAM; then note_failure's wait.
        `since` (time.monotonic): that wait counts from then, not from now, so the time
        spent since (PAM's, the owed delay) is part of it (poppassd's shape: its fixed delay
        runs from the check's start); None sleeps each part whole (popper's)."""
        owed = result.owed_delay_s if result is not None else 0.0
        if owed > 0:
            sleep(owed)
        delay = self.note_failure(client_ip, user, method, base_delay,
                                  account_undecided=account_undecided)
        if since is not None:
            delay = since + delay - time.monotonic()
        if delay > 0:
            sleep(delay)

    def _write_mark(self, db) -> None:
        """The host's mark: PAM's account step could not decide after right credentials, so
        for limits.ACCOUNT_UNDECIDED_S wrong guesses are answered as they were, by every
        connection of popper and poppassd (account_undecided)."""
        db.execute("INSERT OR REPLACE INTO failures (kind, key, count, last) "
                   "VALUES (?, '', 0, ?)", (UNDECIDED, self._undecided_until))

    def account_undecided(self) -> bool:
        """Is PAM's account step marked as unable to decide (by any connection)?"""
        now = self.clock()
        if self._undecided_until > now:
            return True
        return self._with_db(lambda db: _until(db, UNDECIDED, ""), default=0.0) > now

    def record_success(self, user: str) -> None:
        self._brake = self._waited = 0.0
        self._write(lambda db: db.execute("DELETE FROM failures WHERE kind = ? AND key = ?",
                                          (USER, _storable(user))))
        self.close()

    def close(self) -> None:
        """Close the attempt's connection to the file, if open; the next call opens it again."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _hold(self, group: str, until: float) -> None:
        """The address is being answered a wrong guess until `until` (the later of two)."""
        def hold(db):
            until_now = max(until, _until(db, HELD, group))
            db.execute("INSERT OR REPLACE INTO failures (kind, key, count, last) "
                       "VALUES (?, ?, 0, ?)", (HELD, _storable(group), until_now))
        self._write(hold)

    # ---- the store ----------------------------------------------------------------------------
    def _count(self, kind: str, key: str) -> int:
        return self._with_db(lambda db: _fresh_count(db, kind, _storable(key), self.clock()),
                             default=0)

    def _bump(self, keys, *, mark_undecided: bool = False) -> dict[str, int]:
        now = self.clock()

        def bump(db):
            if mark_undecided:
                self._write_mark(db)
            counts = {}
            for kind, key in keys:
                key = _storable(key)
                count = _fresh_count(db, kind, key, now) + 1
                db.execute("INSERT OR REPLACE INTO failures (kind, key, count, last) "
                           "VALUES (?, ?, ?, ?)", (kind, key, count, now))
                counts[kind] = count
            self._prune(db, now)
            return counts
        return self._write(bump) or {}

    def _prune(self, db, now: float) -> None:
        db.execute("DELETE FROM failures WHERE last < ?", (now - limits.BRAKE_WINDOW_S,))
        (rows,) = db.execute("SELECT COUNT(*) FROM failures").fetchone()
        if rows > limits.BRAKE_MAX_ROWS:
            # the account step's mark is one row, not a client's: never the one dropped
            db.execute("DELETE FROM failures WHERE rowid IN (SELECT rowid FROM failures "
                       "WHERE kind != ? ORDER BY last LIMIT ?)",
                       (UNDECIDED, rows - limits.BRAKE_MAX_ROWS))

    def _write(self, change):
        return self._with_db(change, default=None, write=True)

    def _with_db(self, step, default, write: bool = False):
        if self._broken:
            return default
        try:
            if self._db is None:
                self._db = self._connect()
            if write:
                with self._db:
                    return step(self._db)
            return step(self._db)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            self._broken = True
            self.log(syslog.LOG_ERR, f"auth-brakes-file {self.path}: {exc}; failed logins are "
                                     f"not counted across connections")
            return default

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        if os.geteuid() == 0:
            # /run/qpopper: root's, 0700, so no user can plant or read the counts.
            os.makedirs(directory, mode=0o700, exist_ok=True)
            st = os.lstat(directory)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
                raise OSError(f"{directory} must be a directory owned by root and writable by "
                              f"root only")
        old_umask = os.umask(0o077)
        try:
            db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level="IMMEDIATE")
        finally:
            os.umask(old_umask)
        try:
            db.execute(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db
