"""The hand-written golden mbox spools (tests/golden/<name>.mbox, the options each is scanned
with) and an independent implementation of the UID encoding (reference §2.4 step 3), for the
mbox tests that check against them."""

from __future__ import annotations

from tests.helpers.repo import REPO

GOLDEN = REPO / "tests" / "golden"
SCAN_OPTIONS = {"uw": {"uw_kludge": True}}
GOLDEN_SPOOLS = sorted(p.stem for p in GOLDEN.glob("*.mbox"))


_ALPHABET = bytes(0x21 + d if 0x21 + d != 0x2E else 0x7E for d in range(80))


def oracle_encode(digest: bytes) -> str:
    """§2.4 step 3, written from the text: per 4-byte group v = v*16 + byte, then 5 base-80
    digits, 0x21 + digit, '.' replaced by '~'."""
    out = []
    for g in range(4):
        v = 0
        for b in digest[4 * g:4 * g + 4]:
            v = v * 16 + b
        for _ in range(5):
            out.append(chr(_ALPHABET[v % 80]))
            v //= 80
    return "".join(out)
