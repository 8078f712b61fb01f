"""libpam's failure delay, as Linux-PAM 1.5 draws it, so that the authentication cache can
draw it again (docs/auth-cache.md, "Timing").

A module asks for a base delay (pam_unix's 2 s unless nodelay, pam_faildelay's); libpam
waits that base times a jitter of 0.5 to 1.5, drawn by three steps of a public linear
congruential generator seeded with the wall-clock second in which pam_authenticate began
(pam_delay.c, _pam_compute_delay). Anyone can work the draw out for any second: a refusal
the cache answered with a delay drawn in another second would stand out beside a wrong
password sent in the same second. So the cache keeps the base, recovered from the drawn
delay, and draws for the second of each refusal it answers. A libpam that draws otherwise
(Linux-PAM 1.6 and later: getrandom) is told by its library (draws_from_the_second): then
no base, and nothing is remembered."""

from __future__ import annotations

import ctypes
import functools

_LCG_MULTIPLIER = 1664525
_LCG_INCREMENT = 1013904223


def _jitter(second: int) -> float:
    """What libpam multiplies the base with in wall-clock second `second`: 0.5 to 1.5."""
    seed = second & 0xFFFFFFFF
    total = 0.0
    for _ in range(3):
        seed = (_LCG_MULTIPLIER * seed + _LCG_INCREMENT) & 0xFFFFFFFF
        total += (seed // 10) % 1000000
    return 1.0 + ((total / 3.0) / 1e6 - 0.5)          # libpam's order of the additions


_libc_time = ctypes.CDLL(None).time
_libc_time.restype, _libc_time.argtypes = ctypes.c_long, [ctypes.c_void_p]


def wall_second() -> int:
    """time(NULL), as libpam reads it: the kernel's coarse clock, which turns a few
    milliseconds after Python's time.time()."""
    return _libc_time(None)


@functools.cache
def draws_from_the_second() -> bool:
    """Is the libpam mapped into this process one that draws its delay from the second
    (Linux-PAM before 1.6, whose _pam_rand does not call getrandom)? Read once per process
    (the master's PAM preload asks it before forking)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "/libpam.so" in line}
        if len(paths) != 1:
            return False
        with open(paths.pop(), "rb") as library:
            return b"getrandom" not in library.read(16 * 1024 * 1024)
    except OSError:
        return False


def drawn_delay_us(second: int, base_us: int) -> int:
    """The delay (µs) libpam draws for `base_us` in wall-clock second `second`."""
    return int(base_us * _jitter(second))


def base_of(drawn_us: int, seconds) -> int | None:
    """A base delay (µs) that libpam's draw in one of `seconds` (the first that has one)
    turns into `drawn_us`, checked by drawing it again; None when none does. Only bases in
    whole milliseconds are taken (pam_unix's 2 s, a pam_faildelay setting): nearly any
    delay is the draw of some base to the microsecond, so a draw of another second, or of
    another libpam, would otherwise be worked back to a base that is not the stack's."""
    if drawn_us == 0:
        return 0
    for second in seconds:
        guess = round(drawn_us / _jitter(second) / 1000)
        for base in ((guess + step) * 1000 for step in (0, 1, -1)):
            if base > 0 and drawn_delay_us(second, base) == drawn_us:
                return base
    return None
