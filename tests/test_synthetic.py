"""Tests of the exactly-scored synthetic language in :mod:`lmcollapse.data.markov`."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pytest

from lmcollapse.data.markov import MarkovSource

# A 3-token chain worked out by hand: "." -> a (1); a -> b (1/4), "." (3/4); b -> "." (1).
# Sentences are "a ." (p = 3/4) or "a b ." (p = 1/4). Stationary: pi_a = pi_. = x,
# pi_b = x / 4, so pi = (4/9, 1/9, 4/9). Only row a is random, with entropy H_a, so the
# entropy rate is 4/9 * H_a (equivalently: H_a per sentence / 9/4 tokens per sentence).
TINY_WORDS = ["a", "b", "."]
TINY_MATRIX = [[0.0, 0.25, 0.75], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
TINY_H_A = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))


@pytest.fixture(scope="module")
def source() -> MarkovSource:
    return MarkovSource(vocab_size=500, branching=16, seed=0)


@pytest.fixture(scope="module")
def tiny() -> MarkovSource:
    return MarkovSource.from_transition_matrix(TINY_WORDS, TINY_MATRIX)


def manual_log_prob(src: MarkovSource, text: str) -> float:
    """Walk the text by hand through the exposed transition matrix."""
    index = {w: i for i, w in enumerate(src.words)}
    prev, total = len(src.words) - 1, 0.0
    for word in text.split():
        if word not in index:
            return -math.inf
        p = float(src.transition_matrix[prev, index[word]])
        if p == 0.0:
            return -math.inf
        total += math.log(p)
        prev = index[word]
    return total


# --- vocabulary ----------------------------------------------------------------------------


def test_words_english_like_unique_and_end_token_last(source: MarkovSource) -> None:
    assert len(source.words) == 501
    assert source.words[-1] == "." and source.end_index == 500
    content = source.words[:-1]
    assert len(set(content)) == len(content)
    assert all(re.fullmatch(r"[a-z]{2,10}", w) for w in content), content[:20]
    assert source.word_to_index == {w: i for i, w in enumerate(source.words)}
    # frequent (low-rank) words are short, like natural language
    assert np.mean([len(w) for w in content[:50]]) < np.mean([len(w) for w in content[-50:]])


def test_words_deterministic_per_seed(source: MarkovSource) -> None:
    assert MarkovSource(seed=0).words == source.words
    assert MarkovSource(seed=1).words != source.words


# --- sampling ------------------------------------------------------------------------------


def test_documents_deterministic_per_sample_seed(source: MarkovSource) -> None:
    docs = source.sample_documents(50, 3, seed=7)
    source.sample_documents(10, 2, seed=99)  # no hidden state carried between calls
    assert source.sample_documents(50, 3, seed=7) == docs
    assert MarkovSource(seed=0).sample_documents(50, 3, seed=7) == docs
    assert source.sample_documents(50, 3, seed=8) != docs
    assert MarkovSource(seed=1).sample_documents(50, 3, seed=7) != docs


def test_document_format(source: MarkovSource) -> None:
    docs = source.sample_documents(300, 4, seed=1)
    assert len(docs) == 300
    sentence = r"[a-z]+(?: [a-z]+)* \."
    for doc in docs:
        assert re.fullmatch(rf"{sentence}(?: {sentence})*", doc), doc
        assert doc.split().count(".") == 4
    assert source.sample_documents(0, 4, seed=1) == []


def test_sampler_follows_transition_matrix(source: MarkovSource) -> None:
    """Empirical successor frequencies of the start state and of a frequent word match P."""
    docs = source.sample_documents(2000, 5, seed=3)
    counts: dict[str, Counter[str]] = {".": Counter(), source.words[0]: Counter()}
    for doc in docs:
        tokens = [".", *doc.split()]
        for prev, nxt in zip(tokens[:-1], tokens[1:], strict=True):
            if prev in counts:
                counts[prev][nxt] += 1
    for prev, counter in counts.items():
        row = source.transition_matrix[source.word_to_index[prev]]
        n = sum(counter.values())
        empirical = np.zeros_like(row)
        for word, c in counter.items():
            empirical[source.word_to_index[word]] = c / n
        assert n > 2000
        assert np.all(row[empirical > 0] > 0)  # never an impossible transition
        common = row > 0.01
        sd = np.sqrt(row[common] * (1 - row[common]) / n)
        assert np.all(np.abs(empirical[common] - row[common]) < 5 * sd)


# --- probabilities -------------------------------------------------------------------------


def test_transition_matrix_structure(source: MarkovSource) -> None:
    p = source.transition_matrix
    v = source.end_index
    assert p.shape == (501, 501) and p.dtype == np.float64
    assert not p.flags.writeable
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(p >= 0)
    # start distribution: Zipfian over all content words, never an empty sentence
    start = p[v]
    assert start[v] == 0.0 and np.all(start[:v] > 0)
    ranks = np.arange(1, v + 1)
    np.testing.assert_allclose(start[:v] / start[0], ranks**-1.1, rtol=1e-12)
    # content rows: `branching` content successors (no self-loop) plus "." at 1/12
    assert np.all((p[:v, :v] > 0).sum(axis=1) == 16)
    assert np.all(np.diag(p)[:v] == 0)
    np.testing.assert_allclose(p[:v, v], 1 / 12, rtol=1e-12)


def test_stationary_and_entropy_rate_exact(source: MarkovSource) -> None:
    p, pi = source.transition_matrix, source.stationary
    np.testing.assert_allclose(pi @ p, pi, atol=1e-12)
    assert pi.sum() == pytest.approx(1.0) and np.all(pi > 0)
    # a sentence has 12 content words on average, plus ".", so pi(".") = 1 / 13
    assert pi[source.end_index] == pytest.approx(1 / 13)
    rows = [-sum(q * math.log(q) for q in row if q > 0) for row in p.tolist()]
    assert source.entropy_rate() == pytest.approx(float(np.dot(pi, rows)), rel=1e-12)


def test_log_prob_matches_manual_walk(source: MarkovSource) -> None:
    for doc in source.sample_documents(20, 3, seed=5):
        lp = source.log_prob(doc)
        assert math.isfinite(lp) and lp < 0
        assert lp == pytest.approx(manual_log_prob(source, doc), rel=1e-12)
        assert source.n_words(doc) == len(doc.split(" "))


def test_log_prob_whitespace_robust(source: MarkovSource) -> None:
    doc = source.sample_documents(1, 2, seed=11)[0]
    messy = "  " + doc.replace(" ", "   \n\t") + "\n"
    assert source.log_prob(messy) == source.log_prob(doc)
    assert source.n_words(messy) == source.n_words(doc)
    assert source.log_prob("") == 0.0 and source.n_words("") == 0


def test_log_prob_impossible_is_minus_inf(source: MarkovSource) -> None:
    p, w = source.transition_matrix, source.words
    doc = source.sample_documents(1, 2, seed=2)[0]
    assert source.log_prob(doc + " qqqqxq .") == -math.inf  # unknown word
    assert source.log_prob(doc.replace(".", "Go .")) == -math.inf  # case matters
    i, j = map(int, np.argwhere(p[:-1, :-1] == 0)[0])
    assert source.log_prob(f"{w[i]} {w[j]} .") == -math.inf  # impossible transition
    assert source.log_prob(f"{doc} . {doc}") == -math.inf  # empty sentence
    assert source.log_prob(". " + doc) == -math.inf  # "." cannot start a sentence


def test_entropy_rate_matches_monte_carlo(source: MarkovSource) -> None:
    docs = source.sample_documents(4000, 5, seed=123)
    total_lp = sum(source.log_prob(d) for d in docs)
    total_words = sum(source.n_words(d) for d in docs)
    estimate = -total_lp / total_words
    assert estimate == pytest.approx(source.entropy_rate(), rel=0.02)
    assert total_words / (4000 * 5) == pytest.approx(13.0, rel=0.03)  # mean sentence tokens


def test_describe_is_json_serialisable(source: MarkovSource) -> None:
    info = json.loads(json.dumps(source.describe()))
    assert info == {
        "vocab_size": 500,
        "branching": 16,
        "zipf_exponent": 1.1,
        "mean_sentence_words": 12.0,
        "seed": 0,
        "entropy_rate": source.entropy_rate(),
    }


# --- a chain small enough to check by hand -------------------------------------------------


def test_tiny_chain_worked_by_hand(tiny: MarkovSource) -> None:
    np.testing.assert_allclose(tiny.stationary, [4 / 9, 1 / 9, 4 / 9], atol=1e-12)
    assert tiny.entropy_rate() == pytest.approx(4 / 9 * TINY_H_A, rel=1e-12)
    assert tiny.log_prob("a .") == pytest.approx(math.log(0.75))
    assert tiny.log_prob("a b . a .") == pytest.approx(math.log(0.25 * 0.75))
    assert tiny.log_prob("b .") == -math.inf  # a sentence always starts with "a"
    assert tiny.log_prob("a b b .") == -math.inf
    assert tiny.n_words("a b . a .") == 5
    assert json.loads(json.dumps(tiny.describe()))["entropy_rate"] == tiny.entropy_rate()


def test_tiny_chain_sampling(tiny: MarkovSource) -> None:
    docs = tiny.sample_documents(1000, 4, seed=0)
    sentences = [s for d in docs for s in (d + " ").split(" . ") if s]
    assert len(sentences) == 4000 and set(sentences) == {"a", "a b"}
    share_long = sentences.count("a b") / len(sentences)
    assert share_long == pytest.approx(0.25, abs=0.03)  # binomial sd is about 0.007


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vocab_size": 1},
        {"branching": 0},
        {"vocab_size": 10, "branching": 10},
        {"mean_sentence_words": 1.0},
        {"zipf_exponent": -1.0},
    ],
)
def test_invalid_parameters_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MarkovSource(**kwargs)


@pytest.mark.parametrize(
    ("words", "matrix"),
    [
        (["a", "b", "."], [[0, 0.5, 0.4], [0, 0, 1], [1, 0, 0]]),  # row does not sum to 1
        (["a", "b", "."], [[0, 0.5, 0.5], [0, 0, 1], [0.5, 0, 0.5]]),  # empty sentences
        (["a", "b", "c"], TINY_MATRIX),  # no end token
        (["a", "a", "."], TINY_MATRIX),  # duplicate word
        (["a", "b", "."], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]),  # reducible: b is absorbing
    ],
)
def test_invalid_explicit_chain_rejected(words: list[str], matrix: list[list[float]]) -> None:
    with pytest.raises(ValueError):
        MarkovSource.from_transition_matrix(words, matrix)
