"""A seeded, English-like artificial language with exactly known probabilities.

:class:`MarkovSource` is a first-order sparse Markov chain over word tokens, including the
sentence end token ``"."``. Because every transition probability is known, the harness can
compute the exact log-probability of any text the source produced, and the exact entropy rate
of the language, which is the floor any model trained on its samples can reach.

Text format: words are separated by single spaces and every sentence ends with ``" ."``; a
document is several sentences joined by a space, with no newline inside, for example
``"kator mi vessa . lu dorka ."``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

#: the largest vocabulary (the chain is a dense (V + 1)^2 float64 matrix: 800 MB at 10,000)
MAX_VOCAB = 10_000
END_TOKEN = "."
"""The sentence end token; always the last entry of :attr:`MarkovSource.words`."""

_ONSETS = (
    "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
    "z", "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ee", "ou", "oo")
_CODAS = ("", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng")
_SYLLABLE_COUNT_PROBS = (0.3, 0.45, 0.25)  # words of 1, 2 and 3 syllables
_MIN_WORD_LEN = 2
_MAX_WORD_LEN = 10
_DIRICHLET_ALPHA = 1.0
_STATIONARY_TOL = 1e-9


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Return normalised Zipf weights ``1 / rank**exponent`` for ranks ``1..n``."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def _candidate_words(rng: np.random.Generator, n: int) -> list[str]:
    """Draw ``n`` syllable-built candidate words (possibly repeated or out of length bounds)."""
    n_syll = rng.choice(len(_SYLLABLE_COUNT_PROBS), size=n, p=_SYLLABLE_COUNT_PROBS) + 1
    parts = [
        rng.integers(0, len(table), size=(n, len(_SYLLABLE_COUNT_PROBS)))
        for table in (_ONSETS, _VOWELS, _CODAS)
    ]
    words = []
    for i in range(n):
        sylls = (
            _ONSETS[parts[0][i, j]] + _VOWELS[parts[1][i, j]] + _CODAS[parts[2][i, j]]
            for j in range(n_syll[i])
        )
        words.append("".join(sylls))
    return words


def make_words(vocab_size: int, seed: int) -> list[str]:
    """Build ``vocab_size`` unique pseudo-English lowercase words from syllables.

    Words are sorted by length (shorter first, ties in draw order), so that when index is used
    as frequency rank the frequent words are short, as in natural language.

    Args:
        vocab_size: Number of distinct words to build.
        seed: Seed of the word generator.

    Returns:
        The words, each of ``2..10`` lowercase ASCII letters, all distinct.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    seen: dict[str, None] = {}
    for _ in range(1000):
        for word in _candidate_words(rng, max(64, 2 * (vocab_size - len(seen)))):
            if _MIN_WORD_LEN <= len(word) <= _MAX_WORD_LEN and word not in seen:
                seen[word] = None
                if len(seen) == vocab_size:
                    return sorted(seen, key=len)
    raise ValueError(f"could not build {vocab_size} distinct words")


def _successor_rows(
    rng: np.random.Generator, zipf: np.ndarray, branching: int, p_end: float
) -> np.ndarray:
    """Return the content-word rows of the transition matrix (shape ``(V, V + 1)``).

    Each row picks ``branching`` distinct content successors other than the word itself,
    Zipf-weighted without replacement (Gumbel top-k), gives them Dirichlet probabilities scaled
    by ``1 - p_end``, and gives the end token probability ``p_end``.
    """
    v = zipf.size
    keys = np.log(zipf)[None, :] + rng.gumbel(size=(v, v))
    np.fill_diagonal(keys, -np.inf)
    succ = np.argpartition(-keys, branching - 1, axis=1)[:, :branching]
    probs = rng.dirichlet(np.full(branching, _DIRICHLET_ALPHA), size=v)
    rows = np.zeros((v, v + 1), dtype=np.float64)
    np.put_along_axis(rows, succ, probs * (1.0 - p_end), axis=1)
    rows[:, v] = p_end
    return rows / rows.sum(axis=1, keepdims=True)


def build_transition_matrix(
    vocab_size: int, branching: int, zipf_exponent: float, mean_sentence_words: float, seed: int
) -> np.ndarray:
    """Build the dense ``(V + 1, V + 1)`` transition matrix of the default source.

    Index ``V`` is the end token. Its row (the start-of-sentence distribution) is Zipfian over
    all content words and never emits the end token, so sentences are never empty.

    Args:
        vocab_size: Number of content words ``V``.
        branching: Content successors per content word.
        zipf_exponent: Exponent of the Zipf law over word ranks.
        mean_sentence_words: Mean number of content words per sentence.
        seed: Seed of the transition generator.

    Returns:
        A row-stochastic float64 matrix.
    """
    rng = np.random.default_rng([seed, 0x7AB1E])
    zipf = _zipf_weights(vocab_size, zipf_exponent)
    matrix = np.zeros((vocab_size + 1, vocab_size + 1), dtype=np.float64)
    matrix[:vocab_size] = _successor_rows(rng, zipf, branching, 1.0 / mean_sentence_words)
    matrix[vocab_size, :vocab_size] = zipf
    return matrix


def _reachable(adjacency: np.ndarray, start: int) -> np.ndarray:
    """Return the mask of states reachable from ``start`` in a boolean adjacency matrix."""
    seen = np.zeros(adjacency.shape[0], dtype=bool)
    seen[start] = True
    frontier = seen.copy()
    while frontier.any():
        frontier = adjacency[frontier].any(axis=0) & ~seen
        seen |= frontier
    return seen


def is_irreducible(matrix: np.ndarray) -> bool:
    """Return whether every state of the chain can reach every other state."""
    adjacency = matrix > 0
    return bool(_reachable(adjacency, 0).all() and _reachable(adjacency.T, 0).all())


def stationary_distribution(matrix: np.ndarray) -> np.ndarray:
    """Return the unique stationary distribution ``pi`` with ``pi @ matrix == pi``.

    Args:
        matrix: A row-stochastic square matrix of an irreducible chain.

    Returns:
        The stationary distribution (non-negative, sums to one).

    Raises:
        ValueError: If the chain has no unique stationary distribution.
    """
    if not is_irreducible(matrix):
        raise ValueError("chain is not irreducible: its stationary distribution is not unique")
    n = matrix.shape[0]
    system = matrix.T - np.eye(n)
    system[-1, :] = 1.0
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    try:  # one BLAS thread: LAPACK's solve rounds differently with the thread count
        with threadpool_limits(1):
            pi = np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError as err:
        raise ValueError("chain has no unique stationary distribution") from err
    if pi.min() < -_STATIONARY_TOL or not np.allclose(pi @ matrix, pi, atol=_STATIONARY_TOL):
        raise ValueError("chain has no unique stationary distribution")
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def row_entropies(matrix: np.ndarray) -> np.ndarray:
    """Return the Shannon entropy (nats) of each row of a row-stochastic matrix."""
    safe = np.where(matrix > 0, matrix, 1.0)
    return -(matrix * np.log(safe)).sum(axis=1)


def _padded_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return padded successor indices and cumulative probabilities of the given rows.

    Rows are padded to the largest support among them; a padded slot repeats the row's last
    successor with cumulative probability 1, so it can never be drawn.
    """
    width = int((matrix > 0).sum(axis=1).max())
    succ = np.zeros((matrix.shape[0], width), dtype=np.int64)
    cum = np.ones((matrix.shape[0], width), dtype=np.float64)
    for i, row in enumerate(matrix):
        idx = np.flatnonzero(row)
        succ[i, : idx.size] = idx
        succ[i, idx.size :] = idx[-1]
        cum[i, : idx.size] = np.cumsum(row[idx])
        cum[i, idx.size - 1] = 1.0
    return succ, cum


def scored_words(context: str, continuation: str,
                 known: Callable[[str], bool] | None = None) -> tuple[str, list[str]]:
    """The words ``continuation`` adds to ``context`` and the word before them.

    The scored words are those of ``context + continuation`` after the context's last
    complete word: a word the continuation completes (the context ended inside it) is
    scored; a last word the text may have cut (no whitespace after it) is not. A context
    cut inside a word (a prompt is cut at a token) whose piece the continuation ends with
    whitespace: when the piece is not a ``known`` word, the continuation made it a word,
    and it is scored. The word before them is ``"."`` (a sentence start) when the context
    holds no complete word.
    """
    full = context + continuation
    prev, spans = scored_spans(context, continuation, known)
    return prev, [full[b:e] for _, b, e in spans]


def scored_spans(context: str, continuation: str, known: Callable[[str], bool] | None = None
                 ) -> tuple[str, list[tuple[int, int, int]]]:
    """:func:`scored_words` as character spans of ``context + continuation``: the word
    before them and, per scored word, ``(after, begin, end)``: where the word before it
    ends (0 for the first word of the text), where the word begins and where it ends. A
    word's tokens under a tokenizer that never joins text across whitespace lie in
    ``[after, end)``."""
    full = context + continuation
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", full)]
    n_ctx = len(context.split())
    if n_ctx and context[-1:].strip() and (
            continuation[:1].strip()  # the continuation goes on with the context's last word
            or (known is not None and continuation
                and not known(full[slice(*words[n_ctx - 1])]))):
        n_ctx -= 1
    end = len(words) if full[-1:].isspace() else len(words) - 1
    spans = [(words[i - 1][1] if i else 0, *words[i]) for i in range(n_ctx, end)]
    return (full[slice(*words[n_ctx - 1])] if n_ctx > 0 else END_TOKEN), spans


class MarkovSource:
    """A first-order sparse Markov chain over words with exactly known probabilities.

    Attributes:
        words: The vocabulary: content words ordered by Zipf rank, then the end token ``"."``.
        word_to_index: Maps each entry of :attr:`words` to its index.
        end_index: Index of the end token (the last index).
        transition_matrix: Read-only dense float64 matrix, ``transition_matrix[i, j]`` is
            ``P(next = words[j] | current = words[i])``; the end token's row is the
            start-of-sentence distribution.
        stationary: Read-only stationary distribution of the chain.
    """

    def __init__(
        self,
        vocab_size: int = 500,
        branching: int = 16,
        zipf_exponent: float = 1.1,
        mean_sentence_words: float = 12.0,
        seed: int = 0,
    ) -> None:
        """Build a source deterministically from its parameters.

        Args:
            vocab_size: Number of content words (the vocabulary also holds ``"."``).
            branching: Number of content successors of each content word.
            zipf_exponent: Exponent of the Zipf law of the start distribution and of the
                choice of successors.
            mean_sentence_words: Mean number of content words per sentence (``> 1``).
            seed: Seed of the vocabulary and of the transition probabilities.

        Raises:
            ValueError: If a parameter is out of range.
        """
        check_params(vocab_size, branching, zipf_exponent, mean_sentence_words)
        words = [*make_words(vocab_size, seed), END_TOKEN]
        matrix = build_transition_matrix(
            vocab_size, branching, zipf_exponent, mean_sentence_words, seed
        )
        params = {
            "vocab_size": int(vocab_size),
            "branching": int(branching),
            "zipf_exponent": float(zipf_exponent),
            "mean_sentence_words": float(mean_sentence_words),
            "seed": int(seed),
        }
        self._setup(words, matrix, params)

    @classmethod
    def from_transition_matrix(
        cls, words: Sequence[str], matrix: np.ndarray | Sequence[Sequence[float]]
    ) -> MarkovSource:
        """Build a source from an explicit vocabulary and transition matrix.

        Args:
            words: Distinct whitespace-free tokens; the last one must be ``"."``.
            matrix: Row-stochastic ``(len(words), len(words))`` matrix of an irreducible
                chain, whose end-token row gives the end token probability zero.

        Returns:
            The source; :meth:`describe` reports ``None`` for the generator parameters.

        Raises:
            ValueError: If the words or the matrix are invalid.
        """
        words = list(words)
        matrix = np.array(matrix, dtype=np.float64)
        _check_explicit(words, matrix)
        params = {
            "vocab_size": len(words) - 1,
            "branching": None,
            "zipf_exponent": None,
            "mean_sentence_words": None,
            "seed": None,
        }
        source = cls.__new__(cls)
        source._setup(words, matrix, params)
        return source

    def _setup(self, words: list[str], matrix: np.ndarray, params: dict[str, Any]) -> None:
        """Store the chain and precompute the stationary distribution and sampling tables."""
        self.words = words
        self.word_to_index = {w: i for i, w in enumerate(words)}
        self.end_index = len(words) - 1
        self._params = params
        matrix.setflags(write=False)
        self.transition_matrix = matrix
        self.stationary = stationary_distribution(matrix)
        self.stationary.setflags(write=False)
        self._entropy_rate = float(self.stationary @ row_entropies(matrix))
        start = matrix[self.end_index]
        self._start_idx = np.flatnonzero(start)
        self._start_cum = np.cumsum(start[self._start_idx])
        self._start_cum[-1] = 1.0
        self._succ, self._cum = _padded_rows(matrix[: self.end_index])

    def sample_documents(self, n_docs: int, sentences_per_doc: int, seed: int) -> list[str]:
        """Sample documents, each starting at a sentence boundary.

        Args:
            n_docs: Number of documents.
            sentences_per_doc: Number of sentences in each document.
            seed: Seed of this call's own generator (independent of the construction seed).

        Returns:
            ``n_docs`` documents, each of ``sentences_per_doc`` sentences ending with ``" ."``.
        """
        if n_docs < 0 or sentences_per_doc < 1:
            raise ValueError("need n_docs >= 0 and sentences_per_doc >= 1")
        rng = np.random.default_rng(seed)
        tokens, lengths = self._sample_sentences(n_docs * sentences_per_doc, rng)
        doc_ends = np.cumsum(lengths.reshape(n_docs, sentences_per_doc).sum(axis=1))
        vocab = np.array(self.words, dtype=object)
        docs, start = [], 0
        for end in doc_ends.tolist():
            docs.append(" ".join(vocab[tokens[start:end]].tolist()))
            start = end
        return docs

    def _sample_sentences(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``n`` independent sentences in parallel.

        Returns:
            The concatenated token indices and each sentence's length (including ``"."``).
        """
        ids = np.arange(n)
        cur = self._start_idx[np.searchsorted(self._start_cum, rng.random(n), side="right")]
        steps = [(ids, cur)]
        lengths = np.ones(n, dtype=np.int64)
        while ids.size:
            u = rng.random(ids.size)
            slot = (self._cum[cur] <= u[:, None]).sum(axis=1)
            cur = self._succ[cur, np.minimum(slot, self._succ.shape[1] - 1)]
            steps.append((ids, cur))
            lengths[ids] += 1
            going = cur != self.end_index
            ids, cur = ids[going], cur[going]
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        tokens = np.empty(int(lengths.sum()), dtype=np.int64)
        for pos, (step_ids, step_tokens) in enumerate(steps):
            tokens[offsets[step_ids] + pos] = step_tokens
        return tokens, lengths

    def log_prob(self, text: str) -> float:
        """Return the exact natural-log probability of ``text`` under the source.

        The text is assumed to start at a sentence boundary (previous token ``"."``) and is
        split on whitespace. A text that stops mid-sentence gets the probability of that prefix.

        Args:
            text: Whitespace-separated tokens.

        Returns:
            ``sum_t log P(w_t | w_{t-1})``; ``-inf`` for an unknown word or an impossible
            transition, ``0.0`` for an empty text.
        """
        idx = self._indices(text)
        if idx is None:
            return -math.inf
        prev = np.concatenate(([self.end_index], idx[:-1]))
        probs = self.transition_matrix[prev, idx]
        if np.any(probs <= 0):
            return -math.inf
        return float(np.log(probs).sum())

    def continuation_log_prob(self, context: str, continuation: str,
                              floor: float = 0.0) -> tuple[float, int]:
        """Exact log p of the words ``continuation`` adds to ``context``, and their number.

        ``context`` is text from a document (a prompt: it may start or end inside a word);
        the scored words are those of ``context + continuation`` after the context's last
        complete word, each given the word before it. A word the continuation completes
        (the context ended inside it) is scored, and so is the context's cut piece where
        the continuation ends it with whitespace and it is not a word of the source (the
        continuation made it a word); a last word the text may have cut (no whitespace
        after it) is not. A word the source cannot produce there (unknown, or an
        impossible transition) has probability ``floor`` (0: the log p is -inf), and so has
        the word after an unknown one. ``(-inf, 0)`` when no word is complete (a
        continuation the source cannot vouch for ranks last).
        """
        idx = self._continuation_path(context, continuation)
        return (-math.inf, 0) if idx is None else (self.path_log_prob(idx, floor), len(idx) - 1)

    def continuation_parts(self, context: str, continuation: str) -> tuple[float, int, int]:
        """``(log p, words, impossible)``: the exact log p of the words ``continuation``
        adds to ``context`` (scored as by :meth:`continuation_log_prob`) split where it is
        -inf: ``impossible`` word-to-word steps have probability 0 (into and out of an
        unknown word are two), ``log p`` is the exact sum over the other steps.
        ``(0.0, 0, 0)`` when no word is complete."""
        idx = self._continuation_path(context, continuation)
        if idx is None:
            return 0.0, 0, 0
        log_p, impossible = self.path_parts(idx)
        return log_p, len(idx) - 1, impossible

    def continuation_steps(self, context: str, continuation: str
                           ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Per word ``continuation`` adds to ``context`` (scored as by
        :meth:`continuation_log_prob`): its probability given the word before it (0 where
        the source cannot produce it there), and its :func:`scored_spans` span."""
        prev, spans = scored_spans(context, continuation, self.word_to_index.__contains__)
        if not spans:
            return np.zeros(0), []
        full = context + continuation
        if prev not in self.word_to_index:  # a context of one cut word: start a sentence
            prev = END_TOKEN
        idx = np.array([self.word_to_index.get(w, -1)
                        for w in [prev, *(full[b:e] for _, b, e in spans)]])
        return self._step_probs(idx), spans

    def _continuation_path(self, context: str, continuation: str) -> np.ndarray | None:
        """Indices of the word before the scored words and of the scored words (-1:
        unknown), or None when no word is complete."""
        prev, scored = scored_words(context, continuation, self.word_to_index.__contains__)
        if not scored:
            return None
        if prev not in self.word_to_index:  # a context of one cut word: start a sentence
            prev = END_TOKEN
        return np.array([self.word_to_index.get(w, -1) for w in [prev, *scored]])

    def _step_probs(self, idx: np.ndarray) -> np.ndarray:
        """``P(idx[t] | idx[t-1])`` for ``t >= 1``; 0 into and out of an index of -1."""
        known = (idx[:-1] >= 0) & (idx[1:] >= 0)
        probs = np.zeros(len(idx) - 1)
        probs[known] = self.transition_matrix[idx[:-1][known], idx[1:][known]]
        return probs

    def path_parts(self, idx: np.ndarray) -> tuple[float, int]:
        """``(sum log P(idx[t] | idx[t-1]) over the possible steps, impossible steps)``; an
        index of -1 (unknown) makes its step and the next impossible."""
        probs = self._step_probs(idx)
        possible = probs > 0
        return float(np.log(probs[possible]).sum()), int((~possible).sum())

    def path_log_prob(self, idx: np.ndarray, floor: float = 0.0) -> float:
        """``sum log P(idx[t] | idx[t-1])`` over ``t >= 1``; an index of -1 (unknown) makes
        its transition and the next impossible; an impossible transition has probability
        ``floor`` (0: the result is -inf)."""
        probs = self._step_probs(idx)
        if np.any(probs <= 0) and floor <= 0:
            return -math.inf
        return float(np.log(np.maximum(probs, floor)).sum())

    def _indices(self, text: str) -> np.ndarray | None:
        """Return the token indices of ``text``, or ``None`` if a token is unknown."""
        try:
            return np.array([self.word_to_index[w] for w in text.split()], dtype=np.int64)
        except KeyError:
            return None

    def n_words(self, text: str) -> int:
        """Return the number of word tokens scored by :meth:`log_prob` (``"."`` included)."""
        return len(text.split())

    def entropy_rate(self) -> float:
        """Return the exact entropy rate in nats per word token (``"."`` included).

        Computed as ``sum_i pi_i * H(P_i)`` with ``pi`` the stationary distribution.
        """
        return self._entropy_rate

    def describe(self) -> dict[str, Any]:
        """Return the constructor parameters and the entropy rate (JSON-serialisable)."""
        return {**self._params, "entropy_rate": self._entropy_rate}


def check_params(
    vocab_size: int, branching: int, zipf_exponent: float, mean_sentence_words: float
) -> None:
    """Validate the constructor parameters of :class:`MarkovSource` (the messages name the
    parameter and the allowed range; the dense transition matrix bounds the vocabulary)."""
    if not 2 <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size must be in 2..{MAX_VOCAB}, got {vocab_size}")
    if not 1 <= branching < vocab_size:
        raise ValueError(f"branching must be in 1..vocab_size - 1 ({vocab_size - 1}), got "
                         f"{branching}")
    if not 0 <= zipf_exponent <= 10:
        raise ValueError(f"zipf_exponent must be in [0, 10], got {zipf_exponent}")
    if not 1 < mean_sentence_words <= 1000:
        raise ValueError(f"mean_sentence_words must be in (1, 1000], got {mean_sentence_words}")


def _check_explicit(words: list[str], matrix: np.ndarray) -> None:
    """Validate an explicit vocabulary and transition matrix."""
    n = len(words)
    if n < 2 or words[-1] != END_TOKEN or len(set(words)) != n:
        raise ValueError("words must be distinct, at least two, and end with '.'")
    if any(not w or len(w.split()) != 1 or w != w.strip() for w in words):
        raise ValueError("words must be non-empty and free of whitespace")
    if matrix.shape != (n, n) or np.any(matrix < 0):
        raise ValueError("matrix must be square, non-negative and match the words")
    if not np.allclose(matrix.sum(axis=1), 1.0):
        raise ValueError("matrix rows must sum to one")
    if matrix[-1, -1] != 0:
        raise ValueError("the start distribution must not emit '.' (no empty sentences)")


def perturbed(source: MarkovSource, noise: float, seed: int) -> MarkovSource:
    """An imperfect copy of ``source`` (a verifier's belief, Yi et al. 2025): every
    transition probability multiplied by exp(noise * z), z ~ N(0, 1) drawn with ``seed``,
    and each row renormalised. The support is the source's (the verifier knows what can
    follow what, and misjudges how likely it is); ``noise`` 0 gives the source itself.
    Its distance from the source is :func:`kl_rate`."""
    matrix = np.array(source.transition_matrix)
    z = np.random.default_rng(seed).standard_normal(matrix.shape)
    weighted = np.where(matrix > 0, matrix * np.exp(noise * z), 0.0)
    return MarkovSource.from_transition_matrix(source.words,
                                               weighted / weighted.sum(axis=1, keepdims=True))


def kl_rate(p: MarkovSource, q: MarkovSource) -> float:
    """KL divergence rate (nats per word token) of chain ``q`` from chain ``p`` over one
    vocabulary: sum_i pi_i sum_j P_ij log(P_ij / Q_ij), pi the stationary distribution of
    ``p`` (infinite where ``q`` gives 0 to a transition ``p`` makes)."""
    P, Q = p.transition_matrix, q.transition_matrix
    if np.any((P > 0) & (Q <= 0)):
        return math.inf
    ratio = np.where(P > 0, P / np.where(Q > 0, Q, 1.0), 1.0)
    return float(p.stationary @ (P * np.log(ratio)).sum(axis=1))
