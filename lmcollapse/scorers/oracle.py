"""The ideal discriminator: the exact log p of the synthetic source (only there)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmcollapse.data.blocks import Sample
from lmcollapse.errors import ConfigError
from lmcollapse.registry import SCORERS
from lmcollapse.scorers.base import ScoreContext, Scorer


@dataclass
class OracleSettings:
    """``per_word``: divide by the number of words the continuation completes."""

    per_word: bool = True


@SCORERS.register("oracle")
class Oracle(Scorer):
    """log p under the source of the words a continuation adds to its prompt
    (:meth:`~lmcollapse.data.synthetic.MarkovSource.continuation_log_prob`); a sample with
    an unknown word or an impossible transition scores -inf."""

    settings = OracleSettings

    def preflight(self, ctx: ScoreContext) -> None:
        if ctx.truth is None or not hasattr(ctx.truth, "continuation_log_prob"):
            raise ConfigError("curate.scorer: 'oracle' needs a data source that knows log p "
                              "of a continuation (data.source: synthetic)")

    def score(self, ctx: ScoreContext, samples: list[Sample]) -> np.ndarray:
        out = np.empty(len(samples), dtype=np.float64)
        for i, s in enumerate(samples):
            context = ctx.tokenizer.decode(ctx.prompt(s))
            full = ctx.tokenizer.decode(ctx.prompt(s) + [int(t) for t in s["input_ids"]])
            log_p, words = ctx.truth.continuation_log_prob(context, full[len(context):])
            out[i] = log_p / max(words, 1) if self.config.per_word else log_p
        return out

    def describe(self) -> str:
        return "exact log p of the source" + (" per word" if self.config.per_word else "")
