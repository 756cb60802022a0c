"""``accumulate``: every corpus is added to the human data, none is dropped (Gerstgrasser
et al. 2024)."""

from __future__ import annotations

from lmcollapse.data.blocks import Sample
from lmcollapse.policies.base import MixContext, Policy
from lmcollapse.registry import POLICIES


@POLICIES.register("accumulate")
class Accumulate(Policy):
    """All human train plus every corpus written so far, 0..k-1 (Gerstgrasser et al. 2024)."""

    def build(self, ctx: MixContext) -> list[Sample]:
        return ctx.accumulated()
