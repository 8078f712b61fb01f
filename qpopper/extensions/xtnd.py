"""XTND: Qpopper's extended commands XMIT and XLST
(docs/compatibility.md, "XTND, MDEF and X-MANGLE").

- `XTND XMIT`: `+OK Start sending message.`, then the client sends a message ended by a line
  with a single `.` (dot-stuffed, as RETR output); the server submits it with mail-command
  (`sendmail -t -i -oem`, the recipients come from its headers) as the logged-in user:
  `+OK Message sent successfully` or `-ERR Unable to send message`. The OS side (temporary
  file, the MTA process) is the `Submitter` the session hands in (extensions/submit.py):
  this module stays pure. Not advertised in CAPA (Qpopper did not). With xtnd-xmit reset
  (the session's Config, so a spool-dir options file may switch it per user) XMIT answers
  `-ERR Command not enabled`, Qpopper's reply for a feature switched off.
- `XTND XLST <header> [n]`: `+OK xlst command accepted; headers coming.`, then for each
  message not deleted (or message n) that has the header: `n <header line>` and its
  continuation lines, then `.`. A Maildir message another program removed is left out of
  the list (message n gets RETR's -ERR).
- Any other subcommand: `-ERR Unknown XTND command: "<sub>".` (counted as a bad command).
"""

from __future__ import annotations

import syslog
from typing import TYPE_CHECKING, Protocol as TypingProtocol

from qpopper import limits
from qpopper.pop3.auth_state import COMMAND_NOT_ENABLED
from qpopper.pop3.command import CommandSyntaxError
from qpopper.pop3.trans_state import message_available, sent_line, stream_message
from qpopper.pop3.responses import PopError, ok

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.pop3.protocol import Protocol

START_SENDING = "Start sending message."
SENT = "Message sent successfully"
NOT_SENT = "Unable to send message"
TOO_LARGE = "Message too large (more than {max} octets); not sent"
NO_TEMP_FILE = "Unable to create temporary file"
XLST_FOLLOWS = "xlst command accepted; headers coming."
UNKNOWN_SUBCOMMAND = 'Unknown XTND command: "{sub}".'
TOO_FEW = "Too few arguments for the XTND {sub} command."
TOO_MANY = "Too many arguments for the XTND {sub} command."
TRANSMIT_LOG = 'Pop transmit from "{user}" on "{host}"'


class Draft(TypingProtocol):
    """A message being received for XMIT (extensions/submit.py has the real one)."""

    def write(self, data: bytes) -> None: ...
    def submit(self) -> bool: ...
    def discard(self) -> None: ...


class Submitter(TypingProtocol):
    def open_draft(self, proto: "Protocol") -> Draft: ...


def make_cmd_xtnd(submitter: Submitter):
    def cmd_xtnd(proto: "Protocol", args: list[str]) -> None:
        sub = args[0].upper()
        if sub == "XMIT":
            if not proto.cfg.xtnd_xmit:
                raise PopError(COMMAND_NOT_ENABLED)
            _arguments(sub, args, 0, 0)
            xmit(proto, submitter)
        elif sub == "XLST":
            _arguments(sub, args, 1, 2)
            xlst(proto, args[1], args[2] if len(args) > 2 else None)
        else:
            raise CommandSyntaxError(UNKNOWN_SUBCOMMAND.format(sub=args[0][:limits.MAX_ARG_OCTETS]))

    return cmd_xtnd


def _arguments(sub: str, args: list[str], least: int, most: int) -> None:
    if len(args) - 1 < least:
        raise CommandSyntaxError(TOO_FEW.format(sub=sub))
    if len(args) - 1 > most:
        raise CommandSyntaxError(TOO_MANY.format(sub=sub))


# --- XMIT ------------------------------------------------------------------------------------
def xmit(proto: "Protocol", submitter: Submitter) -> None:
    draft = submitter.open_draft(proto)      # PopError [SYS/TEMP] when it cannot
    proto.reply(ok(START_SENDING))
    _MessageReader(proto, draft).next()


class _MessageReader:
    """Reads the message line by line through proto.read_continuation, up to the `.`."""

    def __init__(self, proto: "Protocol", draft: Draft):
        self.proto = proto
        self.draft = draft
        self.octets = 0
        self.too_large = False

    def next(self) -> None:
        # A line may be as long as the whole message may be. A longer one makes the message
        # too large: the rest is still read to its `.` and discarded, never taken as commands
        # (a message line `DELE 1` must not delete mail).
        self.proto.read_continuation(self.line, limits.MAX_XMIT_OCTETS + 2,
                                     on_too_long=self.line_too_long)

    def line_too_long(self) -> None:
        self.too_large = True
        self.next()

    def line(self, line: bytes) -> None:
        if line == b".":
            self.end()
            return
        if line.startswith(b"."):
            line = line[1:]                       # dot-unstuffing
        self.octets += len(line) + 1
        if self.octets > limits.MAX_XMIT_OCTETS:
            self.too_large = True                 # keep reading to the `.`, keep nothing
        if not self.too_large:
            try:
                self.draft.write(line + b"\n")
            except PopError:
                self.too_large = True
        self.next()

    def end(self) -> None:
        proto = self.proto
        if self.too_large:
            self.draft.discard()
            raise PopError(TOO_LARGE.format(max=limits.MAX_XMIT_OCTETS),
                           log=f"XTND XMIT from {proto.user}: message over "
                               f"{limits.MAX_XMIT_OCTETS} octets refused")
        proto.env.log(syslog.LOG_NOTICE,
                      TRANSMIT_LOG.format(user=proto.user, host=proto.env.client_host))
        if not self.draft.submit():               # the submitter logs why
            raise PopError(NOT_SENT)
        proto.reply(ok(SENT))


# --- XLST ------------------------------------------------------------------------------------
def xlst(proto: "Protocol", header: str, number: str | None) -> None:
    trans = proto.trans
    if number is not None:
        indices = [trans.message_index(number)]
        trans.maildrop.check_available(indices[0])    # gone: RETR's -ERR, before the +OK
    else:
        indices = [n - 1 for n, _ in trans.live()]
    wanted = header.rstrip(":").encode("utf-8", "surrogateescape").lower()

    def lines():
        for index in indices:
            if number is None and not message_available(proto, index):
                continue
            grabber = HeaderGrabber(wanted)
            stream_message(proto, index, grabber, 0)
            if grabber.lines:
                yield b"%d %s" % (index + 1, grabber.lines[0])
                yield from grabber.lines[1:]

    proto.reply_lines(ok(XLST_FOLLOWS), lines())


class HeaderGrabber:
    """A write() target for Maildrop.send(..., body_lines=0): keeps the first field named
    `name` as its lines (no line ends, dot-stuffing undone), at most
    limits.MAX_XLST_HEADER_OCTETS octets of it."""

    def __init__(self, name: bytes):
        self.name = name
        self.lines: list[bytes] = []
        self._line = bytearray()
        self._in_field = False
        self._done = False
        self._kept = 0

    def __call__(self, data: bytes) -> None:
        while data and not self._done:
            newline = data.find(b"\n")
            part, data = (data, b"") if newline < 0 else (data[:newline], data[newline + 1:])
            room = limits.MAX_XLST_HEADER_OCTETS + 2 - len(self._line)
            self._line += part[:max(room, 0)]
            if newline >= 0:
                self._end_of_line(sent_line(bytes(self._line)))
                self._line.clear()

    def _end_of_line(self, line: bytes) -> None:
        if not line:
            self._done = True                       # end of the header
            return
        if line[:1] in (b" ", b"\t"):
            if self._in_field:
                self._keep(line)
            return
        if self._in_field:                          # the field we listed has ended
            self._done = True
            return
        if line.split(b":", 1)[0].strip().lower() == self.name and b":" in line:
            self._in_field = True
            self._keep(line)

    def _keep(self, line: bytes) -> None:
        line = line[:max(limits.MAX_XLST_HEADER_OCTETS - self._kept, 0)]
        if line:
            self.lines.append(line)
            self._kept += len(line)
