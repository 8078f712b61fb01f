"""RETR/TOP's wire conversion (qpopper/spool/mbox_send.py): the compiled _wire.wire_bytes
against its pure-Python definition, wire_bytes_python (docs/accelerators.md).

Input: the first octet's low bit is at_line_start, the rest is the spool block. Nothing may
escape. Invariants: the C result equals the Python result octet for octet (when the extension
is built; the target then runs the C code on every input, which is the point of it), and the
Python result is POP3 multi-line data that undoes to the block: no NUL, every LF after a CR,
and removing the dot-stuffing and the CRs of CRLF gives the block with NUL as space and CRLF
as LF.

The C code is not coverage-instrumented (atheris sees qpopper's Python branches only); the
dictionary steers the mutations to the octets the conversion treats specially instead.
"""

from __future__ import annotations

from qpopper.spool import mbox_send

ALLOWED: tuple[type[BaseException], ...] = ()
MAX_LEN = 8192


def one_input(data: bytes) -> None:
    if not data:
        return
    at_line_start = bool(data[0] & 1)
    block = data[1:]
    expected = mbox_send.wire_bytes_python(block, at_line_start)
    if mbox_send.wire_bytes_c is not None:
        got = mbox_send.wire_bytes_c(block, at_line_start)
        assert got == expected, (block, at_line_start, got, expected)
    assert b"\0" not in expected
    assert expected.count(b"\n") == expected.count(b"\r\n")
    undone = expected.replace(b"\r\n.", b"\r\n")
    if at_line_start and undone.startswith(b"."):
        undone = undone[1:]
    assert undone.replace(b"\r\n", b"\n") == block.replace(b"\0", b" ").replace(b"\r\n", b"\n")
