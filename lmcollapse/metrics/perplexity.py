"""Held-out perplexity: token-weighted exp(mean NLL) on the human test text, sliding window.

The held-out pass (:func:`heldout_pass`) is shared by every metric of a row that scores the
test text in the same windows: perplexity reads its sums; where a metric of the run needs
them (``needs``: :data:`HELDOUT_STATS`, the calibration metric), the same pass also keeps
each scored token's statistics (:func:`lmcollapse.scoring.token_stats`)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmcollapse.checks import positive
from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.registry import METRICS
from lmcollapse.scoring import score


@dataclass
class WindowSettings:
    """Sliding windows. ``max_length`` defaults to the trained length (a scratch model:
    ``data.block_tokens``; a pretrained one: its context, at most 1024) and may not exceed
    it; ``stride`` defaults to half the window."""

    max_length: int | None = None
    stride: int | None = None
    batch_size: int = 8

    def check(self, where: str) -> None:
        positive(self.max_length, f"{where}.max_length", allow_none=True)
        positive(self.stride, f"{where}.stride", allow_none=True)
        positive(self.batch_size, f"{where}.batch_size")
        if self.max_length and self.stride and self.stride > self.max_length:
            raise ConfigError(f"{where}.stride must be <= {where}.max_length")

    def windows(self, trained_length: int | None, where: str) -> tuple[int, int]:
        """(max_length, stride) of the scoring windows.

        A model is never scored beyond the length it was trained on (``trained_length``: the
        block length for a scratch model, the context for a pretrained one): the window is
        ``max_length`` or, by default, ``min(trained_length, 1024)``; the stride defaults to
        half the window. A configured window longer than the trained length raises
        ConfigError naming ``where`` and the limit.
        """
        limit = trained_length or 1024
        if self.max_length is not None and self.max_length > limit:
            raise ConfigError(
                f"{where}.max_length: {self.max_length} exceeds the trained length of {limit} "
                f"tokens (data.block_tokens for a scratch model, the context of a pretrained "
                f"one); allowed: 1..{limit}, or null for {min(limit, 1024)}")
        max_length = self.max_length or min(limit, 1024)
        stride = min(self.stride or max(1, max_length // 2), max_length)
        return max_length, stride


@dataclass
class PerplexitySettings(WindowSettings):
    """``metrics.perplexity``: the windows, and ``max_tokens`` to score only the start of
    the test text."""

    max_tokens: int | None = None

    def check(self, where: str) -> None:
        super().check(where)
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ConfigError(f"{where}.max_tokens: must be >= 2 (a context and a scored "
                              f"token) or null for the whole test split, got {self.max_tokens}")


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


#: a metric that reads the held-out pass's per-token statistics declares this need
HELDOUT_STATS = "heldout_token_stats"
#: the k of the per-token top-k mass the held-out pass keeps
TOP_K = 10


@dataclass
class HeldOut:
    """A sliding-window pass over a token stream: per window its summed NLL and scored
    tokens, and (where asked for) each window's per-token statistics."""

    nll: np.ndarray
    count: np.ndarray
    stats: list[dict[str, np.ndarray]] | None
    test_tokens: int


def window_pass(accelerator: Any, model: Any, stream: list[int], max_length: int,
                stride: int, pad_id: int, batch_size: int, desc: str = "perplexity",
                stats_k: int | None = None) -> HeldOut:
    """Score ``stream`` in its sliding windows (:func:`sliding_windows`), sharded over
    processes; with ``stats_k``, each window's :func:`lmcollapse.scoring.token_stats` too."""
    windows = sliding_windows(len(stream), max_length, stride)
    out: Any = score(accelerator, model, [stream[b:e] for b, e, _ in windows],
                     [f for _, _, f in windows], pad_id, batch_size, desc=desc,
                     stats_k=stats_k)
    return HeldOut(out[0], out[1], out[2] if stats_k is not None else None, len(stream))


def stream_perplexity(accelerator: Any, model: Any, stream: list[int], max_length: int,
                      stride: int, pad_id: int, batch_size: int,
                      desc: str = "perplexity") -> tuple[float, float]:
    """Sliding-window (total NLL, scored tokens) of ``stream``: the sums of its
    :func:`window_pass`, as the perplexity metric takes them."""
    h = window_pass(accelerator, model, stream, max_length, stride, pad_id, batch_size, desc)
    return float(h.nll.sum()), float(h.count.sum())


def heldout_pass(ctx: MeasureContext, p: PerplexitySettings, where: str) -> HeldOut:
    """The row's :func:`window_pass` over the test stream in ``p``'s windows (done once per
    row and window setting, :attr:`MeasureContext.shared`), with per-token statistics where
    a metric of the run needs them."""
    stream = ctx.human.test_stream[: p.max_tokens] if p.max_tokens else ctx.human.test_stream
    max_length, stride = p.windows(ctx.trained_length, where)
    stats = HELDOUT_STATS in ctx.needs
    key = ("heldout", max_length, stride, p.batch_size, len(stream), stats)
    if key not in ctx.shared:
        ctx.shared[key] = window_pass(ctx.accelerator, ctx.model, stream, max_length, stride,
                                      ctx.tokenizer.pad_token_id, p.batch_size,
                                      f"held-out gen {ctx.generation}",
                                      TOP_K if stats else None)
    return ctx.shared[key]


def unigram_nll(train: list[list[int]], stream: list[int], max_length: int, stride: int,
                vocab_size: int) -> tuple[float, float]:
    """(total NLL, scored tokens) of ``stream`` under the add-one unigram model of the
    ``train`` blocks' token counts, on exactly the tokens the sliding windows score (a
    window's first token never: it has no context): the baseline a model that learned only
    token frequencies reaches."""
    counts = Counter(t for block in train for t in block)
    total = sum(counts.values()) + vocab_size
    nll, scored = 0.0, 0
    for begin, end, score_from in sliding_windows(len(stream), max_length, stride):
        for t in stream[begin + max(1, score_from):end]:
            nll -= math.log((counts.get(t, 0) + 1) / total)
            scored += 1
    return nll, float(scored)


@METRICS.register("perplexity")
class HeldOutPerplexity(Metric):
    settings = PerplexitySettings
    display_name = "Held-out perplexity"
    higher_is_better = False
    columns = ("perplexity",)
    directions = {"unigram_perplexity": False}

    def preflight(self, ctx: MeasureContext) -> None:
        self.config.windows(ctx.trained_length, "metrics.perplexity")

    def compute(self, ctx: MeasureContext) -> Measurement:
        h = heldout_pass(ctx, self.config, "metrics.perplexity")
        nll, count = float(h.nll.sum()), float(h.count.sum())
        max_length, stride = self.config.windows(ctx.trained_length, "metrics.perplexity")
        return Measurement(
            values={"perplexity": math.exp(nll / count), "test_nll_per_token": nll / count},
            details={"max_length": max_length, "stride": stride,
                     "trained_length": ctx.trained_length},
            sizes={"scored_tokens": int(count), "test_tokens": h.test_tokens})

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        """The human row holds the baseline: the add-one unigram model of human train's
        tokens, scored on the same test tokens (a model below it learned more than token
        frequencies)."""
        p = self.config
        stream = ctx.human.test_stream[: p.max_tokens] if p.max_tokens else ctx.human.test_stream
        max_length, stride = p.windows(ctx.trained_length, "metrics.perplexity")
        nll, count = unigram_nll([r["input_ids"] for r in ctx.human.train], stream, max_length,
                                 stride, len(ctx.tokenizer))
        return Measurement(
            values={"unigram_perplexity": math.exp(nll / count)},
            details={"max_length": max_length, "stride": stride, "baseline": "add-one unigram "
                     "of the human train blocks' tokens"},
            sizes={"scored_tokens": int(count), "test_tokens": len(stream)})

    def describe(self, m: Measurement) -> str:
        return (f"sliding window {m.details['max_length']}, stride {m.details['stride']} over "
                f"{m.sizes['test_tokens']} test tokens")
