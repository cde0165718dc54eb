"""One registry type for losses, backbones and datasets.

Each catalogue (`featloss.losses`, `featloss.backbones`, `featloss.data`) owns one `Registry` of
frozen info records, filled by decorators at import time of its own modules; lookups of an
unknown key raise `ConfigError` naming the kind, the key and every known key. The registry never
imports the modules that fill it, so there is no import cycle between a catalogue and its
entries (timm's `_registry.py` is the model).
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from featloss.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Key -> info record, in registration order.

    Args:
        kind: what the entries are, for error messages ("loss", "backbone", "dataset").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, key: str, info: T) -> T:
        """Register `info` under `key`. Raises KeyError when the key is taken (a bug)."""
        if key in self._entries:
            raise KeyError(f"{self.kind} '{key}' is registered twice")
        self._entries[key] = info
        return info

    def get(self, key: str) -> T:
        """The info of `key`. Raises ConfigError (bad user input) for an unknown key."""
        try:
            return self._entries[key]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {_quote(key)}; known {self.kind}s: "
                              f"{', '.join(self._entries)}") from None

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


def _quote(key: object) -> str:
    text = repr(key) if not isinstance(key, str) else f"'{key}'"
    return text if len(text) <= 80 else text[:77] + "...'"
