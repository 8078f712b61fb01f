"""MDEF: mangle macros (docs/compatibility.md, "XTND, MDEF and X-MANGLE").

`MDEF name(value)` defines, for this session, a name that RETR and TOP accept in place of an
`X-MANGLE(...)` argument: `MDEF plain(X-MANGLE(TEXT=PLAIN))` (or the short form
`MDEF plain(TEXT=PLAIN)`), then `RETR 1 plain`. Names are case-insensitive; redefining one
replaces it. At most limits.MAX_MDEF_MACROS names of at most limits.MAX_MDEF_NAME_CHARS.
The value must be a mangle request this server carries out (checked now, not at RETR).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, MutableMapping

from qpopper import limits
from qpopper.pop3.command import CommandSyntaxError
from qpopper.pop3.responses import PopError, ok
from qpopper.extensions.mangle import parse_request

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.pop3.protocol import Protocol

ACCEPTED = 'Macro "{name}" accepted'
SYNTAX_ERROR = "Syntax error"
NAME_TOO_LONG = "MDEF name too long"
TOO_MANY = "Too many macros (at most {max})"

_DEFINITION_RE = re.compile(r"(?P<name>[^\s()]+)\((?P<value>.*)\)\Z", re.DOTALL)
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\Z")


def make_cmd_mdef(macros: MutableMapping[str, str]):
    """The MDEF handler over this session's macro table (shared with the mangle hook)."""

    def cmd_mdef(proto: "Protocol", args: list[str]) -> None:
        match = _DEFINITION_RE.match(args[0].strip())
        if not match or not _NAME_RE.match(match["name"]):
            raise CommandSyntaxError(SYNTAX_ERROR)
        name, value = match["name"], match["value"].strip()
        if len(name) > limits.MAX_MDEF_NAME_CHARS:
            raise PopError(NAME_TOO_LONG)
        if name.upper().startswith("X-MANGLE"):
            raise CommandSyntaxError(SYNTAX_ERROR)      # would shadow the request syntax
        if not value.upper().startswith("X-MANGLE("):
            value = f"X-MANGLE({value})"
        try:
            parse_request(value)
        except PopError:
            raise CommandSyntaxError(SYNTAX_ERROR) from None
        key = name.upper()
        if key not in macros and len(macros) >= limits.MAX_MDEF_MACROS:
            raise PopError(TOO_MANY.format(max=limits.MAX_MDEF_MACROS))
        macros[key] = value
        proto.reply(ok(ACCEPTED.format(name=name)))

    return cmd_mdef
