"""Ground truth for the synthetic source: the exact excess log-loss of model k per word.

For each held-out source document x, log p(x) is exact (the Markov source) and log q_k(x) is
the model's log-probability of x's tokens given a preceding newline (documents are
newline-separated in training). Reported per word (``.`` counts as a word):
``excess = (sum log p - sum log q_k) / words``, beside the source's entropy rate. q_k scores
one tokenisation of x, a lower bound on q_k(x), so the excess is an upper bound (tight when
the model puts its mass on the tokenizer's segmentation, as a model trained on it does).
Documents longer than the scoring window are scored in sliding windows (by default the
same windows as held-out perplexity: never longer than the trained length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.metrics.perplexity import WindowSettings, sliding_windows
from lmcollapse.registry import METRICS
from lmcollapse.scoring import score

WHERE = "metrics.ground_truth"


@dataclass
class GroundTruthSettings(WindowSettings):
    """``metrics.ground_truth``: the scoring windows (default: the trained length, stride
    half of it) and the batch size."""

    batch_size: int = 32


def test_documents(ctx: MeasureContext) -> list[str]:
    """The held-out source documents (the test split, blank records left out)."""
    return [d.rstrip("\n") for d in ctx.human.texts["test"] if d.strip()]


def document_nll(ctx: MeasureContext, settings: WindowSettings, where: str,
                 batch_size: int) -> np.ndarray:
    """Model ``ctx.model``'s NLL (nats) of each test document's tokens (:func:`test_documents`),
    given a preceding newline (documents are newline-separated in training), in sliding
    windows of ``settings``; computed once per row and window setting (``ctx.shared``)."""
    length, stride = settings.windows(ctx.trained_length, where)
    key = ("document_nll", length, stride)
    if key not in ctx.shared:
        ctx.shared[key] = documents_nll(ctx, length, stride, where, batch_size)
    return ctx.shared[key]


def documents_nll(ctx: MeasureContext, length: int, stride: int, where: str,
                  batch_size: int) -> np.ndarray:
    """:func:`document_nll` in windows of ``length`` and ``stride``, not kept: the model
    need not be the row's (the verifier metric scores the documents under its verifier)."""
    docs = test_documents(ctx)
    nl = ctx.tokenizer("\n", add_special_tokens=False)["input_ids"]
    seqs = [nl + ctx.tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    windows = [(i, s[b:e], max(f, len(nl) - b)) for i, s in enumerate(seqs)
               for b, e, f in sliding_windows(len(s), length, stride)]
    nll, _ = score(ctx.accelerator, ctx.model, [w for _, w, _ in windows],
                   [f for _, _, f in windows], ctx.tokenizer.pad_token_id, batch_size,
                   desc=f"{where.split('.')[-1]} gen {ctx.generation}")
    return np.bincount([i for i, _, _ in windows], weights=nll, minlength=len(docs))


@METRICS.register("ground_truth")
class GroundTruth(Metric):
    headline = "excess_nats_per_word"
    settings = GroundTruthSettings
    display_name = "Excess log-loss vs source (nats/word)"
    higher_is_better = False
    directions = {"model_nats_per_word": False, "source_nats_per_word": None,
                  "source_entropy_rate": None}
    columns = ("excess_nats_per_word",)

    def preflight(self, ctx: MeasureContext) -> None:
        self.config.windows(ctx.trained_length, WHERE)
        if ctx.truth is None:
            raise ConfigError("metrics.names: 'ground_truth' needs a data source that knows "
                              "log p(text) (data.source: synthetic)")

    def _source(self, ctx: MeasureContext, docs: list[str]) -> tuple[float, int]:
        return sum(ctx.truth.log_prob(d) for d in docs), sum(ctx.truth.n_words(d) for d in docs)

    def compute(self, ctx: MeasureContext) -> Measurement:
        docs = test_documents(ctx)
        log_p, words = self._source(ctx, docs)
        length, stride = self.config.windows(ctx.trained_length, WHERE)
        nll = float(document_nll(ctx, self.config, WHERE, self.config.batch_size).sum())
        return Measurement(
            values={"excess_nats_per_word": (log_p + nll) / words,
                    "model_nats_per_word": nll / words, "source_nats_per_word": -log_p / words,
                    "source_entropy_rate": ctx.truth.entropy_rate()},
            details={"max_length": length, "stride": stride},
            sizes={"documents": len(docs), "words": words})

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        docs = test_documents(ctx)
        log_p, words = self._source(ctx, docs)
        return Measurement(values={"excess_nats_per_word": 0.0,
                                   "source_nats_per_word": -log_p / words,
                                   "source_entropy_rate": ctx.truth.entropy_rate()},
                           sizes={"documents": len(docs), "words": words})

    def describe(self, m: Measurement) -> str:
        return f"exact log p of {m.sizes['documents']} test documents ({m.sizes['words']} words)"
