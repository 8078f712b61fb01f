"""THE option table: every run-time option of Qpopper 4.1, plus our extensions.

One entry per option drives everything that knows about options: argv parsing, the
configuration-file grammar, `popper --check-config`, `popper --help`, the generated example
etc/qpopper/qpopper.config and the man pages. Adding an option means adding one entry here.

Attribute access on Config uses the canonical name with '-' replaced by '_':
`cfg.clear_text_password`, `cfg.update_on_abort`.

Sources: the manual's tables "Configure Options", "Run-Time Command Line Options" and
"Run-Time Options from a Configuration File", Qpopper's config.c option table (for the
restriction column where the manual is silent) and docs/compatibility.md for conflicts. What
a row is (types, scopes, parsing) is qpopper/option_types.py; the conventions docs/options.md.
Values are typed here, once: command code never parses option strings.
"""

from __future__ import annotations

from qpopper import limits
from qpopper.option_types import (OptType, Option, Scope, check_drac_host,  # noqa: F401 (re-exported)
                                  check_home_relative_path, check_listen,
                                  check_maildir_pattern, check_networks)
from qpopper.option_types import check_absolute_path as _absolute


# ---- constructors: one per type, so each row reads `boolean("name", default, "help", ...)` ---
def boolean(name, default, help, **kw) -> Option:
    if "flag" in kw and "flag_value" not in kw:
        kw["flag_value"] = True
    return Option(name, OptType.BOOL, default, help, **kw)


def integer(name, default, help, **kw) -> Option:
    return Option(name, OptType.INT, default, help, **kw)


def string(name, default, help, **kw) -> Option:
    return Option(name, OptType.STRING, default, help, **kw)


def mnemonic(name, default, choices, help, **kw) -> Option:
    return Option(name, OptType.MNEMONIC, default, help, choices=tuple(choices), **kw)


_SSF_MAX = 4294967295
_ANNOUNCED_MAX = 2**31 - 1        # CAPA EXPIRE / LOGIN-DELAY numbers a client reads as an int32
_TLS_OPTIONS_MAX = 2**64 - 1      # OpenSSL's options are a uint64_t (larger: OverflowError)
_FACILITIES = ("mail", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7")

# The table. Qpopper's options in alphabetical order (as the manual lists them), then ours.
# Scope follows the manual's "not permitted in ..." notes; where the manual is silent, Qpopper's
# config.c restriction column: CfgResUser -> NOT_HOME (config.c refuses it only in the home
# file), CfgResInit -> STARTUP. Extensions say "Extension:" in their help.
OPTIONS: tuple[Option, ...] = (
    integer("announce-expire", -1,
       "Days announced in CAPA as EXPIRE (-1 announces EXPIRE NEVER). Only 0 (delete each "
       "message once it has been retrieved, as auto-delete does) is enforced; other values "
       "are the site's policy to enforce by other means.",
       flag="-e", flag_arg="expire=N", minimum=-1, maximum=_ANNOUNCED_MAX),
    integer("announce-login-delay", -1,
       "Seconds announced in CAPA as LOGIN-DELAY (-1 announces nothing). Not enforced.",
       flag="-e", flag_arg="login_delay=N", minimum=-1, maximum=_ANNOUNCED_MAX),
    string("auth-file", None,
       "File listing, one per line, the only users allowed to use the server (configure "
       "--enable-auth-file).",
       scope=Scope.STARTUP, example="/etc/qpopper/allowed-users", check=_absolute),
    boolean("auto-delete", False,
       "Delete every message retrieved with RETR at the end of the session, unconditionally. "
       "Caution: this can lose mail; tell your users before enabling it. Applies only when "
       "update-on-abort is false or the session ends with QUIT. Only messages this session "
       "retrieved: not those a Status: R header or a Maildir's seen flag marks (a sender "
       "can write the header; mail readers, IMAP and webmail set them).",
       scope=Scope.NOT_HOME),
    integer("bulldb-max-tries", 75,
       "Attempts to lock the bulletin database before giving up (random waits of up to 0.5 s "
       "between attempts).",
       aliases=("bulldb-max-retries", "bulldb-max-retires"), minimum=1,
       maximum=limits.MAX_BULLDB_TRIES),
    boolean("bulldb-nonfatal", False,
       "Let sessions continue when the bulletin database cannot be opened (users may miss "
       "bulletins) instead of failing with [SYS/TEMP].",
       flag="-B"),
    string("bulldir", None,
       "Bulletin directory; setting it enables bulletins (configure --enable-bulletins; the "
       "usual place is /var/spool/bulls). Unlike Qpopper, not settable in ~/.qpopper-options: "
       "bulletins are read with the mail group, so a user's own bulldir could name other "
       "users' spools. A bulletin file that is not world-readable is skipped and logged.",
       flag="-b", flag_arg="bulldir", scope=Scope.NOT_HOME, example="/var/spool/bulls",
       check=_absolute),
    string("cache-dir", None,
       "Directory for the users' .user.cache files (server mode). Unset: the temp-drop "
       "directory. Not /tmp: a reboot deletes it.",
       scope=Scope.NOT_HOME, example="/var/cache/qpopper", check=_absolute),
    string("cache-name", ".%s.cache",
       "Name of the cache file; %s is the user name. You should not normally set this.",
       scope=Scope.NOT_HOME, required=True),
    boolean("check-hash-dir", True,
       "With hash-spool, create missing hashed spool directories (mode and owner of the spool "
       "directory). Reset it when the directories are pre-created.",
       aliases=("check-hash-spool",)),
    boolean("check-old-spool-loc", True,
       "With hash-spool or home-dir-mail, look for a leftover .user.pop in the plain spool "
       "directory first, so no mail is stranded there."),
    boolean("check-password-expired", True,
       "Refuse logins whose password has expired (PAM account management).",
       scope=Scope.STARTUP),
    mnemonic("chunky-writes", "default", ("default", "always", "never", "tls"),
       "Aggregate output into large chunks: default and always (always), never, tls (only "
       "when TLS is active; 'ssl' is accepted for tls).",
       choice_aliases=(("ssl", "tls"),)),
    mnemonic("clear-text-password", "default", ("default", "never", "always", "local", "tls"),
       "When USER/PASS is allowed: default (everyone except users in the pop.auth store, who "
       "must use APOP, while store-mechanisms offers it), never, always (even for pop.auth "
       "users), local (only from 127.*), tls "
       "(only after TLS; 'ssl' is accepted for tls). -p takes 0..4 in that order.",
       flag="-p", flag_arg="0..4", flag_numbers=("default", "never", "always", "local", "tls"),
       choice_aliases=(("ssl", "tls"),), scope=Scope.NOT_USER),
    string("config-file", None,
       "Read more options from this file at this point (relative names are relative to the "
       "file that names them). Caution: files named with -f or chained from them may set "
       "anything; keep them unwritable by users. Nesting is limited to "
       f"{limits.MAX_CONFIG_FILE_DEPTH} levels.",
       flag="-f", flag_arg="config-file", example="/etc/qpopper/qpopper-local.config"),
    boolean("conservative-cache", False,
       "Ignore the user's cache file when the spool was modified after it (use when programs "
       "other than the server and the delivery agent change spools).",
       scope=Scope.NOT_HOME),
    boolean("debug", False,
       "Log debug records (to syslog, or to tracefile): among them the dialogue of each "
       "session, every client command and the first line of every reply with the session's "
       "state, passwords, APOP digests and SASL responses shown as <hidden>. Unlike "
       "Qpopper, not settable in per-user files: the session's log is already open when "
       "they are read.",
       flag="-d", scope=Scope.STARTUP),
    boolean("downcase-user", False,
       "Lower-case user names before use, so clients may type them in any case.",
       flag="-c", scope=Scope.NOT_USER),
    string("drac-host", None,
       "DRAC server to notify after each login (POP-before-SMTP): its portmapper is asked "
       "for DRAC over UDP. HOST:PORT (extension) names a portmapper on another port than "
       "111. Unset: no DRAC (Qpopper built --with-drac used localhost). Read before the "
       "user files, so they cannot set it.",
       flag="-D", flag_arg="drac-host", example="localhost", check=check_drac_host,
       scope=Scope.NOT_USER),
    boolean("fast-update", False,
       "Server mode: rename the new spool image (.user.pop.new) over the spool instead of "
       "copying it into the spool (one third less I/O; breaks biff and shell mail checks).",
       flag="-F"),
    boolean("group-bulletins", False,
       "Bulletins by group: the second dot-separated part of a bulletin's file name is the "
       "group that receives it (ALL: everyone).",
       scope=Scope.NOT_HOME),
    string("group-no-server-mode", None,
       "Members of this group do not use server mode, whatever the default.",
       scope=Scope.NOT_HOME, example="shellusers"),
    string("group-server-mode", None,
       "Members of this group use server mode, whatever the default (exclusion wins).",
       aliases=("group-sever-mode",), scope=Scope.NOT_HOME, example="popusers"),
    integer("hash-spool", 0,
       "Hashed spool directories: 0 none; 1 one directory named by the sum of the first five "
       "characters of the user name modulo 26 (maida -> o/maida); 2 first and second letter "
       "(maida -> m/a/maida).",
       minimum=0, maximum=2, scope=Scope.NOT_HOME),
    string("home-dir-mail", None,
       "Spool file inside the user's home directory instead of the spool directory "
       "(Qpopper's usual name is .mail).",
       scope=Scope.NOT_USER, example=".mail", check=check_home_relative_path),
    boolean("home-dir-misc", False,
       "Put the .user.pop and .user.cache files in the user's home directory.",
       scope=Scope.NOT_USER),
    boolean("keep-temp-drop", False,
       "Keep the (empty) temporary drop .user.pop after the session; its time shows the "
       "user's last access.",
       scope=Scope.NOT_HOME),
    boolean("kerberos", False,
       "Offer Kerberos authentication (served as SASL GSSAPI through the system Kerberos).",
       flag="-k", scope=Scope.NOT_USER),
    string("kerberos-service", "rcmd",
       "Kerberos service name (pop is popular; GSSAPI clients ask for pop).",
       flag="-K", flag_arg="service", scope=Scope.NOT_USER),
    mnemonic("log-facility", "mail", _FACILITIES,
       "Syslog facility for the server's log records.",
       flag="-y", flag_arg="facility", scope=Scope.STARTUP),
    string("log-login", None,
       "Log each successful login with this text: %0 version, %1 user, %2 client host name, "
       "%3 client address (configure --enable-log-login used "
       "'(v%0) POP login by user \"%1\" at (%2) %3').",
       scope=Scope.STARTUP, example="(v%0) POP login by user \"%1\" at (%2) %3"),
    string("mail-command", "/usr/sbin/sendmail",
       "Program that submits messages sent with XTND XMIT (run as 'sendmail -t -i -oem').",
       scope=Scope.NOT_HOME),
    integer("mail-lock-check", 5000,
       "Check whether the mail lock needs refreshing every this many messages while copying "
       "(the lock is also refreshed at least every minute).",
       flag="-L", flag_arg="msgs", minimum=1),
    integer("max-bulletins", 1,
       "Most bulletins a new user (no record of bulletins seen) receives.",
       minimum=0),
    boolean("no-atomic-open", False,
       "Take the dot-lock with a unique file and link(2), which works over NFS, instead of "
       "O_EXCL.",
       scope=Scope.NOT_HOME),
    string("nonauth-file", None,
       "File listing, one per line, users refused access to the server (configure "
       "--enable-nonauth-file).",
       scope=Scope.STARTUP, example="/etc/qpopper/denied-users", check=_absolute),
    boolean("old-style-uid", False,
       "Generate pre-3.x (hex MD5) unique ids; only useful with update-status-headers off and "
       "old spools whose ids must not change."),
    boolean("reverse-lookup", True,
       "Look up the client's host name for logs. -R turns it off (same as reset "
       "reverse-lookup).",
       aliases=("reverse-lookups",), flag="-R", flag_value=False, scope=Scope.NOT_USER),
    boolean("sasl-forward-secrecy", False,
       "Offer only SASL mechanisms with forward secrecy.",
       scope=Scope.NOT_USER),
    string("sasl-log-login", None,
       "Like log-login for SASL logins, with %4 authenticated identity, %5 mechanism, %6 "
       "security strength factor. Unset: log-login is used.",
       scope=Scope.STARTUP, example="(v%0) POP login by \"%1\" (%4) at (%2) %3 with %5"),
    integer("sasl-max-ssf", _SSF_MAX,
       "Highest SASL security layer strength negotiated (0 disables SASL encryption). No "
       "mechanism offered here has a SASL security layer, so it changes nothing today.",
       minimum=0, maximum=_SSF_MAX, scope=Scope.NOT_USER),
    integer("sasl-min-ssf", 0,
       "Lowest SASL security layer strength accepted (raise it to require SASL encryption).",
       minimum=0, maximum=_SSF_MAX, scope=Scope.NOT_USER),
    boolean("sasl-no-active", False,
       "Offer only SASL mechanisms not open to active (non-dictionary) attacks.",
       scope=Scope.NOT_USER),
    boolean("sasl-no-anonymous", True,
       "Do not offer SASL mechanisms that allow anonymous login. No ANONYMOUS mechanism is "
       "offered at all, so it changes nothing today.",
       scope=Scope.NOT_USER),
    boolean("sasl-no-dictionary", False,
       "Offer only SASL mechanisms not open to passive dictionary attacks.",
       scope=Scope.NOT_USER),
    boolean("sasl-no-plaintext", True,
       "Do not offer SASL mechanisms that send the password in the clear (PLAIN, LOGIN) "
       "unless TLS is active.",
       scope=Scope.NOT_USER),
    boolean("server-mode", False,
       "Work on the spool in place instead of copying it to a temporary drop (less I/O; only "
       "when nothing but the server and the delivery agent touch spools).",
       flag="-S"),
    boolean("shy", False,
       "Do not show the version in the greeting or in CAPA IMPLEMENTATION before login "
       "(nor in poppassd's greeting).",
       scope=Scope.STARTUP),
    string("spool-dir", "/var/mail",
       "Directory holding the users' mail spools.",
       scope=Scope.NOT_HOME, check=_absolute, required=True),
    boolean("spool-options", False,
       "Read <user>.qpopper-options in the spool directory after login. It is used only when "
       "root owns it (a server not running as root: its own account) and neither group nor "
       "others may write it (group mail may create files there); otherwise it is ignored "
       "and logged.",
       flag="-U", scope=Scope.NOT_HOME),
    boolean("statistics", False,
       "Log a Stats: line at the end of each session (user, deleted messages and octets, "
       "messages and octets left, client host and address).",
       flag="-s"),
    string("temp-dir", None,
       "Directory for the temporary drops .user.pop (same owner and mode as the spool "
       "directory). Unset: the spool directory. Not /tmp: a reboot would lose mail.",
       scope=Scope.NOT_HOME, example="/var/spool/qpopper", check=_absolute),
    string("temp-name", ".%s.pop",
       "Name of the temporary drop; %s is the user name. You should not normally set this.",
       scope=Scope.NOT_HOME, required=True),
    integer("timeout", limits.IDLE_TIMEOUT_S,
       "Seconds without client input before the session is aborted. RFC 1939 asks for at "
       "least 600; Qpopper's default is 120.",
       flag="-T", flag_arg="secs", minimum=1, maximum=limits.MAX_IDLE_TIMEOUT_S),
    boolean("timing", False,
       "Log the seconds spent in authentication, initialization and clean-up at the end of "
       "each session."),
    string("tls-cipher-list", None,
       "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's). Unset: OpenSSL's "
       "defaults.",
       scope=Scope.STARTUP, example="ECDHE+AESGCM:ECDHE+CHACHA20"),
    string("tls-identity-file", None,
       "PEM file holding the certificate and an encrypted private key (Qpopper's SSL Plus "
       "identity file); decrypted with tls-passphrase.",
       scope=Scope.STARTUP, example="/etc/mail/certs/identity.pem", check=_absolute),
    integer("tls-options", 0,
       "OpenSSL SSL_OP_* option bits; setting it again adds the value (Qpopper's config.c).",
       minimum=0, maximum=_TLS_OPTIONS_MAX, repeatable=True, scope=Scope.STARTUP),
    string("tls-passphrase", None,
       "Passphrase of an encrypted private key (in tls-identity-file, tls-server-cert-file "
       "or tls-private-key-file). Set it in a file of its own, "
       "root:root mode 0600, named with a second -f on the server's command line (the "
       "packaged units: a drop-in) or with config-file (then popauth run by pop-auth-owner "
       "cannot read the configuration: give it --file and --owner): the packaged "
       "/etc/qpopper/qpopper.config is mode 0644, as popauth and popper --check-config run "
       "by other users read it, and every local user sees a value given on the command "
       "line. Start-up and --check-config warn of a passphrase others can read.",
       scope=Scope.STARTUP, example="secret"),
    string("tls-private-key-file", None,
       "PEM file with the server's private key (an encrypted one needs tls-passphrase). "
       "Unset: it is in tls-server-cert-file.",
       scope=Scope.STARTUP, example="/etc/ssl/private/ssl-cert-snakeoil.key", check=_absolute),
    string("tls-server-cert-file", None,
       "PEM file with the server's certificate chain (and possibly its private key).",
       scope=Scope.STARTUP, example="/etc/ssl/certs/ssl-cert-snakeoil.pem", check=_absolute),
    mnemonic("tls-support", "default", ("default", "none", "stls", "alternate-port"),
       "TLS: default and none (no TLS), stls (the STLS command on the normal port), "
       "alternate-port (TLS from the first byte, usually port 995). -l takes 0..2: default, "
       "stls, alternate-port.",
       flag="-l", flag_arg="0..2", flag_numbers=("default", "stls", "alternate-port"),
       scope=Scope.STARTUP),
    mnemonic("tls-version", "default", ("default", "SSLv2", "SSLv3", "TLSv1", "SSLv23"),
       "Qpopper's protocol restriction, kept for old configuration files: every value now "
       "means 'TLS versions from tls-min-version up' (SSLv2, SSLv3 and TLSv1 are raised to "
       "that minimum with a log warning; 'all' is accepted for SSLv23).",
       choice_aliases=(("all", "SSLv23"),), scope=Scope.STARTUP),
    boolean("tls-workarounds", False,
       "Enable OpenSSL's bug workarounds (SSL_OP_ALL).",
       scope=Scope.STARTUP),
    string("tracefile", None,
       "Write all log records to this file instead of syslog, with the debug records "
       "(as Qpopper's -t, it turns debug on): the dialogue trace. The master opens it "
       "(mode 0600, appending, never through a link) and every process of a session "
       "writes to that descriptor. Unlike Qpopper, not settable in per-user files: the "
       "session's log is already open when they are read (and a user-chosen file could be "
       "another user's spool).",
       flag="-t", flag_arg="logfile", scope=Scope.STARTUP, example="/var/log/qpopper.trace",
       check=_absolute),
    boolean("trim-domain", False,
       "Remove @domain from user names before use (maida@example.org -> maida).",
       flag="-C", scope=Scope.NOT_USER),
    boolean("update-on-abort", True,
       "On abort (EOF, timeout, signal) commit deletions as if QUIT were sent. Qpopper's "
       "default; RFC 1939 section 6 forbids it (reset it to obey the RFC)."),
    boolean("update-status-headers", True,
       "Write Status: and X-UIDL: headers back to the spool, so read state and unique ids "
       "survive (off: ids are recomputed each session; but a message whose Content-Length: "
       "was not honoured still loses that header, which its id is computed from, and gets "
       "X-UIDL: instead)."),
    boolean("user-options", False,
       "Read ~/.qpopper-options after login (many options are refused there).",
       flag="-u", scope=Scope.NOT_USER),
    boolean("uw-kluge", False,
       "Hide the University of Washington IMAP folder-status message at the top of a spool.",
       aliases=("uw-kludge",)),

    # ---- extensions (ours; compile-time choices and what a modern service needs) ----------
    boolean("bulldb", False,
       "Extension: record the bulletins each user has seen in the SQLite file "
       "<bulldir>/bulldb/bulldb.sqlite (that directory root:mail 2770) instead of ~/.popbull "
       "files, which are read once for compatibility (Qpopper: configure --enable-bulldb).",
       extension=True, scope=Scope.NOT_USER),
    string("maildir", None,
       "Extension: where a user's Maildir is, e.g. ~/Maildir (~ or %h: the home directory; "
       "%u: the user name). A user whose path is a Maildir (a directory with cur/, new/ and "
       "tmp/) is served from it, everyone else from the mbox spool, by the same server and "
       "with the same options. Unset: mbox only. See docs/maildir.md.",
       extension=True, scope=Scope.NOT_HOME, example="~/Maildir", check=check_maildir_pattern),
    mnemonic("maildir-info-separator", "colon", ("colon", "semicolon", "exclamation"),
       "Extension: what UPDATE writes between a Maildir message's name and its flags (2,S) "
       "when it marks seen a message that has no flags yet: colon (:) is the Maildir "
       "standard; semicolon (;) or exclamation (!) where the site's other readers use that "
       "one (mbsync on Windows, a Dovecot built with another MAILDIR_INFO_SEP). A "
       "message with flags keeps its own. See docs/maildir.md, \"Info separators\".",
       extension=True, scope=Scope.NOT_HOME),
    string("popbulldir", None,
       "Extension: directory of the users' <user>.popbull files instead of ~/.popbull "
       "(root:mail 3770; Qpopper: configure --enable-popbulldir).",
       extension=True, scope=Scope.NOT_USER, example="/var/spool/popbull", check=_absolute),
    mnemonic("spool-format", "mbox", ("mbox", "mmdf"),
       "Extension: how the delivery agent frames messages in the spools: mbox (From_ lines) "
       "or mmdf (^A^A^A^A separator lines; Qpopper: the compile-time MMDF_SEP_CHAR). Only "
       "asked where a spool is empty and so cannot tell, when a bulletin is its first "
       "message; a spool's own first line always wins. Set mmdf at an MMDF site, or the "
       "next delivered message is read as part of such a bulletin. See docs/bulletins.md.",
       extension=True, scope=Scope.NOT_HOME),
    string("listen", (),
       "Extension: [ADDRESS:]PORT to listen on as a standalone server (IPv6 in brackets); "
       "repeat to add more; the positional [ADDRESS:]PORT argument adds one. None: inetd "
       "mode (the connection is on stdin).",
       extension=True, repeatable=True, check=check_listen, scope=Scope.STARTUP,
       example="110"),
    boolean("daemon", False,
       "Extension: detach from the terminal (SysV-style start); under systemd stay in the "
       "foreground.",
       extension=True, scope=Scope.STARTUP),
    string("pid-file", "/run/qpopper.pid",
       "Extension: file the standalone master writes its process id to when it detaches "
       "(daemon, the SysV-style start). In the foreground (systemd, a terminal) none is "
       "written: the service manager knows the process.",
       extension=True, scope=Scope.STARTUP, check=_absolute),
    integer("max-children", 200,
       "Extension: most sessions served at once by the standalone master; a connection "
       "over the limit is answered -ERR [SYS/TEMP] and closed.",
       extension=True, minimum=1, scope=Scope.STARTUP),
    integer("max-children-per-address", 20,
       "Extension: most sessions at once from one client address (popa3d's "
       "MAX_SESSIONS_PER_SOURCE); more are refused. IPv6 clients count by their /64 "
       "network (one host may use every address of its /64); IPv4-mapped addresses count as "
       "the IPv4 address.",
       extension=True, minimum=1, scope=Scope.STARTUP),
    integer("shutdown-grace", 30,
       "Extension: seconds the master waits for running sessions after TERM before "
       "killing them.",
       extension=True, minimum=0, maximum=limits.MAX_SHUTDOWN_GRACE_S, scope=Scope.STARTUP),
    string("prelogin-user", "qpopper-login",
       "Extension: the unprivileged account that runs each connection until its user has "
       "logged in (the TLS handshake, the AUTHORIZATION state, SASL), and poppassd's "
       "dialogue: it must own nothing and have no login. The packages create it; started as "
       "an ordinary user, the server uses that user instead.",
       extension=True, scope=Scope.STARTUP, required=True),
    string("prelogin-chroot", "/run/qpopper/empty",
       "Extension: the empty root-owned directory the pre-login process (popper's, and "
       "poppassd's) is locked into when run as root (OpenSSH's /run/sshd); created at "
       "start-up if missing.",
       extension=True, scope=Scope.STARTUP, check=_absolute, required=True),
    string("pam-service", "pop3",
       "Extension: PAM service name used for USER/PASS (Qpopper: configure "
       "--with-pam=service).",
       extension=True, scope=Scope.NOT_USER, required=True),
    string("pop-auth-file", "/var/lib/qpopper/popauth/pop.auth",
       "Extension: the pop.auth store of APOP, CRAM-MD5 and SCRAM secrets, an SQLite file "
       "managed with popauth (Qpopper: configure --enable-apop=path). popauth -init makes "
       "its directory owned by pop-auth-owner: SQLite writes a journal beside the file.",
       extension=True, scope=Scope.NOT_USER, check=_absolute),
    string("pop-auth-owner", "pop",
       "Extension: the account that must own the pop.auth store (mode 0600), and the account "
       "users of 'user-database pop-auth' run as when the server runs as root (Qpopper: "
       "configure --enable-popuid=name).",
       extension=True, scope=Scope.NOT_USER, required=True),
    boolean("check-shell", False,
       "Extension: refuse users whose login shell is not listed in /etc/shells, unless "
       "/POPPER/ANY/SHELL/ is listed there (Qpopper's CHECK_SHELL compile switch; refuses "
       "nologin accounts).",
       extension=True, scope=Scope.NOT_USER),
    mnemonic("user-database", "system", ("system", "pop-auth"),
       "Extension: where users and passwords come from: system (PAM and the passwd "
       "database) or pop-auth (only the pop.auth store, for mail-only users: they share the "
       "pop-auth-owner account, have no home directory, and cannot be combined with "
       "home-dir-mail, home-dir-misc or kerberos).",
       extension=True, scope=Scope.NOT_USER),
    mnemonic("store-mechanisms", "auto", ("auto", "on", "off"),
       "Extension: offer the mechanisms that need a secret in the pop.auth store (APOP's "
       "timestamp in the greeting, CRAM-MD5 and SCRAM in CAPA and the AUTH listing) when the "
       "store exists: on, off, or auto (on only with 'user-database pop-auth', where every "
       "user has a secret). With system users most have no secret, and clients that pick the "
       "strongest mechanism offered (curl, mpop) would fail for them, so a migrating site "
       "turns this on once its users' secrets are in the store. While off, users with a "
       "secret may use USER/PASS even under clear-text-password default.",
       extension=True, scope=Scope.NOT_USER),
    integer("auth-failure-delay", int(limits.AUTH_FAILURE_DELAY_S),
       "Extension: seconds to wait before answering a failed login (Qpopper's fixed "
       "SLEEP_SECONDS).",
       extension=True, minimum=0, maximum=60, scope=Scope.NOT_USER),
    integer("login-timeout", limits.LOGIN_TIMEOUT_S,
       "Extension: seconds from the greeting within which a client must log in, however it "
       "paces its bytes (the idle timeout alone would let a client sending a byte now and "
       "then hold the connection forever); then the connection is closed as for an idle "
       "client. Dovecot's default is 3 minutes too.",
       extension=True, minimum=1, maximum=limits.MAX_LOGIN_TIMEOUT_S, scope=Scope.NOT_USER),
    string("auth-brakes-file", "/run/qpopper/auth-brakes.sqlite",
       "Extension: where failed logins are counted across connections for the brute-force "
       "brakes (a growing delay per client address and per user name). Its directory is "
       "created root-only; unset it to keep only the per-connection cap.",
       extension=True, scope=Scope.STARTUP, example="/run/qpopper/auth-brakes.sqlite", check=_absolute),
    integer("auth-brakes-max-delay", 30,
       "Extension: the longest brute-force brake delay in seconds (the delay starts at "
       "0.25 s after a few failures and doubles with each further one); 0 turns the "
       "growing delay off.",
       extension=True, minimum=0, maximum=600, scope=Scope.STARTUP),
    string("auth-brakes-trusted-networks", (),
       "Extension: client networks the brute-force brakes leave alone (Dovecot's "
       "login_trusted_networks), e.g. a webmail or proxy host that logs many users in from "
       "one address: their logins are never delayed by the brakes and their failures are "
       "not counted (they are still logged: give fail2ban the same networks as ignoreip). "
       "IPv4 and IPv6 networks in CIDR form, separated by spaces or commas; repeat to add "
       "more.",
       extension=True, repeatable=True, check=check_networks, scope=Scope.STARTUP,
       example="192.0.2.0/24 2001:db8:1::/48"),
    integer("auth-cache-size", 0,
       "Extension: the authentication cache (Dovecot's auth_cache_size): how many USER/PASS, "
       "AUTH PLAIN and AUTH LOGIN password checks a root process of the standalone master "
       "remembers, so that a login with the same name and password within auth-cache-ttl "
       "skips PAM's password step (the account check still runs every time). 0 (the "
       "default) turns it off; inetd mode has no cache. Costs about 260 octets of locked "
       "memory an entry; the least recently used entry goes first. HUP empties it. See "
       "docs/auth-cache.md for what it trades.",
       extension=True, minimum=0, maximum=limits.MAX_AUTH_CACHE_ENTRIES, scope=Scope.STARTUP),
    integer("auth-cache-ttl", 3600,
       "Extension: seconds a correct password stays remembered (Dovecot's auth_cache_ttl). "
       "A password changed or locked in the shadow file (passwd, chpasswd, usermod -L) is "
       "forgotten at once (the shadow entry is part of the key); one changed where the "
       "shadow file does not show it (LDAP, SSSD) or revoked by a PAM auth rule keeps "
       "working until then for a client that used it; HUP (systemctl reload) forgets at "
       "once. Expiring the account (usermod -e) and pam_access rules act at once: the "
       "account check is never cached.",
       extension=True, minimum=1, maximum=limits.MAX_AUTH_CACHE_TTL_S, scope=Scope.STARTUP),
    integer("auth-cache-negative-ttl", 300,
       "Extension: seconds a wrong password stays remembered (Dovecot's "
       "auth_cache_negative_ttl); 0 remembers only correct ones. Until then that password "
       "is refused without asking PAM, even if it has just been set where the shadow file "
       "does not show it (an account from LDAP or SSSD; a shadow password change is a new "
       "key, so it is asked at once). A remembered wrong password still "
       "counts as a failed login for the delays and the brute-force brakes.",
       extension=True, minimum=0, maximum=limits.MAX_AUTH_CACHE_TTL_S, scope=Scope.STARTUP),
    mnemonic("tls-min-version", "TLSv1.2", ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
       "Extension: oldest TLS version accepted. TLSv1 and TLSv1.1 are UNSAFE (RFC 8996 "
       "deprecates them) and only for old clients that cannot do better: they also re-admit "
       "CBC ciphers at OpenSSL security level 0, and start-up logs a warning.",
       extension=True, scope=Scope.STARTUP),
    string("tls-listen", (),
       "Extension: [ADDRESS:]PORT to listen on with TLS from the first byte (POP3S, usually "
       "995), whatever tls-support says for the listen ports; repeat to add more. One master "
       "then serves STLS on 110 and TLS on 995 (instead of two instances with different -f "
       "files, which still works).",
       extension=True, repeatable=True, check=check_listen, scope=Scope.STARTUP,
       example="995"),
    string("proxy-protocol", (),
       "Extension: a listen or tls-listen entry ([ADDRESS:]PORT, written as there) whose "
       "connections come through a load balancer and begin with a PROXY protocol header "
       "(v1 or v2: HAProxy's send-proxy, send-proxy-v2); the client address in it is then "
       "the one logs, limits, brakes and DRAC use. Required there: a connection without a "
       "valid header, or from outside proxy-trusted-networks, is closed unanswered. Repeat "
       "to add more (docs/scale-out.md).",
       extension=True, repeatable=True, check=check_listen, scope=Scope.STARTUP,
       example="127.0.0.1:1110"),
    string("proxy-trusted-networks", (),
       "Extension: the load balancers allowed to connect to the proxy-protocol listeners: "
       "IPv4 and IPv6 networks in CIDR form (a bare address is its own /32 or /128), "
       "separated by spaces or commas; repeat to add more. Required when proxy-protocol is "
       "set.",
       extension=True, repeatable=True, check=check_networks, scope=Scope.STARTUP,
       example="127.0.0.1/32"),
    boolean("xtnd-xmit", True,
       "Extension: accept XTND XMIT, Qpopper's command that submits a message through "
       "mail-command as the logged-in user (with the user's own group, never the mail "
       "group). Reset it where users must not send mail through the POP server: XMIT then "
       "answers '-ERR Command not enabled'. It is never listed in CAPA.",
       extension=True, scope=Scope.NOT_HOME),
)

SECRET_OPTIONS = ("tls-passphrase",)
"""Never shown: not in --show-config's table (pasted into mails and bug reports), not in a
configuration error (logged)."""

BY_NAME: dict[str, Option] = {}
for _opt in OPTIONS:
    for _spelling in _opt.spellings:
        assert _spelling.lower() not in BY_NAME, f"duplicate option spelling {_spelling}"
        BY_NAME[_spelling.lower()] = _opt

# -e sets two options; every other flag sets exactly one.
EXPIRE_FLAG = "-e"
BY_FLAG: dict[str, Option] = {o.flag: o for o in OPTIONS if o.flag and o.flag != EXPIRE_FLAG}
E_FLAG_KEYS: dict[str, Option] = {"login_delay": BY_NAME["announce-login-delay"],
                                  "expire": BY_NAME["announce-expire"]}


def lookup(name: str) -> Option | None:
    """The option for any accepted spelling (case-insensitive), or None."""
    return BY_NAME.get(name.lower())
