"""An imperfect verifier: the exact log p of a noisy copy of the synthetic source
(:func:`lmcollapse.data.markov.perturbed`), a scorer whose quality is stated (its KL rate
from the source, :func:`lmcollapse.data.markov.kl_rate`). Curation by it feeds back what
the verifier believes likely, not what is (Yi et al. 2025: retraining on verifier-filtered
data converges to the verifier's "knowledge center"); the ``verifier`` metric measures how
far each generation has moved toward it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lmcollapse.data.blocks import Sample
from lmcollapse.data.markov import MarkovSource, kl_rate, perturbed
from lmcollapse.errors import ConfigError
from lmcollapse.registry import SCORERS
from lmcollapse.scorers.base import ScoreContext, Scorer
from lmcollapse.scorers.oracle import OracleSettings


@dataclass
class VerifierSettings(OracleSettings):
    """``noise``: the standard deviation of the log-normal factor on each transition
    probability (0: the exact source, the oracle); ``seed``: its draw. ``per_word`` and
    ``floor`` as the oracle's."""

    noise: float = 1.0
    seed: int = 0

    def check(self, where: str) -> None:
        super().check(where)
        if not 0.0 <= self.noise <= 10.0:
            raise ConfigError(f"{where}.noise: a standard deviation in [0, 10], got "
                              f"{self.noise}")


@lru_cache(maxsize=8)
def _believed(truth: MarkovSource, noise: float, seed: int) -> tuple[MarkovSource, float]:
    """The verifier's chain and its KL rate from the source (built once per setting)."""
    chain = perturbed(truth, noise, seed)
    return chain, kl_rate(truth, chain)


def verifier_chain(truth: object, noise: float, seed: int, where: str
                   ) -> tuple[MarkovSource, float]:
    """The verifier of ``truth`` (a Markov source; refused naming ``where`` otherwise)."""
    if not isinstance(truth, MarkovSource):
        raise ConfigError(f"{where}: a verifier is a noisy copy of the synthetic Markov "
                          "source (data.source: synthetic, without modes)")
    return _believed(truth, float(noise), int(seed))


@SCORERS.register("verifier")
class Verifier(Scorer):
    """log p of a continuation under the verifier's chain, as the oracle scores it under
    the source's."""

    settings = VerifierSettings

    def preflight(self, ctx: ScoreContext) -> None:
        verifier_chain(ctx.truth, self.config.noise, self.config.seed, "curate.scorer")

    def score(self, ctx: ScoreContext, samples: list[Sample]) -> np.ndarray:
        chain, _ = verifier_chain(ctx.truth, self.config.noise, self.config.seed,
                                  "curate.scorer")
        out = np.empty(len(samples), dtype=np.float64)
        for i, s in enumerate(samples):
            context = ctx.tokenizer.decode(ctx.prompt(s))
            full = ctx.tokenizer.decode(ctx.prompt(s) + [int(t) for t in s["input_ids"]])
            log_p, words = chain.continuation_log_prob(context, full[len(context):],
                                                       self.config.floor)
            out[i] = log_p / max(words, 1) if self.config.per_word else log_p
        return out

    def describe(self) -> str:
        unit = " per word" if self.config.per_word else ""
        return (f"exact log p{unit} of a verifier: the source with log-normal noise "
                f"{self.config.noise:g} (seed {self.config.seed}) on each transition")
