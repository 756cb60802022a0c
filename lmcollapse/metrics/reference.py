"""Reference-scored perplexity: how the generation-0 model scores what generation k wrote.

Each corpus sample is scored as the text the next generation trains on (prompt dropped
unless ``generate.keep_prompt``), its first token unscored. A fixed number of samples
(``metrics.reference.sample_size``) is drawn from the corpus and as many held-out human
chunks of the same length for the human row, so quantiles compare and the cost follows
the sample size, not the size of the test split. Quantiles go to metrics.json and
the per-sample values to ``reference_scores.parquet`` beside it, for Shumailov-style
histograms (their Fig. 1: mass moves to low perplexity while a long high tail grows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmcollapse import files
from lmcollapse.checks import positive, sample_size
from lmcollapse.layout import REFERENCE_SCORES
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.registry import METRICS
from lmcollapse.sampling import fixed_sample
from lmcollapse.scoring import score

QUANTILES = (5, 50, 95, 99)
SCORES_FILE = REFERENCE_SCORES


@dataclass
class ReferenceSettings:
    """``metrics.reference``: ``sample_size`` samples of the corpus and as many held-out
    human chunks are scored (None: the largest size both allow)."""

    sample_size: int | None = None
    batch_size: int = 64
    seed: int = 0

    def check(self, where: str) -> None:
        sample_size(self.sample_size, f"{where}.sample_size")
        positive(self.batch_size, f"{where}.batch_size")


def per_sample_perplexity(accelerator: Any, model: Any, seqs: list, pad_id: int,
                          batch_size: int, desc: str = "reference scoring") -> np.ndarray:
    """exp(mean NLL) of each sequence under ``model`` (its first token unscored)."""
    nll, count = score(accelerator, model, seqs, [1] * len(seqs), pad_id, batch_size, desc)
    return np.exp(nll / np.maximum(count, 1))


@METRICS.register("reference_perplexity")
class ReferencePerplexity(Metric):
    section = "reference"
    settings = ReferenceSettings
    display_name = "Gen-0 perplexity of the corpus"
    higher_is_better = None  # both ends move under collapse: compare with the human row
    columns = ("ref_ppl_p50", "ref_ppl_p99")

    def preflight(self, ctx: MeasureContext) -> None:
        self._size(ctx)

    def _size(self, ctx: MeasureContext) -> int:
        return ctx.equal_size(self.config.sample_size, "metrics.reference.sample_size")

    def _measure(self, ctx: MeasureContext, seqs: list, ids: list[str]) -> Measurement:
        ppl = per_sample_perplexity(ctx.accelerator, ctx.reference_model(), seqs,
                                    ctx.tokenizer.pad_token_id, self.config.batch_size,
                                    desc=f"reference scoring gen {ctx.generation}")
        if ctx.is_main_process:
            files.write_rows(ctx.out_dir / SCORES_FILE,
                             [{"sample_id": i, "perplexity": p}
                              for i, p in zip(ids, ppl.tolist(), strict=True)])
        values = {f"ref_ppl_p{q}": float(np.percentile(ppl, q)) for q in QUANTILES}
        values["ref_ppl_mean"] = float(ppl.mean())
        # each value is a statistic of the per-sample column: the report's per-document
        # tests and bootstrap intervals read the samples behind it from here
        per_sample = {"file": SCORES_FILE, "column": "perplexity",
                      "values": {**{f"ref_ppl_p{q}": f"p{q}" for q in QUANTILES},
                                 "ref_ppl_mean": "mean"}}
        return Measurement(values, details={"scorer": "generation 0 of this seed",
                                            "seed": self.config.seed, "file": SCORES_FILE,
                                            "per_sample": per_sample},
                           sizes={"samples": len(ppl)})

    def compute(self, ctx: MeasureContext) -> Measurement:
        rows = fixed_sample(ctx.corpus, self._size(ctx), self.config.seed)
        return self._measure(ctx, [r["input_ids"] for r in rows], [r["sample_id"] for r in rows])

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        chunks = ctx.human_chunks(self._size(ctx), self.config.seed)
        return self._measure(ctx, chunks, [f"human:test:{i}" for i in range(len(chunks))])

    def describe(self, m: Measurement) -> str:
        return f"{m.sizes['samples']} samples scored by generation 0 of the seed"
