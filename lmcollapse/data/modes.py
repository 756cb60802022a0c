"""Minority modes of the synthetic language: the same content, written with other words.

A :class:`ModeMixture` wraps one :class:`~lmcollapse.data.markov.MarkovSource` (the
*concepts* and how they follow each other) and renders each document in one *mode*, drawn
with the configured shares (by default 90% majority, 10% minority: the yellow and the blue
cats). The ``words`` most frequent concepts have a different word in every mode (the
majority writes the chain's own word, a minority a word of its own); all other words are
shared. So for a document ``x`` written in mode ``m``

    log p_m(x) = log p_chain(concepts of x) + log 1[every distinctive word of x is m's]
    log p(x)   = log p_chain(concepts of x) + log sum_{m consistent with x} share_m

and the posterior of the mode, ``P(m | x) = share_m 1[x consistent with m] / sum ...``,
depends only on which distinctive words ``x`` uses: the chain term is the same under every
mode and cancels. It is exact for any text the source can write. For a model's text it is
the posterior of its distinctive words (a transition the chain cannot make does not move
it); a text that uses the distinctive words of two modes ("greenish cats") is consistent
with none and counts as *mixed*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmcollapse.data.markov import END_TOKEN, MarkovSource, make_words, scored_words
from lmcollapse.errors import ConfigError


@dataclass
class ModeSettings:
    """``data.synthetic.modes``: ``shares`` of the modes, majority first (they sum to 1);
    ``words``: how many of the most frequent concepts each mode writes with its own word."""

    shares: list[float] = field(default_factory=lambda: [0.9, 0.1])
    words: int = 12

    def check(self, where: str, vocab_size: int) -> None:
        if len(self.shares) < 2:
            raise ConfigError(f"{where}.shares: give at least two modes (majority first), "
                              f"got {self.shares}")
        if any(not 0 < s < 1 for s in self.shares) or not math.isclose(sum(self.shares), 1.0):
            raise ConfigError(f"{where}.shares: each share in (0, 1) and they sum to 1, got "
                              f"{self.shares}")
        if not 1 <= self.words <= vocab_size:
            raise ConfigError(f"{where}.words: must be in 1..{vocab_size} (the vocabulary), "
                              f"got {self.words}")


def mode_names(n_modes: int) -> list[str]:
    """``majority``, then ``minority`` (one minority) or ``minority_1``, ``minority_2``..."""
    if n_modes == 2:
        return ["majority", "minority"]
    return ["majority", *(f"minority_{j}" for j in range(1, n_modes))]


def exact_counts(shares: list[float], n: int) -> list[int]:
    """``n`` split by ``shares``, largest remainders rounded up (the counts sum to ``n``)."""
    raw = np.asarray(shares, dtype=np.float64) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


class ModeMixture:
    """Documents of a Markov chain, each written in one mode (see the module docstring).

    Attributes:
        chain: The shared chain of concepts; its words are the majority's words.
        shares: The mode shares, majority first.
        names: One name per mode (:func:`mode_names`).
        concepts: Indices (into ``chain.words``) of the concepts whose word depends on the mode.
        forms: ``forms[m][i]`` is mode ``m``'s word for concept ``concepts[i]``.
    """

    def __init__(self, chain: MarkovSource, shares: list[float], words: int, seed: int) -> None:
        self.chain = chain
        self.shares = [float(s) for s in shares]
        self.names = mode_names(len(shares))
        self.concepts = list(range(words))  # chain words are in Zipf rank order
        taken = set(chain.words)
        extra = [w for w in make_words(len(taken) + words * len(shares), seed + 7919)
                 if w not in taken][: words * (len(shares) - 1)]
        self.forms = [[chain.words[c] for c in self.concepts]]
        self.forms += [extra[j * words:(j + 1) * words] for j in range(len(shares) - 1)]
        #: word -> (concept index, mode that writes it, or -1 for a shared word)
        self._lookup: dict[str, tuple[int, int]] = {w: (i, -1) for i, w in enumerate(chain.words)}
        for m, forms in enumerate(self.forms):
            for c, w in zip(self.concepts, forms, strict=True):
                self._lookup[w] = (c, m)
        self._log_shares = np.log(np.asarray(self.shares))

    # --- which mode wrote a text ------------------------------------------------------------

    def consistent(self, words: list[str]) -> np.ndarray:
        """Boolean mask of the modes that use every distinctive word in ``words``."""
        mask = np.ones(len(self.shares), dtype=bool)
        for w in words:
            mode = self._lookup.get(w, (-1, -1))[1]
            if mode >= 0:
                mask &= np.arange(len(self.shares)) == mode
        return mask

    def posterior(self, text: str) -> np.ndarray | None:
        """Exact ``P(mode | text)`` (shares where no distinctive word occurs), or None when
        no mode writes all of the text's distinctive words (a mixed text)."""
        mask = self.consistent(text.split())
        if not mask.any():
            return None
        weights = np.where(mask, self.shares, 0.0)
        return weights / weights.sum()

    def composition(self, text: str) -> tuple[np.ndarray, float, int]:
        """Share of each mode in ``text`` and the mixed share, by words: each line (a
        document: the harness separates documents by newlines) gets its posterior, or
        counts as mixed, weighted by its number of words. Returns ``(shares, mixed,
        words)``; all zero for a text without words."""
        out, mixed, total = np.zeros(len(self.shares)), 0.0, 0
        for line in text.split("\n"):
            n = len(line.split())
            if not n:
                continue
            post = self.posterior(line)
            if post is None:
                mixed += n
            else:
                out += n * post
            total += n
        if total:
            return out / total, mixed / total, total
        return out, 0.0, 0

    # --- exact probabilities ----------------------------------------------------------------

    def _concepts(self, words: list[str]) -> np.ndarray:
        return np.array([self._lookup.get(w, (-1, -1))[0] for w in words], dtype=np.int64)

    def log_prob(self, text: str) -> float:
        """Exact natural-log probability of a document (sentence start to its end) under the
        mixture: the chain's log p of its concepts plus the log total share of the modes
        consistent with it; -inf for an unknown word, an impossible transition or a mixed
        text."""
        words = text.split()
        mask = self.consistent(words)
        if not words:
            return 0.0
        if not mask.any():
            return -math.inf
        idx = self._concepts([END_TOKEN, *words])
        if np.any(idx < 0):
            return -math.inf
        return self.chain.path_log_prob(idx) + float(np.logaddexp.reduce(self._log_shares[mask]))

    def log_prob_in_mode(self, text: str, mode: int) -> float:
        """Exact ``log p_m(text)``: the document as mode ``mode`` writes it (-inf where it
        uses another mode's word)."""
        words = text.split()
        if not self.consistent(words)[mode]:
            return -math.inf
        idx = self._concepts([END_TOKEN, *words])
        return -math.inf if np.any(idx < 0) else self.chain.path_log_prob(idx)

    def continuation_log_prob(self, context: str, continuation: str,
                              floor: float = 0.0) -> tuple[float, int]:
        """Exact log p of the words ``continuation`` adds to ``context`` (see
        :meth:`MarkovSource.continuation_log_prob` for which words are scored): the modes
        weighted by their posterior given the context's words (their shares for a mixed
        context), each scoring a word of another mode, like an impossible transition, with
        probability ``floor``."""
        paths = self._mode_paths(context, continuation)
        if paths is None:
            return -math.inf, 0
        weights, own, n = paths
        return float(np.logaddexp.reduce([w + self.chain.path_log_prob(idx, floor)
                                          for w, idx in zip(weights, own, strict=True)])), n

    def continuation_parts(self, context: str, continuation: str) -> tuple[float, int, int]:
        """``(log p, words, impossible)`` as :meth:`MarkovSource.continuation_parts`: the
        limit of :meth:`continuation_log_prob` as its floor goes to 0, split. ``impossible``
        is the fewest impossible steps of any mode (a word of another mode is one), and
        ``log p`` the posterior-weighted exact log p of the other steps over the modes
        that have that few."""
        paths = self._mode_paths(context, continuation)
        if paths is None:
            return 0.0, 0, 0
        weights, own, n = paths
        parts = [(w, *self.chain.path_parts(idx)) for w, idx in zip(weights, own, strict=True)
                 if np.isfinite(w)]  # a mode the context rules out adds nothing
        fewest = min(k for _, _, k in parts)
        return float(np.logaddexp.reduce([w + a for w, a, k in parts if k == fewest])), n, fewest

    def _mode_paths(self, context: str, continuation: str
                    ) -> tuple[np.ndarray, list[np.ndarray], int] | None:
        """Per mode: its log weight given the context's words, the concept indices of the
        scored words with another mode's words as -1 (impossible); and their number. None
        when no word is complete."""
        prev, scored = scored_words(context, continuation, self._lookup.__contains__)
        if not scored:
            return None
        ctx_words = context.split()
        mask = self.consistent(ctx_words)
        weights = self._log_shares + np.where(mask if mask.any() else True, 0.0, -np.inf)
        weights = weights - np.logaddexp.reduce(weights)
        idx = self._concepts([prev if prev in self._lookup else END_TOKEN, *scored])
        modes = [self._lookup.get(w, (-1, -1))[1] for w in scored]
        own = []
        for m in range(len(self.shares)):
            mine = idx.copy()
            # a word of another mode is impossible in mode m (and so is the word after it)
            mine[1:][[k not in (-1, m) for k in modes]] = -1
            own.append(mine)
        return weights, own, len(scored)

    def n_words(self, text: str) -> int:
        return len(text.split())

    def entropy_rate(self) -> float:
        """The chain's entropy rate (nats per word): the mode costs ``H(shares)`` once per
        document, nothing per word in the limit."""
        return self.chain.entropy_rate()

    # --- sampling ---------------------------------------------------------------------------

    def render(self, doc: str, mode: int) -> str:
        """A majority document written in mode ``mode``."""
        if mode == 0:
            return doc
        swap = dict(zip(self.forms[0], self.forms[mode], strict=True))
        return " ".join(swap.get(w, w) for w in doc.split(" "))

    def sample_labeled(self, n_docs: int, sentences_per_doc: int,
                       seed: int) -> tuple[list[str], list[int]]:
        """``n_docs`` documents and the mode that wrote each: exactly
        :func:`exact_counts` of each mode, in a seeded random order."""
        docs = self.chain.sample_documents(n_docs, sentences_per_doc, seed)
        labels = np.repeat(np.arange(len(self.shares)), exact_counts(self.shares, n_docs))
        labels = np.random.default_rng([seed, 0xB1CA7]).permutation(labels).tolist()
        return [self.render(d, m) for d, m in zip(docs, labels, strict=True)], labels

    def sample_documents(self, n_docs: int, sentences_per_doc: int, seed: int) -> list[str]:
        return self.sample_labeled(n_docs, sentences_per_doc, seed)[0]

    def describe(self) -> dict[str, Any]:
        return {**self.chain.describe(),
                "modes": {name: {"share": share,
                                 "words": dict(zip(self.forms[0], forms, strict=True))}
                          for name, share, forms in zip(self.names, self.shares, self.forms,
                                                        strict=True)}}
