"""THE option table: every run-time option of Qpopper 4.1, plus our extensions.

One entry per option drives everything that knows about options: argv parsing, the
configuration-file grammar, `popper --check-config`, the generated example
etc/qpopper/qpopper.config and the man pages. Adding an option means adding one entry here.

Attribute access on Config uses the canonical name with '-' replaced by '_':
`cfg.clear_text_password`, `cfg.update_on_abort`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from . import limits


class OptType(enum.Enum):
    BOOL = "boolean"
    INT = "integer"
    STRING = "string"        # at most limits.MAX_STRING_OPTION_CHARS printable characters, no spaces
    MNEMONIC = "mnemonic"    # one of Option.choices


class Scope(enum.Enum):
    """Where an option may be set (the manual's "not permitted in ..." notes).

    Global configuration files (-f, config-file chains) and the command line may set every
    option. The per-user files are often writable by users, so they are restricted:
    """

    ANYWHERE = "anywhere"          # also ~/.qpopper-options and <spool-dir>/<user>.qpopper-options
    NOT_HOME = "not-home"          # also the spool-dir user file (admin-owned), not ~/.qpopper-options
    NOT_USER = "not-user"          # global files and argv only
    STARTUP = "startup"            # like NOT_USER, and only read when the server starts (needs a restart or HUP)


@dataclass(frozen=True)
class Option:
    name: str                                  # canonical, Qpopper's spelling
    type: OptType
    default: Any
    help: str
    aliases: tuple[str, ...] = ()              # every other spelling accepted in config files
    flag: str | None = None                    # command-line flag, e.g. "-s"
    flag_arg: str | None = None                # metavar when the flag takes an argument
    flag_value: Any = None                     # value a no-argument flag sets (bools: True unless given)
    choices: tuple[str, ...] = ()              # MNEMONIC: allowed values, canonical spelling first
    numeric_choices: bool = False              # MNEMONIC set by number on argv (-p 0..4: index in choices)
    minimum: int | None = None                 # INT range
    maximum: int | None = None
    scope: Scope = Scope.ANYWHERE
    extension: bool = False                    # ours, not in Qpopper 4.1
    repeatable: bool = False                   # setting it again adds (e.g. listen)

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _b(name, default, help, **kw) -> Option:
    return Option(name, OptType.BOOL, default, help, **kw)


def _i(name, default, help, **kw) -> Option:
    return Option(name, OptType.INT, default, help, **kw)


def _s(name, default, help, **kw) -> Option:
    return Option(name, OptType.STRING, default, help, **kw)


def _m(name, default, choices, help, **kw) -> Option:
    return Option(name, OptType.MNEMONIC, default, help, choices=tuple(choices), **kw)


# The table. Keep entries in manual order within each group; extensions say "Extension:" in help.
OPTIONS: tuple[Option, ...] = (
    # ---- core: from the manual (to be completed from "Run-Time Options from a Configuration File")
    _b("statistics", False, "Log a Stats: line for each session.", flag="-s"),
    _i("timeout", limits.IDLE_TIMEOUT_S, "Seconds of client inactivity before the session is aborted.",
       flag="-T", flag_arg="secs", minimum=1),
    _b("update-on-abort", True,
       "On abort (EOF, timeout, signal) commit deletions as if QUIT were sent (Qpopper's default; "
       "violates RFC 1939)."),
    _m("clear-text-password", "default", ("default", "never", "always", "local", "tls"),
       "When USER/PASS is allowed: default (not for pop.auth users), never, always, local "
       "(127.* only), tls (only after TLS).", flag="-p", flag_arg="0..4", numeric_choices=True,
       aliases=()),
    _s("spool-dir", "/var/mail", "Directory holding the users' mail spools.", scope=Scope.NOT_HOME),
    # ---- extensions (ours)
    _s("pam-service", "pop3", "Extension: PAM service name used for USER/PASS.", extension=True,
       scope=Scope.NOT_USER),
)

BY_NAME: dict[str, Option] = {}
for _opt in OPTIONS:
    for _spelling in _opt.spellings:
        assert _spelling not in BY_NAME, f"duplicate option spelling {_spelling}"
        BY_NAME[_spelling] = _opt
BY_FLAG: dict[str, Option] = {o.flag: o for o in OPTIONS if o.flag}


def lookup(name: str) -> Option | None:
    """The option for any accepted spelling (case-insensitive), or None."""
    return BY_NAME.get(name.lower())
