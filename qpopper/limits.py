"""Named limits, each with its unit and the reason for its value.

Everything that bounds untrusted input or a wait lives here, so a reviewer can audit the
numbers in one place (popa3d's params.h habit).
"""

# --- client input -------------------------------------------------------------------------
MAX_COMMAND_OCTETS = 255
"""RFC 2449 §4: a command line is at most 255 octets including CRLF."""

MAX_ARG_OCTETS = 40
"""RFC 1939 §3: each argument is at most 40 characters."""

MAX_AUTH_LINE_OCTETS = 16 * 1024
"""RFC 5034 lets SASL continuation lines exceed 255 octets; bound them anyway (GSSAPI tokens)."""

MAX_BAD_COMMANDS = 10
"""Unknown or malformed commands tolerated per connection before `-ERR Too many bad commands`
and disconnect (Dovecot's habit; stops a client looping on junk)."""

MAX_PARAMETERS = 5
"""Qpopper's MAXPARMCOUNT: more words than this on a line is a syntax error."""

# --- time ---------------------------------------------------------------------------------
IDLE_TIMEOUT_S = 120
"""Qpopper's built-in `timeout` default (seconds). RFC 1939 asks for at least 600; the shipped
/etc/qpopper/qpopper.config sets 600
(docs/compatibility.md, "QUIT, timeouts and update-on-abort")."""

MAX_IDLE_TIMEOUT_S = 86400
"""The largest `timeout` (a day: a client silent that long is gone). The session waits in
poll(), which takes at most 2**31 - 1 ms (24.8 days): a larger value would kill every session."""

MAX_SHUTDOWN_GRACE_S = 3600
"""The largest `shutdown-grace`: past an hour a stopping master is a hung one to the service
manager (systemd's stop timeout is far shorter)."""

MAX_BULLDB_TRIES = 1000
"""The largest `bulldb-max-tries`: with random waits of up to 0.5 s, about 4 minutes of a
login spent waiting for the bulletin database."""

LOGIN_TIMEOUT_S = 180
"""The `login-timeout` default: the whole AUTHORIZATION state (banner to login) may last this
long, however the client paces its bytes: until the login it holds a root process. Dovecot's
login processes allow 3 minutes too: a mail client logs in within seconds, a person at telnet
or a slow SASL GSSAPI exchange within a minute or two, and it still covers
MAX_AUTH_FAILURES_PER_CONNECTION failures with their delays. Past it the session ends as an
idle timeout does."""

MAX_LOGIN_TIMEOUT_S = 3600
"""The largest `login-timeout`: an hour of AUTHORIZATION is already a root process held by a
client that has not proved anything (and it stays far inside what poll() takes)."""

PROXY_HEADER_TIMEOUT_S = 10.0
"""How long the pre-login process waits for the PROXY protocol header on a proxy-protocol
listener (docs/scale-out.md). HAProxy writes it with its connect, before any client byte;
a peer that holds it back holds a root monitor, so this is far below login-timeout."""

AUTH_FAILURE_DELAY_S = 2.0
"""Qpopper's fixed SLEEP_SECONDS after a failed login, before the -ERR reply."""

# --- the authentication cache (docs/auth-cache.md) ---------------------------------------------
MAX_AUTH_CACHE_ENTRIES = 1_000_000
"""The largest `auth-cache-size`: about 260 octets an entry in the cache process, so at most
some 260 MiB of locked memory."""

MAX_AUTH_CACHE_TTL_S = 7 * 24 * 3600
"""The longest `auth-cache-ttl` / `auth-cache-negative-ttl`: a week."""

AUTH_CACHE_REPLY_TIMEOUT_S = 0.5
"""How long a monitor waits for the cache process's answer before it asks PAM itself (the
process is being restarted, or stuck): a login never depends on the cache."""

AUTH_CACHE_RESTART_INTERVAL_S = 1.0
"""The master starts a cache process that died at most this often."""

# --- users ----------------------------------------------------------------------------------
MAX_USER_NAME_OCTETS = 64
"""Longer user names are refused before any lookup (no system allows longer login names in
practice; glibc's LOGIN_NAME_MAX is 256 but useradd caps at 32)."""

BLOCKED_UID_MAX = 10
"""Qpopper's BLOCK_UID: accounts with uid at or below this value may not log in."""

# --- locking ----------------------------------------------------------------------------------
DOTLOCK_STALE_S = 300
"""Qpopper's LOCK_LIFE: a dot-lock whose mtime is older than this is stale and taken over."""

DOTLOCK_REFRESH_S = 60
"""Touch the dot-lock at least this often while copying (maillock.h asks for every 1-3 min)."""

DOTLOCK_RETRIES_LOGIN = 2
"""Attempts to take the dot-lock at login before `[IN-USE]` (Qpopper: 2, sleeping attempt*5 s)."""

DOTLOCK_RETRIES_UPDATE = 4
"""Attempts to take the dot-lock at update/restore (Qpopper: 4, sleeping attempt*5 s)."""

LOCK_RETRY_STEP_S = 5
"""Qpopper sleeps attempt * this many seconds between lock attempts."""

# --- spool I/O --------------------------------------------------------------------------------
COPY_CHUNK_OCTETS = 64 * 1024
"""Read/write unit when copying or streaming spool data: memory stays bounded by this, not by
the spool or message size."""

MAX_SPOOL_LINE_OCTETS = 1024
"""Qpopper reads the spool in lines of this many octets; the line after an over-long line is
never taken as a `From ` separator."""

# --- brute-force brakes (qpopper/auth/brakes.py) -----------------------------------------------
MAX_AUTH_FAILURES_PER_CONNECTION = 3
"""Failed logins one connection may make; the last refusal closes it (a guesser must reconnect,
and each new connection pays the address brake)."""

BRAKE_FREE_FAILURES_PER_ADDRESS = 3
"""Failures from one client address (within BRAKE_WINDOW_S) that cost nothing extra: a user
mistyping a password is not punished."""

BRAKE_FREE_FAILURES_PER_USER = 5
"""Failures against one user name, from anywhere, before its brake applies (higher than the
address's: a name is shared by the real user and any attacker)."""

BRAKE_FIRST_DELAY_S = 0.25
"""The first brake delay; each further failure doubles it, up to auth-brakes-max-delay."""

BRAKE_MAX_WAIT_BEFORE_CHECK_S = 0.5
"""The most a braked address waits before its attempt is checked (so the most a correct password
from it waits, unless a wrong guess from the same address is still being answered); the rest of
the brake is waited before the answer to a wrong guess (auth/brakes.py)."""

BRAKE_WINDOW_S = 900
"""A failure is forgotten after this many seconds without another one (15 minutes)."""

ACCOUNT_UNDECIDED_S = 900
"""After right credentials whose PAM account step could not decide (its directory down),
every wrong guess is answered as they were, "try again later", for this long
(auth/brakes.py, Brakes.record_failure): an outage's polling clients renew it, and it
covers the time between their polls; after the outage, it is how long a mistyped password
still reads "try again later"."""

BRAKE_MAX_ROWS = 10_000
"""The brake table's bound: beyond it the oldest records are dropped (a flood of addresses
cannot fill the disk under /run)."""

# --- configuration ----------------------------------------------------------------------------
MAX_STRING_OPTION_CHARS = 255
"""Qpopper's config.c: string option values are at most 255 printable characters."""

MAX_CONFIG_FILE_DEPTH = 100
"""config-file chaining recursion limit (Qpopper: 100 levels)."""

MAX_CONFIG_LINE_CHARS = 1024
"""A configuration line longer than this is an error, not silently truncated."""

MAX_CONFIG_FILE_OCTETS = 1024 * 1024
"""A configuration file larger than this is an error. Real ones are a few KiB; the bound keeps
a user's ~/.qpopper-options (a sparse file can claim terabytes) from being read whole into the
session's memory. Each file of a config-file chain gets the same bound."""

MAX_TLS_FILE_OCTETS = 1024 * 1024
"""A certificate chain, key or identity file larger than this is refused at start-up and HUP
(server/tls.py). A chain of ten 4096-bit certificates is ~20 KiB; the bound keeps a wrong
path (a log, a disk image) from being copied whole into memory the master and every
pre-login process hold."""

# --- DRAC, POP-before-SMTP (qpopper/server/drac.py) ---------------------------------------------------
DRAC_ATTEMPT_TIMEOUT_S = 0.25
"""Wait for one UDP reply (portmapper or DRAC) before sending the request again: both answer
from memory in well under a millisecond when alive, and UDP loses packets only rarely."""

DRAC_TOTAL_TIMEOUT_S = 1.5
"""The whole DRAC notification (drac-host's name lookup, the portmapper lookup, then
DRACPROC_ADD, with their retries) never takes longer than this: a dead DRAC server (or DNS
server) must not delay a login by more than the blink of an eye, and DRAC never refuses a
login anyway (its failure is only logged)."""

DRAC_MAX_REPLY_OCTETS = 1024
"""ONC RPC replies to GETPORT and DRACPROC_ADD are 28-40 octets; anything longer is not ours."""

# --- protocol extensions (qpopper/extensions/) -------------------------------------------------
MAX_XMIT_OCTETS = 10 * 1024 * 1024
"""XTND XMIT: largest message accepted for submission (Postfix's default message_size_limit,
10 MB); a bigger one is read to its end, discarded, and refused."""

XMIT_TIMEOUT_S = 120
"""XTND XMIT: longest wait for mail-command to take the message; past it the MTA is killed and
the client told the message was not sent (the session's own idle timeout is of this order)."""

MAX_MDEF_MACROS = 10
"""MDEF: macros one session may define (Qpopper's MAX_MDEF_INDEX)."""

MAX_MDEF_NAME_CHARS = 32
"""MDEF: longest macro name (`-ERR MDEF name too long` beyond it)."""

MANGLE_LINE_PREFIX_OCTETS = 1024
"""X-MANGLE: octets of a line kept to classify it (a MIME delimiter is at most 70 characters
plus `--` twice, RFC 2046 §5.1.1); the rest of a longer line is passed on or dropped unseen."""

MAX_MANGLE_FIELD_OCTETS = 8 * 1024
"""X-MANGLE: a Content-Type / -Transfer-Encoding / -Disposition field longer than this (folded
lines included) is treated as unreadable (that part is never the one kept)."""

MAX_MIME_BOUNDARY_CHARS = 200
"""X-MANGLE: longest boundary parameter honoured (RFC 2046 allows 70; some mailers exceed it)."""

MAX_MIME_DEPTH = 20
"""X-MANGLE: nested multiparts followed; deeper ones are skipped as a whole."""

MAX_MANGLE_PARTS = 1000
"""X-MANGLE: leaf parts remembered by the pre-pass (about 100 octets each); later parts are
never chosen."""

MAX_XLST_HEADER_OCTETS = 4 * 1024
"""XTND XLST: octets of one header field (folded lines included) listed per message."""

# --- poppassd (qpopper/tools/poppassd.py) ------------------------------------------------------
POPPASSD_MAX_LINE_OCTETS = 512
"""Longest poppassd command line, CRLF included: room for PAM's own password limit
(PAM_MAX_RESP_SIZE, 512) less a few octets; a longer line is refused and the connection closed."""

POPPASSD_TIMEOUT_S = 60
"""A person types the dialogue in a client's dialog box: a minute of silence ends it, so an
idle connection cannot hold a root process."""

POPPASSD_DEADLINE_S = 120
"""The whole poppassd dialogue, greeting to `200 Password changed`: a person types three lines
in a dialog box within a minute or two. A client trickling a byte inside each
POPPASSD_TIMEOUT_S would otherwise hold a root process (under inetd) for ever."""

POPPASSD_FAILURE_DELAY_S = 3.0
"""Wait before saying a password check failed (login(1)'s FAIL_DELAY default): slows guessing;
the connection then closes, so each guess also costs a new connection."""

POPPASSD_MAX_BAD_COMMANDS = 5
"""Unknown or out-of-order poppassd commands tolerated before the connection is closed."""
