"""The policy interface: what a policy may draw from (:class:`MixContext`), the base class
(:class:`Policy`) and the factory. A retention policy builds the training mix of
generation k >= 1.

A *sample* is a dict with its provenance (``sample_id``, ``origin``, ``generation``,
``prompt_id``) and its ``input_ids``. ``human`` is the human training pool (N blocks);
``corpora[j]`` is what generation j wrote (one continuation per human block by default).
Generation k trains on a mix built from ``human`` and ``corpora[0..k-1]``; generation 0 always
trains on ``human`` alone and is shared by every policy.

Every random draw uses the ``rng`` the caller derives from (seed, policy, generation), so a
mix is reproducible and a resumed run rebuilds exactly the mix it would have built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmcollapse.checks import fraction as check_fraction
from lmcollapse.data.blocks import Sample
from lmcollapse.registry import POLICIES
from lmcollapse.sampling import draw_indices


@dataclass
class MixContext:
    """What a policy may draw from when it builds the mix of generation ``k``."""

    k: int
    human: list[Sample]
    corpora: dict[int, list[Sample]]
    rng: np.random.Generator
    generations: int
    #: ``count`` -> that many new human blocks for this generation, never seen before, where
    #: the data source can write more (the synthetic source); None where it cannot
    fresh_human: Callable[[int], list[Sample]] | None = None
    #: the reserve: human blocks held back from generation 0 and every mix
    #: (``data.fresh_reserve``), for ``fresh`` with ``pool: reserve``
    reserve: list[Sample] = field(default_factory=list)
    #: (a participant of a unit with a shared pool: a population's) the pool generation k
    #: may crawl: every batch so far, each block with its ``writer`` and ``batch``
    #: (:meth:`lmcollapse.units.base.UnitKind.pool`)
    pool: list[Sample] | None = None

    @property
    def n(self) -> int:
        """N: the size of the human training set in blocks."""
        return len(self.human)

    def previous(self) -> list[Sample]:
        return self.corpora[self.k - 1]

    def draw(self, samples: list[Sample], count: int) -> list[Sample]:
        """``count`` samples drawn without replacement, in pool order."""
        return [samples[i] for i in draw_indices(len(samples), count, self.rng)]

    def accumulated(self) -> list[Sample]:
        """All human train plus every corpus written so far, 0..k-1."""
        pool = list(self.human)
        for j in range(self.k):
            pool += self.corpora[j]
        return pool


class Policy:
    """Base class: ``build(ctx)`` returns the training mix.

    A policy with parameters declares a ``settings`` dataclass: its fields are the keys the
    policy's config entry may hold beside ``name``, ``label`` and ``epochs``, and its
    ``check(where)`` validates them; :meth:`check` adds rules that need the experiment
    (the number of generations).
    """

    name = ""
    settings: type | None = None
    #: the kind of unit the policy runs as (a registered :mod:`lmcollapse.units` kind);
    #: None: the default kind, one lineage of generations
    unit: str | None = None

    def __init__(self, settings: Any = None, shard_seed: int = 0) -> None:
        if settings is None and self.settings is not None:
            settings = self.settings()
        self.config = settings
        #: a seed fixed per (seed, policy), for draws that must hold across generations
        self.shard_seed = shard_seed

    @classmethod
    def with_settings(cls, shard_seed: int = 0, **settings: Any) -> Policy:
        """The policy with these settings (``Mix.with_settings(fraction=0.3)``)."""
        return cls(cls.settings(**settings) if cls.settings else None, shard_seed=shard_seed)

    @classmethod
    def check(cls, settings: Any, where: str, generations: int) -> None:
        """Raise ConfigError for settings this policy cannot run with."""
        if settings is not None and hasattr(settings, "check"):
            settings.check(where)

    @classmethod
    def reserve_needed(cls, settings: Any, n: int, generations: int) -> int:
        """Reserve blocks (``data.fresh_reserve``) the policy draws over the run, from a
        human pool of ``n`` blocks: none unless it declares otherwise."""
        return 0

    @classmethod
    def rehearsal(cls, entry: dict[str, Any], generations: int) -> None:
        """Fit a config entry of this policy (plain data, changed in place) to a rehearsal
        of only ``generations`` generations (``--smoke``): nothing to change by default."""

    @classmethod
    def check_blocks(cls, settings: Any, where: str, n: int, generations: int,
                     least: int = 2) -> None:
        """Raise ConfigError where the settings cannot run on a human pool of exactly ``n``
        blocks (checked at set-up, once the text is tokenised), or would build a training
        mix of fewer than ``least`` blocks (the rule the human pool is held to: a batch):
        nothing by default."""

    def build(self, ctx: MixContext) -> list[Sample]:
        raise NotImplementedError


@dataclass
class FractionSettings:
    """``fraction``: r, the share of N that is human data."""

    fraction: float = 0.1

    def check(self, where: str) -> None:
        check_fraction(self.fraction, f"{where}.fraction")


def make_policy(spec: Any, shard_seed: int = 0) -> Policy:
    """Instantiate the policy a :class:`~lmcollapse.settings.PolicySpec` names, with its
    settings; ``shard_seed`` is fixed per (seed, policy)."""
    return POLICIES.get(spec.name)(spec.settings, shard_seed=shard_seed)


def reserve_needed(spec: Any, n: int, generations: int) -> int:
    """Reserve blocks the policy a :class:`~lmcollapse.settings.PolicySpec` names draws over
    the run (its :meth:`Policy.reserve_needed`)."""
    return POLICIES.get(spec.name).reserve_needed(spec.settings, n, generations)
