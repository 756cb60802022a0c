"""Retention policies: how the training mix of generation k >= 1 is built.

A *row* is a dict with the sample's provenance (``sample_id``, ``origin``, ``generation``,
``prompt_id``) and its ``input_ids``. ``human`` is the human training pool (N blocks);
``corpora[j]`` is what generation j wrote (one continuation per human block by default).
Generation k trains on a mix built from ``human`` and ``corpora[0..k-1]``; generation 0 always
trains on ``human`` alone and is shared by every policy.

Every random draw uses the ``rng`` the caller derives from (seed, policy, generation), so a
mix is reproducible and a resumed run rebuilds exactly the mix it would have built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmcollapse.errors import ConfigError
from lmcollapse.registry import Registry

Row = dict[str, Any]
POLICIES: Registry[type[Policy]] = Registry("policy")


@dataclass
class MixContext:
    """What a policy may draw from when it builds the mix of generation ``k``."""

    k: int
    human: list[Row]
    corpora: dict[int, list[Row]]
    rng: np.random.Generator
    generations: int

    @property
    def n(self) -> int:
        """N: the size of the human training set in blocks."""
        return len(self.human)

    def previous(self) -> list[Row]:
        return self.corpora[self.k - 1]

    def draw(self, rows: list[Row], count: int) -> list[Row]:
        """``count`` rows drawn without replacement, in pool order."""
        if count > len(rows):
            raise ValueError(f"cannot draw {count} samples from a pool of {len(rows)}")
        idx = np.sort(self.rng.choice(len(rows), size=count, replace=False))
        return [rows[i] for i in idx]


class Policy:
    """Base class: ``build(ctx)`` returns the training mix; ``check`` validates the spec."""

    #: whether the policy reads ``fraction`` (r).
    uses_fraction = False
    default_fraction: float | None = None

    def __init__(self, fraction: float | None = None) -> None:
        self.fraction = fraction if fraction is not None else self.default_fraction

    @classmethod
    def check(cls, spec: Any, cfg: Any, where: str) -> None:
        """Raise ConfigError for a spec this policy cannot run."""
        if not cls.uses_fraction and spec.fraction is not None:
            raise ConfigError(f"{where}.fraction: policy {spec.name!r} takes no fraction")
        r = spec.fraction if spec.fraction is not None else cls.default_fraction
        if cls.uses_fraction and (r is None or not 0.0 <= r <= 1.0):
            raise ConfigError(f"{where}.fraction: must be a number in [0, 1], got {r!r}")

    def build(self, ctx: MixContext) -> list[Row]:
        raise NotImplementedError


@POLICIES.register("replace")
class Replace(Policy):
    """Corpus k-1 only: no human data is kept (Shumailov et al. 2023, 0%)."""

    def build(self, ctx: MixContext) -> list[Row]:
        return list(ctx.previous())


@POLICIES.register("mix")
class Mix(Policy):
    """round(r*N) human blocks drawn afresh each generation, N - round(r*N) from corpus k-1."""

    uses_fraction = True
    default_fraction = 0.1

    def build(self, ctx: MixContext) -> list[Row]:
        n_human = round(self.fraction * ctx.n)
        human = ctx.draw(ctx.human, n_human)
        synthetic = ctx.draw(ctx.previous(), min(ctx.n - n_human, len(ctx.previous())))
        return human + synthetic


@POLICIES.register("accumulate")
class Accumulate(Policy):
    """All human train plus every corpus written so far, 0..k-1 (Gerstgrasser et al. 2024)."""

    def build(self, ctx: MixContext) -> list[Row]:
        return _accumulated(ctx)


@POLICIES.register("accumulate-subsample")
class AccumulateSubsample(Policy):
    """N rows drawn uniformly from the accumulated pool: a fixed budget (Kazdan et al. 2024)."""

    def build(self, ctx: MixContext) -> list[Row]:
        return ctx.draw(_accumulated(ctx), ctx.n)


@POLICIES.register("fresh")
class Fresh(Policy):
    """A new, disjoint human shard of round(r*N) blocks each generation + corpus k-1 for the rest.

    Shards come from one permutation of the human pool fixed per (seed, policy), so the human
    blocks of generation k were never seen by generations 1..k-1 (Alemohammad et al. 2023,
    "fresh data loop"). They were seen by generation 0, which every policy shares and which
    trains on all of human train. Needs ``generations * r <= 1``; each shard has
    ``min(round(r*N), N // generations)`` blocks.
    """

    uses_fraction = True
    default_fraction = 0.2

    @classmethod
    def check(cls, spec: Any, cfg: Any, where: str) -> None:
        super().check(spec, cfg, where)
        r = spec.fraction if spec.fraction is not None else cls.default_fraction
        if cfg.generations * r > 1.0 + 1e-9:
            raise ConfigError(
                f"{where}.fraction: fresh needs generations * fraction <= 1 so that every "
                f"generation gets a disjoint human shard; got {cfg.generations} * {r}")

    def __init__(self, fraction: float | None = None, shard_seed: int = 0) -> None:
        super().__init__(fraction)
        self.shard_seed = shard_seed

    def build(self, ctx: MixContext) -> list[Row]:
        # never more than N // generations, so rounding up cannot exhaust the pool late
        n_human = min(round(self.fraction * ctx.n), ctx.n // max(ctx.generations, 1))
        order = np.random.default_rng(self.shard_seed).permutation(ctx.n)
        shard = np.sort(order[(ctx.k - 1) * n_human: ctx.k * n_human])
        if len(shard) < n_human:
            raise ValueError(f"fresh: human pool exhausted at generation {ctx.k}")
        synthetic = ctx.draw(ctx.previous(), min(ctx.n - n_human, len(ctx.previous())))
        return [ctx.human[i] for i in shard] + synthetic


def _accumulated(ctx: MixContext) -> list[Row]:
    pool = list(ctx.human)
    for j in range(ctx.k):
        pool += ctx.corpora[j]
    return pool


def make_policy(spec: Any, shard_seed: int = 0) -> Policy:
    """Instantiate the policy a :class:`~lmcollapse.config.PolicySpec` names."""
    cls = POLICIES.get(spec.name)
    if cls is Fresh:
        return Fresh(spec.fraction, shard_seed=shard_seed)
    return cls(spec.fraction)
