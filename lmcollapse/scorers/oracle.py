"""The ideal discriminator: the exact log p of the synthetic source (only there)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmcollapse.data.base import ExactContinuations
from lmcollapse.data.blocks import Sample
from lmcollapse.errors import ConfigError
from lmcollapse.registry import SCORERS
from lmcollapse.scorers.base import ScoreContext, Scorer


@dataclass
class OracleSettings:
    """``per_word``: divide by the number of words the continuation completes; ``floor``:
    the probability of a word the source cannot produce there (0: such a sample scores
    -inf; a small model writes few samples without one, so by default each impossible
    word costs log 1e-6 and the samples are ranked by how many they hold, then by log p)."""

    per_word: bool = True
    floor: float = 1e-6

    def check(self, where: str) -> None:
        if not 0.0 <= self.floor < 1.0:
            raise ConfigError(f"{where}.floor: must be in [0, 1), got {self.floor}")


@SCORERS.register("oracle")
class Oracle(Scorer):
    """log p under the source of the words a continuation adds to its prompt
    (:meth:`~lmcollapse.data.markov.MarkovSource.continuation_log_prob`), exact where
    the source can produce the words, ``floor`` per word where it cannot."""

    settings = OracleSettings

    def preflight(self, ctx: ScoreContext) -> None:
        if not isinstance(ctx.truth, ExactContinuations):
            raise ConfigError("curate.scorer: 'oracle' needs a data source that knows log p "
                              "of a continuation (data.source: synthetic)")

    def score(self, ctx: ScoreContext, samples: list[Sample]) -> np.ndarray:
        out = np.empty(len(samples), dtype=np.float64)
        for i, s in enumerate(samples):
            context = ctx.tokenizer.decode(ctx.prompt(s))
            full = ctx.tokenizer.decode(ctx.prompt(s) + [int(t) for t in s["input_ids"]])
            log_p, words = ctx.truth.continuation_log_prob(context, full[len(context):],
                                                           self.config.floor)
            out[i] = log_p / max(words, 1) if self.config.per_word else log_p
        return out

    def describe(self) -> str:
        unit = " per word" if self.config.per_word else ""
        return f"exact log p of the source{unit} (impossible words: {self.config.floor:g})"
