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

from typing import Any

import numpy as np
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from lmcollapse import io
from lmcollapse.metrics.base import METRICS, MeasureContext, Metric
from lmcollapse.metrics.diversity import fixed_sample
from lmcollapse.scoring import masked_nll

QUANTILES = (5, 50, 95, 99)


def per_sample_perplexity(accelerator: Any, model: Any, seqs: list, pad_id: int,
                          batch_size: int, desc: str = "reference scoring") -> np.ndarray:
    """exp(mean NLL) of each sequence under ``model``; samples sharded over processes."""
    model.eval()
    scored: list[tuple[int, float]] = []
    with accelerator.split_between_processes(list(range(len(seqs)))) as mine:
        batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        for batch in tqdm(batches, desc=desc, disable=not accelerator.is_local_main_process,
                          leave=False):
            nll, count = masked_nll(model, [seqs[i] for i in batch], [1] * len(batch), pad_id)
            ppl = (nll / count.clamp(min=1)).exp().tolist()
            scored += list(zip(batch, ppl, strict=True))
    return np.array([p for _, p in sorted(gather_object(scored))], dtype=np.float64)


@METRICS.register("reference_perplexity")
class ReferencePerplexity(Metric):
    name = "reference_perplexity"
    display_name = "Gen-0 perplexity of the corpus"
    higher_is_better = None  # both ends move under collapse: compare with the human row

    def preflight(self, ctx: MeasureContext) -> None:
        self._size(ctx)

    def _size(self, ctx: MeasureContext) -> int:
        return ctx.equal_size(ctx.cfg.metrics.reference.sample_size,
                              "metrics.reference.sample_size")

    def _measure(self, ctx: MeasureContext, seqs: list, ids: list[str]) -> dict[str, Any]:
        ppl = per_sample_perplexity(ctx.accelerator, ctx.reference_model(), seqs,
                                    ctx.tokenizer.pad_token_id,
                                    ctx.cfg.metrics.reference.batch_size,
                                    desc=f"reference scoring gen {ctx.generation}")
        if ctx.main:
            io.write_rows(ctx.out_dir / "reference_scores.parquet",
                          [{"sample_id": i, "perplexity": p} for i, p in zip(ids, ppl,
                                                                           strict=True)])
        values = {f"ref_ppl_p{q}": float(np.percentile(ppl, q)) for q in QUANTILES}
        values["ref_ppl_mean"] = float(ppl.mean())
        return {**values, "_details": {"reference_perplexity": {
            "scorer": "generation 0 of this seed", "samples": len(ppl),
            "seed": ctx.cfg.metrics.reference.seed, "file": "reference_scores.parquet"}}}

    def compute(self, ctx: MeasureContext) -> dict[str, Any]:
        rows = fixed_sample(ctx.corpus, self._size(ctx), ctx.cfg.metrics.reference.seed)
        return self._measure(ctx, [r["input_ids"] for r in rows], [r["sample_id"] for r in rows])

    def human_reference(self, ctx: MeasureContext) -> dict[str, Any]:
        chunks = ctx.human_chunks(self._size(ctx), ctx.cfg.metrics.reference.seed)
        return self._measure(ctx, chunks, [f"human:test:{i}" for i in range(len(chunks))])
