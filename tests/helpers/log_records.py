"""The `log(priority, text)` callable the authenticator and poppassd's keeper are given, in
tests that call them in-process: it keeps what it was given."""

from __future__ import annotations

import re


class Log:
    def __init__(self):
        self.records: list[tuple[int, str]] = []

    def __call__(self, priority, text):
        self.records.append((priority, text))

    def texts(self) -> list[str]:
        return [text for _, text in self.records]

    def count(self, pattern: str) -> int:
        """How many lines match `pattern` (a regex, whole line)."""
        return sum(1 for text in self.texts() if re.fullmatch(pattern, text))

    def assert_never_mentions(self, secret: str) -> None:
        assert all(secret not in text for text in self.texts()), self.texts()
