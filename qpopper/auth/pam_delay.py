"""libpam's failure delay, as Linux-PAM 1.5 draws it, so that the authentication cache can
draw it again (docs/auth-cache.md, "Timing").

A module asks for a base delay (pam_unix's 2 s unless nodelay, pam_faildelay's); libpam
waits that base times a jitter of 0.5 to 1.5, drawn by three steps of a public linear
congruential generator seeded with the wall-clock second in which pam_authenticate began
(pam_delay.c, _pam_compute_delay). Anyone can work the draw out for any second: a refusal
the cache answered with a delay drawn in another second would stand out beside a wrong
password sent in the same second. So the cache keeps the base, recovered from the drawn
delay, and draws for the second of each refusal it answers. A libpam that draws otherwise
(real randomness) is seen when the base is recovered: no base, nothing remembered."""

from __future__ import annotations

_LCG_MULTIPLIER = 1664525
_LCG_INCREMENT = 1013904223


def _jitter(second: int) -> float:
    """What libpam multiplies the base with in wall-clock second `second`: 0.5 to 1.5."""
    seed = second & 0xFFFFFFFF
    total = 0.0
    for _ in range(3):
        seed = (_LCG_MULTIPLIER * seed + _LCG_INCREMENT) & 0xFFFFFFFF
        total += (seed // 10) % 1000000
    return 1.0 + (total / 3.0) / 1e6 - 0.5


def drawn_delay_us(second: int, base_us: int) -> int:
    """The delay (µs) libpam draws for `base_us` in wall-clock second `second`."""
    return int(base_us * _jitter(second))


def base_of(drawn_us: int, seconds) -> int | None:
    """A base delay (µs) that libpam's draw in one of `seconds` (the first that has one)
    turns into `drawn_us`, checked by drawing it again; None when none does."""
    if drawn_us == 0:
        return 0
    for second in seconds:
        guess = round(drawn_us / _jitter(second))
        for base in (guess, guess + 1, guess - 1, guess + 2, guess - 2):
            if base > 0 and drawn_delay_us(second, base) == drawn_us:
                return base
    return None
