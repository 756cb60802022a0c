"""Unit kinds: what a policy runs as, one unit of a run's plan (:mod:`lmcollapse.units.base`
defines the interface; :mod:`~lmcollapse.units.lineage` and
:mod:`~lmcollapse.units.population` are the built-in kinds). Each module registers its kind
with :data:`lmcollapse.registry.UNIT_KINDS`; a new kind is one module plus its test."""

from lmcollapse.units.base import Host, UnitKind

__all__ = ["Host", "UnitKind"]
