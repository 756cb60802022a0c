"""Tail-of-distribution metrics: does a (synthetic) corpus keep rare human token types?

Token types are split into a *head* (the most frequent types covering ``head_mass`` of the
human training tokens) and a *tail* (every other type seen in human text). The metrics
compare how much tail mass and how many tail types survive in a corpus.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lmcollapse.checks import positive, sample_size
from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.registry import METRICS
from lmcollapse.sampling import fixed_sample

TokenSeqs = Sequence[Sequence[int]]

# Below this many distinct ids above the token count, np.bincount is used (O(N + V)).
_BINCOUNT_SLACK = 1 << 20


def _concat(seqs: TokenSeqs) -> np.ndarray:
    """Concatenates all sequences into one int64 array."""
    parts = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def token_counts(seqs: TokenSeqs) -> Counter:
    """Counts unigram token types over a corpus.

    Uses ``np.bincount`` for compact non-negative ids (linear time) and ``np.unique``
    otherwise.

    Args:
        seqs: The corpus as token-id sequences.

    Returns:
        A ``collections.Counter`` mapping Python-int token ids to Python-int counts;
        only types that occur are present.
    """
    flat = _concat(seqs)
    if flat.size == 0:
        return Counter()
    lo, hi = int(flat.min()), int(flat.max())
    if lo >= 0 and hi < flat.size + _BINCOUNT_SLACK:
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts)
        return Counter(dict(zip(ids.tolist(), counts[ids].tolist(), strict=True)))
    ids, cnts = np.unique(flat, return_counts=True)
    return Counter(dict(zip(ids.tolist(), cnts.tolist(), strict=True)))


def head_tail_split(
    human_counts: Mapping[int, int], head_mass: float = 0.9
) -> tuple[set[int], set[int]]:
    """Splits human token types into head and tail.

    Types are sorted by descending count, ties broken by ascending token id. The head is
    the shortest prefix whose cumulative count is ``>= head_mass`` of the total; the tail
    is every remaining type with a positive count.

    Args:
        human_counts: Token-type counts of the human training pool (see
            :func:`token_counts`).
        head_mass: Fraction of human token mass the head must cover, in ``(0, 1]``.

    Returns:
        ``(head, tail)`` as disjoint sets of token ids.

    Raises:
        ValueError: If ``head_mass`` is outside ``(0, 1]``.
    """
    if not 0.0 < head_mass <= 1.0:
        raise ValueError(f"head_mass must be in (0, 1], got {head_mass}")
    items = sorted(((t, c) for t, c in human_counts.items() if c > 0), key=lambda x: (-x[1], x[0]))
    total = sum(c for _, c in items)
    cum = 0
    n_head = len(items)
    for i, (_, c) in enumerate(items):
        cum += c
        if cum / total >= head_mass:
            n_head = i + 1
            break
    return {t for t, _ in items[:n_head]}, {t for t, _ in items[n_head:]}


def _mass_frac(counts: Mapping[int, int], types: set[int]) -> float:
    """Fraction of all tokens in ``counts`` whose type is in ``types`` (NaN if empty)."""
    total = sum(counts.values())
    if total == 0:
        return math.nan
    return sum(counts.get(t, 0) for t in types) / total


def _type_frac(counts: Mapping[int, int], types: set[int]) -> float:
    """Fraction of ``types`` that occur in ``counts`` (NaN if ``types`` is empty)."""
    if not types:
        return math.nan
    return sum(1 for t in types if counts.get(t, 0) > 0) / len(types)


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN when the denominator is zero or either side is NaN."""
    if math.isnan(num) or math.isnan(den) or den == 0:
        return math.nan
    return num / den


def smoothed_kl(p_counts: Mapping[int, int], q_counts: Mapping[int, int], epsilon: float) -> float:
    """KL(P || Q) in nats with add-epsilon smoothing on the union vocabulary.

    Both P and Q are ``(count + epsilon) / sum`` over every type in the union of the two
    count tables.

    Args:
        p_counts: Counts defining P.
        q_counts: Counts defining Q.
        epsilon: Pseudo-count added to every type in the union (> 0).

    Returns:
        The KL divergence in nats (NaN if both tables are empty).
    """
    vocab = sorted(set(p_counts) | set(q_counts))
    if not vocab:
        return math.nan
    p = np.array([p_counts.get(t, 0) for t in vocab], dtype=np.float64) + epsilon
    q = np.array([q_counts.get(t, 0) for t in vocab], dtype=np.float64) + epsilon
    p /= p.sum()
    q /= q.sum()
    return float(np.sum(p * np.log(p / q)))


def tail_metrics(
    human_train_seqs: TokenSeqs,
    corpus_seqs: TokenSeqs,
    human_sample_seqs: TokenSeqs,
    head_mass: float = 0.9,
    epsilon: float = 1e-6,
) -> dict[str, float]:
    """Measures loss of the human tail in a corpus.

    Args:
        human_train_seqs: Human training pool; defines head/tail and P for the KL.
        corpus_seqs: Corpus under evaluation (e.g. model generations).
        human_sample_seqs: Held-out human sample of the corpus's size, the reference for
            tail-type survival.
        head_mass: Human token mass covered by the head.
        epsilon: Add-epsilon pseudo-count for the KL.

    Returns:
        Dict with ``tail_mass_ratio``, ``tail_mass_corpus_frac``, ``tail_mass_human_frac``,
        ``tail_type_survival``, ``tail_types_in_corpus_frac``,
        ``tail_types_in_human_sample_frac``, ``kl_human_corpus`` (nats),
        ``vanished_types``, ``tail_vanished_types``, ``n_tail_types``, ``n_head_types``
        and ``head_mass``. Ratios with a zero or undefined denominator are NaN.
    """
    human = token_counts(human_train_seqs)
    corpus = token_counts(corpus_seqs)
    sample = token_counts(human_sample_seqs)
    head, tail = head_tail_split(human, head_mass)
    mass_corpus, mass_human = _mass_frac(corpus, tail), _mass_frac(human, tail)
    types_corpus, types_sample = _type_frac(corpus, tail), _type_frac(sample, tail)
    return {
        "tail_mass_ratio": _ratio(mass_corpus, mass_human),
        "tail_mass_corpus_frac": mass_corpus,
        "tail_mass_human_frac": mass_human,
        "tail_type_survival": _ratio(types_corpus, types_sample),
        "tail_types_in_corpus_frac": types_corpus,
        "tail_types_in_human_sample_frac": types_sample,
        "kl_human_corpus": smoothed_kl(human, corpus, epsilon),
        "vanished_types": sum(1 for t in human if corpus.get(t, 0) == 0),
        "tail_vanished_types": sum(1 for t in tail if corpus.get(t, 0) == 0),
        "n_tail_types": len(tail),
        "n_head_types": len(head),
        "head_mass": head_mass,
    }


def _whole(x: float) -> int | float:
    """``x`` as an int when it is whole (a token count), else as a float."""
    return int(x) if float(x).is_integer() else float(x)


@dataclass
class TailSettings:
    """``metrics.tail``: every tail number is measured on ``sample_size`` samples (None:
    the largest size both the human test split and a corpus allow), the same for every
    row, averaged over ``draws`` draws."""

    head_mass: float = 0.9
    epsilon: float = 1e-6
    sample_size: int | None = None
    draws: int = 3
    seed: int = 0

    def check(self, where: str) -> None:
        if not 0.0 < self.head_mass < 1.0:
            raise ConfigError(f"{where}.head_mass: must be in (0, 1), got {self.head_mass}")
        if not 0 < self.epsilon <= 1:
            raise ConfigError(f"{where}.epsilon: a pseudo-count in (0, 1], got {self.epsilon}")
        sample_size(self.sample_size, f"{where}.sample_size")
        positive(self.draws, f"{where}.draws")


@METRICS.register("tail")
class TailLoss(Metric):
    """Tail-token loss against the human train pool (docs/metrics.md, `tail`).

    Every number is measured on a sample of ``sample_size`` sequences (the same size for the
    human row, which draws held-out test chunks, and for every corpus row), averaged over
    ``draws`` seeded draws: plug-in KL and vanished-type counts depend on the sample size,
    so only equal sizes compare. Tail-type survival divides the share of tail types found
    in the sample by the share found in an equal-size held-out human sample. Human text is
    the target for mass, survival and vanished types (``≈``: closeness to the human row);
    KL(human train ‖ sample) is a divergence (lower is better). The human row puts one
    sample of held-out chunks in the place of a corpus and compares it with a second,
    disjoint one (so the test split must give ``2 * sample_size`` chunks: a larger size is
    refused); every human draw depends on the run's seed.
    """

    settings = TailSettings
    display_name = "Tail tokens"
    higher_is_better = None
    directions = {"kl_human_corpus": False}
    columns = ("tail_type_survival", "kl_human_corpus")

    def _size(self, ctx: MeasureContext) -> int:
        """The sample size; the human row compares two disjoint samples of held-out text
        (one in the place of a corpus, one as the reference), so it must give two."""
        return ctx.disjoint_size(self.config.sample_size, "metrics.tail.sample_size", "tail")

    def preflight(self, ctx: MeasureContext) -> None:
        self._size(ctx)

    def _measure(self, ctx: MeasureContext, pairs: list[tuple[list, list]], size: int
                 ) -> Measurement:
        """Tail numbers of each (sample, equal-size human reference) pair, averaged."""
        t = self.config
        train = ctx.content([r["input_ids"] for r in ctx.human.train])
        runs = [tail_metrics(train, sample, reference, t.head_mass, t.epsilon)
                for sample, reference in pairs]
        keep = ("tail_mass_ratio", "tail_type_survival", "kl_human_corpus", "vanished_types",
                "tail_vanished_types", "tail_mass_corpus_frac")
        out = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        details = {k: v for k, v in out.items() if k not in keep}
        details["seed"] = t.seed
        # what was drawn (a corpus sample may lose special tokens, so count them)
        sizes = {"sample_size": int(np.mean([len(s) for s, _ in pairs])),
                 "sample_tokens": _whole(np.mean([sum(map(len, s)) for s, _ in pairs])),
                 "draws": t.draws}
        return Measurement({k: out[k] for k in keep}, details=details, sizes=sizes)

    def compute(self, ctx: MeasureContext) -> Measurement:
        t, size = self.config, self._size(ctx)
        pool, test = ctx.content(ctx.corpus_seqs()), ctx.human_chunks(None, 0)
        return self._measure(ctx, [(fixed_sample(pool, size, t.seed + i),
                                    fixed_sample(test, size, ctx.human_seed(t.seed + 1000 + i)))
                                   for i in range(t.draws)], size)

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        """Held-out human text in the place of a corpus: per draw, two disjoint samples of
        the test chunks (a sample and its reference), drawn with the run's seed."""
        t, size = self.config, self._size(ctx)
        return self._measure(ctx, ctx.disjoint_human_pairs(size, t.seed, t.draws), size)

    def describe(self, m: Measurement) -> str:
        s = m.sizes
        return (f"{s['sample_size']} samples ({s['sample_tokens']} tokens), head "
                f"{m.details['head_mass']:g} of human mass, mean of {s['draws']} draws")
