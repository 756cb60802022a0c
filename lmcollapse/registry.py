"""One small registry: ``@REG.register("name")``, ``REG.get("name")``, did-you-mean errors."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of classes or functions, filled by a decorator.

    Args:
        kind: what the entries are ("policy", "metric"), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that stores its target under ``name``."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the entry called ``name`` or raise a KeyError that lists what exists."""
        if name not in self._entries:
            raise KeyError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def unknown_name_message(kind: str, name: str, allowed: list[str]) -> str:
    """``unknown policy 'replce'; did you mean 'replace'? Allowed: ...``."""
    msg = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(str(name), allowed, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return f"{msg} Allowed: {', '.join(allowed)}"
