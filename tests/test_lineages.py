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
from lmcollapse.lineages import exact_log_p, source_truth

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
    log_p, words, bad = exact_log_p(SOURCE, prompt, text)
    assert (words, bad) == (len(rest), 0)
    assert log_p == pytest.approx(_by_hand(doc[3:16])[0], rel=1e-12)
    assert log_p == pytest.approx(SOURCE.continuation_log_prob(prompt, text)[0], rel=1e-12)
    # an unknown word (two impossible transitions) and a word where it cannot follow
    follows = SOURCE.transition_matrix[SOURCE.word_to_index[rest[2]]]
    never = SOURCE.words[int(np.flatnonzero(follows == 0)[0])]
    broken = [*rest[:3], never, *rest[4:6], "zzzq", *rest[7:]]
    text = " " + " ".join(broken) + " "
    expected, impossible = _by_hand([doc[3], *broken])
    log_p, words, bad = exact_log_p(SOURCE, prompt, text)
    assert impossible >= 3 and (words, bad) == (len(broken), impossible)
    assert log_p == pytest.approx(expected, rel=1e-9)
    assert SOURCE.continuation_log_prob(prompt, text)[0] == -math.inf  # what it splits up
    # a cut last word is not scored; no complete word: nothing to score
    assert exact_log_p(SOURCE, prompt, " " + " ".join(rest[:3]))[1] == 2
    assert exact_log_p(SOURCE, prompt, "") == (0.0, 0, 0)


def test_mixture_of_modes_gives_the_exact_log_p_where_possible():
    mix = ModeMixture(SOURCE, [0.8, 0.2], 3, seed=5)
    doc = mix.sample_documents(1, 3, seed=2)[0].split()
    prompt, text = " ".join(doc[:5]), " " + " ".join(doc[5:15]) + " "
    log_p, words, bad = exact_log_p(mix, prompt, text)
    assert bad == 0 and words == 10
    assert log_p == pytest.approx(mix.continuation_log_prob(prompt, text)[0], rel=1e-12)


def test_source_rebuilt_from_a_config_without_torch():
    config = {"data": {"source": "synthetic",
                       "synthetic": {"vocab_size": 40, "branching": 4, "seed": 5}}}
    truth = source_truth(config)
    assert np.array_equal(truth.transition_matrix, SOURCE.transition_matrix)
    assert source_truth({"data": {"source": "hf", "hf": {"path": "wikitext"}}}) is None
    assert source_truth({"data": {"source": "nope"}}) is None and source_truth({}) is None
    code = ("import sys; from lmcollapse.lineages import source_truth; "
            "t = source_truth({'data': {'source': 'synthetic', 'synthetic': {'vocab_size': 40}}});"
            " assert t is not None; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
