"""Ground truth for the synthetic source: the exact excess log-loss of model k per word.

For each held-out source document x, log p(x) is exact (the Markov source) and log q_k(x) is
the model's log-probability of x's tokens given a preceding newline (documents are
newline-separated in training). Reported per word (``.`` counts as a word):
``excess = (sum log p - sum log q_k) / words``, beside the source's entropy rate. q_k scores
one tokenisation of x, a lower bound on q_k(x), so the excess is an upper bound (tight when
the model puts its mass on the tokenizer's segmentation, as a model trained on it does).
Documents longer than the scoring window are scored in sliding windows, the same windows as
held-out perplexity (``metrics.perplexity``: never longer than the trained length).
"""

from __future__ import annotations

from typing import Any

from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import METRICS, MeasureContext, Metric
from lmcollapse.metrics.perplexity import sliding_windows, window_settings
from lmcollapse.scoring import masked_nll


def _scored_docs(ctx: MeasureContext) -> tuple[list[str], list[list[int]], int]:
    docs = [d.rstrip("\n") for d in ctx.human.texts["test"] if d.strip()]
    nl = ctx.tokenizer("\n", add_special_tokens=False)["input_ids"]
    seqs = [nl + ctx.tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    return docs, seqs, len(nl)


@METRICS.register("ground_truth")
class GroundTruth(Metric):
    name = "excess_nats_per_word"
    display_name = "Excess log-loss vs source (nats/word)"
    higher_is_better = False
    directions = {"model_nats_per_word": False, "source_nats_per_word": None,
                  "source_entropy_rate": None}

    def preflight(self, ctx: MeasureContext) -> None:
        window_settings(ctx.cfg.metrics.perplexity, ctx.trained_length)  # same windows
        if ctx.source is None:
            raise ConfigError("metrics.names: 'ground_truth' needs data.source: synthetic "
                              f"(the source must know log p(text)); got {ctx.cfg.data.source!r}")

    def _source(self, ctx: MeasureContext, docs: list[str]) -> tuple[float, int]:
        return sum(ctx.source.log_prob(d) for d in docs), sum(ctx.source.n_words(d) for d in docs)

    def compute(self, ctx: MeasureContext) -> dict[str, Any]:
        docs, seqs, start = _scored_docs(ctx)
        log_p, words = self._source(ctx, docs)
        # documents longer than the window are scored in sliding windows, as perplexity is
        length, stride = window_settings(ctx.cfg.metrics.perplexity, ctx.trained_length)
        windows = [(s[b:e], max(f, start - b)) for s in seqs
                   for b, e, f in sliding_windows(len(s), length, stride)]
        bs, nll = ctx.cfg.metrics.ground_truth.batch_size, 0.0
        ctx.model.eval()
        for i in range(0, len(windows), bs):
            batch = windows[i:i + bs]
            nll += masked_nll(ctx.model, [w for w, _ in batch], [f for _, f in batch],
                              ctx.tokenizer.pad_token_id)[0].sum().item()
        return {"excess_nats_per_word": (log_p + nll) / words, "model_nats_per_word": nll / words,
                "source_nats_per_word": -log_p / words,
                "source_entropy_rate": ctx.source.entropy_rate(),
                "_details": {"ground_truth": {"documents": len(docs), "words": words,
                                              "max_length": length, "stride": stride}}}

    def human_reference(self, ctx: MeasureContext) -> dict[str, Any]:
        docs, _, _ = _scored_docs(ctx)
        log_p, words = self._source(ctx, docs)
        return {"excess_nats_per_word": 0.0, "source_nats_per_word": -log_p / words,
                "source_entropy_rate": ctx.source.entropy_rate(),
                "_details": {"ground_truth": {"documents": len(docs), "words": words}}}
