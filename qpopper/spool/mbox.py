"""Qpopper-compatible UNIX mbox: scan a spool, stream RETR/TOP, write messages back at update.

The model (separators, the framing line, MMDF, Content-Length, uw-kludge, X-UIDL and Status,
what write-back writes) is in docs/mbox.md, "The mbox model". This module is the one name the
rest of the server imports; the work is done in mbox_format.py (the Message record, separator
lines, UIDs), mbox_scan.py (scanning), mbox_send.py (RETR/TOP) and mbox_write.py (write-back).
"""

from qpopper.spool.mbox_format import (FORMAT_ERROR_TEXT, FRAMING_LINE, UID_MAX_CHARS,
                                       UID_MIN_CHARS, UIDL_HEADER, MboxFormatError, Message,
                                       WriteFn, closing_counted, closing_octets,
                                       empty_lines_before_from, encode_uid, ends_open,
                                       file_head, is_from_line, leading_padding, mmdf_separator,
                                       padding_after, padding_of,
                                       separator_line, separator_padding)
from qpopper.spool.mbox_scan import length_reaches, scan
from qpopper.spool.mbox_send import WireLines, send_message
from qpopper.spool.mbox_write import (copy_for_update, says_a_stale_length, stale_length_edits,
                                      stale_lengths)

__all__ = ["FORMAT_ERROR_TEXT", "FRAMING_LINE", "UID_MAX_CHARS", "UID_MIN_CHARS", "UIDL_HEADER",
           "MboxFormatError", "Message", "WireLines", "WriteFn", "closing_counted",
           "closing_octets", "copy_for_update", "empty_lines_before_from", "encode_uid",
           "ends_open", "file_head", "is_from_line", "leading_padding",
           "length_reaches",
           "mmdf_separator", "padding_after", "padding_of", "says_a_stale_length", "scan",
           "send_message",
           "separator_line", "separator_padding", "stale_length_edits", "stale_lengths"]
