"""``accumulate-subsample``: N samples drawn from the accumulated pool, a fixed budget
(Kazdan et al. 2024)."""

from __future__ import annotations

from lmcollapse.data.blocks import Sample
from lmcollapse.policies.base import MixContext, Policy
from lmcollapse.registry import POLICIES


@POLICIES.register("accumulate-subsample")
class AccumulateSubsample(Policy):
    """N rows drawn uniformly from the accumulated pool: a fixed budget (Kazdan et al. 2024)."""

    def build(self, ctx: MixContext) -> list[Sample]:
        return ctx.draw(ctx.accumulated(), ctx.n)
