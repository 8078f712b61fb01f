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
import shutil
import subprocess
import sys
import sysconfig

import pytest

from qpopper.spool import mbox_send
from tests.helpers.compiler import assert_built_and_used
from tests.helpers.repo import REPO
from tests.helpers.wire_impls import NOT_BUILT

wire_c = mbox_send.wire_bytes_c
wire_py = mbox_send.wire_bytes_python
needs_c = pytest.mark.skipif(wire_c is None, reason=NOT_BUILT)

ALPHABET = b"\0\r\n.a"
"""Every octet the conversion treats specially, and one it does not."""


def test_the_accelerator_is_built_and_used_where_it_can_be():
    assert_built_and_used(wire_c, mbox_send.wire_bytes, "qpopper.spool._wire",
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
    assert not list((tmp_path / "lib").rglob("*.so"))
    check = ("from qpopper.spool import mbox_send as m; "
             f"assert m.__file__.startswith({str(tmp_path / 'lib')!r}), m.__file__; "
             "assert m.wire_bytes_c is None and m.wire_bytes is m.wire_bytes_python; "
             "print(m.wire_bytes(b'.a\\r\\n.b\\0'))")
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
