"""MIME mangling (reference P27): `RETR n X-MANGLE(TEXT=PLAIN)`, TOP with it, `-no-mime` users,
CAPA's X-MANGLE line. Real multipart messages on a real mbox spool, the real Protocol and
Maildrop (tests/transcripts/harness.py); every mangled RETR checks that the octet count it
announces is the number of octets it sent (CRLF lines, without dot-stuffing, as LIST counts)."""

from __future__ import annotations

import base64
import email
import email.policy
import random
import re
import tracemalloc
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from qpopper import limits
from qpopper.extensions.mangle import parse_content_type, parse_request
from qpopper.pop3.command import CommandSyntaxError
from tests.helpers.messages import mbox_of
from tests.transcripts.harness import extended_session, spool_fixture

pytestmark = pytest.mark.timeout(60)

FROM_LINE = b"From sender@example.org Mon Nov  2 10:00:00 2026\n"


def mbox(*messages: bytes) -> bytes:
    return mbox_of(*messages, separator=FROM_LINE)


ALTERNATIVE = b"""\
From: Alice <alice@example.org>
Subject: text and html
X-UIDL: alt-uid-1
MIME-Version: 1.0
Content-Type: multipart/alternative;
\tboundary="==alt=="

This is a multi-part message in MIME format.
--==alt==
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

Hello Bob,
.this line starts with a dot
caf=C3=A9
--==alt==
Content-Type: text/html; charset="utf-8"

<html><body><p>Hello Bob,</p></body></html>
--==alt==--
epilogue text
"""

ALTERNATIVE_PLAIN = b"""\
From: Alice <alice@example.org>\r
Subject: text and html\r
MIME-Version: 1.0\r
X-UIDL: alt-uid-1\r
Content-Type: text/plain; charset="utf-8"\r
Content-Transfer-Encoding: quoted-printable\r
\r
Hello Bob,\r
.this line starts with a dot\r
caf=C3=A9\r
"""

ATTACHMENT_B64 = base64.encodebytes(bytes(range(256)) * 40)
WITH_ATTACHMENT = b"""\
From: Carol <carol@example.org>
To: dave@example.org
Subject: the report
X-UIDL: att-uid-2
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=mixed42

--mixed42
Content-Type: text/plain; charset=us-ascii

The report is attached.

-- 
Carol
--mixed42
Content-Type: application/pdf; name="report.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="report.pdf"

""" + ATTACHMENT_B64 + b"""\
--mixed42--
"""

WITH_ATTACHMENT_PLAIN = b"""\
From: Carol <carol@example.org>\r
To: dave@example.org\r
Subject: the report\r
MIME-Version: 1.0\r
X-UIDL: att-uid-2\r
Content-Type: text/plain; charset=us-ascii\r
\r
The report is attached.\r
\r
-- \r
Carol\r
"""

NESTED = b"""\
From: Erin <erin@example.org>
Subject: nested
X-UIDL: nest-uid-3
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain

inner plain text
--inner
Content-Type: text/html

<b>inner html</b>
--inner--
--outer
Content-Type: image/png
Content-Transfer-Encoding: base64

iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==
--outer--
"""

NESTED_PLAIN = b"""\
From: Erin <erin@example.org>\r
Subject: nested\r
MIME-Version: 1.0\r
X-UIDL: nest-uid-3\r
Content-Type: text/plain\r
\r
inner plain text\r
"""

NOT_MIME = b"""\
From: Frank <frank@example.org>
Subject: plain old mail
X-UIDL: plain-uid-4

Just text.
--not-a-boundary
.a dotted line
"""

HTML_ONLY = b"""\
From: Grace <grace@example.org>
Subject: html and a file
X-UIDL: html-uid-5
Content-Type: multipart/mixed; boundary=b5

--b5
Content-Type: text/html

<p>only html</p>
--b5
Content-Type: text/plain; name="notes.txt"
Content-Disposition: attachment; filename="notes.txt"

attached notes are not the message text
--b5--
"""


spool = spool_fixture()


def session(spool, messages, user="alice"):
    spool.write("alice", mbox(*messages))
    pop = extended_session(spool)
    pop.greet()
    pop.send(f"USER {user}")
    assert pop.send("PASS wonderland").startswith(b"+OK alice has")
    return pop


def with_uid(pop, n: int, expected: bytes) -> bytes:
    """`expected` with its X-UIDL line showing the UID the server gave message n."""
    uid = pop.proto.trans.messages[n - 1].uid.encode()
    return re.sub(rb"X-UIDL: [^\r]*", lambda _: b"X-UIDL: " + uid, expected)


def unstuff(data: bytes) -> bytes:
    """Multi-line reply data (after the status line, terminator removed) → the content."""
    assert data.endswith(b"\r\n") or data == b""
    lines = data.split(b"\r\n")[:-1]
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


def retr(pop, command: str) -> tuple[bytes, bytes]:
    """(status line, content) of a RETR/TOP reply; a RETR's `<n> octets` must be exact."""
    reply = pop.send(command)
    status, _, rest = reply.partition(b"\r\n")
    assert status.startswith(b"+OK"), reply[:200]
    assert rest.endswith(b"\r\n.\r\n") and rest.count(b"\r\n.\r\n") == 1
    content = unstuff(rest[:-3])
    if command.upper().startswith("RETR"):
        assert status == b"+OK %d octets" % len(content)
    return status, content


# --- golden messages -----------------------------------------------------------------------------
def test_alternative_reduces_to_the_text_part(spool):
    pop = session(spool, [ALTERNATIVE])
    status, content = retr(pop, "RETR 1 X-MANGLE(TEXT=PLAIN)")
    assert content == with_uid(pop, 1, ALTERNATIVE_PLAIN)
    raw = pop.send("RETR 1 x-mangle(text=plain)")       # case-insensitive; dot-stuffed on the wire
    assert b"\r\n..this line starts with a dot\r\n" in raw
    assert unstuff(raw.partition(b"\r\n")[2][:-3]) == with_uid(pop, 1, ALTERNATIVE_PLAIN)


def test_text_plus_base64_attachment_drops_the_attachment(spool):
    pop = session(spool, [WITH_ATTACHMENT])
    _, content = retr(pop, "RETR 1 X-MANGLE(TEXT=PLAIN)")
    assert content == with_uid(pop, 1, WITH_ATTACHMENT_PLAIN)
    _, whole = retr(pop, "RETR 1")
    assert len(whole) > 10_000 > len(content)            # the attachment really was there


def test_nested_multipart(spool):
    pop = session(spool, [NESTED])
    _, content = retr(pop, "RETR 1 X-MANGLE(TEXT=PLAIN)")
    assert content == with_uid(pop, 1, NESTED_PLAIN)
    _, html = retr(pop, "RETR 1 X-MANGLE(TEXT=HTML)")
    assert html.endswith(b"Content-Type: text/html\r\n\r\n<b>inner html</b>\r\n")


def test_non_mime_message_is_untouched(spool):
    pop = session(spool, [NOT_MIME])
    plain = pop.send("RETR 1")
    assert pop.send("RETR 1 X-MANGLE(TEXT=PLAIN)") == plain
    assert pop.send("TOP 1 1 X-MANGLE(TEXT=PLAIN)") == pop.send("TOP 1 1")


def test_the_framing_line_before_the_next_message_is_not_sent(spool):
    """docs/mbox.md, "The framing line": RETR and X-MANGLE end with the message's own last
    line, not with the empty line that separates it from the next message."""
    pop = session(spool, [NOT_MIME, ALTERNATIVE])
    expected = with_uid(pop, 1, NOT_MIME.replace(b"\n", b"\r\n"))
    assert retr(pop, "RETR 1")[1] == expected
    assert retr(pop, "RETR 1 X-MANGLE(TEXT=PLAIN)")[1] == expected
    assert retr(pop, "RETR 2 X-MANGLE(TEXT=PLAIN)")[1] == with_uid(pop, 2, ALTERNATIVE_PLAIN)


def test_no_matching_part_leaves_headers_and_an_empty_body(spool):
    """text/html only, and a text/plain attachment (never taken for the message text)."""
    pop = session(spool, [HTML_ONLY])
    _, content = retr(pop, "RETR 1 X-MANGLE(TEXT=PLAIN)")
    assert content == with_uid(pop, 1, (
        b"From: Grace <grace@example.org>\r\nSubject: html and a file\r\n"
        b"X-UIDL: html-uid-5\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"))
    _, content = retr(pop, "RETR 1 X-MANGLE(TEXT=PLAIN,HTML)")   # preference list
    assert content.endswith(b"Content-Type: text/html\r\n\r\n<p>only html</p>\r\n")


def test_top_with_mangle_counts_lines_of_the_kept_part(spool):
    pop = session(spool, [ALTERNATIVE, WITH_ATTACHMENT])
    status, content = retr(pop, "TOP 1 2 X-MANGLE(TEXT=PLAIN)")
    assert status == b"+OK Message follows"
    head, _, body = with_uid(pop, 1, ALTERNATIVE_PLAIN).partition(b"\r\n\r\n")
    assert content == head + b"\r\n\r\nHello Bob,\r\n.this line starts with a dot\r\n"
    _, content = retr(pop, "TOP 2 0 X-MANGLE(TEXT=PLAIN)")
    attachment_plain = with_uid(pop, 2, WITH_ATTACHMENT_PLAIN)
    assert content == attachment_plain.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    _, content = retr(pop, "TOP 2 99 X-MANGLE(TEXT=PLAIN)")
    assert content == attachment_plain
    # TOP does not mark retrieved; RETR with a mangle argument does
    assert pop.send("LAST") == b"+OK 2 is the last read message.\r\n"
    assert pop.proto.trans.retrieved == set()
    retr(pop, "RETR 2 X-MANGLE(TEXT=PLAIN)")
    assert pop.proto.trans.retrieved == {1}


def test_no_mime_user_gets_every_retr_and_top_mangled(spool):
    pop = session(spool, [ALTERNATIVE, NOT_MIME], user="alice-no-mime")
    assert pop.proto.login.no_mime and pop.proto.user == "alice"
    _, content = retr(pop, "RETR 1")
    assert content == with_uid(pop, 1, ALTERNATIVE_PLAIN)
    _, content = retr(pop, "TOP 1 0")
    assert content == with_uid(pop, 1, ALTERNATIVE_PLAIN).partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    _, content = retr(pop, "RETR 1 X-MANGLE(TEXT=HTML)")    # an explicit request still wins
    assert b"<html>" in content
    _, content = retr(pop, "RETR 2")
    assert content.startswith(b"From: Frank") and b"--not-a-boundary\r\n" in content
    # LIST still reports the stored size (RFC 1939: the exact size of the message)
    assert pop.send("LIST 1") == b"+OK 1 %d\r\n" % pop.proto.trans.messages[0].octets


def test_capa_lists_x_mangle_and_x_macro_in_qpoppers_place(spool):
    pop = session(spool, [NOT_MIME])
    lines = pop.send("CAPA").decode().split("\r\n")
    at = lines.index("PIPELINING")
    assert lines[at + 1:at + 3] == ["X-MANGLE", "X-MACRO"]
    assert lines[at + 3].startswith("X-LOCALTIME ")
    plain = spool.session()                       # without the extensions: never announced
    plain.greet()
    assert b"X-MANGLE" not in plain.send("CAPA")


# --- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arg", ["X-MANGLE(FOO=BAR)", "X-MANGLE()", "X-MANGLE(TEXT=)",
                                 "X-MANGLE(TEXT=PLAIN", "X-MANGLE(TEXT=PLAIN;TEXT=HTML)",
                                 "X-MANGLE(TEXT=pl/ain)"])
def test_bad_mangle_requests_are_refused(spool, arg):
    pop = session(spool, [ALTERNATIVE])
    assert pop.send(f"RETR 1 {arg}") == (b"-ERR Invalid mangle request; use "
                                         b"X-MANGLE(TEXT=PLAIN)\r\n")
    assert pop.proto.trans.retrieved == set()
    assert pop.send("NOOP") == b"+OK\r\n"


def test_unknown_macro_and_bad_message_numbers(spool):
    pop = session(spool, [ALTERNATIVE])
    assert pop.send("RETR 1 nosuch") == b'-ERR Unknown mangle macro "nosuch"\r\n'
    assert pop.send("RETR 2 X-MANGLE(TEXT=PLAIN)") == b"-ERR Message 2 does not exist.\r\n"
    assert pop.send("TOP 1 x X-MANGLE(TEXT=PLAIN)").startswith(b"-ERR Line count must be")
    assert pop.send("RETR 1 X-MANGLE(TEXT=PLAIN) extra") == (
        b"-ERR Too many arguments for the RETR command.\r\n")
    pop.send("DELE 1")
    assert pop.send("RETR 1 X-MANGLE(TEXT=PLAIN)") == b"-ERR Message 1 has been deleted.\r\n"


def test_request_parsing_units():
    assert parse_request("X-MANGLE(TEXT=PLAIN)").text_types == ("plain",)
    assert parse_request("x-mangle( text = Plain , HTML ; )").text_types == ("plain", "html")
    with pytest.raises(CommandSyntaxError):
        parse_request("MANGLE(TEXT=PLAIN)")
    assert parse_content_type('multipart/mixed; boundary="a;b\\"c" (comment)') == (
        "multipart/mixed", b'a;b"c')
    assert parse_content_type("Multipart/Alternative; BOUNDARY=xyz") == (
        "multipart/alternative", b"xyz")
    assert parse_content_type("garbage") == ("", None)


# --- malformed MIME still gets an answer ---------------------------------------------------------
@pytest.mark.parametrize("message", [
    # no closing delimiter
    b"Subject: a\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\n\nbody text\n",
    # multipart without a boundary parameter: sent as it is
    b"Subject: b\nContent-Type: multipart/mixed\n\n--zz\n\nbody\n--zz--\n",
    # a part header that runs into the next delimiter
    b"Subject: c\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\nContent-Type: te\n"
    b"--zz\nContent-Type: text/plain\n\nsecond\n--zz--\n",
    # the headers never end
    b"Subject: d\nContent-Type: multipart/mixed; boundary=zz\n",
    # a boundary with transport padding, and an over-long Content-Type
    b"Subject: e\nContent-Type: multipart/mixed; boundary=zz\n\n--zz  \nContent-Type: text/plain;"
    b" x=" + b"y" * 20000 + b"\n\nhidden\n--zz\n\nshown\n--zz--\n",
])
def test_malformed_mime_gets_consistent_replies(spool, message):
    pop = session(spool, [message])
    _, content = retr(pop, "RETR 1 X-MANGLE(TEXT=PLAIN)")
    assert content.startswith(b"Subject: ")
    _, top = retr(pop, "TOP 1 0 X-MANGLE(TEXT=PLAIN)")
    assert content.startswith(top.partition(b"\r\n\r\n")[0])
    if b"second" in message:
        assert content.endswith(b"\r\n\r\nsecond\r\n")
    if b"shown" in message:
        assert content.endswith(b"\r\n\r\nshown\r\n") and b"hidden" not in content


# --- oracle: Python's email package --------------------------------------------------------------
def random_message(rng: random.Random) -> tuple[bytes, str | None]:
    """A multipart message built by the email package, and the text/plain body it holds."""
    words = ["alpha", "beta", ".dot", "gamma", "", "--", "delta epsilon", "From here"]

    def text(n):
        return "\n".join(rng.choice(words) for _ in range(n)) + "\n"

    plain = text(rng.randint(1, 30))
    outer = MIMEMultipart(rng.choice(["mixed", "related"]))
    outer["Subject"] = f"random {rng.random()}"
    outer["From"] = "r@example.org"
    parts = []
    if rng.random() < 0.5:
        alt = MIMEMultipart("alternative")
        alt.attach(MIMEText(plain, "plain"))
        alt.attach(MIMEText("<p>" + text(3) + "</p>", "html"))
        parts.append(alt)
    else:
        parts.append(MIMEText(plain, "plain", rng.choice(["us-ascii", "utf-8"])))
    for _ in range(rng.randint(0, 3)):
        parts.append(MIMEApplication(rng.randbytes(rng.randint(0, 5000)), Name="x.bin"))
    rng.shuffle(parts)
    for part in parts:
        outer.attach(part)
    return outer.as_bytes().replace(b"\r\n", b"\n"), plain


def test_mangled_output_carries_the_email_packages_text_part(spool):
    rng = random.Random(2046)
    messages, plains = zip(*(random_message(rng) for _ in range(25)))
    pop = session(spool, messages)
    for n, plain in enumerate(plains, 1):
        _, content = retr(pop, f"RETR {n} X-MANGLE(TEXT=PLAIN)")
        parsed = email.message_from_bytes(content, policy=email.policy.compat32)
        assert not parsed.is_multipart()
        assert parsed.get_content_type() == "text/plain"
        assert parsed.get_payload(decode=True).decode().replace("\r\n", "\n") == plain
        assert parsed["Subject"].startswith("random ")


# --- memory --------------------------------------------------------------------------------------
def test_big_attachments_and_long_lines_keep_memory_bounded(spool):
    """A 12 MB attachment (one part in 76-column base64, one as a single 4 MB line): the
    mangler keeps line prefixes and part summaries only."""
    b64 = base64.encodebytes(random.Random(7).randbytes(9 * 1024 * 1024))
    message = (b"Subject: big\nX-UIDL: big-uid\nContent-Type: multipart/mixed; boundary=BIG\n\n"
               b"--BIG\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: "
               b"base64\n\n" + b64 + b"--BIG\nContent-Type: text/plain\n\n" + b"x" * (4 << 20)
               + b"\nend\n--BIG--\n")
    pop = session(spool, [message])
    sent = bytearray()
    counted = {"octets": 0}

    def write(data):                      # keep only what the check needs
        counted["octets"] += len(data)
        if len(sent) < 200:
            sent.extend(data[:200])

    pop.env.write = write
    tracemalloc.start()
    try:
        pop.proto.feed(b"RETR 1 X-MANGLE(TEXT=PLAIN)\r\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    uid_line = b"X-UIDL: %s\r\n" % pop.proto.trans.messages[0].uid.encode()
    assert bytes(sent).startswith(b"+OK %d octets\r\nSubject: big\r\n" % (
        len(b"Subject: big\r\n" + uid_line + b"Content-Type: text/plain\r\n\r\n")
        + (4 << 20) + 2 + len(b"end\r\n")))
    assert counted["octets"] > 4 << 20
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"


def test_many_parts(spool):
    """Leaf parts past limits.MAX_MANGLE_PARTS are never chosen; before it, the first wins."""
    many = limits.MAX_MANGLE_PARTS
    filler = b"".join(b"--p\nContent-Type: application/x-filler\n\nfill %d\n" % n
                      for n in range(many))
    late = (b"Subject: late\nContent-Type: multipart/mixed; boundary=p\n\n" + filler
            + b"--p\nContent-Type: text/plain\n\nlate text\n--p--\n")
    early = (b"Subject: early\nContent-Type: multipart/mixed; boundary=p\n\n"
             + b"".join(b"--p\nContent-Type: text/plain\n\ntext %d\n" % n for n in range(50))
             + filler + b"--p--\n")
    pop = session(spool, [late, early])
    _, content = retr(pop, "RETR 1 X-MANGLE(TEXT=PLAIN)")
    assert content.endswith(b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")
    _, content = retr(pop, "RETR 2 X-MANGLE(TEXT=PLAIN)")
    assert content.endswith(b"Content-Type: text/plain\r\n\r\ntext 0\r\n")
