"""The checks made before serving, by the master at start-up and HUP and by
`popper --check-config`: one function (`check_site`), so what check-config accepts is what the
server starts with (docs/operations.md, "Start-up checks").

Each check passes, makes what Qpopper would have made itself (the bulletin database's
directory, as popbulldir's is made), or raises PreflightError: one line naming the option,
where it was set and the file. Nothing here waits or retries: these mistakes do not clear by
themselves, so they must stop the start (or the reload) at once, not fail every login later.
"""

from __future__ import annotations

import errno
import grp
import os
import platform
import pwd
import sqlite3
import stat
import struct
import syslog
from dataclasses import dataclass

from qpopper.auth.sasl import kerberos_refusal
from qpopper.auth.policy_checks import open_user_list, store_mechanisms_offered
from qpopper.auth.store import (DECOY_KEY_SUFFIX, PopAuthStore, decoy_key_fault,
                                decoy_key_line, first_telling_of_decoy_key_fault,
                                forget_told_decoy_key_faults, store_owner_uid)
from qpopper.pop3.responses import PopError, RespCode
from qpopper.bulletin_records import BULLDB_DIR, BULLDB_FILE
from qpopper.files import who_else_can_read
from qpopper.server import prelogin_filter, privsep, sdnotify
from qpopper.options import BY_NAME
from qpopper.spool.mounts import directory_on_nfs, mount_point_of
from qpopper.server.listeners import (NO_LISTENER, ListenError, clashing, entry_matcher,
                                      resolve_listeners)
from qpopper.server import tls as tls_mod

PAM_DIR = "/etc/pam.d"

BULLDB_DIR_MODE = 0o2770
"""root:<spool group> 2770: every user's session (group mail) writes the database and the
journal SQLite keeps beside it; users cannot read each other's records otherwise."""


class PreflightError(Exception):
    """The configuration cannot work on this system: one readable line."""


@dataclass(frozen=True)
class CheckedSite:
    """What the checks passed: the TLS identity (None without TLS), which the caller owns
    (close it when only checking), and the proxy-protocol entries, for the master to match
    against its bound sockets (listeners.proxy_listeners); the mount point of the file system
    holding spool-dir as the check found it ("/" for the root's; None with home-dir-mail),
    which the health checks look at (server/monitor_proxy.py;
    docs/scale-out.md, "The load balancer")."""
    tls: tls_mod.TlsIdentity | None
    proxy_protocol: tuple[str, ...]
    spool_mount: str | None = None


def check_site(cfg, log=None, *, match_listen_entries: bool = True,
               check_only: bool = False) -> CheckedSite:
    """Every start-up check. Raises PreflightError; warnings go to `log`. Without
    `match_listen_entries` (the master's listeners are not the listen entries': systemd's
    sockets, or a reload's, which keeps start-up's) the master matches the proxy-protocol
    entries against its sockets itself (listeners.proxy_listeners). `check_only`:
    --check-config, which cannot always tell how the server will be started
    (check_pid_file)."""
    # first: what the system lacks says more than what it would have refused next
    check_kerberos(cfg)             # start-up, a reload and --check-config (cli.py)
    try:
        privsep.check_prelogin_setup(cfg)
    except privsep.SandboxError as exc:
        raise PreflightError(_said_where(cfg, str(exc))) from None
    warn_without_syscall_filter(log)
    check_accounts(cfg)
    check_pop_auth_store(cfg)
    warn_of_an_unused_store(cfg, log)
    warn_without_decoy_key(cfg, log)
    warn_of_a_readable_passphrase(cfg, log)
    check_user_lists(cfg)
    addresses = check_listeners(cfg) if match_listen_entries else ()
    proxied = check_proxy_protocol(cfg, addresses)
    spool_mount = check_directories(cfg)
    warn_of_nfs_without_no_atomic_open(cfg, log)
    check_pid_file(cfg, log, check_only=check_only)
    check_tracefile(cfg)
    check_brakes_file(cfg)
    ensure_bulldb_dir(cfg)
    check_pam_service(cfg)
    try:
        identity = tls_mod.open_server_tls(cfg, log)
    except tls_mod.TlsSetupError as exc:
        raise PreflightError(f"TLS: {_said_where(cfg, str(exc))}") from None
    if identity is not None and log is not None:
        tls_mod.warn_of_a_readable_key(cfg, log)
    return CheckedSite(identity, proxied, spool_mount)


def check_kerberos(cfg) -> None:
    """kerberos (-k) the system cannot serve (sasl.kerberos_refusal), with where it was set:
    check_site's, and inetd mode's, which runs no site check (monitor.serve_inetd)."""
    refusal = kerberos_refusal(cfg)
    if refusal:
        raise PreflightError(_said_where(cfg, refusal))


def warn_without_syscall_filter(log) -> None:
    """The pre-login process's system-call filter knows 64-bit x86_64 and aarch64: elsewhere
    the administrator is told, once per start, check or reload."""
    if log is not None and not prelogin_filter.available():
        bits = struct.calcsize("P") * 8
        log(syslog.LOG_WARNING, f"no system-call filter for the pre-login process on "
                                f"{platform.machine()} with a {bits}-bit interpreter (64-bit "
                                f"x86_64 and aarch64 only): the rest of its sandbox stands "
                                f"alone")


def where_set(cfg, name: str, *, named: bool = False) -> str:
    """ (set at SOURCE)" for an option not at its default ("(NAME set at ...)" with `named`);
    for a list option, where it was last set (its entries may come from several places)."""
    source = cfg.source(name)
    if source == "default":
        return ""
    return f" ({name} set at {source})" if named else f" (set at {source})"


def _said_where(cfg, text: str) -> str:
    """A complaint from the TLS or sandbox code, which names its option first ("prelogin-chroot
    /x must be empty"), with where that option was set, unless by default."""
    name = text.split(" ", 1)[0]
    if name not in BY_NAME or cfg.source(name) == "default":
        return text
    return f"{text} ({name} set at {cfg.source(name)})"


def check_listeners(cfg) -> list[tuple]:
    """listen and tls-listen as the master binds them (listeners.open_listeners, each list
    resolved on its own): each entry resolves, and no two take the same address and port
    (a bare port is every address, IPv4 too). Returns the addresses (sockaddr) it will bind;
    none in inetd mode (no entries)."""
    groups = [(name, tuple(cfg.get(name) or ())) for name in ("listen", "tls-listen")]
    bound = []                  # (option, entry, (family, sockaddr, v6only))
    for name, specs in groups:
        if not specs:
            continue
        try:
            bound += [(name, spec, address)
                      for spec, address in zip(specs, resolve_listeners(specs))]
        except ListenError as exc:                    # what binding would say
            raise PreflightError(f"{exc}{where_set(cfg, name, named=True)}") from None
    pair = clashing([address for *_, address in bound])
    if pair:
        (name_a, spec_a, _), (name_b, spec_b, _) = (bound[i] for i in pair)
        sources = [f"{name} set at {cfg.source(name)}"
                   for name in dict.fromkeys((name_a, name_b)) if cfg.source(name) != "default"]
        where = f" ({', '.join(sources)})" if sources else ""
        raise PreflightError(f"{name_a} {spec_a} and {name_b} {spec_b}{where}: cannot both be "
                             f"bound, one takes the other's address on that port (a bare port "
                             f"is every address, IPv4 too); keep one")
    return [sockaddr for *_, (_, sockaddr, _) in bound]


def check_proxy_protocol(cfg, addresses) -> tuple[str, ...]:
    """proxy-protocol needs proxy-trusted-networks, and each of its entries a listen or
    tls-listen entry it names, matched as the master matches them against its bound sockets
    at start-up (listeners.entry_matcher against `addresses`, check_listeners'); returns the
    entries. The only check of the trusted networks. With no addresses (inetd mode, or
    sockets from systemd) the caller matches them against its sockets (check_site)."""
    specs = tuple(cfg.proxy_protocol or ())
    if not specs:
        return specs
    where = where_set(cfg, "proxy-protocol")
    if not cfg.proxy_trusted_networks:
        raise PreflightError(f"proxy-protocol{where} needs proxy-trusted-networks: the load "
                             f"balancers allowed to send the header")
    if not addresses:
        return specs
    for spec in specs:
        try:
            names = entry_matcher(spec)
        except ListenError as exc:
            raise PreflightError(f"proxy-protocol {spec}{where}: {exc}") from None
        if not any(names(sockaddr) for sockaddr in addresses):
            raise PreflightError(f"proxy-protocol {spec}{where}: {NO_LISTENER}")
    return specs


# --- accounts and groups ---------------------------------------------------------------------------
def check_accounts(cfg) -> None:
    """pop-auth-owner (root only: the account pop.auth users run as) and the groups named by
    group-server-mode / group-no-server-mode. prelogin-user: privsep.check_prelogin_setup."""
    if cfg.user_database == "pop-auth" and os.geteuid() == 0:
        try:
            pwd.getpwnam(cfg.pop_auth_owner)
        except KeyError:
            raise PreflightError(f"pop-auth-owner {cfg.pop_auth_owner!r}"
                                 f"{where_set(cfg, 'pop-auth-owner')}: no such account") from None
    for name in ("group-server-mode", "group-no-server-mode"):
        group = cfg.get(name)
        if group:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise PreflightError(f"{name} {group!r}{where_set(cfg, name)}: no such "
                                     f"group") from None


def check_pop_auth_store(cfg) -> None:
    """user-database = pop-auth: every login looks the user up in pop-auth-file, so it must
    be there and be what the lookups accept (PopAuthStore.check_file: a regular file, 0600,
    owned by pop-auth-owner) and open as a store; otherwise every login would fail
    [SYS/TEMP] or [SYS/PERM]. Runs after check_accounts (pop-auth-owner exists)."""
    if cfg.user_database != "pop-auth":
        return
    path = cfg.pop_auth_file
    if not path:
        raise PreflightError(f"user-database pop-auth{where_set(cfg, 'user-database')} needs "
                             f"pop-auth-file: the store of the users and their secrets")
    what = f"pop-auth-file {path}{where_set(cfg, 'pop-auth-file')}"
    if not os.path.lexists(path):
        raise PreflightError(f"{what}: does not exist, and user-database is pop-auth; create "
                             f"it with popauth -init")
    if os.geteuid() != 0:
        return                  # only root opens it as the logins do (as pop-auth-owner)
    owner = pwd.getpwnam(cfg.pop_auth_owner)
    try:
        PopAuthStore(path, owner.pw_uid).list_users()
    except PopError as exc:
        if exc.code is RespCode.SYS_PERM:
            raise PreflightError(f"{what}: must be a regular file, mode 0600, owned by "
                                 f"{owner.pw_name} (pop-auth-owner)") from None
        said = (exc.log or exc.text).removeprefix(f"pop.auth store {path}: ")
        raise PreflightError(f"{what}: {said}") from None
    except sqlite3.Error as exc:
        raise PreflightError(f"{what}: not a pop.auth store: {exc}") from None


def warn_of_an_unused_store(cfg, log) -> None:
    """A pop.auth store exists, but store-mechanisms keeps APOP, CRAM-MD5 and SCRAM off (its
    default `auto` with user-database system: docs/internals.md, "Store mechanisms"): then
    clear-text-password `default` does not refuse clear text to the store's users either,
    which the manual promises; the administrator is told, once per start, reload or check.
    The other clear-text-password values do not depend on the store: no warning."""
    path = cfg.pop_auth_file
    if (log is None or not path or cfg.clear_text_password != "default"
            or store_mechanisms_offered(cfg) or not os.path.exists(path)):
        return
    log(syslog.LOG_WARNING, f"pop-auth-file {path} exists, but store-mechanisms "
                            f"{cfg.store_mechanisms} with user-database {cfg.user_database} "
                            f"offers none of APOP, CRAM-MD5 and SCRAM, so clear-text-password "
                            f"default does not refuse clear text to the store's users; set "
                            f"store-mechanisms = on once their secrets are in the store")


def warn_of_a_readable_passphrase(cfg, log) -> None:
    """tls-passphrase belongs in a root-only file (its help): the packaged configuration
    file is world-readable, and a command line is too (ps). The file is judged as the TLS
    key is (files.who_else_can_read: a non-root owner, every local user through the
    directories above it, another hard link), and its group too: no group is meant to share
    it, as the key's ssl-cert group is. Told once per start, reload or check."""
    if log is None or not cfg.tls_passphrase:
        return
    source = cfg.source("tls-passphrase")
    if source.startswith("argv "):                    # "argv --tls-passphrase"
        log(syslog.LOG_WARNING, "tls-passphrase is set on the command line, which every local "
                                "user can read (ps); set it in a root-only file (mode 0600) "
                                "named with -f or config-file")
        return
    path = source.rpartition(":")[0]
    if not os.path.isfile(path):
        return                          # not a file (an override): nothing to say
    why = who_else_can_read(path, group_is_granted=False)
    if why is not None:
        log(syslog.LOG_WARNING, f"tls-passphrase is set in {path}: {why}; set it in a "
                                f"root-only file (mode 0600) named with -f or config-file")


def warn_without_decoy_key(cfg, log) -> None:
    """SCRAM's made-up exchanges for names without a verifier are keyed by the store's decoy
    key (docs/internals.md, "Store mechanisms"); the server makes it when it can write beside
    the store, popauth always. Without it they fall back to /etc/machine-id, which local
    users can read: the administrator is told how to make it. A key the exchanges cannot use
    (its kind, mode, owner or size; one that cannot be looked at, as root) is named, with
    why, in the line those exchanges log."""
    path = cfg.pop_auth_file
    # What was told before is told again if still true: the processes forked after this
    # start or reload log a fault this run did not see (one fixed, then back).
    forget_told_decoy_key_faults()
    if log is None or not path or not store_mechanisms_offered(cfg) or not os.path.exists(path):
        return
    key = path + DECOY_KEY_SUFFIX
    try:
        st = os.lstat(key)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if os.geteuid() == 0:
            _warn_of_decoy_key(log, f"{key}: {exc.strerror}")
        return
    if st is not None:
        fault = decoy_key_fault(st, st.st_size, store_owner_uid(cfg))   # the exchanges' owner
        if fault:
            _warn_of_decoy_key(log, f"{key}: {fault}")
        return
    if os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        return
    log(syslog.LOG_WARNING, f"{path}{DECOY_KEY_SUFFIX} is missing and this server cannot "
                            f"make it: SCRAM's made-up exchanges are keyed by /etc/machine-id, "
                            f"which local users can read; run popauth -list once, as root, to "
                            f"make it")


def _warn_of_decoy_key(log, key_and_why: str) -> None:
    """Said at every start, reload and check; noted, so the exchanges of the processes the
    master forks next do not say it again (store.first_telling_of_decoy_key_fault)."""
    first_telling_of_decoy_key_fault(key_and_why)
    log(syslog.LOG_WARNING, decoy_key_line(key_and_why))


def check_user_lists(cfg) -> None:
    """auth-file and nonauth-file open for reading: each login reads them, and one that
    cannot be read (missing too) refuses everyone [SYS/PERM] (policy_checks). Without root
    (a check by another account) only that each exists: the logins read them as root."""
    for name in ("auth-file", "nonauth-file"):
        path = cfg.get(name)
        if not path:
            continue
        try:
            if os.geteuid() == 0:
                with open_user_list(path):      # a FIFO there is refused, not waited on
                    pass
            else:
                os.stat(path)
        except OSError as exc:
            raise PreflightError(f"{name} {path}{where_set(cfg, name)}: {exc.strerror}; while it "
                                 f"cannot be read every login is refused") from None


# --- directories -----------------------------------------------------------------------------------
def check_tracefile(cfg) -> None:
    """tracefile (-t) as the log will open it (append, created 0600, never through a
    symbolic link), checked without creating it."""
    path = cfg.tracefile
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.islink(path):
        problem = "is a symbolic link, which the trace never follows"
    elif os.path.lexists(path):
        kind = os.stat(path).st_mode
        writable = (stat.S_ISREG(kind) or stat.S_ISFIFO(kind) or stat.S_ISCHR(kind)) \
            and os.access(path, os.W_OK)             # /dev/null and a FIFO open as files do
        problem = None if writable else "is not a file this server can write"
    elif not os.path.isdir(directory):
        problem = f"{directory} is not a directory"
    else:
        problem = _unwritable_directory(directory)
    if problem:
        raise PreflightError(f"tracefile {path}{where_set(cfg, 'tracefile')}: {problem}")


def opened_log(cfg, make):
    """`make()`, the Logger writing to cfg's tracefile, or a PreflightError naming tracefile
    and where it was set when it cannot be opened: check_tracefile passes a FIFO, which
    --check-config cannot know will have a reader at the start; the start and a reload
    that find none are refused at once, never left waiting in open(2)."""
    try:
        return make()
    except OSError as exc:
        fifo = exc.errno == errno.ENXIO and _is_fifo(cfg.tracefile)
        why = "a FIFO no process reads" if fifo else exc.strerror
        raise PreflightError(f"tracefile {cfg.tracefile}{where_set(cfg, 'tracefile')}: "
                             f"{why}") from None


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _unwritable_directory(directory: str) -> str | None:
    """Why this server cannot make a file in `directory`, or None."""
    if os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
        return None
    return f"{directory} is not a directory this server can write in"


def check_brakes_file(cfg) -> None:
    """auth-brakes-file's directory, when it is there already, as the brakes want it as root
    (auth/brakes.py): root's and writable by root only. Otherwise the first failed login
    turns the brakes off, with one log line."""
    path = cfg.auth_brakes_file
    if not path or os.geteuid() != 0:
        return
    directory = os.path.dirname(os.path.abspath(path))
    _refuse_read_only(cfg, "auth-brakes-file", path, _nearest_existing(directory),
                      "failed logins would not be counted")
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return                                  # made at the first failure, 0700
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise PreflightError(f"auth-brakes-file {path}{where_set(cfg, 'auth-brakes-file')}: "
                             f"{directory} must be a directory owned by root and writable "
                             f"by root only")


def check_directories(cfg) -> str | None:
    """spool-dir (unless the spools are in the home directories and the temporary drops
    elsewhere), temp-dir, cache-dir, bulldir and popbulldir: each an existing directory; those
    an mbox session writes in not on a read-only mount (_written_by_sessions). Returns the
    mount point of spool-dir's file system (mounts.mount_point_of; None with home-dir-mail,
    or when an ancestor cannot be examined)."""
    names = ["temp-dir", "cache-dir", "bulldir", "popbulldir"]
    written = _written_by_sessions(cfg)
    if not cfg.home_dir_mail or "spool-dir" in written:
        names.insert(0, "spool-dir")
    spool_mount = None
    for name in names:
        path = cfg.get(name)
        if path:
            _directory(cfg, name, path)
            if name in written:
                _refuse_read_only(cfg, name, path)
            if name == "spool-dir" and not cfg.home_dir_mail:
                try:
                    spool_mount = mount_point_of(path)
                except OSError:
                    pass                    # the health checks then only stat spool-dir
    return spool_mount


def _written_by_sessions(cfg) -> set[str]:
    """The directory options a session writes in (spool/paths.py): spool-dir for the spools,
    their dot-locks, and the temporary drops unless temp-dir or home-dir-misc moves them;
    temp-dir and cache-dir unless home-dir-misc; popbulldir. (bulldb's directory:
    ensure_bulldb_dir.) With maildir set, which users have an mbox is not known before they
    log in, and a Maildir session writes only in the Maildir: the mbox places are not
    judged then."""
    written = {"popbulldir"}
    if cfg.maildir:
        return written
    if not cfg.home_dir_mail or not (cfg.temp_dir or cfg.home_dir_misc):
        written.add("spool-dir")
    if not cfg.home_dir_misc:
        written |= {"temp-dir", "cache-dir"}
    return written


def warn_of_nfs_without_no_atomic_open(cfg, log) -> None:
    """spool-dir on NFS without no-atomic-open: the dot-lock is then made with O_EXCL,
    which NFS does not make atomic across hosts (docs/scale-out.md, "Locks across hosts").
    The locks still work on one host, so it is a warning, once per start, reload or check."""
    if log is None or cfg.no_atomic_open or cfg.home_dir_mail or not cfg.spool_dir:
        return
    if directory_on_nfs(cfg.spool_dir):
        log(syslog.LOG_WARNING, f"spool-dir {cfg.spool_dir} is on NFS, but no-atomic-open is "
                                f"off: dot-locks made by two hosts at once may both succeed; "
                                f"set no-atomic-open (docs/scale-out.md)")


def check_pid_file(cfg, log=None, *, check_only: bool = False) -> None:
    """pid-file's directory, one the server can write in, where the start writes the file: a
    master (listen or tls-listen entries: inetd mode never detaches) with daemon, unless
    systemd's Type=notify unit keeps it in the foreground (master.run_master). python-daemon
    writes it after detaching, where a failure is seen by nobody: the start refuses it first.
    `check_only` (--check-config from a shell) on a machine systemd runs: the packaged unit's
    start writes no pid file, a detaching one does, and the check cannot tell which will
    come, so a problem is a warning; the detaching start still refuses it
    (docs/operations.md, "Start-up checks")."""
    if not (cfg.daemon and cfg.pid_file and (cfg.listen or cfg.tls_listen)):
        return
    if sdnotify.supervised():
        return
    problem = _unwritable_directory(os.path.dirname(cfg.pid_file))
    if not problem:
        return
    if check_only and sdnotify.booted():
        if log is not None:
            log(syslog.LOG_WARNING, f"pid-file {cfg.pid_file}{where_set(cfg, 'pid-file')}: "
                                    f"{problem}; only a start that detaches (daemon, outside "
                                    f"systemd's unit) writes it, and that start refuses it")
        return
    raise PreflightError(f"pid-file {cfg.pid_file}{where_set(cfg, 'pid-file')}: {problem}")


def _refuse_read_only(cfg, name: str, path: str, examined: str | None = None,
                      what: str = "") -> None:
    """A directory the sessions write in (the spool's temporary drop and dot-lock, the cache,
    the bulletin records, the brakes' counts) on a file system mounted read-only where the
    server runs (`examined`: the place looked at, `path` by default): every login would fail
    (or, `what`, what would not be done). A systemd unit's ProtectSystem=strict makes every
    place outside its ReadWritePaths one; --check-config from a shell, outside the unit,
    cannot see it (debian/README.Debian; docs/operations.md, "Start-up checks")."""
    try:
        read_only = os.statvfs(examined or path).f_flag & os.ST_RDONLY
    except OSError:
        return                          # _directory has just looked at it
    if read_only:
        said = (f"{examined} is on a file system mounted read-only here: {what}" if examined
                else "on a file system mounted read-only here")
        raise PreflightError(f"{name} {path}{where_set(cfg, name)}: {said} (under the packaged "
                             f"systemd units, a place not in ReadWritePaths: add it in a "
                             f"drop-in)")


def _nearest_existing(directory: str) -> str:
    """`directory`, or its nearest ancestor that exists (where a makedirs would begin)."""
    while not os.path.lexists(directory) and directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
    return directory


def _directory(cfg, name: str, path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PreflightError(f"{name} {path}{where_set(cfg, name)}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PreflightError(f"{name} {path}{where_set(cfg, name)}: not a directory")
    return st


def ensure_bulldb_dir(cfg) -> None:
    """With bulldb and bulldir: <bulldir>/bulldb exists (made root:<spool group> 2770 when
    missing), the sessions' group may write it, and a database already there is one."""
    if not (cfg.bulldb and cfg.bulldir):
        return
    path = os.path.join(cfg.bulldir, BULLDB_DIR)
    what = f"bulldb {path}{where_set(cfg, 'bulldb')}"
    root = os.geteuid() == 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = _make_bulldb_dir(cfg, path, what, root)
    except OSError as exc:
        raise PreflightError(f"{what}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PreflightError(f"{what}: not a directory")
    _refuse_read_only(cfg, "bulldb", path)          # the sessions write bulldb.sqlite in it
    if root:
        group = _spool_gid(cfg)
        if st.st_uid != 0 or st.st_gid != group or st.st_mode & 0o070 != 0o070:
            raise PreflightError(f"{what}: must be owned by root and group "
                                 f"{_group_name(group)} with group write (mode 2770), so "
                                 f"every user's session can write the database")
    _check_bulldb_file(os.path.join(path, BULLDB_FILE), what)


def _make_bulldb_dir(cfg, path: str, what: str, root: bool) -> os.stat_result:
    try:
        os.mkdir(path, 0o700)
        if root:
            os.chown(path, 0, _spool_gid(cfg))
        os.chmod(path, BULLDB_DIR_MODE)
        return os.lstat(path)
    except OSError as exc:
        raise PreflightError(f"{what}: cannot create it: {exc.strerror}") from None


def _check_bulldb_file(path: str, what: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return                                   # the first session creates it
    except OSError as exc:
        raise PreflightError(f"{what}: {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PreflightError(f"{what}: {path} is not a regular file")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db.execute("SELECT name FROM sqlite_master").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise PreflightError(f"{what}: {path}: {exc}") from None


def _spool_gid(cfg) -> int:
    """The sessions' effective group: the spool directory's (session.spool_group)."""
    try:
        return os.stat(cfg.spool_dir).st_gid
    except OSError:
        return grp.getgrnam("mail").gr_gid


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# --- PAM ---------------------------------------------------------------------------------------------
def check_pam_service(cfg) -> None:
    """System users log in through pam-service: its file must exist, or PAM would use
    /etc/pam.d/other (on Debian the system passwords, elsewhere often refuse everyone)."""
    if cfg.user_database != "system":
        return
    service = cfg.pam_service
    path = os.path.join(PAM_DIR, service)
    if "/" in service or not os.path.isfile(path):
        raise PreflightError(f"pam-service {service!r}{where_set(cfg, 'pam-service')}: {path} "
                             f"does not exist")
