"""TRANSACTION state (RFC 1939 §5): STAT, LIST, RETR, TOP, DELE, NOOP, RSET, UIDL, EUIDL, LAST,
CAPA, QUIT.

Message numbers are parsed strictly where they enter (popa3d, Dovecot's get_msgnum): ASCII
digits only — no sign, no spaces, no trailing junk — then in range, then not deleted, each with
its own reply. Protocol message number n is maildrop.messages[n - 1]; the sets below hold
0-based indices, as Maildrop.update expects.
"""

from __future__ import annotations

import syslog
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qpopper.pop3.capa import cmd_capa
from qpopper.pop3.command import Command, CommandSyntaxError, command_table
from qpopper.pop3.responses import TERMINATOR, PopError, ok

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.pop3.protocol import Protocol

# Replies: Qpopper's texts (docs/compatibility.md, "Message commands").
LOGGED_IN = "{user} has {count} visible message{s} ({hidden} hidden) in {octets} octets."
NOT_A_NUMBER = "Parameter must be a number between 1 and {count}"
NO_SUCH_MESSAGE = "Message {n} does not exist."
OUT_OF_RANGE = "Message {n} out of range."                 # UIDL / EUIDL (pop_uidl.c)
IS_DELETED = "Message {n} has been deleted."
MARKED_DELETED = "Message {n} has been marked for deletion."   # UIDL / EUIDL
ALREADY_DELETED = "Message {n} has already been deleted."
DELETED = "Message {n} has been deleted."
LINE_COUNT = "Line count must be a number between 0 and {max}"
LISTING = "{count} visible message{s} ({octets} octets)"
RETR_OCTETS = "{octets} octets"
TOP_FOLLOWS = "Message follows"
UIDL_FOLLOWS = "uidl command accepted."
# RETR's and TOP's status lines, rendered once: bytes formatting per RETR instead of ok()'s
# str building (the same bytes: RETR_OCTETS has no CR or LF for ok() to replace). The plain
# reply and the mangled one (extensions/mangle.py) both use them.
RETR_STATUS = ok(RETR_OCTETS.replace("{octets}", "%d"))
TOP_STATUS = ok(TOP_FOLLOWS)
LAST_READ = "{n} is the last read message."
RSET_DONE = "Maildrop has {count} visible message{s} ({octets} octets)"
SEND_FAILED = "Unable to read the message"

MAX_TOP_LINES = 2**31 - 1
"""TOP's line count: anything larger is a client bug, not a request for 'all' (RFC 1939 §7
asks for a non-negative number; C servers overflow here)."""

NO_MIME_MANGLE = "X-MANGLE(TEXT=PLAIN)"
"""What a `-no-mime` login asks of every RETR/TOP."""

EUIDL_FROM_CHARS = 128
"""EUIDL shows at most this much of the From: header."""


def _s(count: int) -> str:
    return "" if count == 1 else "s"


@dataclass(frozen=True)
class SessionStats:
    """What the session's Stats line (docs/compatibility.md, "Logging") reports, as of now."""

    deleted_messages: int
    deleted_octets: int
    messages_left: int
    octets_left: int

    @classmethod
    def of(cls, messages, deleted) -> "SessionStats":
        """The counts for `messages` with the indices in `deleted` marked for deletion."""
        deleted_octets = sum(messages[i].octets for i in deleted)
        total_octets = sum(m.octets for m in messages)
        return cls(len(deleted), deleted_octets, len(messages) - len(deleted),
                   total_octets - deleted_octets)


class Transaction:
    """Per-session TRANSACTION state: the maildrop and what the client did to it."""

    def __init__(self, maildrop):
        self.maildrop = maildrop
        self.messages = maildrop.messages
        self.initial_retrieved = frozenset(
            i for i, message in enumerate(self.messages) if message.retrieved)
        self.retrieved: set[int] = set(self.initial_retrieved)
        self.retrieved_now: set[int] = set()      # RETR'd in this session (auto-delete)
        self.deleted: set[int] = set()
        # LAST: the highest message number RETR, TOP or DELE touched; 0 at
        # login. RSET sets it back to 0, as the older popper did.
        self.last_msg = 0

    # --- counts -----------------------------------------------------------------------------
    def live(self):
        """(number, message) for every message not deleted, in order."""
        return ((i + 1, m) for i, m in enumerate(self.messages) if i not in self.deleted)

    def totals(self) -> tuple[int, int]:
        count = octets = 0
        for _, message in self.live():
            count += 1
            octets += message.octets
        return count, octets

    def stats(self) -> SessionStats:
        return SessionStats.of(self.messages, self.deleted)

    def touch(self, number: int) -> None:
        self.last_msg = max(self.last_msg, number)

    # --- the end ----------------------------------------------------------------------------
    def update(self, *, delete_retrieved: bool) -> None:
        """UPDATE (RFC 1939 §6): hand the outcome to the maildrop."""
        if delete_retrieved:
            # Only what this session RETR'd. Qpopper also took every message a Status: R
            # header marked at login; but a sender can write that header into a message,
            # which then vanished unread, and mail readers and IMAP set it (or a Maildir's S
            # flag) for mail never downloaded
            # (docs/compatibility.md, "QUIT, timeouts and update-on-abort").
            self.deleted |= self.retrieved_now
        self.maildrop.update(set(self.deleted), set(self.retrieved))

    # --- argument parsing (shared by every verb that takes a message number) ----------------
    def message_index(self, arg: str, *, for_uidl: bool = False, allow_deleted: bool = False
                      ) -> int:
        """The 0-based index of message `arg`, or a refusal with the precise reason."""
        if not (arg.isascii() and arg.isdigit()):
            raise CommandSyntaxError(NOT_A_NUMBER.format(count=len(self.messages)))
        number = int(arg)
        if not 1 <= number <= len(self.messages):
            raise PopError((OUT_OF_RANGE if for_uidl else NO_SUCH_MESSAGE).format(n=number))
        index = number - 1
        if index in self.deleted and not allow_deleted:
            raise PopError((MARKED_DELETED if for_uidl else IS_DELETED).format(n=number))
        return index


def login_reply(user: str, trans: Transaction) -> bytes:
    """PASS/APOP/AUTH success."""
    count, octets = trans.totals()
    return ok(LOGGED_IN.format(user=user, count=count, s=_s(count),
                               hidden=trans.maildrop.hidden_count, octets=octets))


def parse_line_count(arg: str) -> int:
    if not (arg.isascii() and arg.isdigit()) or int(arg) > MAX_TOP_LINES:
        raise CommandSyntaxError(LINE_COUNT.format(max=MAX_TOP_LINES))
    return int(arg)


# --- the verbs -------------------------------------------------------------------------------------
def cmd_stat(proto: "Protocol", args: list[str]) -> None:
    count, octets = proto.trans.totals()
    proto.reply(ok(f"{count} {octets}"))


def cmd_list(proto: "Protocol", args: list[str]) -> None:
    trans = proto.trans
    if args:
        index = trans.message_index(args[0])
        proto.reply(ok(f"{index + 1} {trans.messages[index].octets}"))
        return
    count, octets = trans.totals()
    proto.reply_lines(ok(LISTING.format(count=count, s=_s(count), octets=octets)),
                      (b"%d %d" % (n, m.octets) for n, m in trans.live()))


def cmd_retr(proto: "Protocol", args: list[str]) -> None:
    trans = proto.trans
    index = trans.message_index(args[0])
    send_message(proto, index, None, args[1:])
    trans.retrieved.add(index)
    trans.retrieved_now.add(index)
    trans.touch(index + 1)


def cmd_top(proto: "Protocol", args: list[str]) -> None:
    trans = proto.trans
    body_lines = parse_line_count(args[1])      # syntax first, then existence (as Dovecot)
    index = trans.message_index(args[0])
    send_message(proto, index, body_lines, args[2:])   # TOP does not mark retrieved
    trans.touch(index + 1)


def send_message(proto: "Protocol", index: int, body_lines: int | None,
                 mangle_args: list[str]) -> None:
    """RETR (`body_lines` None) or TOP output. A mangle argument, or a `-no-mime` login, goes
    to the mangling feature when it is plugged in."""
    # A Maildir message another program removed gets an -ERR here, before any +OK.
    proto.trans.maildrop.check_available(index)
    mangle = proto.extensions.mangle   # without it the table allows no mangle argument
    if mangle is not None and (mangle_args or proto.login.no_mime):
        mangle(proto, index, body_lines, mangle_args or [NO_MIME_MANGLE])
        return
    send_unmangled(proto, index, body_lines)


def send_unmangled(proto: "Protocol", index: int, body_lines: int | None) -> None:
    """The plain RETR/TOP reply: status line, the message (the maildrop streams it in bounded
    chunks, CRLF and dot-stuffed), terminator."""
    proto.reply(TOP_STATUS if body_lines is not None
                else RETR_STATUS % proto.trans.messages[index].octets)
    stream_message(proto, index, proto.env.write, body_lines)
    proto.reply(TERMINATOR)


def stream_message(proto: "Protocol", index: int, write, body_lines: int | None) -> None:
    try:
        proto.trans.maildrop.send(index, write, body_lines=body_lines)
    except (PopError, OSError) as failure:
        # Part of a reply may be on the wire: nothing sensible can follow it. Log, and end
        # the session (an abort: update-on-abort decides what happens to the maildrop).
        detail = getattr(failure, "log", None) or failure
        raise PopError(SEND_FAILED, close=True,
                       log=f"reading message {index + 1} failed: {detail}") from None


def message_available(proto: "Protocol", index: int) -> bool:
    """False (and logged) for a Maildir message another program removed, for a listing that
    reads every message (EUIDL, XTND XLST): it has nothing to show, and reading it would end
    the session as a failed RETR does after its +OK."""
    try:
        proto.trans.maildrop.check_available(index)
    except PopError as gone:
        proto.env.log(syslog.LOG_NOTICE, gone.log or gone.text)
        return False
    return True


def cmd_dele(proto: "Protocol", args: list[str]) -> None:
    trans = proto.trans
    index = trans.message_index(args[0], allow_deleted=True)
    if index in trans.deleted:
        raise PopError(ALREADY_DELETED.format(n=index + 1))
    trans.deleted.add(index)
    trans.touch(index + 1)
    proto.reply(ok(DELETED.format(n=index + 1)))


def cmd_noop(proto: "Protocol", args: list[str]) -> None:
    proto.reply(ok())


def cmd_rset(proto: "Protocol", args: list[str]) -> None:
    """Undelete everything and restore the retrieved flags of login time."""
    trans = proto.trans
    trans.deleted.clear()
    trans.retrieved = set(trans.initial_retrieved)
    trans.retrieved_now.clear()
    trans.last_msg = 0
    count, octets = trans.totals()
    proto.reply(ok(RSET_DONE.format(count=count, s=_s(count), octets=octets)))


def cmd_uidl(proto: "Protocol", args: list[str]) -> None:
    trans = proto.trans
    if args:
        index = trans.message_index(args[0], for_uidl=True)
        proto.reply(ok(f"{index + 1} {trans.messages[index].uid}"))
        return
    proto.reply_lines(ok(UIDL_FOLLOWS),
                      (f"{n} {m.uid}".encode("ascii", "replace") for n, m in trans.live()))


def cmd_euidl(proto: "Protocol", args: list[str]) -> None:
    """Qpopper's EUIDL (for the Newton): `n uid octets From-header`."""
    trans = proto.trans
    if args:
        index = trans.message_index(args[0], for_uidl=True)
        proto.reply(ok(euidl_line(proto, index).decode("utf-8", "replace")))
        return
    proto.reply_lines(ok(UIDL_FOLLOWS),
                      (euidl_line(proto, n - 1) for n, _ in trans.live()))


def euidl_line(proto: "Protocol", index: int) -> bytes:
    message = proto.trans.messages[index]
    grabber = FromHeaderGrabber()
    if message_available(proto, index):         # a removed one is listed without From
        stream_message(proto, index, grabber, 0)
    line = f"{index + 1} {message.uid} {message.octets}".encode("ascii", "replace")
    return line + b" " + grabber.value if grabber.value else line


def sent_line(line: bytes) -> bytes:
    """A line of RETR or TOP data (its LF already taken off) as the message has it: without
    the CR of its CRLF and with dot-stuffing undone. One CR only: a CR before it is the line's
    own, as TOP and RETR take it, so a line of a lone CR does not end the header for EUIDL
    and XTND XLST either (one header-end rule: docs/maildir.md, "What a message is")."""
    if line.endswith(b"\r"):
        line = line[:-1]
    return line[1:] if line.startswith(b"..") else line


class FromHeaderGrabber:
    """A write() target for Maildrop.send(..., body_lines=0) that keeps only the From: header's
    value (unfolded, control characters dropped, at most EUIDL_FROM_CHARS octets)."""

    _MAX_KEPT = 1024   # octets of one header line kept while looking: memory stays bounded

    def __init__(self) -> None:
        self._line = bytearray()
        self._in_from = False
        self._done = False
        self._value = bytearray()

    def __call__(self, data: bytes) -> None:
        while data and not self._done:
            newline = data.find(b"\n")
            part, data = (data, b"") if newline < 0 else (data[:newline], data[newline + 1:])
            if len(self._line) < self._MAX_KEPT:
                self._line += part[:self._MAX_KEPT - len(self._line)]
            if newline >= 0:
                self._end_of_line(sent_line(bytes(self._line)))
                self._line.clear()

    def _end_of_line(self, line: bytes) -> None:
        if not line:
            self._done = True               # end of the header
        elif line[:1] in (b" ", b"\t"):
            if self._in_from:
                self._value += b" " + line.strip()
        else:
            self._in_from = line[:5].lower() == b"from:"
            if self._in_from:
                self._value = bytearray(line[5:].strip())

    @property
    def value(self) -> bytes:
        kept = bytes(b for b in self._value if 0x20 <= b < 0x7F or b >= 0x80)
        return kept[:EUIDL_FROM_CHARS]


def cmd_last(proto: "Protocol", args: list[str]) -> None:
    proto.reply(ok(LAST_READ.format(n=proto.trans.last_msg)))


def cmd_quit(proto: "Protocol", args: list[str]) -> None:
    proto.quit_transaction()


_VERBS = {
    "STAT": Command(cmd_stat),
    "LIST": Command(cmd_list, 0, 1),
    "RETR": Command(cmd_retr, 1, 1),
    "TOP": Command(cmd_top, 2, 2),
    "DELE": Command(cmd_dele, 1, 1),
    "NOOP": Command(cmd_noop),
    "RSET": Command(cmd_rset),
    "UIDL": Command(cmd_uidl, 0, 1),
    "EUIDL": Command(cmd_euidl, 0, 1),
    "LAST": Command(cmd_last),
    "CAPA": Command(cmd_capa),
    "QUIT": Command(cmd_quit),
}
TRANSACTION_COMMANDS = command_table(_VERBS)

# With the mangling feature plugged in, RETR and TOP take one more (optional) argument: the
# mangle request, e.g. `RETR 1 X-MANGLE(TEXT=PLAIN)` (see
# docs/compatibility.md, "XTND, MDEF and X-MANGLE"). Without it,
# that argument is trailing junk like any other.
TRANSACTION_COMMANDS_WITH_MANGLE = command_table({
    **_VERBS,
    "RETR": Command(cmd_retr, 1, 2),
    "TOP": Command(cmd_top, 2, 3),
})
