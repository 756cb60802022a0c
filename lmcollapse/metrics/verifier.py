"""How far a generation has moved toward an imperfect verifier (synthetic source only).

The verifier is the noisy copy of the source that the ``verifier`` scorer curates with
(:mod:`lmcollapse.scorers.verifier`; set ``noise`` and ``seed`` here as there). For every
sample x of corpus k, each word the continuation adds to its prompt is scored exactly under
the source (log p) and under the verifier (log v). Since the corpus is a draw from model
k, q_k, the mean of log v - log p estimates KL(q_k || p) - KL(q_k || v): how much closer the
generation's text is to the verifier's distribution than to the truth.

- ``verifier_gap`` (nats per word): sum (log v - log p) / words, over the words the source
  can produce there (the verifier has the same support); > 0: closer to the verifier;
- ``truth_nats_per_word``, ``verifier_nats_per_word``: -log p and -log v per word;
- ``impossible_share``: words the source cannot produce there, per word scored.

The human row scores the held-out source documents: its gap is -KL(p || v) per word up to
sampling noise (a draw from the truth is closer to the truth), and ``details`` hold the
exact KL rate of the verifier from the source (its stated quality).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.metrics.ground_truth import test_documents
from lmcollapse.registry import METRICS
from lmcollapse.scorers.verifier import verifier_chain

WHERE = "metrics.verifier"


@dataclass
class VerifierMetricSettings:
    """The verifier measured against: its ``noise`` and ``seed`` (those of the scorer)."""

    noise: float = 1.0
    seed: int = 0

    def check(self, where: str) -> None:
        if not 0.0 <= self.noise <= 10.0:
            raise ConfigError(f"{where}.noise: a standard deviation in [0, 10], got "
                              f"{self.noise}")


@METRICS.register("verifier")
class TowardVerifier(Metric):
    settings = VerifierMetricSettings
    display_name = "Toward the verifier (nats/word)"
    headline = "verifier_gap"
    higher_is_better = None  # neither: a generation drifting to the verifier is the finding
    directions = {"truth_nats_per_word": False, "verifier_nats_per_word": None,
                  "impossible_share": False}
    columns = ("verifier_gap",)

    def _chain(self, ctx: MeasureContext):
        return verifier_chain(ctx.truth, self.config.noise, self.config.seed, WHERE)

    def preflight(self, ctx: MeasureContext) -> None:
        self._chain(ctx)

    def _measure(self, ctx: MeasureContext, pairs: list[tuple[float, float, int, int]],
                 what: dict[str, int]) -> Measurement:
        _, kl = self._chain(ctx)
        log_p = sum(p for p, _, _, _ in pairs)
        log_v = sum(v for _, v, _, _ in pairs)
        words = sum(w for _, _, w, _ in pairs)
        impossible = sum(i for _, _, _, i in pairs)
        scored = max(words - impossible, 1)
        return Measurement(
            values={"verifier_gap": (log_v - log_p) / scored,
                    "truth_nats_per_word": -log_p / scored,
                    "verifier_nats_per_word": -log_v / scored,
                    "impossible_share": impossible / max(words, 1)},
            details={"noise": self.config.noise, "seed": self.config.seed,
                     "kl_rate_truth_to_verifier": kl},
            sizes={**what, "words": words})

    def compute(self, ctx: MeasureContext) -> Measurement:
        chain, _ = self._chain(ctx)
        pairs = []
        for sample in ctx.corpus:
            context, full = ctx.prompt_and_text(sample)
            log_p, words, impossible = ctx.truth.continuation_parts(context, full[len(context):])
            log_v, _, _ = chain.continuation_parts(context, full[len(context):])
            pairs.append((log_p, log_v, words, impossible))
        return self._measure(ctx, pairs, {"samples": len(ctx.corpus)})

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        chain, _ = self._chain(ctx)
        docs = test_documents(ctx)
        return self._measure(ctx, [(ctx.truth.log_prob(d), chain.log_prob(d),
                                    ctx.truth.n_words(d), 0) for d in docs],
                             {"documents": len(docs)})

    def describe(self, m: Measurement) -> str:
        return (f"exact log p under the source and under a verifier (noise "
                f"{m.details['noise']:g}, KL rate {m.details['kl_rate_truth_to_verifier']:.3f} "
                f"nats/word from the source), {m.sizes['words']} words")
