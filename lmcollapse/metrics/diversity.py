"""Lexical diversity metrics over token-id sequences.

All functions take a corpus as ``Sequence[Sequence[int]]`` (lists of ints or 1-D numpy
integer arrays). N-grams are always counted *within* each sequence; they never span the
boundary between two sequences.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

TokenSeqs = Sequence[Sequence[int]]

BLEU4_WEIGHTS = (0.25, 0.25, 0.25, 0.25)


def fixed_sample(seqs: TokenSeqs, size: int, seed: int) -> list:
    """Draws a deterministic sample without replacement, keeping corpus order.

    Args:
        seqs: The corpus to sample from.
        size: Number of items to draw. If ``size >= len(seqs)`` every item is returned.
        seed: Seed for ``numpy.random.default_rng``.

    Returns:
        A new list with the sampled items, ordered by their index in ``seqs``.

    Raises:
        ValueError: If ``size`` is negative.
    """
    if size < 0:
        raise ValueError(f"size must be non-negative, got {size}")
    if size >= len(seqs):
        return list(seqs)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(seqs), size=size, replace=False))
    return [seqs[i] for i in idx.tolist()]


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

    Each sampled sequence is scored with ``nltk`` ``sentence_bleu`` (uniform 4-gram
    weights, ``SmoothingFunction().method1``) against all *other* sampled sequences
    as references; the scores are averaged. Cost is quadratic in ``sample_size``.

    Args:
        seqs: The corpus.
        seed: Seed for :func:`fixed_sample`.
        sample_size: Number of sequences to sample.

    Returns:
        The mean BLEU-4, or NaN if fewer than two sequences are sampled (there would be
        no references; nltk raises on an empty reference list).
    """
    sample = [_as_int_list(s) for s in fixed_sample(seqs, sample_size, seed)]
    if len(sample) < 2:
        return math.nan
    smoothing = SmoothingFunction().method1
    scores = [
        float(
            sentence_bleu(
                sample[:i] + sample[i + 1 :],
                hyp,
                weights=BLEU4_WEIGHTS,
                smoothing_function=smoothing,
            )
        )
        for i, hyp in enumerate(sample)
    ]
    return float(np.mean(scores))


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
