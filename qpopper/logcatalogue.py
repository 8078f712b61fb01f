"""Every log line an administrator can see, with what it means: the DIAGNOSTICS section of
popper(8) (docgen.py renders it; docs/operations.md, "Log lines"). In a pattern `*` stands for
what varies (a user name, an address, a path, an error text). tests/unit/test_log_catalogue.py
keeps the list true: each log text of the code matches an entry, and each entry one text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogLine:
    pattern: str
    meaning: str
    from_option: bool = False      # the text is an option's template, not in the code


def _lines(*pairs: tuple[str, str]) -> tuple[LogLine, ...]:
    return tuple(LogLine(pattern, meaning) for pattern, meaning in pairs)


SECTIONS: tuple[tuple[str, tuple[LogLine, ...]], ...] = (
    ("Start-up, reload and shutdown (the master)", _lines(
        ("master listening on *", "The master is ready; each listener with (STLS) or (TLS)."),
        ("warm-up: * throw-away sessions run",
         "Debug: before its first connection the master ran sessions on a spool of its own, "
         "so every session shares what they built (docs/internals.md, \"The master's "
         "warm-up\")."),
        ("warm-up skipped: *", "Debug: the master's warm-up failed (the error follows); it "
                               "serves as before, each session a little larger."),
        ("TLS certificate *", "The certificate in use (subject, file, oldest TLS version), at "
                              "start-up and after each reload."),
        ("daemon ignored: systemd (NOTIFY_SOCKET) runs the master in the foreground",
         "set daemon (or --daemon) under a Type=notify unit: the master stays the unit's main "
         "process, as the option's help says; no pid file is written."),
        ("pid-file *: *; only a start that detaches (daemon, outside systemd's unit) writes "
         "it, and that start refuses it",
         "popper --check-config on a machine systemd runs, with daemon set: the pid file's "
         "directory cannot be written. The packaged unit ignores daemon and writes none; a "
         "start that detaches refuses this at once (docs/operations.md, \"Start-up checks\")."),
        ("configuration reloaded", "SIGHUP: new connections use the new configuration."),
        ("listen and tls-listen changed: the listeners stay those start-up opened until a "
         "restart", "SIGHUP read listen or tls-listen entries other than those the master "
         "started with: the rest of the configuration is applied, the ports are not. "
         "Restart the server to open them."),
        ("reload failed, keeping the running configuration: *",
         "SIGHUP found a mistake (the same one-line text as popper --check-config); nothing "
         "changed. Fix it and reload again."),
        ("*: no new connections; waiting for * session(s)",
         "SIGTERM or SIGINT: the listeners are closed; running sessions get shutdown-grace "
         "seconds."),
        ("terminating * session(s)", "shutdown-grace is over: the remaining sessions get TERM "
                                     "(each logs 'ended without QUIT ...: server shutdown')."),
        ("master stopped", "The master has ended."),
        ("accept: *; pausing", "Out of descriptors or memory: the master waits 0.1 s before "
                               "accepting again. Raise LimitNOFILE or lower max-children."),
        ("fork: *", "No process could be made for a connection; it is refused."),
        ("tls-version * is obsolete and unsafe; using * and later instead (tls-min-version)",
         "An old tls-version value; TLS 1.2 and later are used."),
        ("tls-min-version * admits TLS versions RFC 8996 deprecated: unsafe, only for clients "
         "that cannot do TLS 1.2", "tls-min-version lets TLS 1.0/1.1 in: a warning."),
        ("pop-auth-file * exists, but store-mechanisms * with user-database * offers none of "
         "APOP, CRAM-MD5 and SCRAM, so clear-text-password default does not refuse clear text "
         "to the store's users; set store-mechanisms = on once their secrets are in the store",
         "A warning at start-up, reload and --check-config: the store is there but unused "
         "(docs/internals.md, \"Store mechanisms\")."),
        ("health checks fail: spool-dir * is no longer on the file system mounted at *; "
         "the balancer is answered -ERR",
         "A health check of a proxy-protocol listener found the mount point recorded at "
         "start-up or the last reload without what was mounted there (an NFS mount gone "
         "leaves its empty directory), or another file system mounted on spool-dir: it and "
         "every check after it are answered -ERR [SYS/TEMP], so the balancer takes the host "
         "out of service; logged once, until the state changes (docs/scale-out.md, \"The "
         "load balancer\"). Once the mount is back, under any device number, the checks "
         "pass again without a reload."),
        ("health checks fail: spool-dir * cannot be examined (*); the balancer is answered "
         "-ERR",
         "As above, spool-dir gone or failing (a stale NFS handle, an I/O error; the error "
         "follows)."),
        ("health checks pass again: spool-dir * is back",
         "The first health check answered +OK after failing ones."),
        ("spool-dir * is no longer on the file system mounted at *; health checks keep "
         "failing until it is back",
         "A reload found the mount that held spool-dir gone (its empty mount point left): "
         "the recorded mount stays, so the health checks keep answering -ERR until it is "
         "mounted again (docs/scale-out.md, \"The load balancer\")."),
        ("spool-dir * is now on the file system mounted at * (was: *)",
         "A reload found spool-dir on another mount, the old one still in place (the spool "
         "moved to a new mount, or one mounted on it): the health checks judge by the new "
         "one from now on (\"/\" is the root file system)."),
        ("spool-dir * is on NFS, but no-atomic-open is off: dot-locks made by two hosts at "
         "once may both succeed; set no-atomic-open (docs/scale-out.md)",
         "A warning at start-up, reload and --check-config: a shared spool needs the link(2) "
         "dot-lock (docs/scale-out.md, \"Locks across hosts\")."),
        ("tls-passphrase is set on the command line, which every local user can read (ps); "
         "set it in a root-only file (mode 0600) named with -f or config-file",
         "A warning at start-up, reload and --check-config (the option's help)."),
        ("tls-passphrase is set in *: *; set it in a root-only file (mode 0600) named with "
         "-f or config-file",
         "A warning at start-up, reload and --check-config: someone other than root can read "
         "the file (why follows its name: the packaged /etc/qpopper/qpopper.config is "
         "world-readable; a non-root owner; another hard link), judged as the TLS key is "
         "(the option's help)."),
        ("** is missing and this server cannot make it: SCRAM's made-up exchanges "
         "are keyed by /etc/machine-id, which local users can read; run popauth -list once, "
         "as root, to make it", "A warning at start-up, reload and --check-config: a store made "
         "before popauth made the key (docs/internals.md, \"Store mechanisms\")."),
        ("no system-call filter for the pre-login process on * with a *-bit interpreter "
         "(64-bit x86_64 and aarch64 only): the rest of its sandbox stands alone", "A warning at start-up, reload and "
         "--check-config on another machine: the pre-login process runs without its seccomp "
         "filter (docs/privsep.md, \"The pre-login process's system calls\")."),
        ("the TLS private key in *: *; make it a file of root's that others cannot read "
         "(chown root, chmod o-r)", "A warning at start-up, reload and --check-config: "
         "someone other than root can copy the server's key and pose as it (why follows the "
         "name: a non-root owner, every local user through the directories above it, another "
         "hard link; the file's group is a grant, as Debian's ssl-cert)."),
        ("TLS: *", "The certificate or key cannot be used (inetd mode, or a pre-login process "
                   "that cannot load the checked copy); the connection is closed."),
        ("connection refused, the configuration has an error: *",
         "inetd mode: the configuration did not load (FILE:LINE and what was expected); the "
         "client got -ERR [SYS/PERM] and nothing else. popper --check-config says the same."),
        ("connection closed without a reply (the client expects TLS), the configuration has "
         "an error: *",
         "The same in inetd mode with TLS from the first byte (-l 2 on the command line, or "
         "the client's TLS handshake already sent): a plain -ERR is nothing a TLS client can "
         "read, so the connection is closed unanswered."),
        ("stdin is a listening socket, not a connection: use inetd 'nowait' / systemd "
         "Accept=yes, or run `popper [ADDRESS:]PORT`", "inetd or systemd passed a listening "
                                                       "socket to the inetd mode."),
        ("proxy-protocol names port *, but a connection from inetd is not read for a PROXY "
         "header: run the standalone master on that port",
         "inetd mode on a port proxy-protocol names: the connection is closed unanswered "
         "(docs/scale-out.md)."),
    )),
    ("Connections and their limits", _lines(
        ("Refused connection from *: *", "max-children or max-children-per-address is reached "
                                         "and every slot holds a logged-in session."),
        ("*: ending a connection from * that has not logged in, for one from *",
         "A limit is reached: the connection that waited longest without logging in makes "
         "room (it is told -ERR [SYS/TEMP])."),
        ("cannot serve *: *", "The monitor could not set up the connection (the pre-login "
                              "sandbox, the pop.auth store, ...)."),
        ("session failed: *: *", "inetd mode: an unexpected error ended the connection."),
        ("*: no login within the deadline; ending the connection",
         "The monitor ended a pre-login process that outlived login-timeout + 30 s."),
        ("pre-login for * sent more than * log records; ending it",
         "The pre-login process's lines (they begin with \"pre-login: \": its monitor writes "
         "them) are limited per connection: 200, 10,000 with -d. Past that the connection "
         "ends. A -d trace of a client sending thousands of commands before it logs in can "
         "reach it; otherwise, report it."),
        ("pre-login for * broke the monitor protocol (*); ending it",
         "The pre-login process sent a frame out of order or malformed: it is killed. Should "
         "never happen; report it."),
        ("authentication for * did not end by the login deadline; ending the connection",
         "A credential check was still running at login-timeout + 35 s (a PAM module waiting "
         "on an unreachable directory server, say): the monitor ends it, and the "
         "connection. Look at the PAM stack's modules."),
        ("authentication for * ended without an outcome (*)",
         "The process that checks a connection's credentials died (a PAM module that "
         "crashed, the out-of-memory killer): the client gets -ERR [SYS/TEMP]. Look at the "
         "PAM stack, and the kernel log for a signal."),
        ("authentication for *: no child subreaper (*); a PAM helper's daemon could outlive "
         "the login deadline",
         "The kernel refused PR_SET_CHILD_SUBREAPER (a sandbox or an emulated kernel): the "
         "login goes on, but a process a PAM module starts and detaches would not be ended "
         "with a check that hangs."),
        ("authentication for *: bad outcome (*)",
         "The authentication process's answer to its monitor could not be read: the "
         "connection ends. Should never happen; report it."),
        ("pre-login for * did not end; ending it",
         "The dialogue ended without a login, but the pre-login process did not exit by the "
         "login deadline (at least 5 s for its last reply): it is killed. Should never "
         "happen; report it."),
        ("the TLS relay of * did not end",
         "After the session, its TLS relay took none of the session's last output for "
         "timeout + 5 s (or was still at it after 8 such waits): it is ended with the "
         "session, and the client misses the end of the output (a client that stopped "
         "reading)."),
        ("the monitor did not answer: *", "The pre-login process lost its monitor; the client "
                                          "gets -ERR [SYS/TEMP]."),
        ("the monitor closed the connection", "As above."),
        ("the monitor answered * with *", "As above: an answer of the wrong kind."),
        ("TLS handshake with * failed: *", "The client did not complete TLS (wrong port, old "
                                           "TLS versions, a scanner)."),
        ("TLS session with *: *", "TLS is up: version and cipher."),
        ("client * gone during write: *", "Debug: the client left while being answered."),
        ("Excessive input from *", "A line longer than the protocol allows; it is answered "
                                   "-ERR and counts as a bad command."),
        ("Too many bad commands from *", "The bad-command budget is spent; the session ends."),
        ("PROXY protocol header from * refused: *; closing",
         "A proxy-protocol listener got a header it cannot use (from outside "
         "proxy-trusted-networks, malformed, too long, late); nothing else was read "
         "(docs/scale-out.md)."),
        ("*: closed before a PROXY header", "Debug: a TCP health check that only connects "
                                           "(then closes, or resets)."),
        ("*: PROXY health check answered", "Debug: HAProxy's check (v2 LOCAL, or a v1 header "
                                           "naming its own connection), answered without a "
                                           "session."),
    )),
    ("Logins", _lines(
        ("LOGIN FAILED, user=*, method=*, ip=[*], failures=*, brake=*s",
         "Wrong credentials (a wrong password, an unknown user): the line the fail2ban filter "
         "/etc/fail2ban/filter.d/qpopper.conf matches. failures: the address's failed guesses "
         "in the window, this one included; brake: what each further wrong guess from that "
         "address costs from now on (see BRUTE-FORCE BRAKES)."),
        ("LOGIN REFUSED (policy), user=*, method=*, ip=[*], reason=*",
         "A login refused for policy, whatever the password (clear text outside TLS, a "
         "mechanism not offered, no secret in the store, auth-file, nonauth-file, a blocked "
         "uid, ...): not a failed guess, so neither braked nor matched by the fail2ban "
         "filter; reason says which rule."),
        ("LOGIN REFUSED (account), user=*, method=*, ip=[*], reason=*",
         "The password (or store secret) was right, but PAM's account step refused: an "
         "expired account or password (chage), pam_access, pam_time; reason has PAM's words "
         "and code. An expired password is "
         "told and not braked; any other such refusal is answered as a wrong password and "
         "braked as one. The user needs a renewed account or password (docs/operations.md)."),
        ("*: * refused logins on one connection; closing it",
         "The per-connection cap, reached with policy refusals."),
        ("[AUTH] Failed attempted login to * from host (*) *",
         "Qpopper's line for the same failure."),
        ("login of \"*\" refused: *", "Why a login failed (no such user, PAM's answer, a "
                                      "locked account, an invalid name, ...)."),
        ("*: * failed logins on one connection; closing it",
         "The per-connection failure cap is reached."),
        ("brute-force brake: * waits *s before its login attempt is checked (its brake is *s)",
         "The address has a brake (see BRUTE-FORCE BRAKES): its attempt waits before being "
         "checked."),
        ("auth-brakes-file *: *; failed logins are not counted across connections",
         "The brakes' file cannot be used; only the per-connection cap applies."),
        ("USER from * (*) refused before the password: clear-text-password *",
         "clear-text-password forbids USER/PASS here (outside TLS, or not local)."),
        ("password of \"*\" has expired; login allowed (check-password-expired is off)",
         "The account's password is expired; the login is allowed by configuration."),
        ("AUTH * from *: *", "A SASL exchange failed or was malformed."),
        ("*: SCRAM proof without server-first", "A SCRAM exchange out of order."),
        ("GSSAPI from *: *", "A Kerberos (GSSAPI) login failed; the GSS-API's reason."),
        ("PAM service *: * (*)", "PAM could not be used for a login (a broken stack, a "
                                 "directory down)."),
        ("PAM's account step (service *) cannot decide (its directory down?): for * s after "
         "the last such login, failed logins are answered [SYS/TEMP] as right passwords are",
         "Right credentials found PAM's account step unable to decide (pam_sss, pam_ldap: "
         "their directory down); logged once per outage, by popper and by poppassd. Meanwhile "
         "every failed login is told \"try again later\" too, so that answer does not tell a "
         "guesser the password was right (docs/operations.md, \"When PAM's account step "
         "cannot decide\"). Mend the directory; the mark ends that long after the last such login."),
        ("cannot read user list *: *", "auth-file or nonauth-file cannot be read: nobody is "
                                       "admitted."),
        ("refused empty user name", "A login with an empty name."),
        ("refused undecodable user name", "A user name that is not text."),
        ("refused user name of * octets", "A user name too long."),
        ("refused user name *", "A user name with '/', '..', a leading '.' or a control "
                                "character."),
        ("path * escapes *", "A user name that would leave the spool directory."),
        ("user-database pop-auth: the pop-auth-owner account does not exist",
         "pop.auth users run as pop-auth-owner, which is missing."),
        ("pop-auth-owner account * does not exist: the pop.auth store * cannot be used",
         "As above, for the store."),
        ("pop.auth store * does not exist", "APOP/CRAM-MD5/SCRAM need the store: popauth "
                                            "-init makes it."),
        ("pop.auth store *: *", "The store cannot be opened."),
        ("pop.auth store **: mode 0*, owner uid *; it must be a regular file, mode 0600, owned "
         "by uid *", "The store's owner or mode is wrong; popper refuses to use it."),
        ("SCRAM decoy key *; SCRAM's made-up exchanges are keyed by /etc/machine-id until "
         "it is fixed", "<pop-auth-file>.decoy-key cannot be read or is not a regular file of "
         "32 octets, mode 0600, owned by pop-auth-owner (why follows the name); a name without "
         "a SCRAM verifier is still answered as one with. A warning at start-up, reload and "
         "--check-config; an exchange logs a fault the master did not warn of, once per "
         "connection. Remove the file and run popauth -list "
         "as root to make a new one (docs/internals.md, \"Store mechanisms\")."),
        ("pop.auth store *: not a pop.auth database (*)", "The file is not a store."),
        ("pop.auth store *: schema version *, this server reads version *",
         "The store was made by another version of popauth."),
        ("[drac]: login by * from host * (*)", "DRAC (POP-before-SMTP) was told of a login."),
        ("[drac]: * is not an IPv4 address; DRAC skipped", "DRAC knows IPv4 only."),
        ("[drac]: *", "The DRAC server could not be told."),
    ) + (LogLine("(v%0) POP login by user \"%1\" at (%2) %3",
                 "log-login (and sasl-log-login): Qpopper's login line, when the option is set "
                 "(%0 version, %1 user, %2 host, %3 address; see qpopper.config(5)).",
                 from_option=True),)),
    ("The authentication cache (auth-cache-size; docs/auth-cache.md)", _lines(
        ("auth cache: up to * entries, * s, negative * s",
         "The cache process started (at start-up, after each HUP, or after it died) with "
         "auth-cache-size, auth-cache-ttl and auth-cache-negative-ttl."),
        ("auth cache: * entries forgotten; * hits, * misses",
         "The cache process ended (HUP empties the cache, or the master stopped): how much "
         "it held and how often it answered. Tune the size and TTLs with these counts."),
        ("auth cache: cannot lock its memory (*); entries may be swapped out",
         "mlockall failed (no CAP_IPC_LOCK, LimitMEMLOCK too small): the cache works, but "
         "what it remembers could reach swap."),
        ("auth cache process ended; starting another",
         "The cache process died unexpectedly; the master starts a new, empty one (at most "
         "once a second). Logins meanwhile ask PAM."),
        ("auth cache: fork: *", "No cache process could be made; logins ask PAM."),
        ("auth cache failed: *", "The cache process stopped on an error; the master starts "
                                 "another."),
    )),
    ("Sessions", _lines(
        ("Stats: * * * * * * *", "-s (statistics): user, messages and octets deleted, "
                                 "messages and octets left, client host and address."),
        ("(v*) Timing for *@* (*) auth=* init=* clean=*",
         "timing: seconds spent authenticating, opening the maildrop and cleaning up."),
        ("(v*) Timeout (* secs) during nw read from * at * (*)",
         "Idle timeout (the timeout option): the client sent nothing; the session is aborted "
         "(update-on-abort decides whether deletions are kept). The user name is the last one "
         "given, also before a login."),
        ("* did not log in within login-timeout * s; closing",
         "login-timeout: no login in time, however the client paced its bytes."),
        ("EOF from * without QUIT", "The client closed the connection during TRANSACTION."),
        ("* gone during a reply; what it sent after is not acted on",
         "A reply could not be written (the client reset the connection): the commands it "
         "had sent after it, a DELE or a QUIT among them, are not acted on; the session "
         "ends as at an EOF (update-on-abort decides)."),
        ("Session of * ended without QUIT in *: *",
         "A signal ended the session: 'server shutdown (SIGTERM)' after shutdown-grace, or "
         "'hangup (SIGHUP)'."),
        ("ending the session of *: *", "An aborted session could not be saved or restored "
                                       "cleanly; the maildrop recovers at the next login."),
        ("*; options file ignored", "A per-user options file has an error (file and line "
                                    "named)."),
        ("*: option '*' may not be set in *; ignored", "A per-user options file sets an option "
                                                       "reserved to the administrator."),
        ("Ignoring *: *", "A file that cannot be used is skipped (options file, .popbull)."),
        ("Ignoring *: not a regular file", "As above."),
        ("Unable to check *: *", "A per-user file could not be examined."),
        ("XTND XMIT from *: message over * octets refused", "A message too big to send."),
        ("Pop transmit from \"*\" on \"*\"", "XTND XMIT handed a message to mail-command."),
        ("XTND XMIT from *: temporary file: *", "XTND XMIT could not store the message."),
        ("XTND XMIT: writing the temporary file: *", "As above."),
        ("XTND XMIT from *: * took over * s; killed", "mail-command hung."),
        ("XTND XMIT from *: running *: *", "mail-command could not be run."),
        ("XTND XMIT from *: * exited with status *", "mail-command refused the message."),
    )),
    ("The maildrop, locks and caches", _lines(
        ("opening maildrop of *: *", "The maildrop could not be opened; the client gets "
                                     "-ERR [SYS/TEMP]."),
        ("opening the maildrop of *: *", "As above."),
        ("closing the maildrop of *: *", "Releasing the maildrop after the session failed."),
        ("stat *: *", "The spool directory cannot be examined."),
        ("reading message * failed: *", "RETR/TOP could not read the spool."),
        ("* (* of *'s maildrop: *: *)", "A maildrop step failed (the client's text, the step, "
                                        "the file, the error)."),
        ("* (* of *'s maildrop: *)", "As above, from a lock or permission refusal."),
        ("*: not our plain file", "A bookkeeping file (journal, image) is not the session's "
                                  "own plain file: refused."),
        ("* is *", "The spool has the wrong owner, or is not a plain file."),
        ("*: not a regular file with one link", "The spool is not a plain single-link file."),
        ("* is a symbolic link", "The temporary drop is a symbolic link: refused."),
        ("*: *", "The temporary drop was refused (the reason follows)."),
        ("* is locked by another session", "The user has a session already ([IN-USE])."),
        ("* kept changing", "The temporary drop was replaced under us repeatedly ([IN-USE])."),
        ("* stayed busy for * s", "The spool's dot-lock stayed taken (a delivery agent, or a "
                                  "stale lock)."),
        ("flock/fcntl on * stayed busy", "The spool's kernel lock stayed taken."),
        ("removed stale lock * (*)", "A dot-lock left by a dead process was removed."),
        ("lock * was taken from us", "Another program removed our dot-lock."),
        ("lock * changed as it was removed; put back",
         "A dot-lock being removed (stale, or ours at release) had been replaced meanwhile by "
         "another locker's: it was set aside, found not to be the one meant, and put back "
         "(docs/maildrop.md, \"The locking rules\")."),
        ("lock * of * not put back: * took the name meanwhile",
         "As above, but while the replaced lock was set aside a third locker made a new one: "
         "both holders believe they hold the dot-lock (the kernel locks still exclude each "
         "other where both take them). Rare; look for a lock broken as stale by several hosts at once."),
        ("cannot refresh *: *", "The dot-lock's time could not be renewed."),
        ("user * has no home directory", "home-dir-mail/home-dir-misc need a home."),
        ("* * must contain %s and no '/'", "temp-name or cache-name is malformed."),
        ("check-hash-dir: *", "A hashed spool directory was refused or could not be made."),
        ("server-mode group * does not exist", "group-server-mode/group-no-server-mode names "
                                               "no group."),
        ("*'s cache does not end at a message; scanning the spool",
         "The server-mode cache no longer matches the spool: rescanned."),
        ("*'s cache ignored (*); scanning the spool",
         "The server-mode cache is damaged, cut short, of another format version (an older "
         "qpopper-py) or of other options: the spool is scanned and the cache rewritten."),
        ("no cache for *: *", "The server-mode cache could not be read: the spool is scanned."),
        ("*'s MMDF spool ended open; closed it with * octets",
         "A server-mode login found the last MMDF message without its trailer (a delivery cut "
         "short) and appended it, so mail delivered later stays a message of its own "
         "(docs/mbox.md, \"What write-back writes\")."),
        ("*'s From_ spool's last message was not closed; closed it with * octets",
         "A server-mode login found the last message without its final newline or the empty "
         "line after it (a delivery cut short, a writer that ends mail without one) and "
         "appended them, so mail a delivery agent appends later stays a message of its own "
         "(docs/mbox.md, \"What write-back writes\")."),
        ("*'s spool's end left open: closing it failed: *",
         "The login's closing of the last message (above) could not be written (a full disk, "
         "the quota): the spool is as it was and the session goes on. Mail delivered before "
         "the end is closed joins that message (From_), or in an MMDF spool is not served (its "
         "opening separator closes the open message): free space, and see "
         "docs/mbox.md, \"What write-back writes\"."),
        ("*'s spool starts with empty lines; normal mode for this session",
         "A server-mode login found empty lines before the spool's first message, or a spool "
         "of empty lines only (a delivery agent's padding): this session runs in normal mode, "
         "which leaves them out of the spool "
         "(docs/mbox.md, \"Padding before the first message\")."),
        ("*'s * starts with * octets of empty lines before its first message; left out",
         "A normal-mode login moved a spool (or an old-location drop) that starts with empty "
         "lines before its first message into the empty temporary drop without them: they are "
         "part of no message, and the update does not write them back "
         "(docs/mbox.md, \"Padding before the first message\")."),
        ("*'s * is * octets of empty lines and no message; left out",
         "As above, for a spool (or an old-location drop) of empty lines only: it is emptied, "
         "and the session has no messages."),
        ("cannot write *'s cache: *", "The server-mode cache could not be saved."),
        ("the spool was replaced or cut during a server-mode session; left as it is",
         "Someone else changed the spool: nothing is written back."),
        ("fast-update of *: cannot give the image the spool's mode/group (*); copying",
         "fast-update falls back to copying."),
        ("fast-update of *: rename failed (*); copying", "As above."),
        ("fast-update of *: the spool was renamed but its directory not synced (*)",
         "The update is applied; a system crash before the directory reaches the disk may "
         "bring the spool before it back, without mail delivered since; the next session's "
         "journal check does not see it."),
        ("recovering *'s maildrop from journal: *", "A session crashed; its journal is "
                                                    "replayed at this login."),
        ("*: unknown operation *", "A journal this version cannot read; left as is."),
        ("*: replace without its image; left as is", "A journal without its image; left."),
        ("*: commit without its image; left as is", "As above."),
        ("*'s server-mode update had not begun; the spool stays as it was",
         "Recovery: nothing to undo."),
        ("rolling *'s update forward (* octets of new mail)", "Recovery finishes an update."),
        ("*: unreadable journal (*); left as is", "A damaged journal; left for the "
                                                  "administrator."),
        ("mbox: no From line or MMDF separator at offset *", "The spool is not an mbox at "
                                                              "that place."),
        ("Maildir index of * not written: *", "The Maildir index could not be saved (a full "
         "disk?): the next session lists the Maildir again; nothing else is lost."),
        ("Maildir index of * ignored (*); listing the Maildir",
         "The Maildir index is damaged, cut short or of another format version (an older "
         "qpopper-py): the Maildir is listed and the index rewritten."),
        ("opening Maildir * of *: *", "A Maildir mailbox could not be opened ([SYS/TEMP])."),
        ("Maildir *: * cannot be read (*); left out until it can",
         "A message file new to the Maildir index is another owner's the user may not read "
         "(root's 0600, after a restore run as root): the session serves the other messages "
         "without it, and every login lists the Maildir again until it is given back."),
        ("Maildir lock file * cannot be used: *; it must be the user's own plain file, or "
         "absent", "The session lock in the Maildir (qpopper-pop3.lock) is another owner's "
         "file the user may not write (root's, after a restore), or a directory, socket or "
         "device: every login gets -ERR [SYS/PERM] until it is removed or given back."),
        ("Maildir lock file * cannot be made: *; the Maildir directory * must be writable by "
         "the user", "There is no session lock in the Maildir and the user may not make one: "
         "the Maildir directory is another owner's (root's, after a restore) or not writable: "
         "every login gets -ERR [SYS/PERM] until it is given back."),
        ("Maildir lock file * could not be opened: *", "The same file could not be opened or "
         "made for a passing cause (a read-only or full file system, an I/O error): "
         "-ERR [SYS/TEMP]."),
        ("updating Maildir *: *", "UPDATE of a Maildir failed; its journal finishes it at "
                                  "the next login."),
        ("Maildir *: * not * (*); it stays as it is",
         "A step of a Maildir UPDATE (deleted, or marked seen) failed for good (a name too "
         "long, another file system, a full disk, no permission): that message stays as it "
         "is, unseen or not deleted, and the mailbox is served (docs/maildir.md, \"UPDATE "
         "and crash safety\")."),
        ("Maildir *: * deleted message(s) changed during the session, left in place",
         "Another program changed a message the client deleted (its time: a backup tool, an "
         "IMAP server, touch) while the session ran: UPDATE leaves it, and QUIT answers "
         "-ERR [SYS/TEMP] Some deleted messages were not removed; it is served again."),
        ("Maildir *: maildirsize not updated for * deleted message(s) of * octets (*); the "
         "quota counts them until it is recalculated",
         "UPDATE deleted messages but could not append their line to the Maildir++ quota "
         "file (a symbolic link, not a plain file, another owner's, not writable, a full "
         "disk): the quota counts too much until the delivery agent recalculates it; the "
         "QUIT stands (docs/maildir.md, \"Maildir++ quotas\")."),
        ("* in * is gone", "A Maildir message vanished during the session."),
        ("* in * is a link", "A Maildir message is a symbolic link: refused."),
        ("* in * is not a plain file", "Something other than a file (a FIFO, a device) was "
         "put at a Maildir message's name during the session: refused, not waited on."),
        ("* in * cannot be read: *", "A Maildir message the session's user may not read (or an "
         "I/O error): that command is refused, the session goes on."),
    )),
    ("Bulletins", _lines(
        ("Delivered * bulletin(s) to * (up to *)", "Bulletins were appended to the spool."),
        ("No bulletins for *: no home directory for .popbull and no popbulldir",
         "Nowhere to record what the user has seen."),
        ("Unable to read bulletin directory *: *", "bulldir cannot be read."),
        ("Unable to settle an earlier session's bulletin copy for *: *",
         "A crashed login's bulletin copy could not be finished or taken back (an I/O error, "
         "a full disk): the login gets -ERR [SYS/TEMP] until it can, since a session could "
         "rewrite the spool under the copy (docs/bulletins.md)."),
        ("Unable to open Bulletin database for *: *", "The bulletin database cannot be used "
                                                      "(without bulldb-nonfatal the login gets "
                                                      "-ERR [SYS/TEMP]). Reported at once "
                                                      "unless another session holds its lock; "
                                                      "then after bulldb-max-tries tries."),
        ("Bulletin database unusable, * goes on without bulletins: *", "As above, with "
                                                                       "bulldb-nonfatal."),
        ("Bulletins for * not delivered: *: *", "Copying bulletins failed; the spool is cut "
                                                "back."),
        ("Unable to cut *'s spool back to * octets after a failed bulletin copy: *",
         "The cut back failed too: check the spool."),
        ("Bulletin * skipped: it does not start with a valid 'From ' line",
         "A bulletin file is not an mbox message."),
        ("Bulletin * skipped: its number is over *", "A bulletin file named by a number "
         "no record can hold; rename it."),
        ("Bulletin * skipped: *", "A bulletin file cannot be read."),
        ("Bulletin * ignored: its name ends like an editor's or package manager's "
         "left-over; for group * name it *.<subject>",
         "With group-bulletins, a file NNNNN.GROUP whose GROUP is also a left-over suffix "
         "(tmp, bak, orig, ...) is not a bulletin; logged at every login while it is there. "
         "Meant for that group: rename it NNNNN.GROUP.subject."),
        ("Bulletin * skipped: not a plain file of at most * octets", "Too big, or not a file."),
        ("Bulletin */* skipped: not world-readable", "Bulletin files must be mode 0644."),
        ("Bulletin delivery of an earlier session of *: *", "A crashed delivery was settled."),
        ("Bulletins for * wait for the next login: the maildrop has a journal to recover",
         "A crashed session's update is recovered first (its marker is where ours would be)."),
        ("bulletin intent of * left: *", "A crashed delivery could not be settled yet."),
        ("Ignoring a malformed bulletin intent of *", "A damaged record; ignored."),
        ("Ignoring *: not a plain file of the user", "A .popbull file not owned by the user."),
        ("fsync of *: *", "Writing .popbull could not be made durable."),
    )),
    ("popauth (facility authpriv, ident popauth)", _lines(
        ("wrong current secret for * typed by SUDO_USER *; nothing was changed",
         "sudo popauth with user-database pop-auth: the caller typed a wrong current secret "
         "of the entry named like their account. Each check, right or wrong, takes 2 s, one "
         "at a time, and a ^C does not cut it short (popauth(8)); many of these are someone "
         "guessing."),
    )),
    ("poppassd (facility authpriv, ident poppassd)", _lines(
        ("password changed for \"*\" from *", "A password was changed."),
        ("password change for \"*\" from * refused: *", "A wrong old password (also logged as "
                                                        "LOGIN FAILED, method=poppassd), or "
                                                        "the right one of an expired account "
                                                        "(LOGIN REFUSED (account) and "
                                                        "LOGIN FAILED, method=poppassd)."),
        ("new password for \"*\" from * refused: *", "The PAM password stack refused the new "
                                                     "password."),
        ("password change for \"*\" from * failed: *", "PAM could not change it."),
        ("dialogue from * not finished within * s; closed", "--deadline passed."),
        ("timeout after *s from *", "--timeout passed without a line."),
        ("over-long line from *; closed", "A line too long."),
        ("*: *; no password changed", "poppassd could not set up: the configuration file has "
                                      "an error (configuration: ...), or prelogin-user or "
                                      "prelogin-chroot is wrong (pre-login sandbox: ..., as "
                                      "for popper's start-up)."),
        ("pre-login for * broke the poppassd protocol (*); ending it",
         "poppassd's pre-login process sent a frame out of order or malformed, or more "
         "requests than a dialogue needs (docs/privsep.md, \"poppassd\"): it was killed. "
         "A bug, or a client that took it over."),
        ("pre-login for * did not end within * s; ending it",
         "poppassd's pre-login process outlived --deadline and the root process's margin: "
         "it was killed."),
    )),
)

ALL: tuple[LogLine, ...] = tuple(line for _, lines in SECTIONS for line in lines)
