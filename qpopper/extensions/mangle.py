"""MIME mangling: `RETR n X-MANGLE(TEXT=PLAIN)`, `TOP n k X-MANGLE(...)`, `-no-mime` users
(docs/compatibility.md, "XTND, MDEF and X-MANGLE"; manual: "reduce multipart MIME messages to a single text part, no
attachments").

What the mangler does (the manual documents only TEXT=PLAIN and the -no-mime suffix; the rest
is our reading of "a single text part"):
- A message whose top-level Content-Type is not multipart/* (plain RFC 822 mail, a lone
  text/html, a non-MIME message) is sent unchanged, octet count and all.
- A multipart message becomes its first inline leaf part whose type is text/<wanted>, searched
  depth first through nested multiparts: the top-level headers are kept except Content-Type
  and Content-Transfer-Encoding, which are replaced by the chosen part's own (raw, folding
  kept; text/plain; charset=us-ascii when the part has none, RFC 2045 §5.2), then the part's
  body as stored (still in its transfer encoding: nothing is decoded or re-encoded).
  Preamble, epilogue, other parts, attachments (Content-Disposition: attachment) and
  message/rfc822 parts are dropped. No matching part: the headers with Content-Type
  text/plain and an empty body.
- `X-MANGLE(TEXT=PLAIN)` is what Qpopper documents. `TEXT=` also takes other subtypes and a
  comma list in order of preference (`X-MANGLE(TEXT=PLAIN,HTML)`: a text/plain part, else a
  text/html one). No character-set conversion is done (the manual documents none): the
  part's charset parameter travels with its Content-Type. Other parameters are refused.
- Parts without a Content-Type are text/plain (RFC 2045 §5.2), also inside multipart/digest
  (where RFC 2046 says message/rfc822): such a part is then a candidate.

Memory stays bounded whatever the message: the spool is streamed twice through a line
machine (a pre-pass that finds the part and counts the octets RETR announces, then the pass
that writes), which keeps at most the first limits.MANGLE_LINE_PREFIX_OCTETS of a line, the
Content-* fields of the current part header (limits.MAX_MANGLE_FIELD_OCTETS) and one summary
per leaf part (limits.MAX_MANGLE_PARTS), with the raw Content-* fields of at most one part
per wanted type; attachments are never buffered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from qpopper import limits
from qpopper.pop3.command import CommandSyntaxError
from qpopper.pop3.trans_state import (NO_MIME_MANGLE, RETR_STATUS, TOP_STATUS, send_unmangled,
                               stream_message)
from qpopper.pop3.responses import TERMINATOR

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.pop3.protocol import Protocol

BAD_REQUEST = "Invalid mangle request; use X-MANGLE(TEXT=PLAIN)"
UNKNOWN_MACRO = 'Unknown mangle macro "{name}"'

_REQUEST_RE = re.compile(r"X-MANGLE\((?P<params>[^()]*)\)\Z", re.IGNORECASE)
_SUBTYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}\Z")   # RFC 6838 restricted-name
DEFAULT_PART_TYPE = b"Content-Type: text/plain; charset=us-ascii\r\n"
_CAPTURED = (b"content-type", b"content-transfer-encoding", b"content-disposition")


@dataclass(frozen=True)
class MangleRequest:
    """What to keep: text subtypes in order of preference (lower case)."""

    text_types: tuple[str, ...]


def parse_request(text: str) -> MangleRequest:
    """`X-MANGLE(TEXT=PLAIN)` (case-insensitive) → MangleRequest; anything else is refused."""
    match = _REQUEST_RE.match(text.strip())
    if not match:
        raise CommandSyntaxError(BAD_REQUEST)
    wanted: list[str] = []
    for param in filter(None, (p.strip() for p in match["params"].split(";"))):
        name, sep, value = param.partition("=")
        if not sep or name.strip().upper() != "TEXT" or wanted:
            raise CommandSyntaxError(BAD_REQUEST)
        for subtype in value.split(","):
            subtype = subtype.strip()
            if not _SUBTYPE_RE.match(subtype):
                raise CommandSyntaxError(BAD_REQUEST)
            wanted.append(subtype.lower())
    if not wanted:
        raise CommandSyntaxError(BAD_REQUEST)
    return MangleRequest(tuple(dict.fromkeys(wanted)))


def resolve_request(arg: str, macros: Mapping[str, str]) -> MangleRequest:
    """RETR/TOP's argument: an X-MANGLE(...) request or the name of an MDEF macro."""
    if arg.upper().startswith("X-MANGLE("):
        return parse_request(arg)
    value = macros.get(arg.upper())
    if value is None:
        raise CommandSyntaxError(UNKNOWN_MACRO.format(name=arg[:limits.MAX_MDEF_NAME_CHARS]))
    return parse_request(value)


# --- Content-Type parsing -------------------------------------------------------------------
@dataclass
class _Field:
    """One captured Content-* field: raw lines as they go on the wire, and whether it fit."""

    raw: bytearray = field(default_factory=bytearray)
    complete: bool = True

    def add(self, line: bytes, whole_line: bool) -> None:
        if not whole_line or len(self.raw) + len(line) > limits.MAX_MANGLE_FIELD_OCTETS:
            self.complete = False
        else:
            self.raw += line

    def value(self) -> str | None:
        if not self.complete:
            return None
        text = bytes(self.raw).decode("ascii", "replace")
        return re.sub(r"\r?\n[ \t]*", " ", text).partition(":")[2].strip()


def _split_params(value: str) -> list[str]:
    """`a/b; x="1;2"; y=3` → ['a/b', 'x="1;2"', 'y=3'] (quotes respected, RFC 2045 §5.1)."""
    parts, cur, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == ";" and not quoted:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def parse_content_type(value: str | None) -> tuple[str, bytes | None]:
    """(type/subtype lower case, multipart boundary or None). Unparseable: ('', None)."""
    if value is None:
        return "", None
    value = re.sub(r"\([^()]*\)", "", value)      # RFC 822 comments
    parts = _split_params(value)
    mime_type = parts[0].replace(" ", "").lower()
    if mime_type.count("/") != 1:
        return "", None
    boundary = None
    for param in parts[1:]:
        name, sep, val = param.partition("=")
        if sep and name.strip().lower() == "boundary":
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = re.sub(r"\\(.)", r"\1", val[1:-1])
            if 0 < len(val) <= limits.MAX_MIME_BOUNDARY_CHARS:
                boundary = val.encode("ascii", "replace")
    return mime_type, boundary


def _is_attachment(value: str | None) -> bool:
    return value is not None and value.split(";")[0].strip().lower() == "attachment"


# --- the line machine -------------------------------------------------------------------------
@dataclass
class Leaf:
    """A leaf part seen by the pre-pass."""

    mime_type: str
    attachment: bool
    content_type: bytes = b""       # raw field (candidates only), or b"" (none / unreadable)
    transfer_encoding: bytes = b""  # raw field (candidates only), or b""
    octets: int = 0                 # body octets as RETR counts them (CRLF, no dot-stuffing)


@dataclass
class Plan:
    """The pre-pass's finding for one request. `leaves` None: not multipart, send unchanged."""

    request: MangleRequest
    leaves: list[Leaf] | None = None
    header_octets: int = 0       # kept top-level header octets (without the blank line)
    chosen: int | None = None
    _candidate_types: set[str] = field(default_factory=set)

    def candidate(self, leaf: Leaf) -> bool:
        """True for the first inline leaf of each wanted type (the only ones choose() picks)."""
        subtype = leaf.mime_type.removeprefix("text/")
        if (leaf.attachment or not leaf.mime_type.startswith("text/")
                or subtype not in self.request.text_types or subtype in self._candidate_types):
            return False
        self._candidate_types.add(subtype)
        return True

    def choose(self) -> None:
        for subtype in self.request.text_types:
            for i, leaf in enumerate(self.leaves or ()):
                if leaf.mime_type == f"text/{subtype}" and not leaf.attachment:
                    self.chosen = i
                    return

    def part_headers(self) -> bytes:
        if self.chosen is None:
            return DEFAULT_PART_TYPE
        leaf = self.leaves[self.chosen]
        return (leaf.content_type or DEFAULT_PART_TYPE) + leaf.transfer_encoding

    def octets(self) -> int:
        body = self.leaves[self.chosen].octets if self.chosen is not None else 0
        return self.header_octets + _wire_octets(self.part_headers()) + 2 + body


def _wire_octets(lines: bytes) -> int:
    """Octets of dot-stuffed CRLF lines as RETR counts them (without the stuffing)."""
    return len(lines) - lines.count(b"\n..") - (1 if lines.startswith(b"..") else 0)


class _Done(Exception):
    """Raised from the write callback to stop streaming early (the rest is not needed)."""


# states
_TOP_HEADER, _PART_HEADER, _LEAF_BODY, _SKIP = range(4)


class MimeWalker:
    """A write() target for Maildrop.send: follows the MIME structure of the wire lines.

    Pre-pass (`emit` None): fills `plan`. Writing pass (`emit` given, the plan chosen): writes
    the mangled message, stopping after `body_lines` lines of the chosen part when given.
    """

    def __init__(self, plan: Plan, emit: Callable[[bytes], None] | None = None,
                 body_lines: int | None = None):
        self.plan = plan
        self.emit = emit
        self.body_lines = body_lines
        self._prefix = bytearray()
        self._tail: Callable[[bytes], None] | None = None   # rest of a long line: keep / drop
        self._state = _TOP_HEADER
        self._boundaries: list[bytes] = []
        self._fields: dict[bytes, _Field] = {}
        self._current: _Field | None = None     # the field continuation lines belong to
        self._keep_field = True                 # top-level header: current field is kept
        self._leaf_index = -1
        self._held_blank = False                # an empty body line not yet passed on
        self._out = bytearray()

    # --- byte stream → lines -----------------------------------------------------------------
    def __call__(self, data: bytes) -> None:
        while data:
            if self._tail is not None:
                newline = data.find(b"\n")
                piece = data if newline < 0 else data[:newline + 1]
                self._tail(piece)
                data = data[len(piece):]
                if newline >= 0:
                    self._tail = None
                continue
            room = limits.MANGLE_LINE_PREFIX_OCTETS - len(self._prefix)
            newline = data.find(b"\n", 0, room)
            if newline >= 0:
                self._prefix += data[:newline + 1]
                data = data[newline + 1:]
                line = bytes(self._prefix)
                self._prefix.clear()
                self._line(line, True)
            else:
                self._prefix += data[:room]
                data = data[room:]
                if len(self._prefix) >= limits.MANGLE_LINE_PREFIX_OCTETS:
                    line = bytes(self._prefix)
                    self._prefix.clear()
                    self._tail = self._line(line, False)

    def finish(self) -> None:
        """End of the message (the stream always ends with CRLF, so no partial line)."""
        if self._state == _TOP_HEADER and self.emit is None:
            self.plan.leaves = None         # headers never ended: not a MIME message we mangle
        if self._held_blank:                # no delimiter followed: the line was content
            self._held_blank = False
            try:
                self._body_line(b"\r\n", False)
            except _Done:
                pass
        self._flush()

    # --- output ------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self._out += data
        if len(self._out) >= limits.COPY_CHUNK_OCTETS:
            self._flush()

    def _flush(self) -> None:
        if self._out and self.emit is not None:
            self.emit(bytes(self._out))
        self._out.clear()

    def _drop(self, data: bytes) -> None:
        pass

    def _keep_top_header(self, data: bytes) -> None:
        if self.emit is not None:
            self._write(data)
        else:
            self.plan.header_octets += len(data)

    def _keep_body(self, data: bytes) -> None:
        if self.emit is not None:
            self._write(data)
        else:
            self.plan.leaves[self._leaf_index].octets += len(data)

    # --- one line (or the first part of a long one) --------------------------------------------
    def _line(self, line: bytes, whole: bool) -> Callable[[bytes], None]:
        """Handle a line; for a partial one, return what to do with the rest of it."""
        stuffed = line.startswith(b"..")
        text = line[1:] if stuffed else line            # undo dot-stuffing to parse
        if whole and text.startswith(b"--") and self._state != _TOP_HEADER:
            was_chosen = self._state == _LEAF_BODY and self._leaf_index == self.plan.chosen
            if self._boundary(text):
                self._fields, self._current = {}, None
                self._held_blank = False
                if self.emit is not None and was_chosen:
                    raise _Done()           # the chosen part is complete: nothing else is sent
                return self._drop
        if self._state in (_TOP_HEADER, _PART_HEADER):
            return self._header_line(line, text, whole, stuffed)
        if self._state != _LEAF_BODY:
            return self._drop
        if self.emit is None and self._leaf_index >= len(self.plan.leaves):
            return self._drop               # beyond MAX_MANGLE_PARTS: never chosen
        if self.emit is not None and self._leaf_index != self.plan.chosen:
            return self._drop
        if self._held_blank:
            self._held_blank = False
            self._body_line(b"\r\n", False)
        if whole and line == b"\r\n":
            # RFC 2046 §5.1.1: the line break before a delimiter belongs to the delimiter, so
            # an empty last line is not content. Hold it until the next line tells.
            self._held_blank = True
            return self._drop
        return self._body_line(line, stuffed)

    def _body_line(self, line: bytes, stuffed: bool) -> Callable[[bytes], None]:
        if self.emit is None:               # pre-pass: count every leaf's body
            self._keep_body(line[1:] if stuffed else line)
            return self._keep_body
        if self.body_lines is not None:
            if self.body_lines <= 0:
                raise _Done()
            self.body_lines -= 1
        self._keep_body(line)
        return self._keep_body

    def _header_line(self, line: bytes, text: bytes, whole: bool, stuffed: bool):
        top = self._state == _TOP_HEADER
        if text == b"\r\n":
            self._end_of_header()
            return self._drop
        if text[:1] in (b" ", b"\t"):
            if self._current is not None:
                self._current.add(line, whole)
        else:
            name = text.split(b":", 1)[0].strip().lower() if b":" in text else b""
            self._current = None
            if name in _CAPTURED:
                self._current = self._fields.setdefault(name, _Field())
                self._current.add(line, whole)
            self._keep_field = name not in _CAPTURED[:2]
        if top and self._keep_field:
            self._keep_top_header(line[1:] if stuffed and self.emit is None else line)
            return self._keep_top_header
        return self._drop

    def _end_of_header(self) -> None:
        fields, self._fields, self._current = self._fields, {}, None
        ctype = fields.get(b"content-type")
        mime_type, boundary = parse_content_type(ctype.value() if ctype else "text/plain")
        if self._state == _TOP_HEADER:
            if not (mime_type.startswith("multipart/") and boundary):
                if self.emit is None:
                    self.plan.leaves = None
                    raise _Done()           # not multipart: sent unchanged, no need to read on
            elif self.emit is None:
                self.plan.leaves = []
            else:
                self._write(self.plan.part_headers() + b"\r\n")
                if self.plan.chosen is None:
                    raise _Done()           # no text part: the headers are the message
        if mime_type.startswith("multipart/") and boundary:
            if len(self._boundaries) < limits.MAX_MIME_DEPTH:
                self._boundaries.append(boundary)
            self._state = _SKIP             # the preamble, up to the first delimiter
            return
        self._state = _LEAF_BODY
        self._leaf_index += 1
        if self.emit is None and self._leaf_index < limits.MAX_MANGLE_PARTS:
            readable = ctype is None or ctype.complete
            leaf = Leaf(mime_type=mime_type if readable else "",
                        attachment=_is_attachment(fields[b"content-disposition"].value()
                                                  if b"content-disposition" in fields else None))
            if self.plan.candidate(leaf):
                # only the first part of each wanted type can be chosen: only its raw
                # fields are kept (memory: a few fields, however many parts)
                encoding = fields.get(b"content-transfer-encoding")
                leaf.content_type = bytes(ctype.raw) if ctype is not None else b""
                leaf.transfer_encoding = (bytes(encoding.raw) if encoding is not None
                                          and encoding.complete else b"")
            self.plan.leaves.append(leaf)
        if self._leaf_index >= limits.MAX_MANGLE_PARTS:
            self._state = _SKIP

    def _boundary(self, text: bytes) -> bool:
        """A delimiter of an enclosing multipart (RFC 2046 §5.1.1; transport padding allowed):
        closes inner multiparts, starts a part header, or (close-delimiter) the epilogue."""
        if not text.startswith(b"--") or not self._boundaries:
            return False
        stripped = text.rstrip(b" \t\r\n")
        for depth in range(len(self._boundaries) - 1, -1, -1):
            boundary = b"--" + self._boundaries[depth]
            if stripped == boundary:
                del self._boundaries[depth + 1:]
                self._state = _PART_HEADER
                return True
            if stripped == boundary + b"--":
                del self._boundaries[depth:]
                self._state = _SKIP
                return True
        return False


# --- the RETR/TOP hook ------------------------------------------------------------------------
def _stream(proto: "Protocol", index: int, walker: MimeWalker) -> None:
    try:
        stream_message(proto, index, walker, None)
    except _Done:
        pass
    walker.finish()


def send_mangled(proto: "Protocol", index: int, body_lines: int | None,
                 request: MangleRequest) -> None:
    """The complete RETR/TOP reply for message `index` mangled per `request`."""
    plan = Plan(request)
    _stream(proto, index, MimeWalker(plan))
    if plan.leaves is None:
        send_unmangled(proto, index, body_lines)        # not multipart: exactly that reply
        return
    plan.choose()
    proto.reply(TOP_STATUS if body_lines is not None else RETR_STATUS % plan.octets())
    _stream(proto, index, MimeWalker(plan, proto.env.write, body_lines))
    proto.reply(TERMINATOR)


def mangle_hook(macros: Mapping[str, str]):
    """The Extensions.mangle hook: RETR/TOP's argument (or -no-mime's default) resolved
    against this session's MDEF macros."""

    def mangle(proto: "Protocol", index: int, body_lines: int | None,
               args: Sequence[str]) -> None:
        request = resolve_request(args[0] if args else NO_MIME_MANGLE, macros)
        send_mangled(proto, index, body_lines, request)

    return mangle
