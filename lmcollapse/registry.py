"""The parts a researcher adds: retention policies, metrics and human-data sources.

Each part is a class registered under a name, and each brings its own settings::

    @dataclass
    class TailSettings:                  # the YAML section ``metrics.tail``
        head_mass: float = 0.9
        def check(self, where: str) -> None: ...   # range checks, ConfigError naming ``where``

    @METRICS.register("tail")
    class TailLoss(Metric):
        settings = TailSettings
        ...

The config layer (:mod:`lmcollapse.settings`, :mod:`lmcollapse.config`) knows no part by
name: it asks a registry for the settings class of a section and builds it, with
did-you-mean errors. A part's module is
found without being listed anywhere: :func:`discover` imports every module of the built-in
part packages (``lmcollapse.policies``, ``lmcollapse.metrics``, ``lmcollapse.data``,
``lmcollapse.scorers``, ``lmcollapse.units``, ``lmcollapse.losses``), plus any module a
package declares under the ``lmcollapse.parts`` entry-point group, so a new part is one new
file.

This module imports nothing of lmcollapse except :mod:`lmcollapse.errors`: every part and
the config layer import it, and it imports none of them (discovery imports by name, at run
time, once).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: packages whose every module is imported by :func:`discover` (each registers its parts)
BUILTIN_PARTS = ("lmcollapse.policies", "lmcollapse.metrics", "lmcollapse.data",
                 "lmcollapse.scorers", "lmcollapse.units", "lmcollapse.losses")
#: entry-point group through which an installed package adds parts
ENTRY_POINT_GROUP = "lmcollapse.parts"


class Registry(Generic[T]):
    """A named table of part classes, filled by a decorator.

    Args:
        kind: what the entries are ("policy", "metric", "data source"), for messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._default: str | None = None

    def register(self, name: str, default: bool = False) -> Callable[[T], T]:
        """Decorator that stores its target under ``name`` (and sets its ``name``);
        ``default``: the entry a config gets when it names none (:meth:`default`)."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if default and self._default is not None:
                raise ValueError(f"two default {self.kind} entries: {self._default!r}, {name!r}")
            obj.name = name  # type: ignore[attr-defined]
            self._entries[name] = obj
            self._default = name if default else self._default
            return obj

        return deco

    def default(self) -> str:
        """The name of the entry registered with ``default=True`` (the part declares it:
        the config layer names none)."""
        discover()
        if self._default is None:
            raise KeyError(f"no default {self.kind} is registered")
        return self._default

    def get(self, name: str) -> T:
        """Return the entry called ``name`` or raise a KeyError that lists what exists."""
        discover()
        if name not in self._entries:
            raise KeyError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def find(self, name: str) -> T | None:
        """The entry called ``name`` if its module was imported already (no discovery:
        nothing else is imported), else None."""
        return self._entries.get(name)

    def names(self) -> list[str]:
        discover()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        discover()
        return sorted(self._entries.items())

    def __contains__(self, name: str) -> bool:
        discover()
        return name in self._entries


def settings_of(part: Any) -> type:
    """The settings dataclass a part declares (``settings``), or an empty one."""
    return getattr(part, "settings", None) or _NoSettings


@dataclass
class _NoSettings:
    """Settings of a part that takes none."""

    def check(self, where: str) -> None:
        """Nothing to check."""


def unknown_name_message(kind: str, name: str, allowed: list[str]) -> str:
    """``unknown policy 'replce'; did you mean 'replace'? Allowed: ...``."""
    msg = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(str(name), allowed, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return f"{msg} Allowed: {', '.join(allowed)}"


POLICIES: Registry[Any] = Registry("policy")
METRICS: Registry[Any] = Registry("metric")
SOURCES: Registry[Any] = Registry("data source")
SCORERS: Registry[Any] = Registry("scorer")
#: training objectives (``train.loss``, :mod:`lmcollapse.losses`)
LOSSES: Registry[Any] = Registry("loss")
#: what a policy runs as, one unit of a run's plan (:mod:`lmcollapse.units`)
UNIT_KINDS: Registry[Any] = Registry("unit kind")


def unit_kind(policy: str) -> Any:
    """The unit kind the policy ``policy`` declares (its ``unit``; None: the default kind)."""
    return UNIT_KINDS.get(getattr(POLICIES.get(policy), "unit", None) or UNIT_KINDS.default())

_discovered = False


def discover() -> None:
    """Import every built-in part module and every ``lmcollapse.parts`` entry point, once.

    Importing a part's module registers it; nothing else has to list it.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package in BUILTIN_PARTS:
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            importlib.import_module(f"{package}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
