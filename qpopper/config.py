"""Resolve every layer of configuration into one frozen Config.

Layers, later wins: built-in defaults → argv, processed in order, where `-f FILE` (and
`config-file` lines inside files) read a global file at that point → the per-user files, applied
by the session after login with `apply_user_file`: ~/.qpopper-options first, then
<spool-dir>/<user>.qpopper-options, so the administrator's file wins (Qpopper's order;
docs/compatibility.md, "Spool locations and option files"). Per-user files are scope-checked: a refused option is logged and ignored, as in Qpopper.

The configuration-file grammar (the manual's BNF, as Qpopper's config.c reads it):

    # comment                      comment lines and blank lines are ignored
    set OPTION                     boolean options only: sets it to true
    set OPTION = VALUE             VALUE: true/false/1/0, an integer, a mnemonic or a string
    reset OPTION                   boolean options only: sets it to false

Spaces or tabs may surround every token; option names and mnemonics are case-insensitive; a
`#` after the value starts a comment. A string is one word of at most 255 printable characters,
or a quoted string ("...", '...' or `...`, with \\ escaping the quote or a backslash) that may
contain spaces; an empty quoted string unsets a string option. `set OPTION VALUE` (no `=`) is an
error, as in Qpopper.

Every mistake is a ConfigError whose text is one line: `FILE:LINE: what was expected`.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import stat
import syslog
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from qpopper import limits
from qpopper.option_types import shown
from qpopper.options import (BY_FLAG, BY_NAME, E_FLAG_KEYS, EXPIRE_FLAG, OPTIONS, OptType, Option,
                             SECRET_OPTIONS, lookup)

DEFAULT_SOURCE = "default"
USER_FILE_KINDS = {"spool": "a spool-directory options file", "home": "a home-directory "
                   "~/.qpopper-options file"}

# Invocation flags: they choose what popper does, they are not options.
INVOCATION_FLAGS = {"--check-config": "check_config", "--show-config": "show_config",
                    "--demo": "demo", "--help": "show_help", "--version": "show_version"}

Log = Callable[[int, str], None]

READ_CHUNK_OCTETS = 8192

USER_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""How the per-user files are opened: never through a link, and a FIFO planted in their place
cannot hold the session."""


class ConfigError(Exception):
    """A configuration problem, rendered as one line: `FILE:LINE: what was expected`."""


@dataclass(frozen=True)
class Invocation:
    """How popper was started, apart from the options (kept so HUP can re-run load())."""

    check_config: bool = False
    show_config: bool = False        # check_config's table without the checks of the system
    demo: bool = False
    argv: tuple[str, ...] = ()
    config_files: tuple[str, ...] = ()         # every global file read, in order (chains included)
    start_dir: str = ""             # where a detached master started: its reloads' relative -f
    show_help: bool = False
    show_version: bool = False


class Config:
    """The effective configuration: one read-only attribute per option ('-' → '_')."""

    __slots__ = ("_values", "_sources")

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_sources", dict(sources))

    @classmethod
    def defaults(cls) -> "Config":
        return cls({o.name: o.default for o in OPTIONS}, {o.name: DEFAULT_SOURCE for o in OPTIONS})

    def __getattr__(self, attr: str) -> Any:
        # every option is a property (below); only other names get here
        raise AttributeError(f"no option {attr!r}")

    def __setattr__(self, attr, value):
        raise AttributeError("Config is frozen; use replace()")

    def __reduce__(self):
        return (Config, (self._values, self._sources))

    def __eq__(self, other) -> bool:
        return isinstance(other, Config) and self._values == other._values

    def __hash__(self):
        return hash(tuple(sorted((k, repr(v)) for k, v in self._values.items())))

    def __repr__(self) -> str:
        changed = [f"{o.name}={v!r}" for o, v, s in self.items() if s != DEFAULT_SOURCE]
        return f"Config({', '.join(changed)})"

    def get(self, name: str) -> Any:
        return self._values[_option(name).name]

    def source(self, name: str) -> str:
        """Where the effective value came from: 'default', 'argv -T', '/etc/...:12', ..."""
        return self._sources[_option(name).name]

    def items(self) -> Iterator[tuple[Option, Any, str]]:
        for opt in OPTIONS:
            yield opt, self._values[opt.name], self._sources[opt.name]

    def replace(self, source: str = "override", **changes: Any) -> "Config":
        """A copy with some options changed (attribute-style names), values already typed."""
        values, sources = dict(self._values), dict(self._sources)
        for attr, value in changes.items():
            opt = lookup(attr.replace("_", "-"))
            if opt is None:
                raise ConfigError(f"{source}: unknown option {attr!r}")
            values[opt.name] = value
            sources[opt.name] = source
        return Config(values, sources)


def _option_attribute(name: str) -> property:
    def value(self):
        try:
            return self._values[name]
        except KeyError:                # getattr(cfg, x, default) keeps working
            raise AttributeError(f"no option {name!r}") from None
    return property(value, doc=f"The effective value of {name}.")


# One class attribute per option: a plain property is ~6x faster than __getattr__ (which runs
# only after the failed normal lookup has built an AttributeError), and hot paths such as RETR's
# reply writer read an option per write. __getattr__ is left with the unknown names' error.
for _opt in OPTIONS:
    # an option named like a method (get, items, replace, ...) would hide it
    if hasattr(Config, _opt.name.replace("-", "_")):
        raise RuntimeError(f"option {_opt.name!r} would hide Config's own attribute")
    setattr(Config, _opt.name.replace("-", "_"), _option_attribute(_opt.name))
del _opt


def _option(name: str) -> Option:
    opt = lookup(name.replace("_", "-"))
    if opt is None:
        raise KeyError(f"no option {name!r}")
    return opt


# ---- loading ---------------------------------------------------------------------------------
class _Layers:
    """The values being built while files and argv are read (mutable; becomes a Config)."""

    def __init__(self, base: Config, start_dir: str = ""):
        self.start_dir = start_dir                  # where argv's relative -f names are
        self.values = dict(base._values)
        self.sources = dict(base._sources)
        self.files_read: list[str] = []

    def set(self, opt: Option, value: Any, source: str) -> None:
        self.values[opt.name] = opt.combine(self.values[opt.name], value)
        self.sources[opt.name] = source

    def config(self) -> Config:
        return Config(self.values, self.sources)


def load(argv: list[str] | tuple[str, ...], start_dir: str = "") -> tuple[Config, Invocation]:
    """Parse popper's command line (reading -f files where they appear, relative names from
    `start_dir`) into a Config. Raises ConfigError with one readable line for any mistake."""
    layers = _Layers(Config.defaults(), start_dir)
    flags = _read_argv(list(argv), layers)
    invocation = Invocation(argv=tuple(argv), config_files=tuple(layers.files_read), **flags)
    cfg = layers.config()
    check_combinations(cfg)
    return cfg, invocation


def check_combinations(cfg: Config) -> None:
    """Options that are fine alone but wrong together: ConfigError naming both sources.

    user-database pop-auth with home-dir-mail or home-dir-misc: pop.auth users share ONE
    account (auth/policy.py), so they would all share one mail file (or temporary drop) in
    its home directory. Their Login has no home; the session would refuse every login.

    user-database pop-auth with kerberos: GSSAPI proves a Kerberos principal, which
    auth_to_local maps to a system account; pop.auth users are no system accounts, so GSSAPI
    would log in system accounts the site said are not its POP users
    (docs/compatibility.md, "SASL and Kerberos").
    """
    if cfg.user_database != "pop-auth":
        return
    if cfg.kerberos:
        raise ConfigError(
            f"{cfg.source('kerberos')}: 'kerberos' cannot be used with 'user-database = "
            f"pop-auth' (set at {cfg.source('user-database')}): GSSAPI proves a Kerberos "
            f"principal, which names a system account, not a pop.auth user")
    for name in ("home-dir-mail", "home-dir-misc"):
        if cfg.get(name):
            raise ConfigError(
                f"{cfg.source(name)}: '{name}' cannot be used with 'user-database = pop-auth' "
                f"(set at {cfg.source('user-database')}): pop.auth users share one account, "
                f"so they would share one home directory and one mail file")


def read_files(paths: list[str], base: Config | None = None) -> Config:
    """`base` (defaults) with the global files `paths` applied in order (tests, tools)."""
    layers = _Layers(base or Config.defaults())
    for path in paths:
        _read_file(layers, path, stack=(), kind=None, named_by="argv -f")
    return layers.config()


def apply_user_file(cfg: Config, path: str, kind: str, log: Log, *,
                    fd: int | None = None) -> Config:
    """`cfg` with the per-user options file `path` applied; kind is "spool" or "home".

    Options the file may not set (Scope) are logged and ignored. A file with a syntax error is
    logged and ignored as a whole: a user's mistake never breaks the login. A missing file is
    no file. Ownership and privilege checks are the caller's job; the file itself is opened
    with O_NOFOLLOW, and must be a regular file. With `fd` the text is read from that
    descriptor, which the caller opened and checked (and still owns): `path` then only names
    the file in messages and is where relative config-file names start.
    """
    if kind not in USER_FILE_KINDS:
        raise ValueError(f"user file kind must be 'spool' or 'home', not {kind!r}")
    layers = _Layers(cfg)
    try:
        _read_file(layers, path, stack=(), kind=kind, named_by=None, log=log, fd=fd)
    except FileNotFoundError:
        return cfg
    except ConfigError as error:
        log(syslog.LOG_ERR, f"{error}; options file ignored")
        return cfg
    return layers.config()


def apply_spool_options_file(cfg: Config, path: str, owner: int, log: Log) -> Config:
    """`cfg` with the administrator's <spool-dir>/<user>.qpopper-options applied. Group mail
    may create files in the spool directory, so the file counts only when it is a regular
    file owned by `owner` (root; a server that does not run as root: its own account) that
    neither group nor others may write. That is checked on the opened descriptor, and the
    text is read from the same descriptor: nothing can be swapped in between. Any other file
    is ignored with a LOG_WARNING line naming it and saying why; a missing one is no file."""
    fd = _open_admin_file(path, owner, log)
    if fd is None:
        return cfg
    try:
        return apply_user_file(cfg, path, "spool", log, fd=fd)
    finally:
        os.close(fd)


def _open_admin_file(path: str, owner: int, log: Log) -> int | None:
    """The descriptor of `path` when it is the administrator's file, else None (logged)."""
    try:
        fd = os.open(path, USER_FILE_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        log(syslog.LOG_WARNING, f"Ignoring {path}: {_why_not_opened(error)}")
        return None
    problem = _not_the_administrators(os.fstat(fd), owner)
    if problem is None:
        return fd
    os.close(fd)
    log(syslog.LOG_WARNING, f"Ignoring {path}: {problem}")
    return None


def _not_the_administrators(st: os.stat_result, owner: int) -> str | None:
    """Why a file with this status is not the administrator's, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return "it has other hard links"      # a root file linked in by group mail
    if st.st_uid != owner:
        wanted = "root" if owner == 0 else f"uid {owner}, the server's account"
        return f"owned by uid {st.st_uid} (must be {wanted})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


# ---- argv --------------------------------------------------------------------------------------
def _read_argv(argv: list[str], layers: _Layers, *, lenient: bool = False) -> dict[str, bool]:
    """Read argv into layers; lenient: a word that fails is skipped, not raised."""
    flags = dict.fromkeys(INVOCATION_FLAGS.values(), False)
    rest = iter(argv)
    only_positional = False
    for arg in rest:
        try:
            if only_positional or not arg.startswith("-") or arg == "-":
                _read_positional(arg, layers)
            elif arg == "--":
                only_positional = True
            elif arg in INVOCATION_FLAGS:
                flags[INVOCATION_FLAGS[arg]] = True
            elif arg.startswith("--"):
                _read_long_option(arg, rest, layers)
            else:
                _read_short_flags(arg, rest, layers)
        except ConfigError:
            if not lenient:
                raise
    return flags


def read_argv_leniently(argv: list[str] | tuple[str, ...], name: str) -> Any:
    """The value argv (with the files its -f name, as far as they read) gives option NAME
    when load() refused it: read as load() reads it, skipping what fails. For an error path
    that must still act on one setting (inetd mode's TLS, cli.py)."""
    layers = _Layers(Config.defaults())
    _read_argv(list(argv), layers, lenient=True)
    return layers.values[name]


def _read_positional(arg: str, layers: _Layers) -> None:
    """The standalone server's [ADDRESS:]PORT argument: one more listener."""
    opt = BY_NAME["listen"]
    try:
        value = opt.parse(arg)
    except ValueError:
        raise ConfigError(f"argv: unexpected argument '{_clip(arg)}' (expected [ADDRESS:]PORT, "
                          f"IPv6 addresses in brackets)") from None
    layers.set(opt, value, "argv [ADDRESS:]PORT")


def _next_argument(rest: Iterator[str], what: str, metavar: str) -> str:
    try:
        return next(rest)
    except StopIteration:
        raise ConfigError(f"argv: {what} needs an argument ({metavar})") from None


def _read_long_option(arg: str, rest: Iterator[str], layers: _Layers) -> None:
    name, has_value, value = arg[2:].partition("=")
    if f"--{name}" in INVOCATION_FLAGS:
        raise ConfigError(f"argv: {arg.partition('=')[0]} takes no value")
    opt = lookup(name)
    if opt is None:
        raise ConfigError(f"argv: unknown option '--{_clip(name)}'{_suggestion(name)}")
    if not has_value:
        value = "true" if opt.type is OptType.BOOL else _next_argument(rest, f"--{name}", "value")
    _set_from_argv(layers, opt, value, f"argv --{opt.name}", f"argv --{name}")


def _read_short_flags(arg: str, rest: Iterator[str], layers: _Layers) -> None:
    """One argv word of getopt-style flags: -s, -sS, -T600, -T 600, -eexpire=0."""
    position = 1
    while position < len(arg):
        flag = "-" + arg[position]
        position += 1
        attached = arg[position:]
        if flag == EXPIRE_FLAG:
            _read_e_flag(attached or _next_argument(rest, flag, "login_delay=N,expire=N"), layers)
            return
        opt = BY_FLAG.get(flag)
        if opt is None:
            raise ConfigError(f"argv: unknown flag '{_clip(flag)}' (popper --help lists them)")
        source = f"argv {flag}"
        if not opt.flag_takes_argument:
            layers.set(opt, opt.flag_value, source)
            continue
        value = attached or _next_argument(rest, flag, opt.flag_arg)
        if opt.flag_numbers and value.isdigit():
            if int(value) >= len(opt.flag_numbers):
                raise ConfigError(f"argv {flag}: expects 0..{len(opt.flag_numbers) - 1} or one "
                                  f"of {', '.join(opt.accepted_words)}, got '{value}'")
            layers.set(opt, opt.flag_numbers[int(value)], source)
        else:
            _set_from_argv(layers, opt, value, source, source)
        return


def _read_e_flag(text: str, layers: _Layers) -> None:
    """-e login_delay=N,expire=N (either or both, any order)."""
    for item in text.split(","):
        key, equals, value = item.partition("=")
        opt = E_FLAG_KEYS.get(key.strip().lower().replace("-", "_"))
        if opt is None or not equals:
            raise ConfigError(f"argv -e: expected login_delay=N,expire=N, got '{_clip(text)}'")
        _set_from_text(layers, opt, value.strip(), "argv -e", "argv -e")


def _set_from_argv(layers: _Layers, opt: Option, text: str, source: str, where: str) -> None:
    """One option given on argv (flag or --name): config-file reads that file now."""
    if opt.name == "config-file":
        _chain(layers, os.path.join(layers.start_dir, text), source, stack=(), kind=None,
               named_by=source)
    else:
        _set_from_text(layers, opt, text, source, where)


def _set_from_text(layers: _Layers, opt: Option, text: str, source: str, where: str) -> None:
    try:
        layers.set(opt, opt.parse(text), source)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), BY_NAME, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---- files ------------------------------------------------------------------------------------
_NAME_RE = re.compile(r"[A-Za-z0-9-]+")
_WORD_RE = re.compile(r"[^ \t]*")            # an unquoted value: up to the first blank
_QUOTES = "\"'`"


def _chain(layers: _Layers, path: str, source: str, *, stack: tuple[str, ...],
           kind: str | None, named_by: str, log: Log | None = None) -> None:
    """Record config-file = path and read that file now."""
    opt = BY_NAME["config-file"]
    try:
        value = opt.parse(path)
    except ValueError as error:       # a control character, or too long once joined
        raise ConfigError(f"{source}: {error}") from None
    layers.set(opt, value, source)
    _read_file(layers, path, stack=stack, kind=kind, named_by=named_by, log=log)


def _read_file(layers: _Layers, path: str, *, stack: tuple[str, ...], kind: str | None,
               named_by: str | None, log: Log | None = None, fd: int | None = None) -> None:
    """Apply one configuration file (read from `fd` when given). `stack` holds the files
    that chained to it."""
    where = named_by or path
    if len(stack) >= limits.MAX_CONFIG_FILE_DEPTH:
        raise ConfigError(f"{where}: config-file nesting deeper than "
                          f"{limits.MAX_CONFIG_FILE_DEPTH} levels")
    identity = os.path.realpath(path)
    chain_ids = [os.path.realpath(p) for p in stack]
    if identity in chain_ids:
        loop = stack[chain_ids.index(identity):] + (path,)
        raise ConfigError(f"{where}: config-file loop: {' -> '.join(loop)}")
    lines = _read_lines(path, kind, where) if fd is None else _lines_of(fd, path, where)
    if kind is None:
        layers.files_read.append(path)
    # A file chained from a per-user file may be any file the session can read with the mail
    # group (another user's spool): its errors name the line, never quote it into the log.
    quotable = kind is None or not stack
    for number, raw in enumerate(lines, start=1):
        location = f"{path}:{number}"
        try:
            parsed = _parse_line(raw, location)
        except ConfigError:
            if quotable:
                raise
            raise ConfigError(f"{location}: not an options line") from None
        if parsed is None:
            continue
        opt, value_text = parsed
        if kind is not None and not opt.scope.allows(kind):
            if log is not None:
                log(syslog.LOG_WARNING, f"{location}: option '{opt.name}' may not be set in "
                                        f"{USER_FILE_KINDS[kind]}; ignored")
            continue
        if opt.name == "config-file":
            if value_text == "":
                raise ConfigError(f"{location}: 'config-file' needs a file name")
            target = os.path.join(os.path.dirname(path), value_text)
            _chain(layers, target, location, stack=stack + (path,), kind=kind,
                   named_by=location, log=log)
            continue
        try:
            layers.set(opt, opt.parse(value_text), location)
        except ValueError as error:
            reason = error if quotable else f"not a valid value for '{opt.name}'"
            raise ConfigError(f"{location}: {reason}") from None


def _read_lines(path: str, kind: str | None, where: str) -> list[str]:
    """The file's lines as text; user files are opened without following symlinks."""
    flags = USER_FILE_FLAGS if kind is not None else USER_FILE_FLAGS & ~os.O_NOFOLLOW
    prefix = _file_prefix(path, where)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if kind is not None and where == path:
            raise                              # a missing user file is simply no file
        raise ConfigError(f"{prefix}: cannot read configuration file: "
                          f"No such file or directory") from None
    except OSError as error:
        raise ConfigError(f"{prefix}: cannot read configuration file: "
                          f"{_why_not_opened(error)}") from None
    try:
        return _lines_of(fd, path, where)
    finally:
        os.close(fd)


def _file_prefix(path: str, where: str) -> str:
    """How messages about a file begin: its name, or the line that named it and the name."""
    return where if where == path else f"{where}: '{path}'"


def _why_not_opened(error: OSError) -> str:
    return "is a symbolic link" if error.errno == errno.ELOOP else error.strerror


def _lines_of(fd: int, path: str, where: str) -> list[str]:
    """The lines of the regular file open on `fd` (left open), as text."""
    prefix = _file_prefix(path, where)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise ConfigError(f"{prefix}: cannot read configuration file: not a regular file")
    with open(fd, "rb", closefd=False) as stream:
        try:
            data = _read_bounded(stream, limits.MAX_CONFIG_FILE_OCTETS + 1)
        except OSError as error:
            raise ConfigError(f"{prefix}: cannot read configuration file: "
                              f"{error.strerror}") from None
    if len(data) > limits.MAX_CONFIG_FILE_OCTETS:
        raise ConfigError(f"{prefix}: larger than {limits.MAX_CONFIG_FILE_OCTETS} octets")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    text_lines = []
    for number, line in enumerate(lines, start=1):
        if len(line) > limits.MAX_CONFIG_LINE_CHARS:
            raise ConfigError(f"{path}:{number}: line longer than "
                              f"{limits.MAX_CONFIG_LINE_CHARS} characters")
        try:
            text_lines.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}:{number}: not UTF-8 text") from None
    return text_lines


def _read_bounded(stream, limit: int) -> bytes:
    """At most `limit` octets, read in small pieces: one read(limit) would make a buffer of
    the whole limit (1 MiB) for every file, and the heap of a long-running reader (the master
    at each HUP) fragments around those buffers."""
    chunks, size = [], 0
    while size < limit:
        chunk = stream.read(min(READ_CHUNK_OCTETS, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _parse_line(line: str, location: str) -> tuple[Option, str] | None:
    """(option, value text) for a set/reset line, None for blank and comment lines.

    Booleans come back as "true"/"false" text so one path types every value.
    """
    text = line.lstrip(" \t")
    if not text or text.startswith("#"):
        return None
    verb = _NAME_RE.match(text)
    words = text.split()                   # (other whitespace than " \t" may be all there is)
    word = verb.group() if verb else (words[0] if words else text)
    if not verb or word.lower() not in ("set", "reset"):
        raise ConfigError(f"{location}: expected 'set' or 'reset', got '{_clip(word)}'")
    rest = text[verb.end():]
    name_match = _NAME_RE.match(rest.lstrip(" \t")) if rest[:1] in (" ", "\t") else None
    if not name_match:
        raise ConfigError(f"{location}: expected an option name after '{word}'")
    name = name_match.group()
    opt = lookup(name)
    if opt is None:
        raise ConfigError(f"{location}: unknown option '{name}'{_suggestion(name)}")
    rest = rest.lstrip(" \t")[name_match.end():].lstrip(" \t")
    resetting = word.lower() == "reset"
    if resetting and opt.type is not OptType.BOOL:
        raise ConfigError(f"{location}: 'reset' needs a boolean option; '{opt.name}' is "
                          f"{'an' if opt.type is OptType.INT else 'a'} {opt.type.value}")
    if not rest or rest.startswith("#"):
        if opt.type is not OptType.BOOL:
            raise ConfigError(f"{location}: '{opt.name}' needs '= value' ({opt.type_text})")
        return opt, "false" if resetting else "true"
    if resetting:
        raise ConfigError(f"{location}: 'reset {opt.name}' takes no value, got '{_clip(rest)}'")
    if not rest.startswith("="):
        raise ConfigError(f"{location}: expected '=' after '{opt.name}', got '{_clip(rest, opt)}'")
    value, rest = _value_token(rest[1:].lstrip(" \t"), opt, location)
    rest = rest.lstrip(" \t")
    if rest and not rest.startswith("#"):
        hint = " (quote a value that contains spaces)" if opt.type is OptType.STRING else ""
        raise ConfigError(f"{location}: unexpected '{_clip(rest, opt)}' after the value of "
                          f"'{opt.name}'{hint}")
    return opt, value


def _value_token(text: str, opt: Option, location: str) -> tuple[str, str]:
    """(value, rest of the line): a quoted string or a run of non-blank characters."""
    if not text or text.startswith("#") and opt.type is not OptType.STRING:
        raise ConfigError(f"{location}: '{opt.name}' needs a value after '=' ({opt.type_text})")
    quote = text[0]
    if quote not in _QUOTES:
        word = _WORD_RE.match(text).group()
        return word, text[len(word):]
    value, position = [], 1
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text) and text[position + 1] in (quote, "\\"):
            value.append(text[position + 1])
            position += 2
            continue
        if char == quote:
            return "".join(value), text[position + 1:]
        value.append(char)
        position += 1
    raise ConfigError(f"{location}: unterminated quoted value for '{opt.name}'")


def _clip(text: str, opt: Option | None = None) -> str:     # may be a secret's value
    return "(not shown)" if opt and opt.name in SECRET_OPTIONS else shown(text, 40)
