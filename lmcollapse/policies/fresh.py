"""``fresh``: human text no generation has seen, added each generation (Alemohammad et al.
2023, the "fresh data loop")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from lmcollapse.data.blocks import Sample
from lmcollapse.errors import ConfigError
from lmcollapse.policies.base import FractionSettings, MixContext, Policy
from lmcollapse.registry import POLICIES


@dataclass
class FreshSettings(FractionSettings):
    """``human_source``: ``shards`` cuts disjoint shards from the human training pool (so
    ``generations * fraction <= 1``); ``reserve`` cuts them from the reserve
    (``data.fresh_reserve``: text no generation has seen, generation 0 included; its size
    is checked at set-up); ``source`` draws new documents from the data source each
    generation (the synthetic source can; any fraction up to 1). ``human_source`` is
    ``internet``'s word for the same choice; configs written before it was named so say
    ``pool``, which is read as ``human_source`` (a population's shared pool is the other
    idea)."""

    fraction: float = 0.2
    human_source: Literal["shards", "reserve", "source"] = "shards"
    #: an old key read as its new name (:func:`lmcollapse.settings.convert.build`)
    renamed: ClassVar[dict[str, str]] = {"pool": "human_source"}


@POLICIES.register("fresh")
class Fresh(Policy):
    """A new, disjoint human shard of round(r*N) blocks each generation + corpus k-1 for the rest.

    With ``human_source: source`` the human blocks are new documents the data source writes for
    this generation; with ``human_source: reserve`` they are disjoint shards of the reserve, human
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
        if settings.human_source == "shards" and generations * r > 1.0 + 1e-9:
            raise ConfigError(
                f"{where}.fraction: fresh needs generations * fraction <= 1 so that every "
                f"generation gets a disjoint human shard; got {generations} * {r}")

    @classmethod
    def reserve_needed(cls, settings: Any, n: int, generations: int) -> int:
        """``human_source: reserve`` draws one shard of round(r*N) blocks per generation."""
        if settings.human_source != "reserve":
            return 0
        return generations * round(settings.fraction * n)

    def build(self, ctx: MixContext) -> list[Sample]:
        n_human = round(self.config.fraction * ctx.n)
        if self.config.human_source == "source":
            if ctx.fresh_human is None:
                raise ValueError("fresh with human_source: source needs a data source that writes "
                                 "new text (data.source: synthetic)")
            human = ctx.fresh_human(n_human)
        else:
            pool, what = ((ctx.reserve, "reserve") if self.config.human_source == "reserve"
                          else (ctx.human, "human pool"))
            if self.config.human_source == "shards":
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
