"""What an option is: its type, where it may be set, and how its values are read and shown.

The table of options itself is qpopper/options.py; the conventions are docs/options.md.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable

from qpopper import limits
from qpopper.addresses import parse_networks


class OptType(enum.Enum):
    BOOL = "boolean"
    INT = "integer"
    STRING = "string"        # at most limits.MAX_STRING_OPTION_CHARS printable characters
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

    def allows(self, user_file_kind: str) -> bool:
        """May a per-user file of this kind ("spool" or "home") set an option of this scope?"""
        if self is Scope.ANYWHERE:
            return True
        if self is Scope.NOT_HOME:
            return user_file_kind == "spool"
        return False

    @property
    def description(self) -> str:
        return _SCOPE_TEXT[self]


_SCOPE_TEXT = {
    Scope.ANYWHERE: "any configuration file, including the users' own files",
    Scope.NOT_HOME: "global files, argv and the spool-dir <user>.qpopper-options file "
                    "(not ~/.qpopper-options)",
    Scope.NOT_USER: "global files and argv only (not in per-user files)",
    Scope.STARTUP: "global files and argv only; takes effect at start-up or HUP",
}

BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}
_INT_RE = re.compile(r"[+-]?[0-9]+|0[xX][0-9a-fA-F]+")


def _format_scalar(opt_type: OptType, value: Any) -> str:
    if value is None:
        return "(unset)"
    if opt_type is OptType.BOOL:
        return "true" if value else "false"
    text = str(value)
    if opt_type is OptType.STRING and (not text or any(c in text for c in " \t\"'`#\\")):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


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
    choices: tuple[str, ...] = ()              # MNEMONIC: allowed values, canonical spelling
    choice_aliases: tuple[tuple[str, str], ...] = ()  # MNEMONIC: (other spelling, canonical value)
    flag_numbers: tuple[str, ...] = ()         # MNEMONIC set by number on argv: -p 3 -> flag_numbers[3]
    minimum: int | None = None                 # INT range
    maximum: int | None = None
    scope: Scope = Scope.ANYWHERE
    extension: bool = False                    # ours, not in Qpopper 4.1
    repeatable: bool = False                   # setting it again adds (listen: list; tls-options: sum)
    example: str | None = None                 # a sample value for the generated example config
    check: Callable[[str], str | None] | None = None  # extra validation: returns a complaint or None
    required: bool = False                     # STRING: `""` may not unset it (nothing works without)

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def flag_takes_argument(self) -> bool:
        return self.flag_arg is not None

    # ---- values ---------------------------------------------------------------------------
    def parse(self, text: str) -> Any:
        """The typed value for `text` (already unquoted), or ValueError with a readable reason.

        Repeatable options parse one item; `combine()` merges it into the current value.
        """
        if self.type is OptType.BOOL:
            try:
                return BOOL_WORDS[text.lower()]
            except KeyError:
                raise ValueError(f"'{self.name}' expects a boolean (true, false, 1 or 0), "
                                 f"got '{shown(text)}'") from None
        if self.type is OptType.INT:
            if not _INT_RE.fullmatch(text):
                raise ValueError(f"'{self.name}' expects an integer, got '{shown(text)}'")
            number = int(text, 0) if text.lower().startswith("0x") else int(text, 10)
            self._check_range(number)
            return number
        if self.type is OptType.MNEMONIC:
            return self.parse_mnemonic(text)
        return self._parse_string(text)

    def parse_mnemonic(self, text: str) -> str:
        wanted = text.lower()
        for choice in self.choices:
            if choice.lower() == wanted:
                return choice
        for other, canonical in self.choice_aliases:
            if other.lower() == wanted:
                return canonical
        raise ValueError(f"'{self.name}' must be one of {', '.join(self.accepted_words)}, "
                         f"got '{shown(text)}'")

    @property
    def accepted_words(self) -> tuple[str, ...]:
        return self.choices + tuple(other for other, _ in self.choice_aliases)

    def _check_range(self, number: int) -> None:
        low, high = self.minimum, self.maximum
        if (low is not None and number < low) or (high is not None and number > high):
            if high is None:
                raise ValueError(f"'{self.name}' must be at least {low}, got {number}")
            if low is None:
                raise ValueError(f"'{self.name}' must be at most {high}, got {number}")
            raise ValueError(f"'{self.name}' must be between {low} and {high}, got {number}")

    def _parse_string(self, text: str) -> str | None:
        if text == "":
            if self.required:
                raise ValueError(f"'{self.name}' cannot be unset (its default: "
                                 f"{self.format(self.default)})")
            return None                        # an empty quoted string unsets the option
        if len(text) > limits.MAX_STRING_OPTION_CHARS:
            raise ValueError(f"'{self.name}' value is longer than "
                             f"{limits.MAX_STRING_OPTION_CHARS} characters ({len(text)})")
        if not text.replace(" ", "").isprintable() or "\t" in text:
            raise ValueError(f"'{self.name}' value contains a control character")
        if self.check is not None:
            complaint = self.check(text)
            if complaint:
                raise ValueError(f"'{self.name}' {complaint}, got '{shown(text)}'")
        return text

    def combine(self, current: Any, item: Any) -> Any:
        """The new value when `item` is set on top of `current` (repeatable options)."""
        if not self.repeatable:
            return item
        if self.type is OptType.INT:
            return current + item              # tls-options: SSL_OP_* values are summed (config.c)
        if item is None:
            return ()                          # `set listen = ""` clears the list
        return current if item in current else (*current, item)

    def format(self, value: Any) -> str:
        """The value as config-file text (strings quoted when needed); '(unset)' for None."""
        if self.repeatable and isinstance(value, tuple):
            return ", ".join(_format_scalar(self.type, v) for v in value) if value else "(none)"
        return _format_scalar(self.type, value)

    @property
    def type_text(self) -> str:
        if self.type is OptType.MNEMONIC:
            return "one of " + ", ".join(self.choices)
        if self.check in PATH_TYPE_TEXT:
            return PATH_TYPE_TEXT[self.check]
        if self.type is OptType.INT and (self.minimum is not None or self.maximum is not None):
            if self.maximum is None:
                return f"integer >= {self.minimum}"
            if self.minimum is None:
                return f"integer <= {self.maximum}"
            return f"integer {self.minimum}..{self.maximum}"
        return self.type.value


def shown(text: str, limit: int = 60) -> str:
    """Client-supplied text for error messages: control characters escaped (a message is
    one line), shortened."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- validators ----------------------------------------------------------------------------
_LISTEN_RE = re.compile(r"(?:(?P<host>\[[0-9A-Fa-f:.%A-Za-z]+\]|[A-Za-z0-9_.-]+):)?(?P<port>[0-9]{1,5})")


def check_listen(text: str) -> str | None:
    """The forms master.py binds: PORT, ADDRESS:PORT, [IPV6]:PORT (PORT 0..65535)."""
    match = _LISTEN_RE.fullmatch(text)
    if not match or int(match["port"]) > 65535:
        return "expects [ADDRESS:]PORT (IPv6 addresses in brackets, PORT 0..65535)"
    return None


def check_networks(text: str) -> str | None:
    """A CIDR list (addresses.parse_networks): auth-brakes-trusted-networks."""
    try:
        parse_networks(text)
    except ValueError as exc:
        return f"expects IPv4 or IPv6 networks ({exc})"
    return None


def check_absolute_path(text: str) -> str | None:
    """A file or directory the server opens: an absolute path. A relative one would be
    looked up from the directory the server happens to work in, which is not the one it was
    started in once it runs as a service (daemon, systemd, inetd: /) nor in its sessions: the
    start-up checks would pass on one file and the server use another (docs/options.md,
    "Paths")."""
    if text.startswith("/"):
        return None
    return "must be an absolute path (beginning with /)"


def check_maildir_pattern(text: str) -> str | None:
    """maildir: an absolute path once ~ or %h is the home directory (spool/maildir.py,
    maildir_path, serves nobody from any other); `~x` or `%hx` would name a directory beside
    the home (another user's, for some names), not in it."""
    if text.startswith("/") or text in ("~", "%h") or text.startswith(("~/", "%h/")):
        return None
    return "must be an absolute path, or ~ or %h (the home directory) followed by / or nothing"


def check_home_relative_path(text: str) -> str | None:
    """home-dir-mail: a file inside each user's home (Qpopper's genpath: home "/" name). An
    absolute name would be one file for every user; `..` would leave the home."""
    if text.startswith("/"):
        return "must be a path inside the home directory (not beginning with /)"
    if ".." in text.split("/"):
        return "must stay inside the home directory (no .. part)"
    return None


PATH_TYPE_TEXT = {check_absolute_path: "absolute path",
                  check_maildir_pattern: "path: absolute, or from ~/ or %h/",
                  check_home_relative_path: "path inside the home directory"}
"""How --help, the man pages and the configuration errors name a path option's type."""


_DRAC_HOST_FORMS = (re.compile(r"\[[0-9A-Fa-f:.]+\](?::(?P<port>[0-9]{1,5}))?"),
                    re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*"),     # bare IPv6
                    re.compile(r"[A-Za-z0-9_.-]+(?::(?P<port>[0-9]{1,5}))?"))


def check_drac_host(text: str) -> str | None:
    """HOST, HOST:PORT, [IPV6]:PORT or a bare IPv6 address (what qpopper/server/drac.py reads)."""
    for form in _DRAC_HOST_FORMS:
        match = form.fullmatch(text)
        if match:
            port = match.groupdict().get("port")
            if port is None or 0 < int(port) <= 65535:
                return None
    return "expects HOST or HOST:PORT (IPv6 addresses in brackets before :PORT, PORT 1..65535)"
