"""What a POP3 verb is to the dispatcher: a handler and its argument rules.

Each state's verbs live in one table (verb → Command) built once at import; the dispatcher
looks verbs up there and never turns client bytes into attribute names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from qpopper import limits
from qpopper.pop3.responses import PopError

if TYPE_CHECKING:  # pragma: no cover - type hints only
    from qpopper.pop3.protocol import Protocol

Handler = Callable[["Protocol", list[str]], None]


@dataclass(frozen=True)
class Command:
    """A verb's handler and how many arguments it takes.

    `rest_of_line`: the one argument is everything after the verb and one separator, spaces
    included (PASS: RFC 1939 §7 lets a password contain spaces).
    """

    handler: Handler
    min_args: int = 0
    max_args: int = 0
    rest_of_line: bool = False

    def __post_init__(self):
        assert 0 <= self.min_args <= self.max_args <= limits.MAX_PARAMETERS


class BadCommand(PopError):
    """A refusal that also counts against the connection's bad-command budget
    (limits.MAX_BAD_COMMANDS): past it the client hears `-ERR Too many bad commands` instead
    and the connection closes."""


class CommandSyntaxError(BadCommand):
    """A malformed command line."""


def command_table(entries: Mapping[str, Command]) -> Mapping[str, Command]:
    """A state's table; verbs are upper-case ASCII letters (the dispatcher upper-cases)."""
    for verb in entries:
        assert verb.isascii() and verb.isalpha() and verb.isupper(), verb
    return dict(entries)


# Signature of the RETR/TOP mangle hook (extensions/mangle.py): write the complete reply (status
# line, dot-stuffed CRLF lines, terminator) for message `index` (0-based) mangled per
# `mangle_args`, whole (`body_lines` None: RETR) or headers plus that many body lines (TOP).
# Refuse by raising PopError before writing anything. The protocol has already checked the
# message number and does the retrieved / LAST bookkeeping afterwards.
MangleHook = Callable[["Protocol", int, "int | None", Sequence[str]], None]
SaslMechanisms = Callable[["Protocol"], Sequence[str]]


@dataclass(frozen=True)
class Extensions:
    """Verbs and hooks that later features plug into the state machine.

    - `authorization_verbs` / `transaction_verbs`: extra or replacing table entries
      (XTND and MDEF: extensions/; docs/internals.md, "Protocol").
    - `sasl_mechanisms(proto)`: the mechanisms CAPA lists as `SASL ...` (none: no line).
    - `mangle`: accepts RETR/TOP's optional mangle argument (and the `-no-mime` login flag);
      its presence advertises `X-MANGLE`. An `MDEF` verb advertises `X-MACRO`.
    """

    authorization_verbs: Mapping[str, Command] = field(default_factory=dict)
    transaction_verbs: Mapping[str, Command] = field(default_factory=dict)
    sasl_mechanisms: SaslMechanisms | None = None
    mangle: MangleHook | None = None


NO_EXTENSIONS = Extensions()
