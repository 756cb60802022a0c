"""``replace``: corpus k-1 only (Shumailov et al. 2023, 0% of human data kept)."""

from __future__ import annotations

from lmcollapse.data.blocks import Sample
from lmcollapse.policies.base import MixContext, Policy
from lmcollapse.registry import POLICIES


@POLICIES.register("replace", default=True)  # a config that names no policy gets it
class Replace(Policy):
    """Corpus k-1 only: no human data is kept (Shumailov et al. 2023, 0%)."""

    def build(self, ctx: MixContext) -> list[Sample]:
        return list(ctx.previous())
