"""Retention policies: how the training mix of generation k >= 1 is built.

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
from typing import Any, Literal

import numpy as np

from lmcollapse.config import fraction as check_fraction
from lmcollapse.data.blocks import Sample
from lmcollapse.errors import ConfigError
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

    @property
    def n(self) -> int:
        """N: the size of the human training set in blocks."""
        return len(self.human)

    def previous(self) -> list[Sample]:
        return self.corpora[self.k - 1]

    def draw(self, samples: list[Sample], count: int) -> list[Sample]:
        """``count`` samples drawn without replacement, in pool order."""
        return [samples[i] for i in draw_indices(len(samples), count, self.rng)]


class Policy:
    """Base class: ``build(ctx)`` returns the training mix.

    A policy with parameters declares a ``settings`` dataclass: its fields are the keys the
    policy's config entry may hold beside ``name``, ``label`` and ``epochs``, and its
    ``check(where)`` validates them; :meth:`check` adds rules that need the experiment
    (the number of generations).
    """

    name = ""
    settings: type | None = None

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

    def build(self, ctx: MixContext) -> list[Sample]:
        raise NotImplementedError


@dataclass
class FractionSettings:
    """``fraction``: r, the share of N that is human data."""

    fraction: float = 0.1

    def check(self, where: str) -> None:
        check_fraction(self.fraction, f"{where}.fraction")


@POLICIES.register("replace")
class Replace(Policy):
    """Corpus k-1 only: no human data is kept (Shumailov et al. 2023, 0%)."""

    def build(self, ctx: MixContext) -> list[Sample]:
        return list(ctx.previous())


@POLICIES.register("mix")
class Mix(Policy):
    """round(r*N) human blocks drawn afresh each generation, N - round(r*N) from corpus k-1."""

    settings = FractionSettings

    def build(self, ctx: MixContext) -> list[Sample]:
        n_human = round(self.config.fraction * ctx.n)
        human = ctx.draw(ctx.human, n_human)
        synthetic = ctx.draw(ctx.previous(), min(ctx.n - n_human, len(ctx.previous())))
        return human + synthetic


@POLICIES.register("accumulate")
class Accumulate(Policy):
    """All human train plus every corpus written so far, 0..k-1 (Gerstgrasser et al. 2024)."""

    def build(self, ctx: MixContext) -> list[Sample]:
        return _accumulated(ctx)


@POLICIES.register("accumulate-subsample")
class AccumulateSubsample(Policy):
    """N rows drawn uniformly from the accumulated pool: a fixed budget (Kazdan et al. 2024)."""

    def build(self, ctx: MixContext) -> list[Sample]:
        return ctx.draw(_accumulated(ctx), ctx.n)


@dataclass
class FreshSettings(FractionSettings):
    """``pool``: ``shards`` cuts disjoint shards from the human training pool (so
    ``generations * fraction <= 1``); ``reserve`` cuts them from the reserve
    (``data.fresh_reserve``: text no generation has seen, generation 0 included; its size
    is checked at set-up); ``source`` draws new documents from the data source each
    generation (the synthetic source can; any fraction up to 1)."""

    fraction: float = 0.2
    pool: Literal["shards", "reserve", "source"] = "shards"


@POLICIES.register("fresh")
class Fresh(Policy):
    """A new, disjoint human shard of round(r*N) blocks each generation + corpus k-1 for the rest.

    With ``pool: source`` the human blocks are new documents the data source writes for
    this generation; with ``pool: reserve`` they are disjoint shards of the reserve, human
    text held back from generation 0 and from every mix (``data.fresh_reserve``; each
    shard has round(r*N) blocks, N the training pool, and the reserve must hold
    ``generations`` of them). Either way no generation has seen them before.

    Shards come from one permutation of the human pool fixed per (seed, policy), so the human
    blocks of generation k were never seen by generations 1..k-1 (Alemohammad et al. 2023,
    "fresh data loop"). They were seen by generation 0, which every policy shares and which
    trains on all of human train. Needs ``generations * r <= 1``; each shard has
    ``min(round(r*N), N // generations)`` blocks.
    """

    settings = FreshSettings

    @classmethod
    def check(cls, settings: Any, where: str, generations: int) -> None:
        super().check(settings, where, generations)
        r = settings.fraction
        if settings.pool == "shards" and generations * r > 1.0 + 1e-9:
            raise ConfigError(
                f"{where}.fraction: fresh needs generations * fraction <= 1 so that every "
                f"generation gets a disjoint human shard; got {generations} * {r}")

    def build(self, ctx: MixContext) -> list[Sample]:
        n_human = round(self.config.fraction * ctx.n)
        if self.config.pool == "source":
            if ctx.fresh_human is None:
                raise ValueError("fresh with pool: source needs a data source that writes "
                                 "new text (data.source: synthetic)")
            human = ctx.fresh_human(n_human)
        else:
            pool, what = ((ctx.reserve, "reserve") if self.config.pool == "reserve"
                          else (ctx.human, "human pool"))
            if self.config.pool == "shards":
                # never more than N // generations: rounding up cannot exhaust the pool late
                n_human = min(n_human, ctx.n // max(ctx.generations, 1))
            order = np.random.default_rng(self.shard_seed).permutation(len(pool))
            shard = np.sort(order[(ctx.k - 1) * n_human: ctx.k * n_human])
            if len(shard) < n_human:
                raise ValueError(f"fresh: the {what} ({len(pool)} blocks) is exhausted: no "
                                 f"shard of {n_human} blocks left for generation {ctx.k}")
            human = [pool[i] for i in shard]
        synthetic = ctx.draw(ctx.previous(), min(ctx.n - n_human, len(ctx.previous())))
        return human + synthetic


def reserve_needed(settings: Any, n: int, generations: int) -> int:
    """Reserve blocks a ``fresh`` policy with ``pool: reserve`` draws over the run (0 for
    any other policy): one shard of round(r*N) blocks per generation."""
    if getattr(settings, "pool", None) != "reserve":
        return 0
    return generations * round(settings.fraction * n)


def _accumulated(ctx: MixContext) -> list[Sample]:
    pool = list(ctx.human)
    for j in range(ctx.k):
        pool += ctx.corpora[j]
    return pool


def make_policy(spec: Any, shard_seed: int = 0) -> Policy:
    """Instantiate the policy a :class:`~lmcollapse.config.PolicySpec` names, with its
    settings; ``shard_seed`` is fixed per (seed, policy)."""
    return POLICIES.get(spec.name)(spec.settings, shard_seed=shard_seed)
