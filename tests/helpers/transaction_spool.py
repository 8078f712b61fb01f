"""The three-message spool of the TRANSACTION-state transcripts and the pipelining tests
(tests/unit/test_protocol_transaction.py, tests/unit/test_protocol_pipelining.py): a
leading-dot line; an existing X-UIDL and Status: RO; Content-Length and no final newline."""

from __future__ import annotations

MSG1 = (b"From alice@example.org Tue Nov 14 22:13:20 2023\n"
        b"From: Alice <alice@example.org>\n"
        b"Subject: one\n"
        b"\n"
        b"Hello.\n"
        b".a line with a leading dot\n"
        b"last line\n"
        b"\n")
MSG2 = (b"From bob@example.org Tue Nov 14 22:14:20 2023\n"
        b"From: Bob\n"
        b" <bob@example.org>\n"
        b"Subject: two\n"
        b"X-UIDL: 0123456789abcdef\n"
        b"Status: RO\n"
        b"\n"
        b"Second.\n"
        b"\n")
MSG3 = (b"From carol@example.org Tue Nov 14 22:15:20 2023\n"
        b"From: carol@example.org\n"
        b"Subject: three\n"
        b"Content-Length: 5\n"
        b"\n"
        b"Third")
SPOOL = MSG1 + MSG2 + MSG3
