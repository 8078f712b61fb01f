"""popauth: manage the pop.auth store (APOP, CRAM-MD5 and SCRAM secrets), Qpopper's interface.

    popauth -init                     root: create the store (owned by pop-auth-owner, 0600)
    popauth -user NAME [SECRET]       root or the owner: add or change NAME's secret
    popauth -delete NAME              root or the owner: remove NAME
    popauth -list                     root or the owner: list the names
    popauth --import-dbm FILE         root or the owner: import a C Qpopper pop.auth dbm file
    popauth                           a user sets their own secret (run through sudo)

Options before the command: `-f FILE` / `--config FILE` reads that configuration instead of
/etc/qpopper/qpopper.config (for pop-auth-file and pop-auth-owner); `--file STORE` and
`--owner ACCOUNT` override those two.

Qpopper installed popauth setuid to the `pop` account. A setuid Python script is not safe
(the interpreter trusts its environment), so ordinary users set their own secret through
sudo, with a sudoers rule that allows exactly the argument-less form:

    ALL ALL=(root) /usr/sbin/popauth ""

Run as root through sudo with no arguments, popauth changes only the secret of SUDO_USER;
with user-database pop-auth (whose names are POP-only users, not accounts) only an existing
entry, after its current secret is typed.
Every change is one SQLite transaction: a crash leaves the old store or the new one.
Each misuse prints one line on stderr and exits 2 (usage) or 1 (refused / failed).
"""

from __future__ import annotations

import fcntl
import getpass
import hmac
import os
import pwd
import signal
import stat
import sys
import syslog
import time
from contextlib import contextmanager

from qpopper.auth.store import PopAuthStore, StoreError
from qpopper.log import Logger

DEFAULT_CONFIG = "/etc/qpopper/qpopper.config"
EXIT_FAILED = 1
EXIT_USAGE = 2
USAGE = ("usage: popauth [-f CONFIG] [--file STORE] [--owner ACCOUNT] "
         "[-init | -user NAME [SECRET] | -delete NAME | -list | --import-dbm FILE]")
DBM_XOR = 0xFF
SECRET_CHECK_DELAY_S = 2
"""Spent on every check of a current secret, right or wrong, before the answer (as passwd(1)
pauses after a wrong one): the caller learns nothing sooner, and cannot cut it short."""
UNINTERRUPTED = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT, signal.SIGTSTP,
                 signal.SIGTTIN, signal.SIGTTOU)
"""What sudo relays to popauth from its caller (or the terminal sends, as ^Z's stop):
ignored while a secret is checked, so no caller can cut the pause short or stop popauth
while it holds the turn."""
CHECK_TURN_WAIT_S = 30
"""How long a check waits for the one before it; then it is refused ("try again")."""


class Refusal(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, text: str, status: int = EXIT_FAILED):
        super().__init__(text)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except Refusal as refusal:
        print(f"popauth: {refusal}", file=sys.stderr)
        return refusal.status
    except StoreError as error:
        print(f"popauth: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("popauth: interrupted; nothing was changed", file=sys.stderr)
        return EXIT_FAILED


def run(argv: list[str]) -> int:
    settings, command = _split_options(argv)
    verb, args = (command[0], command[1:]) if command else ("", [])
    if verb in ("-h", "--help"):
        print(USAGE)
        return 0
    expected = {"-init": (0, 0), "-user": (1, 2), "-delete": (1, 1), "-list": (0, 0),
                "--import-dbm": (1, 1)}
    if verb and verb not in expected:
        raise Refusal(f"unknown command {verb!r}; {USAGE}", EXIT_USAGE)
    if verb:
        low, high = expected[verb]
        if not low <= len(args) <= high:
            raise Refusal(f"{verb} takes {_count(low, high)}; {USAGE}", EXIT_USAGE)
    path, owner = _store_settings(settings)
    if not verb:
        pop_only = _load_config(settings.get("config")).user_database == "pop-auth"
        return set_own_secret(path, owner, pop_only=pop_only)
    if verb == "-init":
        return init_store(path, owner)
    _require_root_or_owner(verb, owner)
    store = _open_store(path, owner)
    if verb == "-user":
        secret = args[1] if len(args) == 2 else _ask_secret(args[0])
        store.set_secret(args[0], secret)
        print(f"popauth: secret of {args[0]} set in {path}")
    elif verb == "-delete":
        if not store.delete(args[0]):
            raise Refusal(f"{args[0]} is not in {path}")
        print(f"popauth: {args[0]} deleted from {path}")
    elif verb == "-list":
        for name in store.list_users():
            print(name)
    else:
        count = store.import_users(read_c_qpopper_dbm(args[0]))
        print(f"popauth: imported {count} user{'s' if count != 1 else ''} from {args[0]}")
    return 0


# --- the commands -----------------------------------------------------------------------------
def init_store(path: str, owner: pwd.struct_passwd) -> int:
    """Root only: the store, and its directory when missing (owned by the owner account,
    0700: SQLite writes its rollback journal beside the store, so whoever changes the store
    must be able to write there)."""
    if os.geteuid() != 0:
        raise Refusal("-init must be run by root")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(os.path.dirname(directory), mode=0o755, exist_ok=True)
        os.mkdir(directory, 0o700)
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    store = PopAuthStore.create(path, owner.pw_uid, owner.pw_gid)
    _make_decoy_key(store)
    st = os.stat(directory)
    if st.st_uid != owner.pw_uid or not st.st_mode & stat.S_IWUSR:
        print(f"popauth: warning: {directory} is not {owner.pw_name}'s: only root can change "
              f"the store (SQLite needs to write a journal beside it)", file=sys.stderr)
    print(f"popauth: created {path} (owner {owner.pw_name}, mode 0600)")
    return 0


def set_own_secret(path: str, owner: pwd.struct_passwd, *, pop_only: bool = False) -> int:
    """Plain `popauth`: the invoking user's own secret. Through sudo (root, SUDO_USER set)
    the name is SUDO_USER's; root itself has no POP secret. `pop_only` (user-database
    pop-auth): the store's names are POP-only users, not accounts, so an account of the same
    name is not their owner: only an existing entry changes, and only after its current secret
    is given (popauth(8), "no command")."""
    if os.geteuid() != 0:
        if os.geteuid() == owner.pw_uid:
            raise Refusal(f"{owner.pw_name} manages the store: use -user NAME", EXIT_USAGE)
        raise Refusal("changing your own secret needs sudo: run 'sudo popauth' (see popauth's "
                      "documentation for the sudoers line)")
    name = os.environ.get("SUDO_USER", "")
    if not name or name == "root":
        raise Refusal("run by root: use -user NAME (plain popauth is for users, through sudo)",
                      EXIT_USAGE)
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise Refusal(f"SUDO_USER {name!r} is not an account") from None
    store = _open_store(path, owner)
    if pop_only:
        _check_current_secret(store, name)
    store.set_secret(name, _ask_secret(name))
    print(f"popauth: your secret is set in {path}")
    return 0


def _check_current_secret(store: PopAuthStore, name: str) -> None:
    """user-database pop-auth: the entry `name` must exist and its current secret be typed."""
    current = store.get_secret(name)
    if current is None:
        raise Refusal(f"{name} has no secret in the store, and with user-database pop-auth "
                      f"only the administrator adds one (popauth -user {name})")
    try:
        typed = getpass.getpass(f"Current secret for {name}: ")
    except EOFError:
        raise Refusal("no current secret given; nothing was changed") from None
    # One check at a time on the store (flock of its directory), each taking the same pause
    # whether right or wrong, with the signals sudo relays ignored: no answer comes sooner
    # than the pause, a ^C cannot cut it short, parallel guesses wait their turn.
    with _checks_in_turn(store), _signals_ignored():
        right = hmac.compare_digest(typed.encode(), current.encode())
        if not right:
            log = Logger(facility=syslog.LOG_AUTHPRIV, ident="popauth")
            log(syslog.LOG_NOTICE, f"wrong current secret for {name} typed by SUDO_USER "
                                   f"{os.environ.get('SUDO_USER', '')}; nothing was changed")
            log.close()
        time.sleep(SECRET_CHECK_DELAY_S)
    if not right:
        raise Refusal(f"that is not the current secret of {name}; nothing was changed")


@contextmanager
def _signals_ignored():
    before = {number: signal.signal(number, signal.SIG_IGN) for number in UNINTERRUPTED}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


@contextmanager
def _checks_in_turn(store: PopAuthStore):
    fd = os.open(os.path.dirname(os.path.abspath(store.path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + CHECK_TURN_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Refusal("another check of a secret is taking its turn; try again "
                                  "later. Nothing was changed") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def read_c_qpopper_dbm(path: str) -> list[tuple[str, str]]:
    """A C Qpopper pop.auth database (docs/compatibility.md, "APOP and the pop.auth store"): key = name + NUL, value = the secret
    with every byte XOR 0xFF (a trailing NUL, when the writer stored one, is dropped)."""
    if not os.path.exists(path) and not os.path.exists(path + ".db") \
            and not os.path.exists(path + ".pag"):
        raise Refusal(f"{path}: no such file")
    db = _open_dbm(path)
    try:
        entries = []
        for key in db.keys():
            value = db[key]
            name = key[:-1] if key.endswith(b"\0") else key
            secret = bytes(b ^ DBM_XOR for b in value)
            secret = secret[:-1] if secret.endswith(b"\0") else secret
            try:
                entries.append((name.decode("utf-8"), secret.decode("utf-8")))
            except UnicodeDecodeError:
                raise Refusal(f"{path}: entry {name!r} is not UTF-8 text; nothing imported") \
                    from None
    finally:
        db.close()
    return sorted(entries)


def _open_dbm(path: str):
    errors = []
    for module_name in ("dbm.gnu", "dbm.ndbm"):
        try:
            module = __import__(module_name, fromlist=["open"])
        except ImportError as exc:
            errors.append(f"{module_name} unavailable ({exc})")
            continue
        try:
            return module.open(path, "r")
        except Exception as exc:       # each dbm module has its own error class
            errors.append(f"{module_name}: {exc}")
    if all("unavailable" in e for e in errors):
        raise Refusal(f"{path}: this Python has neither dbm.gnu nor dbm.ndbm; install "
                      f"python3-gdbm (Debian) and run popauth with that Python")
    raise Refusal(f"{path}: not a dbm file this Python can read ({'; '.join(errors)})")


# --- helpers ----------------------------------------------------------------------------------
def _split_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    settings: dict[str, str] = {}
    names = {"-f": "config", "--config": "config", "--file": "file", "--owner": "owner"}
    i = 0
    while i < len(argv) and argv[i] in names:
        if i + 1 >= len(argv):
            raise Refusal(f"{argv[i]} needs a value; {USAGE}", EXIT_USAGE)
        settings[names[argv[i]]] = argv[i + 1]
        i += 2
    return settings, argv[i:]


def _store_settings(settings: dict[str, str]) -> tuple[str, pwd.struct_passwd]:
    path, owner_name = settings.get("file"), settings.get("owner")
    if path is None or owner_name is None:
        cfg = _load_config(settings.get("config"))
        path = path or cfg.pop_auth_file
        owner_name = owner_name or cfg.pop_auth_owner
    if not path:
        raise Refusal("pop-auth-file is not set in the configuration")
    try:
        owner = pwd.getpwnam(owner_name)
    except KeyError:
        raise Refusal(f"the pop-auth-owner account {owner_name!r} does not exist "
                      f"(create it, e.g. adduser --system --group {owner_name})") from None
    return path, owner


def _load_config(config_file: str | None):
    from qpopper.config import Config, ConfigError, load
    if config_file is None and not os.path.exists(DEFAULT_CONFIG):
        return Config.defaults()
    try:
        cfg, _ = load(["-f", config_file or DEFAULT_CONFIG])
    except ConfigError as error:
        raise Refusal(str(error)) from None
    return cfg


def _require_root_or_owner(verb: str, owner: pwd.struct_passwd) -> None:
    if os.geteuid() not in (0, owner.pw_uid):
        raise Refusal(f"{verb} must be run by root or {owner.pw_name}")


def _open_store(path: str, owner: pwd.struct_passwd) -> PopAuthStore:
    store = PopAuthStore(path, owner.pw_uid)
    if not store.exists():
        raise Refusal(f"{path} does not exist; create it with popauth -init")
    store.check_file_for_change()
    if not os.path.lexists(store.decoy_key_path):
        _make_decoy_key(store)              # a store made before popauth made the key
    return store


def _make_decoy_key(store: PopAuthStore) -> None:
    """The key of SCRAM's made-up exchanges, beside the store (PopAuthStore.decoy_key)."""
    try:
        store.make_decoy_key()
    except OSError as exc:
        raise Refusal(f"{store.decoy_key_path}: cannot create: {exc.strerror}") from None


def _ask_secret(name: str) -> str:
    """Twice, without echo (getpass reads the terminal, not stdin)."""
    try:
        first = getpass.getpass(f"New secret for {name}: ")
        second = getpass.getpass(f"Retype the secret for {name}: ")
    except EOFError:
        raise Refusal("no secret given; nothing was changed") from None
    if first != second:
        raise Refusal("the two secrets differ; nothing was changed")
    if not first:
        raise Refusal("the secret must not be empty; nothing was changed")
    return first


def _count(low: int, high: int) -> str:
    if high == 0:
        return "no arguments"
    if low == high:
        return f"{low} argument{'s' if low > 1 else ''}"
    return f"{low} to {high} arguments"


if __name__ == "__main__":
    sys.exit(main())
