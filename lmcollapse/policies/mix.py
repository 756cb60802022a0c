"""``mix``: a fraction of human data drawn afresh each generation, the rest from corpus k-1
(Shumailov et al. 2023: 10%)."""

from __future__ import annotations

from lmcollapse.data.blocks import Sample
from lmcollapse.policies.base import FractionSettings, MixContext, Policy
from lmcollapse.registry import POLICIES


@POLICIES.register("mix")
class Mix(Policy):
    """round(r*N) human blocks drawn afresh each generation, N - round(r*N) from corpus k-1."""

    settings = FractionSettings

    def build(self, ctx: MixContext) -> list[Sample]:
        n_human = round(self.config.fraction * ctx.n)
        human = ctx.draw(ctx.human, n_human)
        synthetic = ctx.draw(ctx.previous(), min(ctx.n - n_human, len(ctx.previous())))
        return human + synthetic
