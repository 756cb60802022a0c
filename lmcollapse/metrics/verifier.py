"""How far a generation has moved toward an imperfect verifier (synthetic source only).

The verifier is one of the two a run curates with:

- the noisy copy of the source that the ``verifier`` scorer curates with
  (:mod:`lmcollapse.scorers.verifier`; set ``noise`` and ``seed`` here as there); its
  quality is its exact KL rate from the source;
- with ``model``, a model's likelihood, as the ``loglik`` scorer's ``model``: ``gen0`` (the
  seed's generation-0 model) or a model directory / hub id that shares the run's
  tokenizer. Its quality is its excess log-loss over the source on the held-out source
  documents (nats/word, as the ``ground_truth`` metric computes a generation's): an upper
  bound on its KL rate, since one tokenisation of a text bounds the model's probability of
  it from below.

For every sample x of corpus k, each word the continuation adds to its prompt is scored
exactly under the source (log p) and under the verifier (log v). Since the corpus is a draw
from model k, q_k, the mean of log v - log p estimates KL(q_k || p) - KL(q_k || v): how much
closer the generation's text is to the verifier's distribution than to the truth. A model
scores a word as the sum of its tokens' log-probabilities given all the text before them
(prompt and continuation, tokenised as one text); a word's tokens are those between the
end of the word before it and its own end, so the tokenizer must not join text across
whitespace (byte-level BPE and SentencePiece do not). A sample where a token crosses a
word boundary is left out and counted (``unaligned_share``). A sample's tokens (after the
newline it is scored behind) longer than the trained length (and the verifier's own
context) lose their first tokens, which are context only: no model is scored past the
length it was trained on; a sample whose scored words alone would not fit is left out and
counted in ``unaligned_share`` too.

- ``verifier_gap`` (nats per word): sum (log v - log p) / words, over the words the source
  can produce there (the verifier has the same support); > 0: closer to the verifier;
- ``truth_nats_per_word``, ``verifier_nats_per_word``: -log p and -log v per word;
- ``impossible_share``: words the source cannot produce there, per word scored.

The human row scores the held-out source documents: its gap is -KL(p || v) per word up to
sampling noise (a draw from the truth is closer to the truth), and ``details`` hold the
verifier's stated quality: the exact KL rate of a chain from the source, or a model's
excess log-loss on those documents (its human gap is minus that, exactly).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmcollapse.checks import positive
from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.metrics.ground_truth import documents_nll, test_documents
from lmcollapse.metrics.perplexity import WindowSettings
from lmcollapse.models import context_length
from lmcollapse.registry import METRICS
from lmcollapse.scorers.loglik import load_external
from lmcollapse.scorers.verifier import verifier_chain
from lmcollapse.scoring import score

WHERE = "metrics.verifier"


@dataclass
class VerifierMetricSettings:
    """The verifier measured against: a noisy copy of the source (``noise`` and ``seed``,
    those of the ``verifier`` scorer) or, when ``model`` is set, a model's likelihood
    (``gen0`` or a model directory / hub id, the ``loglik`` scorer's ``model``; ``noise``
    and ``seed`` are then unused). ``batch_size``: sequences per forward pass of a model."""

    noise: float = 1.0
    seed: int = 0
    model: str | None = None
    batch_size: int = 32

    def check(self, where: str) -> None:
        if not 0.0 <= self.noise <= 10.0:
            raise ConfigError(f"{where}.noise: a standard deviation in [0, 10], got "
                              f"{self.noise}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model
                                       or self.model == "generator"):
            raise ConfigError(f"{where}.model: 'gen0' or a model directory / hub id (the "
                              f"model a generation is measured against), got {self.model!r}")
        positive(self.batch_size, f"{where}.batch_size")


@METRICS.register("verifier")
class TowardVerifier(Metric):
    settings = VerifierMetricSettings
    display_name = "Toward the verifier (nats/word)"
    headline = "verifier_gap"
    higher_is_better = None  # neither: a generation drifting to the verifier is the finding
    directions = {"truth_nats_per_word": False, "verifier_nats_per_word": None,
                  "impossible_share": False, "unaligned_share": False}
    columns = ("verifier_gap",)

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self._external: Any = None
        self._quality: dict[Any, float] = {}

    # -- the verifier ------------------------------------------------------------------

    def _chain(self, ctx: MeasureContext):
        return verifier_chain(ctx.truth, self.config.noise, self.config.seed, WHERE)

    def _model(self, ctx: MeasureContext):
        if self.config.model == "gen0":
            return ctx.reference_model()
        if self._external is None:
            self._external = load_external(self.config.model, ctx.accelerator, ctx.tokenizer,
                                           f"{WHERE}.model")
        return self._external

    def preflight(self, ctx: MeasureContext) -> None:
        if self.config.model is None:
            self._chain(ctx)
            return
        if not hasattr(ctx.truth, "continuation_steps"):
            raise ConfigError(f"{WHERE}: measuring toward a model needs the synthetic Markov "
                              "source (data.source: synthetic, without modes), whose words "
                              "it scores one by one")
        if not getattr(ctx.tokenizer, "is_fast", False):
            raise ConfigError(f"{WHERE}.model: a word's tokens are found from character "
                              "offsets, which needs a fast tokenizer")
        if self.config.model != "gen0":
            self._model(ctx)

    def _model_quality(self, ctx: MeasureContext) -> tuple[float, float, int]:
        """``(log v, log p, words)`` of the held-out source documents (the model's NLL in
        the trained-length windows ground_truth uses by default), once per seed and founder
        (``gen0``) or once (a model of its own)."""
        gen0 = self.config.model == "gen0"
        key = (ctx.seed, ctx.reference_founder) if gen0 else ()
        if key not in self._quality:
            docs = test_documents(ctx)
            length, stride = WindowSettings().windows(ctx.trained_length, WHERE)
            nll = documents_nll(dataclasses.replace(ctx, model=self._model(ctx)), length,
                                stride, WHERE, self.config.batch_size)
            self._quality[key] = (-float(nll.sum()),
                                  sum(ctx.truth.log_prob(d) for d in docs),
                                  sum(ctx.truth.n_words(d) for d in docs))
        return self._quality[key]

    # -- measuring ---------------------------------------------------------------------

    def _measure(self, ctx: MeasureContext, pairs: list[tuple[float, float, int, int]],
                 what: dict[str, int], unaligned: int = 0) -> Measurement:
        log_p = sum(p for p, _, _, _ in pairs)
        log_v = sum(v for _, v, _, _ in pairs)
        words = sum(w for _, _, w, _ in pairs)
        impossible = sum(i for _, _, _, i in pairs)
        scored = max(words - impossible, 1)
        values = {"verifier_gap": (log_v - log_p) / scored,
                  "truth_nats_per_word": -log_p / scored,
                  "verifier_nats_per_word": -log_v / scored,
                  "impossible_share": impossible / max(words, 1)}
        if self.config.model is None:
            _, kl = self._chain(ctx)
            details = {"noise": self.config.noise, "seed": self.config.seed,
                       "kl_rate_truth_to_verifier": kl}
        else:
            v, p, n = self._model_quality(ctx)
            values["unaligned_share"] = unaligned / max(what.get("samples", 0), 1)
            details = {"model": self.config.model, "verifier_excess_nats_per_word": (p - v) / n}
        return Measurement(values=values, details=details, sizes={**what, "words": words})

    def compute(self, ctx: MeasureContext) -> Measurement:
        if self.config.model is not None:
            pairs, unaligned = self._model_pairs(ctx)
            return self._measure(ctx, pairs, {"samples": len(ctx.corpus)}, unaligned)
        chain, _ = self._chain(ctx)
        pairs = []
        for sample in ctx.corpus:
            context, full = ctx.prompt_and_text(sample)
            log_p, words, impossible = ctx.truth.continuation_parts(context, full[len(context):])
            log_v, _, _ = chain.continuation_parts(context, full[len(context):])
            pairs.append((log_p, log_v, words, impossible))
        return self._measure(ctx, pairs, {"samples": len(ctx.corpus)})

    def _model_pairs(self, ctx: MeasureContext
                     ) -> tuple[list[tuple[float, float, int, int]], int]:
        """Per sample ``(log p, log v, words, impossible)`` over the words the source can
        produce there, a model's log v of each word the sum over its tokens; the number of
        samples left out because a token crosses a word boundary. A sequence longer than
        the trained length loses its first tokens (context only): no model is scored past
        the length it was trained on."""
        nl = ctx.tokenizer("\n", add_special_tokens=False)["input_ids"]
        model = self._model(ctx)
        limit = min(ctx.trained_length, context_length(model.config) or ctx.trained_length)
        seqs, plans, unaligned = [], [], 0
        for sample in ctx.corpus:
            context, full = ctx.prompt_and_text(sample)
            probs, spans = ctx.truth.continuation_steps(context, full[len(context):])
            if not spans:
                continue
            enc = ctx.tokenizer(full[: spans[-1][2]], add_special_tokens=False,
                                return_offsets_mapping=True)
            owner = word_of_tokens(enc["offset_mapping"], spans)
            if owner is None:
                unaligned += 1
                continue
            first = next(i for i, w in enumerate(owner) if w >= 0)
            seq = nl + list(enc["input_ids"])
            cut = max(0, len(seq) - limit)
            if len(nl) + first - cut < 1:  # the scored words alone fill the window
                unaligned += 1
                continue
            seqs.append(seq[cut:])
            plans.append((len(nl) + first - cut, np.asarray(owner[first:]), probs))
        if not seqs:
            return [], unaligned
        _, _, per_token = score(ctx.accelerator, model, seqs,
                                [f for f, _, _ in plans], ctx.tokenizer.pad_token_id,
                                self.config.batch_size, desc=f"verifier gen {ctx.generation}",
                                per_token=True)
        pairs = []
        for (_, owner, probs), nll in zip(plans, per_token, strict=True):
            log_v = -np.bincount(owner, weights=nll, minlength=len(probs))
            possible = probs > 0
            pairs.append((float(np.log(probs[possible]).sum()), float(log_v[possible].sum()),
                          len(probs), int((~possible).sum())))
        return pairs, unaligned

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        docs = test_documents(ctx)
        if self.config.model is not None:
            log_v, log_p, words = self._model_quality(ctx)
            return self._measure(ctx, [(log_p, log_v, words, 0)], {"documents": len(docs)})
        chain, _ = self._chain(ctx)
        return self._measure(ctx, [(ctx.truth.log_prob(d), chain.log_prob(d),
                                    ctx.truth.n_words(d), 0) for d in docs],
                             {"documents": len(docs)})

    def describe(self, m: Measurement) -> str:
        if "model" in m.details:
            return (f"exact log p under the source and log v under {m.details['model']} "
                    f"(excess log-loss {m.details['verifier_excess_nats_per_word']:.3f} "
                    f"nats/word over the source on its test documents), {m.sizes['words']} "
                    "words")
        return (f"exact log p under the source and under a verifier (noise "
                f"{m.details['noise']:g}, KL rate {m.details['kl_rate_truth_to_verifier']:.3f} "
                f"nats/word from the source), {m.sizes['words']} words")


def word_of_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int, int]]
                   ) -> list[int] | None:
    """Which scored word each token belongs to (-1: context before the first), given the
    tokens' character offsets and the words' :func:`~lmcollapse.data.markov.scored_spans`;
    None when a token crosses from one word's span into the next (or into the first)."""
    bounds = [after for after, _, _ in spans] + [spans[-1][2]]
    owner = []
    for start, end in offsets:
        i = int(np.searchsorted(bounds, start, side="right")) - 1  # the span start is in
        if i >= len(spans) or end > bounds[i + 1] or (i < 0 and end > bounds[0]):
            return None
        owner.append(i)
    return owner if owner and owner[-1] == len(spans) - 1 and all(
        i in owner for i in range(len(spans))) else None
