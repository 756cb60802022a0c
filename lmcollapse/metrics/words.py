"""Words, not tokens: does a corpus keep the rare words of human text, and does it invent
words human text never had?

Every sample is decoded and split on whitespace (WikiText's own tokenization). Each word
type of the human training pool falls in a frequency **band** by its count there
(``bands`` are the upper edges: the default ``[2, 10, 100]`` gives 1-2, 3-10, 11-100 and
over 100 occurrences); a word the pool never had is *invented*. On an equal-size sample
(the three rules: equal sizes, trained length through the samples' own length, closeness to
the human row) the metric reports, per band (1 = rarest):

- ``word_usage_<b>``: the share of the sample's words in band b, over the same share in an
  equal-size held-out human sample (1.0 = human rate; the rare bands fall first when the
  tails disappear);
- ``word_types_<b>``: the share of band b's types that appear in the sample at all;

and ``invented_share`` (words the pool never had / all words), ``word_types`` and
``word_ttr`` (distinct words and distinct / all, at equal size) and the same without
invented words (``word_types_known``, ``word_ttr_known``), ``first_band_below_half`` (the
rarest band whose usage fell below half the human rate, 0 when none). The human row puts
one held-out sample in the place of a corpus and compares it with a second, disjoint one,
as the tail metric does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lmcollapse.checks import positive, sample_size
from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.registry import METRICS
from lmcollapse.sampling import fixed_sample


def band_of(count: int, edges: Sequence[int]) -> int:
    """The band (1 = rarest) of a word seen ``count`` >= 1 times: the first edge it does
    not exceed, or the last band past every edge."""
    return next((i + 1 for i, e in enumerate(edges) if count <= e), len(edges) + 1)


def word_metrics(train: Counter, sample: list[list[str]], reference: list[list[str]],
                 edges: Sequence[int]) -> dict[str, float]:
    """The values of one (sample, equal-size human reference) pair; see the module."""
    bands = len(edges) + 1
    types_in_band = Counter(band_of(c, edges) for c in train.values())

    def usage(words: list[str]) -> np.ndarray:
        per = Counter(band_of(train[w], edges) if w in train else 0 for w in words)
        return np.array([per[b] / max(1, len(words)) for b in range(bands + 1)])

    flat = [w for s in sample for w in s]
    ref = [w for s in reference for w in s]
    mine, human = usage(flat), usage(ref)
    present = {w for w in flat}
    out: dict[str, float] = {}
    first = 0
    for b in range(1, bands + 1):
        rel = mine[b] / human[b] if human[b] else float("nan")
        out[f"word_usage_{b}"] = rel
        out[f"word_types_{b}"] = (sum(1 for w in present if w in train
                                      and band_of(train[w], edges) == b) / types_in_band[b])
        if not first and rel < 0.5:
            first = b
    known = [w for w in flat if w in train]
    out.update(invented_share=mine[0], word_types=float(len(present)),
               word_ttr=len(present) / max(1, len(flat)),
               word_types_known=float(len(set(known))),
               word_ttr_known=len(set(known)) / max(1, len(known)),
               first_band_below_half=float(first))
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


@dataclass
class WordSettings:
    """``metrics.words``: ``bands`` (upper edges of the human-train count bands, increasing),
    ``sample_size`` samples for every row (None: the largest all rows allow), averaged over
    ``draws`` draws."""

    bands: list[int] = field(default_factory=lambda: [2, 10, 100])
    sample_size: int | None = None
    draws: int = 3
    seed: int = 0

    def check(self, where: str) -> None:
        if not self.bands or any(b < 1 for b in self.bands) or any(
                a >= b for a, b in zip(self.bands, self.bands[1:], strict=False)):
            raise ConfigError(f"{where}.bands: increasing counts >= 1 (the upper edges of the "
                              f"word-frequency bands, e.g. [2, 10, 100]), got {self.bands}")
        sample_size(self.sample_size, f"{where}.sample_size")
        positive(self.draws, f"{where}.draws")


@METRICS.register("words")
class Words(Metric):
    """Word-level tails and invented words (see the module docstring)."""

    settings = WordSettings
    display_name = "Words"
    higher_is_better = None
    columns = ("word_usage_1", "invented_share")

    def _train(self, ctx: MeasureContext) -> Counter:
        """Word counts of the human training pool (its records, as written)."""
        key = ("words", "train")
        if key not in ctx.shared:
            ctx.shared[key] = Counter(w for r in ctx.human.texts["train"] for w in r.split())
        return ctx.shared[key]

    def _size(self, ctx: MeasureContext) -> int:
        return ctx.disjoint_size(self.config.sample_size, "metrics.words.sample_size", "words")

    def preflight(self, ctx: MeasureContext) -> None:
        self._size(ctx)
        train = self._train(ctx)
        bands = Counter(band_of(c, self.config.bands) for c in train.values())
        empty = [b for b in range(1, len(self.config.bands) + 2) if not bands[b]]
        if empty:
            raise ConfigError(f"metrics.words.bands: {self.config.bands} leaves band(s) "
                              f"{empty} (1 = rarest) without any word type of the human "
                              "training pool; choose edges every band has words between")

    def _words(self, ctx: MeasureContext, seqs: list) -> list[list[str]]:
        texts = ctx.tokenizer.batch_decode([list(map(int, s)) for s in ctx.content(seqs)])
        return [t.split() for t in texts]

    def _measure(self, ctx: MeasureContext, pairs: list[tuple[list, list]]) -> Measurement:
        train = self._train(ctx)
        runs = [word_metrics(train, self._words(ctx, s), self._words(ctx, r),
                             self.config.bands) for s, r in pairs]
        # a band the reference sample never uses has no ratio in that draw (NaN), and
        # none at all when no draw has one
        values = {k: _mean([r[k] for r in runs]) for k in runs[0]}
        edges = [0, *self.config.bands]
        names = [f"{a + 1}-{b}" for a, b in zip(edges, edges[1:], strict=False)]
        names.append(f">{edges[-1]}")
        return Measurement(values, details={"bands": dict(enumerate(names, 1)),
                                            "seed": self.config.seed,
                                            "unit": "whitespace words of the decoded text"},
                           sizes={"sample_size": len(pairs[0][0]), "draws": len(pairs)})

    def compute(self, ctx: MeasureContext) -> Measurement:
        c, size = self.config, self._size(ctx)
        test = ctx.human_chunks(None, 0)
        return self._measure(ctx, [(fixed_sample(ctx.corpus_seqs(), size, c.seed + i),
                                    fixed_sample(test, size, ctx.human_seed(c.seed + 1000 + i)))
                                   for i in range(c.draws)])

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        c = self.config
        return self._measure(ctx, ctx.disjoint_human_pairs(self._size(ctx), c.seed, c.draws))

    def describe(self, m: Measurement) -> str:
        bands = ", ".join(m.details["bands"].values())
        return (f"{m.sizes['sample_size']} samples, whitespace words, bands of human-train "
                f"count {bands}, mean of {m.sizes['draws']} draws")
