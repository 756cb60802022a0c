"""Held-out perplexity: token-weighted exp(mean NLL) on the human test text, sliding window."""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from lmcollapse.metrics.base import METRICS, MeasureContext, Metric
from lmcollapse.models import context_length
from lmcollapse.scoring import masked_nll


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, score_from)`` windows as in the transformers guide "Perplexity of
    fixed-length models": each window scores only the tokens the previous one did not."""
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, prev_end - begin))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def window_settings(pcfg: Any, model_config: Any) -> tuple[int, int]:
    """(max_length, stride): configured, else min(context, 1024) and half of that."""
    ctx = context_length(model_config) or 1024
    max_length = min(pcfg.max_length or min(ctx, 1024), ctx)
    stride = min(pcfg.stride or max(1, max_length // 2), max_length)
    return max_length, stride


def stream_perplexity(accelerator: Any, model: Any, stream: list[int], max_length: int,
                      stride: int, pad_id: int, batch_size: int,
                      desc: str = "perplexity") -> tuple[float, float]:
    """Sliding-window (total NLL, scored tokens) of ``stream``, windows sharded over processes."""
    windows = sliding_windows(len(stream), max_length, stride)
    model.eval()
    nll_sum, count_sum = 0.0, 0.0
    with accelerator.split_between_processes(windows) as mine:
        batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        for batch in tqdm(batches, desc=desc, disable=not accelerator.is_local_main_process,
                          leave=False):
            seqs = [stream[b:e] for b, e, _ in batch]
            nll, count = masked_nll(model, seqs, [s for _, _, s in batch], pad_id)
            nll_sum, count_sum = nll_sum + nll.sum().item(), count_sum + count.sum().item()
    totals = torch.tensor([nll_sum, count_sum], dtype=torch.float64, device=accelerator.device)
    totals = accelerator.reduce(totals, reduction="sum")
    return totals[0].item(), totals[1].item()


@METRICS.register("perplexity")
class HeldOutPerplexity(Metric):
    name = "perplexity"
    display_name = "Held-out perplexity"
    higher_is_better = False

    def compute(self, ctx: MeasureContext) -> dict[str, Any]:
        pcfg = ctx.cfg.metrics.perplexity
        stream = ctx.human.test_stream[: pcfg.max_tokens] if pcfg.max_tokens else \
            ctx.human.test_stream
        max_length, stride = window_settings(pcfg, ctx.model.config)
        nll, count = stream_perplexity(ctx.accelerator, ctx.model, stream, max_length, stride,
                                       ctx.tokenizer.pad_token_id, pcfg.batch_size,
                                       desc=f"perplexity gen {ctx.generation}")
        return {"perplexity": math.exp(nll / count), "test_nll_per_token": nll / count,
                "_details": {"perplexity": {"max_length": max_length, "stride": stride,
                                            "scored_tokens": int(count),
                                            "test_tokens": len(stream)}}}
