"""The compiled RETR/TOP wire conversion (qpopper/spool/_wire.c) against its definition, the
pure-Python mbox_send.wire_bytes_python (docs/accelerators.md, "How it is tested").

Every string up to 6 octets over the octets the conversion cares about, seeded random blocks
full of NUL, CR, CRLF, lone CRs and dots at line starts, blocks over 1 MiB, both values of
at_line_start: the same bytes from both. And the accelerator must be there: on a machine that
can compile it (a C compiler and Python.h), a missing build fails here instead of every test
quietly running the fallback.
"""

from __future__ import annotations

import itertools
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tracemalloc

import pytest

from qpopper.spool import mbox_send
from tests.helpers.compiler import assert_built_and_used
from tests.helpers.repo import REPO
from tests.helpers.wire_impls import NOT_BUILT

wire_c = mbox_send.wire_bytes_c
wire_py = mbox_send.wire_bytes_python
join_c = mbox_send.wire_join_c
join_py = mbox_send.wire_join_python
needs_c = pytest.mark.skipif(wire_c is None, reason=NOT_BUILT)

ALPHABET = b"\0\r\n.a"
"""Every octet the conversion treats specially, and one it does not."""


def test_the_accelerator_is_built_and_used_where_it_can_be():
    assert wire_c is not None or join_c is None           # one extension, both functions
    assert_built_and_used(join_c, mbox_send.wire_join, "qpopper.spool._wire",
                          "the server runs the pure-Python conversion")


@pytest.mark.timeout(120)
def test_without_a_compiler_the_build_succeeds_and_the_fallback_serves(tmp_path):
    """setup.py's accelerators are optional: a failing compiler is a warning, the package
    builds, and its mbox_send converts with the pure-Python definition."""
    shutil.copytree(REPO / "qpopper", tmp_path / "qpopper",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(REPO / "setup.py", tmp_path)
    env = {"PATH": "/usr/bin:/bin", "CC": "false", "HOME": str(tmp_path)}
    built = subprocess.run([sys.executable, "setup.py", "build", "--build-lib", "lib"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    assert built.returncode == 0, built.stderr[-2000:]
    assert 'building extension "qpopper.spool._wire" failed' in built.stderr
    assert 'building extension "qpopper.spool._scan" failed' in built.stderr
    assert not list((tmp_path / "lib").rglob("*.so"))
    check = ("from qpopper.spool import mbox_send as m; "
             f"assert m.__file__.startswith({str(tmp_path / 'lib')!r}), m.__file__; "
             "assert m.wire_bytes_c is None and m.wire_join is m.wire_join_python; "
             "from qpopper.spool import mbox_format as f; "
             "assert f.uid_text_c is None and f.uid_text is f.uid_text_python; "
             "assert f.encode_uid(bytes(range(16))) == 'T$!!!(_#!!LI&!!p3)!!'; "
             "print(m.wire_join([b'.a\\r\\n.b\\0']))")
    # the built tree first on sys.path (the current directory), not the checkout
    ran = subprocess.run([sys.executable, "-c", check], cwd=tmp_path / "lib", env=env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == repr(b"..a\r\n..b ")


def test_build_outputs_are_ignored_by_git():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    name = "qpopper/spool/_wire" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
    result = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", name], timeout=30)
    assert result.returncode == 0, f"{name} is not in .gitignore"


def assert_same(data: bytes, at_line_start: bool) -> None:
    expected = wire_py(data, at_line_start)
    got = wire_c(data, at_line_start)
    assert type(got) is bytes
    assert got == expected, (data[:200], at_line_start)


@needs_c
@pytest.mark.parametrize("at_line_start", [True, False])
def test_every_short_string(at_line_start):
    for n in range(7):
        for chars in itertools.product(ALPHABET, repeat=n):
            assert_same(bytes(chars), at_line_start)


@needs_c
def test_every_single_octet():
    for c in range(256):
        for at_line_start in (True, False):
            assert_same(bytes([c]), at_line_start)


def random_block(rng: random.Random, size: int) -> bytes:
    """Lines of random length made of ordinary text and the special octets, some CRLF- or
    CR CR LF-ended, some starting with dots, some with NUL; sometimes a lone CR at the end."""
    out = bytearray()
    while len(out) < size:
        line = bytearray(rng.choice((b"", b".", b"..", b"\0", b"\r", b"From ")))
        for _ in range(rng.randrange(0, 90)):
            r = rng.random()
            line.append(rng.choice(b"\0\r.") if r < 0.05 else rng.randrange(32, 127))
        line += rng.choice((b"\n", b"\n", b"\r\n", b"\r\r\n", b"\n\r"))
        out += line
    out = out[:size]
    if rng.random() < 0.3:
        out += b"\r"
    return bytes(out)


@needs_c
@pytest.mark.parametrize("seed", range(4))
def test_random_blocks(seed):
    rng = random.Random(seed)
    for _ in range(300):
        data = random_block(rng, rng.choice((0, 1, 2, 3, 10, 100, 1000, 5000)))
        assert_same(data, rng.random() < 0.5)
    for _ in range(200):                # arbitrary octets, weighted to the special ones
        data = bytes(rng.choice(ALPHABET) if rng.random() < 0.5 else rng.randrange(256)
                     for _ in range(rng.randrange(0, 300)))
        assert_same(data, rng.random() < 0.5)


@needs_c
def test_blocks_over_a_mebibyte():
    rng = random.Random(1939)
    big = random_block(rng, (1 << 20) + 12345)
    for at_line_start in (True, False):
        assert_same(big, at_line_start)
    assert_same(b"\n." * (1 << 20), True)              # the worst growth: 2 octets per LF
    assert_same(b"\r\n" * (1 << 20), False)            # the most shrinking
    assert_same(b"x" * ((1 << 20) + 1), True)          # no LF at all


def guess_max() -> int:
    """_wire.c's GUESS_MAX (the tests read its #define line)."""
    source = (REPO / "qpopper" / "spool" / "_wire.c").read_text()
    (kib,) = re.findall(r"^#define GUESS_MAX \((\d+) \* 1024\)$", source, re.M)
    return int(kib) * 1024


@needs_c
def test_every_sizing_way():
    """The C pass fills a guessed size (the input and a quarter) when the input is at most
    GUESS_MAX octets, and counts the exact size when it is larger or when the fill does not
    fit the guess (more than one octet of growth per four). Each way, one piece or several:
    the worst growth (every LF doubling a dot), all LFs, lines of four octets (the growth the
    guess just holds) and of three, CR LFs only (shrinking), mail-like text."""
    limit = guess_max()
    assert 64 << 10 < limit <= 100 << 10     # a RETR window is guessed; + a quarter < 128 KiB
    rng = random.Random(limit)
    for n in (0, 1, 5, 1000, limit - 1, limit, limit + 1, 3 * limit):
        for data in ((b"." + b"\n." * n)[:n], b"\n" * n, (b"abc\n" * n)[:n], (b"ab\n" * n)[:n],
                     (b"\r\n" * n)[:n], random_block(rng, n)[:n]):
            assert len(data) == n
            for at_line_start in (True, False):
                expected = wire_py(data, at_line_start)
                assert wire_c(data, at_line_start) == expected
                cuts = sorted(rng.choices(range(n + 1), k=3))
                pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
                assert join_c(pieces, at_line_start) == expected


def grown_by(n: int, growth: int, last: str) -> bytes:
    """n octets whose conversion (at a line start) is `growth` octets longer, the last octets
    to grow being `last`: "lf" (an LF ends the input), "dot" (LF and a dot to double end it)
    or "tail" (every LF early, plain octets after them)."""
    lfs = growth - (last == "dot")
    assert 0 < lfs and lfs + (last == "dot") < n
    if last == "tail":
        positions = range(1, 2 * lfs, 2)
    else:
        end = n - 1 - (last == "dot")
        positions = [end - (lfs - 1 - i) * (end // lfs) for i in range(lfs)]
    data = bytearray(b"a" * n)
    for at in positions:
        data[at] = 0x0A
    if last == "dot":
        data[-1] = ord(".")
    return bytes(data)


@needs_c
def test_the_guess_exactly_met_and_missed_by_one():
    """The guess is the input and a quarter plus 2 (_wire.c's convert_pieces): output of
    exactly that size fills it with no octet to spare; one octet more must go the counted
    way, whichever write runs out of room (an LF's CR LF, a doubled dot, the tail's copy)."""
    rng = random.Random(4)
    for n in (40, 41, 42, 43, 1001, guess_max() - 3, guess_max()):
        room = n // 4 + 2
        for growth in (room - 1, room, room + 1):
            for last in ("lf", "dot", "tail"):
                data = grown_by(n, growth, last)
                expected = wire_py(data)
                assert len(expected) == n + growth, (n, growth, last)
                assert wire_c(data) == expected, (n, growth, last)
                cut = rng.randrange(n + 1)
                assert join_c([data[:cut], memoryview(data)[cut:]]) == expected


@needs_c
def test_any_buffer_and_the_keyword_and_the_input_untouched():
    data = bytearray(b".a\0\r\nb\n.c\r")
    before = bytes(data)
    expected = wire_py(before)
    assert wire_c(data) == expected
    assert wire_c(memoryview(data)) == expected
    assert wire_c(data=before, at_line_start=False) == wire_py(before, False)
    assert data == before
    with pytest.raises(TypeError):
        wire_c("text")
    with pytest.raises(TypeError):
        wire_c(b"x", True, 1)


# --- wire_join: a message's pieces converted without joining them first ----------------------
def assert_same_join(pieces: list, at_line_start: bool = True) -> None:
    expected = wire_py(b"".join(bytes(p) for p in pieces), at_line_start)
    assert join_py(pieces, at_line_start) == expected
    got = join_c(pieces, at_line_start)
    assert type(got) is bytes
    assert got == expected, ([bytes(p)[:80] for p in pieces], at_line_start)


@needs_c
@pytest.mark.parametrize("at_line_start", [True, False])
def test_join_every_cut_of_short_strings(at_line_start):
    """Every string up to 5 octets cut into three pieces anywhere (inside a CRLF, before a
    dot, empty pieces): pieces are converted one by one unless a cut splits a CR LF, then
    joined first, and both ways must give the conversion of the whole."""
    for n in range(6):
        for chars in itertools.product(ALPHABET, repeat=n):
            data = bytes(chars)
            for i in range(n + 1):
                for j in range(i, n + 1):
                    assert_same_join([data[:i], data[i:j], data[j:]], at_line_start)


@needs_c
@pytest.mark.parametrize("seed", range(3))
def test_join_random_messages_cut_at_line_starts_and_anywhere(seed):
    rng = random.Random(seed)
    for _ in range(300):
        block = random_block(rng, rng.choice((0, 10, 1000, 5000)))
        lines = block.splitlines(keepends=True)
        cuts = sorted(rng.sample(range(len(lines) + 1), min(3, len(lines) + 1)))
        at_lines = [b"".join(lines[a:b]) for a, b in zip([0] + cuts, cuts + [len(lines)])]
        view = memoryview(block)
        anywhere = sorted(rng.randrange(len(block) + 1) for _ in range(3))
        at_octets = [view[a:b] for a, b in zip([0] + anywhere, anywhere + [len(block)])]
        for pieces in (at_lines, at_octets, at_lines + [b"X-UIDL: 1\n"], [b""] + at_lines):
            assert_same_join(pieces, rng.random() < 0.5)


@needs_c
def test_join_takes_what_send_message_gives_and_refuses_the_rest():
    data = b"a\r\n.b\n"
    view = memoryview(data)
    assert join_c([view[:3], b"X-UIDL: u\n", view[3:], b"\r\n"]) == \
        wire_py(b"a\r\nX-UIDL: u\n.b\n\r\n")
    assert join_c(()) == b""
    assert join_c([bytearray(b".x\0\n")], at_line_start=False) == b".x \r\n"
    assert join_c(pieces=[b".y"]) == b"..y"
    for wrong in ([b"a\n", "text"], b"not a list", None, iter([b"a"])):
        with pytest.raises(TypeError):
            join_c(wrong)
    with pytest.raises(BufferError):                   # not contiguous
        join_c([memoryview(b"abcd")[::2]])


@needs_c
def test_join_releases_every_buffer_also_when_a_later_piece_is_refused():
    growing = bytearray(b"a\n")
    with pytest.raises(TypeError):
        join_c([growing, "text"])
    growing.append(0x62)               # BufferError if the first piece's view were still held
    assert join_c([growing]) == b"a\r\nb"


def peak_while(call) -> int:
    """Peak traced memory (octets) while `call()` runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@needs_c
def test_join_converts_in_place_unless_a_crlf_is_split():
    """The point of wire_join: no joined copy. Pieces of a 4.4 MB message cut at line starts
    (and after a last line without LF, as send_message's closer) allocate the result only;
    a CR LF split by a cut takes the join path, which the same measure must see."""
    unit = b"line of text\n.dotted\r\n"
    body = unit * 200_000                              # 4.4 MB
    view = memoryview(body)                            # slices without copies
    half = len(unit) * 100_000
    expected = wire_py(body + b"tail\r\n")
    in_place = peak_while(lambda: join_c([view[:half], view[half:], b"tail", b"\r\n"]))
    assert in_place < len(expected) + (256 << 10), in_place
    cut_crlf = body.index(b"\r\n") + 1
    joined = peak_while(lambda: join_c([view[:cut_crlf], view[cut_crlf:]]))
    assert joined > len(body) + len(expected) - (256 << 10), joined
