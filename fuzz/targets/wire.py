"""RETR/TOP's wire conversion (qpopper/spool/mbox_send.py): the compiled _wire.wire_bytes
against its pure-Python definition, wire_bytes_python (docs/accelerators.md).

Input: the first octet's low bit is at_line_start, its other bits a piece size (1 to 128);
the rest is the spool block. Nothing may escape. Invariants: the C result equals the Python
result octet for octet (when the extension is built; the target then runs the C code on every
input, which is the point of it); the Python result is POP3 multi-line data that undoes to
the block: no NUL, every LF after a CR, and removing the dot-stuffing and the CRs of CRLF
gives the block with NUL as space and CRLF as LF; and the block fed to WireLines in pieces of
that size (a CRLF or a dotted line cut anywhere, the pieces converted with at_line_start
false) gives the same bytes as the whole block at a line start; and the compiled wire_join
gives the whole's bytes for the block cut every that many octets (also with empty pieces
between) and every that many lines.

The C code is not coverage-instrumented (atheris sees qpopper's Python branches only, here
WireLines'); the dictionary steers the mutations to the octets the conversion treats specially.
"""

from __future__ import annotations

from qpopper.spool import mbox_send

ALLOWED: tuple[type[BaseException], ...] = ()
MAX_LEN = 8192


def one_input(data: bytes) -> None:
    if not data:
        return
    at_line_start = bool(data[0] & 1)
    piece = (data[0] >> 1) + 1
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
    pieces: list[bytes] = []
    lines = mbox_send.WireLines(pieces.append)
    for at in range(0, len(block), piece):
        lines.feed(block[at:at + piece], final=at + piece >= len(block))
    whole = expected if at_line_start else mbox_send.wire_join([block])
    assert b"".join(pieces) == whole, (block, piece)
    if mbox_send.wire_join_c is not None:
        # _wire.wire_join: the block cut every `piece` octets (pieces inside lines: joined
        # first) and cut at line starts (converted one by one) must both give the whole's bytes
        view = memoryview(block)
        cut = [view[at:at + piece] for at in range(0, len(block), piece)]
        assert mbox_send.wire_join_c(cut, at_line_start) == expected, (block, piece)
        lines_of = block.splitlines(keepends=True)
        by_lines = [b"".join(lines_of[at:at + piece]) for at in range(0, len(lines_of), piece)]
        assert mbox_send.wire_join_c(by_lines, at_line_start) == expected, (block, piece)
        spaced = [b""] + [p for cut_piece in cut for p in (cut_piece, bytearray())]
        assert mbox_send.wire_join_c(tuple(spaced), at_line_start) == expected, (block, piece)
