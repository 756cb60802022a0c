"""Exact log p of a continuation in the lineages, against a sum over the chain by hand; the
source rebuilt from a run's config without torch."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from lmcollapse.data.markov import MarkovSource
from lmcollapse.data.modes import ModeMixture
from lmcollapse.report.lineages import source_truth

SOURCE = MarkovSource(vocab_size=40, branching=4, seed=5)


def _by_hand(words: list[str]) -> tuple[float, int]:
    """Sum of log P over the possible transitions, and the number of impossible ones."""
    total, bad = 0.0, 0
    for a, b in zip(words, words[1:], strict=False):
        i, j = SOURCE.word_to_index.get(a, -1), SOURCE.word_to_index.get(b, -1)
        p = SOURCE.transition_matrix[i, j] if i >= 0 and j >= 0 else 0.0
        if p > 0:
            total += math.log(p)
        else:
            bad += 1
    return total, bad


def test_exact_log_p_splits_off_the_impossible_words():
    doc = SOURCE.sample_documents(1, 3, seed=1)[0].split()
    prompt, rest = " ".join(doc[:4]), doc[4:16]
    # the source's own text: every word possible, the log p is the exact one
    text = " " + " ".join(rest) + " "
    log_p, words, bad = SOURCE.continuation_parts(prompt, text)
    assert (words, bad) == (len(rest), 0)
    assert log_p == pytest.approx(_by_hand(doc[3:16])[0], rel=1e-12)
    assert log_p == pytest.approx(SOURCE.continuation_log_prob(prompt, text)[0], rel=1e-12)
    # an unknown word (two impossible transitions) and a word where it cannot follow
    follows = SOURCE.transition_matrix[SOURCE.word_to_index[rest[2]]]
    never = SOURCE.words[int(np.flatnonzero(follows == 0)[0])]
    broken = [*rest[:3], never, *rest[4:6], "zzzq", *rest[7:]]
    text = " " + " ".join(broken) + " "
    expected, impossible = _by_hand([doc[3], *broken])
    log_p, words, bad = SOURCE.continuation_parts(prompt, text)
    assert impossible >= 3 and (words, bad) == (len(broken), impossible)
    assert log_p == pytest.approx(expected, rel=1e-9)
    assert SOURCE.continuation_log_prob(prompt, text)[0] == -math.inf  # what it splits up
    # a cut last word is not scored; no complete word: nothing to score
    assert SOURCE.continuation_parts(prompt, " " + " ".join(rest[:3]))[1] == 2
    assert SOURCE.continuation_parts(prompt, "") == (0.0, 0, 0)


def _mode_by_hand(mix: ModeMixture, prev: str, words: list[str], mode: int
                  ) -> tuple[float, int]:
    """Mode ``mode``'s steps: each word as its concept (its index in the forms, or the
    chain's index of a shared word), -1 where it is another mode's form."""
    def concept(w: str) -> tuple[int, int]:
        for m, forms in enumerate(mix.forms):
            if w in forms:
                return forms.index(w), m
        return SOURCE.word_to_index.get(w, -1), -1

    seq = [concept(prev)[0]] + [c if m in (-1, mode) else -1 for c, m in map(concept, words)]
    total, bad = 0.0, 0
    for i, j in zip(seq, seq[1:], strict=False):
        p = SOURCE.transition_matrix[i, j] if i >= 0 and j >= 0 else 0.0
        total, bad = (total + math.log(p), bad) if p > 0 else (total, bad + 1)
    return total, bad


def test_mixture_of_modes_splits_like_the_limit_of_its_floored_log_p():
    mix = ModeMixture(SOURCE, [0.8, 0.2], 1, seed=5)  # one concept written two ways
    major, minor = mix.forms
    docs = [d.split() for d in SOURCE.sample_documents(400, 3, seed=4)]
    # a context without distinctive words (both modes, weighted by their shares) and a
    # continuation with exactly two majority forms, apart and not last
    doc = next(d for d in docs if len(d) >= 17 and not set(d[:5]) & set(major)
               and [i for i, w in enumerate(d[5:17]) if w in major][:3] in (
                   [[i, k] for i in range(1, 10) for k in range(i + 2, 11)]))
    prompt, rest = " ".join(doc[:5]), doc[5:17]
    first, second = [i for i, w in enumerate(rest) if w in major]
    text = " " + " ".join(rest) + " "
    # the majority's own text: mode 1 cannot write its forms, mode 0 writes it exactly
    log_p, words, bad = mix.continuation_parts(prompt, text)
    assert (words, bad) == (12, 0)
    assert log_p == pytest.approx(math.log(0.8) + _mode_by_hand(mix, doc[4], rest, 0)[0])
    assert log_p == pytest.approx(mix.continuation_log_prob(prompt, text)[0], rel=1e-12)
    # one form of each mode: a tie, 2 impossible steps in either, both modes weighted in
    mixed = [*rest[:second], minor[major.index(rest[second])], *rest[second + 1:]]
    hand = [_mode_by_hand(mix, doc[4], mixed, m) for m in (0, 1)]
    assert [k for _, k in hand] == [2, 2]
    log_p, words, bad = mix.continuation_parts(prompt, " " + " ".join(mixed) + " ")
    assert (words, bad) == (12, 2)
    assert log_p == pytest.approx(np.logaddexp(math.log(0.8) + hand[0][0],
                                               math.log(0.2) + hand[1][0]), rel=1e-12)
    # a majority context rules mode 1 out, however few impossible steps it would have
    context = prompt + " " + " ".join(rest[:first + 1])
    tail = [minor[major.index(w)] if w in major else w for w in rest[first + 1:]]
    log_p, words, bad = mix.continuation_parts(context, " " + " ".join(tail) + " ")
    expected = _mode_by_hand(mix, rest[first], tail, 0)
    assert (log_p, bad) == (pytest.approx(expected[0], rel=1e-12), expected[1])
    assert bad >= 1 and _mode_by_hand(mix, rest[first], tail, 1)[1] == 0


def test_a_prompt_cut_inside_a_word():
    doc = SOURCE.sample_documents(1, 3, seed=1)[0].split()
    word = next(w for w in doc[3:] if len(w) >= 4 and w != doc[3])
    prompt = " ".join(doc[:3]) + " " + word[:2]  # cut inside the word
    prev = doc[2]
    # the continuation completes the word: it is scored whole, after the word before it
    rest = " ".join(doc[4:9])
    got = SOURCE.continuation_parts(prompt, word[2:] + " " + rest + " ")
    assert got[1:] == (6, _by_hand([prev, word, *doc[4:9]])[1])
    assert got[0] == pytest.approx(_by_hand([prev, word, *doc[4:9]])[0], rel=1e-12)
    # the continuation ends it: the piece, not a word of the source, is the text's first
    # word, with the steps into and out of it impossible
    piece = word[:2]
    assert piece not in SOURCE.word_to_index
    got = SOURCE.continuation_parts(prompt, " " + rest + " ")
    expected = _by_hand([prev, piece, *doc[4:9]])
    assert got[1:] == (6, expected[1]) and expected[1] >= 2
    assert got[0] == pytest.approx(expected[0], rel=1e-12)
    # a prompt cut at a word's end, continued after a space: the plain continuation
    whole = " ".join(doc[:4])
    got = SOURCE.continuation_parts(whole, " " + rest + " ")
    assert got[1] == 5 and got[0] == pytest.approx(_by_hand(doc[3:9])[0], rel=1e-12)


def test_source_rebuilt_from_a_config_without_torch():
    config = {"data": {"source": "synthetic",
                       "synthetic": {"vocab_size": 40, "branching": 4, "seed": 5}}}
    truth = source_truth(config)
    assert np.array_equal(truth.transition_matrix, SOURCE.transition_matrix)
    assert source_truth({"data": {"source": "hf", "hf": {"path": "wikitext"}}}) is None
    assert source_truth({"data": {"source": "nope"}}) is None and source_truth({}) is None
    code = ("import sys; from lmcollapse.report.lineages import source_truth; "
            "t = source_truth({'data': {'source': 'synthetic', 'synthetic': {'vocab_size': 40}}});"
            " assert t is not None; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
