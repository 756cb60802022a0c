"""Lexical diversity metrics over token-id sequences.

All functions take a corpus as ``Sequence[Sequence[int]]`` (lists of ints or 1-D numpy
integer arrays). N-grams are always counted *within* each sequence; they never span the
boundary between two sequences.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction

from lmcollapse.checks import positive, sample_size
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.registry import METRICS
from lmcollapse.sampling import fixed_sample

TokenSeqs = Sequence[Sequence[int]]

#: nltk's smoothing method 1 adds this to zero n-gram match counts
BLEU_EPSILON = SmoothingFunction().epsilon


def _as_int_list(seq: Sequence[int]) -> list[int]:
    """Converts one token sequence (list or numpy array) to a list of Python ints."""
    if isinstance(seq, np.ndarray):
        return seq.tolist()
    return [int(t) for t in seq]


def _iter_ngrams(seqs: TokenSeqs, n: int) -> Iterator[tuple[int, ...]]:
    """Yields every n-gram of every sequence; n-grams never cross sequence boundaries."""
    for seq in seqs:
        toks = _as_int_list(seq)
        yield from zip(*(toks[i:] for i in range(n)), strict=False)


def ngram_counts(seqs: TokenSeqs, n: int) -> Counter:
    """Counts n-grams within each sequence, summed over the corpus.

    Args:
        seqs: The corpus.
        n: N-gram order (>= 1).

    Returns:
        A ``Counter`` mapping n-gram tuples of Python ints to their counts.

    Raises:
        ValueError: If ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return Counter(_iter_ngrams(seqs, n))


def distinct_n(seqs: TokenSeqs, n: int) -> float:
    """Computes distinct-n: unique n-grams divided by total n-grams.

    Args:
        seqs: The corpus.
        n: N-gram order (>= 1).

    Returns:
        The ratio in ``[0, 1]``, or 0.0 if the corpus contains no n-gram.
    """
    return _distinct_from_counts(ngram_counts(seqs, n))


def ngram_entropy(seqs: TokenSeqs, n: int) -> float:
    """Computes the Shannon entropy (bits) of the empirical n-gram distribution.

    Args:
        seqs: The corpus.
        n: N-gram order (>= 1).

    Returns:
        The entropy in bits, or 0.0 if the corpus contains no n-gram.
    """
    return _entropy_from_counts(ngram_counts(seqs, n))


def _distinct_from_counts(counts: Counter) -> float:
    """Unique / total from an n-gram ``Counter``; 0.0 when empty."""
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def _entropy_from_counts(counts: Counter) -> float:
    """Shannon entropy in bits of the distribution given by a ``Counter``; 0.0 when empty."""
    if not counts:
        return 0.0
    c = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def self_bleu(seqs: TokenSeqs, seed: int, sample_size: int) -> float:
    """Computes Self-BLEU-4 on a fixed sample (higher means less diverse).

    Each sampled sequence is scored as ``nltk``'s ``sentence_bleu`` scores it (uniform
    4-gram weights, ``SmoothingFunction().method1``) against all *other* sampled sequences
    as references, and the scores are averaged. Calling nltk once per hypothesis rebuilds
    every reference's n-gram counts each time (quadratic in ``sample_size`` times length);
    here each n-gram's two largest counts over the sample are kept, so the clipped count
    against "all others" is read off in one pass. The tests check equality with nltk.

    Args:
        seqs: The corpus.
        seed: Seed for :func:`fixed_sample`.
        sample_size: Number of sequences to sample.

    Returns:
        The mean BLEU-4, or NaN if fewer than two sequences are sampled (no references).
    """
    sample = [tuple(_as_int_list(s)) for s in fixed_sample(seqs, sample_size, seed)]
    if len(sample) < 2:
        return math.nan
    counts = [[Counter(zip(*(s[k:] for k in range(n)), strict=False)) for n in range(1, 5)]
              for s in sample]
    top: list[dict[tuple, tuple[int, int, int]]] = [{} for _ in range(4)]
    for i, per_n in enumerate(counts):
        for table, c in zip(top, per_n, strict=True):
            for gram, v in c.items():
                best = table.get(gram)
                if best is None:
                    table[gram] = (v, i, 0)
                elif v > best[0]:
                    table[gram] = (v, i, best[0])
                elif v > best[2]:
                    table[gram] = (best[0], best[1], v)
    lengths = Counter(len(s) for s in sample)
    scores = [_bleu4_against_others(i, len(s), counts[i], top, lengths)
              for i, s in enumerate(sample)]
    return float(np.mean(scores))


def _bleu4_against_others(i: int, hyp_len: int, per_n: list[Counter],
                          top: list[dict[tuple, tuple[int, int, int]]],
                          lengths: Counter) -> float:
    """nltk ``sentence_bleu`` (BLEU-4, smoothing method 1) of sample ``i`` vs all others."""
    precisions = []
    for c, table in zip(per_n, top, strict=True):
        num = 0
        for gram, v in c.items():
            best, holder, second = table[gram]
            num += min(v, second if holder == i else best)
        den = max(1, sum(c.values()))
        precisions.append((num, den))
    if precisions[0][0] == 0:
        return 0.0
    p = [(num if num else BLEU_EPSILON) / den for num, den in precisions]
    others = [n for n, k in lengths.items() if n != hyp_len or k > 1]
    ref_len = min(others, key=lambda r: (abs(r - hyp_len), r))
    bp = 1.0 if hyp_len > ref_len else (0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len))
    return bp * math.exp(math.fsum(0.25 * math.log(x) for x in p if x > 0))


def diversity_metrics(
    seqs: TokenSeqs,
    sample_size: int,
    seed: int,
    max_n: int = 4,
    self_bleu_sample: int = 200,
) -> dict[str, float]:
    """Computes distinct-n, n-gram entropy and Self-BLEU on fixed samples.

    Args:
        seqs: The corpus.
        sample_size: Sample size for distinct-n and entropy (via :func:`fixed_sample`).
        seed: Seed used for both samples.
        max_n: Largest n-gram order; keys are produced for ``n = 1..max_n``.
        self_bleu_sample: Sample size for :func:`self_bleu` (drawn separately).

    Returns:
        Dict with ``distinct_{n}`` and ``entropy_{n}`` for ``n = 1..max_n``, ``self_bleu``,
        and the effective ``sample_size`` and ``self_bleu_sample`` (capped at corpus size).
    """
    sample = fixed_sample(seqs, sample_size, seed)
    out: dict[str, float] = {}
    counts = {n: ngram_counts(sample, n) for n in range(1, max_n + 1)}
    for n, c in counts.items():
        out[f"distinct_{n}"] = _distinct_from_counts(c)
    for n, c in counts.items():
        out[f"entropy_{n}"] = _entropy_from_counts(c)
    out["self_bleu"] = self_bleu(seqs, seed, self_bleu_sample)
    out["sample_size"] = len(sample)
    out["self_bleu_sample"] = min(self_bleu_sample, len(seqs))
    return out


@dataclass
class DiversitySettings:
    """``metrics.diversity``: equal-size samples for the human row and every corpus (None:
    the largest size both allow; ``self_bleu_sample`` None: ``sample_size``), averaged over
    ``draws`` draws."""

    sample_size: int | None = None
    self_bleu_sample: int | None = None
    draws: int = 3
    seed: int = 0

    def check(self, where: str) -> None:
        sample_size(self.sample_size, f"{where}.sample_size")
        sample_size(self.self_bleu_sample, f"{where}.self_bleu_sample")
        positive(self.draws, f"{where}.draws")


@METRICS.register("diversity")
class Diversity(Metric):
    """distinct-1..4, n-gram entropy 1..4 (bits) and Self-BLEU-4 on fixed-size samples.

    The corpus sample and the human reference sample (held-out test chunks of the corpus
    samples' length) have the same number of sequences, so the numbers compare; each
    value is the mean over ``draws`` seeded draws. Human text is the target: more distinct
    n-grams or a lower Self-BLEU than human text is drift, not health, so every value is
    ranked by its closeness to the human row (``higher_is_better`` None)."""

    settings = DiversitySettings
    display_name = "Diversity"
    higher_is_better = None
    columns = ("distinct_4", "self_bleu")

    def _sizes(self, ctx: MeasureContext) -> tuple[int, int]:
        d = self.config
        size = ctx.equal_size(d.sample_size, "metrics.diversity.sample_size")
        bleu = ctx.equal_size(d.self_bleu_sample, "metrics.diversity.self_bleu_sample") \
            if d.self_bleu_sample is not None else size
        return size, bleu

    def preflight(self, ctx: MeasureContext) -> None:
        self._sizes(ctx)

    def _measure(self, ctx: MeasureContext, pool: list, seed: Callable[[int], int]
                 ) -> Measurement:
        """Draws ``d.draws`` samples of ``pool``, the i-th with ``seed(d.seed + i)``."""
        d = self.config
        sizes = self._sizes(ctx)
        pool = ctx.content(pool)
        runs = [diversity_metrics(pool, sizes[0], seed(d.seed + i), max_n=4,
                                  self_bleu_sample=sizes[1]) for i in range(d.draws)]
        values = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]
                  if k not in ("sample_size", "self_bleu_sample")}
        # the sizes actually drawn, and their token count (special tokens left out)
        return Measurement(values, details={"seed": d.seed, "unit": "model tokens"},
                           sizes={"sample_size": runs[0]["sample_size"],
                                  "self_bleu_sample": runs[0]["self_bleu_sample"],
                                  "sample_tokens": sum(map(len, fixed_sample(
                                      pool, sizes[0], seed(d.seed)))),
                                  "draws": d.draws})

    def compute(self, ctx: MeasureContext) -> Measurement:
        return self._measure(ctx, ctx.corpus_seqs(), lambda s: s)

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        return self._measure(ctx, ctx.human_chunks(None, 0), ctx.human_seed)

    def describe(self, m: Measurement) -> str:
        s = m.sizes
        return (f"{s['sample_size']} samples ({s['sample_tokens']} tokens), Self-BLEU on "
                f"{s['self_bleu_sample']}, mean of {s['draws']} draws")
