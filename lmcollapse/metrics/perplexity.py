"""Held-out perplexity: token-weighted exp(mean NLL) on the human test text, sliding window."""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import METRICS, MeasureContext, Metric
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


def window_settings(pcfg: Any, trained_length: int | None) -> tuple[int, int]:
    """(max_length, stride) of the scoring windows.

    A model is never scored beyond the length it was trained on (``trained_length``: the
    block length for a scratch model, the context for a pretrained one): the window is
    ``metrics.perplexity.max_length`` or, by default, ``min(trained_length, 1024)``; the
    stride defaults to half the window. A configured window longer than the trained length
    raises ConfigError naming the field and the limit.
    """
    limit = trained_length or 1024
    if pcfg.max_length is not None and pcfg.max_length > limit:
        raise ConfigError(
            f"metrics.perplexity.max_length: {pcfg.max_length} exceeds the trained length of "
            f"{limit} tokens (data.block_tokens for a scratch model, the context of a "
            f"pretrained one); allowed: 1..{limit}, or null for {min(limit, 1024)}")
    max_length = pcfg.max_length or min(limit, 1024)
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

    def preflight(self, ctx: MeasureContext) -> None:
        window_settings(ctx.cfg.metrics.perplexity, ctx.trained_length)

    def compute(self, ctx: MeasureContext) -> dict[str, Any]:
        pcfg = ctx.cfg.metrics.perplexity
        stream = ctx.human.test_stream[: pcfg.max_tokens] if pcfg.max_tokens else \
            ctx.human.test_stream
        max_length, stride = window_settings(pcfg, ctx.trained_length)
        nll, count = stream_perplexity(ctx.accelerator, ctx.model, stream, max_length, stride,
                                       ctx.tokenizer.pad_token_id, pcfg.batch_size,
                                       desc=f"perplexity gen {ctx.generation}")
        return {"perplexity": math.exp(nll / count), "test_nll_per_token": nll / count,
                "_details": {"perplexity": {"max_length": max_length, "stride": stride,
                                            "trained_length": ctx.trained_length,
                                            "scored_tokens": int(count),
                                            "test_tokens": len(stream)}}}
