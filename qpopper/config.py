"""Resolve every layer of configuration into one frozen Config.

Layers, later wins: built-in defaults → global files (-f, config-file chains) → argv →
<spool-dir>/<user>.qpopper-options → ~/.qpopper-options (both scope-checked; a refused option
is logged and ignored, as in Qpopper).
"""

from __future__ import annotations

from typing import Any, Iterator

from .options import OPTIONS, Option, lookup

DEFAULT_SOURCE = "default"


class ConfigError(Exception):
    """A configuration problem, rendered as one line: `FILE:LINE: what was expected`."""


class Config:
    """The effective configuration: one read-only attribute per option ('-' → '_')."""

    __slots__ = ("_values", "_sources")

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_sources", dict(sources))

    @classmethod
    def defaults(cls) -> "Config":
        return cls({o.name: o.default for o in OPTIONS}, {o.name: DEFAULT_SOURCE for o in OPTIONS})

    def __getattr__(self, attr: str) -> Any:
        try:
            return self._values[attr.replace("_", "-")]
        except KeyError:
            raise AttributeError(f"no option {attr!r}") from None

    def __setattr__(self, attr, value):
        raise AttributeError("Config is frozen; use replace()")

    def get(self, name: str) -> Any:
        return self._values[lookup(name).name]

    def source(self, name: str) -> str:
        """Where the effective value came from: 'default', 'argv -T', '/etc/...:12', ..."""
        return self._sources[lookup(name).name]

    def items(self) -> Iterator[tuple[Option, Any, str]]:
        for opt in OPTIONS:
            yield opt, self._values[opt.name], self._sources[opt.name]

    def replace(self, source: str = "override", **changes: Any) -> "Config":
        """A copy with some options changed (attribute-style names), values already typed."""
        values, sources = dict(self._values), dict(self._sources)
        for attr, value in changes.items():
            opt = lookup(attr.replace("_", "-"))
            if opt is None:
                raise ConfigError(f"{source}: unknown option {attr!r}")
            values[opt.name] = value
            sources[opt.name] = source
        return Config(values, sources)
