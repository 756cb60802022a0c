"""Tests for the pure metric functions in lmcollapse.metrics (hand-checkable cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from scipy.stats import entropy as scipy_entropy
from transformers import LlamaConfig, LlamaForCausalLM

from lmcollapse.metrics.diversity import (
    distinct_n,
    diversity_metrics,
    fixed_sample,
    ngram_entropy,
    self_bleu,
)
from lmcollapse.metrics.features import terminal_hidden_states
from lmcollapse.metrics.mauve import mauve_score
from lmcollapse.metrics.tail import (
    head_tail_split,
    tail_metrics,
    token_counts,
)

# ---------------------------------------------------------------- diversity


def test_fixed_sample_deterministic_ordered_without_replacement():
    seqs = [[i] for i in range(50)]
    a = fixed_sample(seqs, 10, seed=3)
    assert a == fixed_sample(seqs, 10, seed=3)
    assert a != fixed_sample(seqs, 10, seed=4)
    ids = [s[0] for s in a]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert ids == sorted(ids)
    expected = np.sort(np.random.default_rng(3).choice(50, size=10, replace=False))
    assert ids == expected.tolist()
    assert fixed_sample(seqs[:5], 10, seed=3) == seqs[:5]


def test_distinct_and_entropy_by_hand():
    seq = [[1, 2, 1, 2, 3]]
    # unigrams: 1,2,1,2,3 -> {1:2, 2:2, 3:1}: 3 unique / 5 total
    assert distinct_n(seq, 1) == pytest.approx(3 / 5)
    assert ngram_entropy(seq, 1) == pytest.approx(
        -(2 * (2 / 5) * math.log2(2 / 5) + (1 / 5) * math.log2(1 / 5))
    )
    # bigrams: (1,2),(2,1),(1,2),(2,3) -> {(1,2):2, (2,1):1, (2,3):1}: 3 / 4
    assert distinct_n(seq, 2) == pytest.approx(3 / 4)
    # p = 1/2, 1/4, 1/4 -> 0.5*1 + 2 * 0.25*2 = 1.5 bits
    assert ngram_entropy(seq, 2) == pytest.approx(1.5)
    # trigrams: (1,2,1),(2,1,2),(1,2,3): all distinct, uniform over 3
    assert distinct_n(seq, 3) == pytest.approx(1.0)
    assert ngram_entropy(seq, 3) == pytest.approx(math.log2(3))
    # numpy input gives the same numbers
    assert distinct_n([np.array(seq[0])], 2) == pytest.approx(3 / 4)


def test_ngrams_do_not_cross_sequence_boundaries():
    # within-sequence bigrams: (1,2),(1,2) -> 1/2; crossing would add (2,1) -> 2/3
    assert distinct_n([[1, 2], [1, 2]], 2) == pytest.approx(1 / 2)
    assert ngram_entropy([[1, 2], [1, 2]], 2) == pytest.approx(0.0)
    # no sequence has 3 tokens -> no trigrams at all (crossing would give 2)
    assert distinct_n([[1, 2], [3, 4]], 3) == 0.0
    assert ngram_entropy([[1, 2], [3, 4]], 3) == 0.0


def test_self_bleu_matches_nltk_directly():
    sents = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 5, 6, 7], [8, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8]]
    smooth = SmoothingFunction().method1
    expected = []
    for i, hyp in enumerate(sents):
        refs = [s for j, s in enumerate(sents) if j != i]
        expected.append(sentence_bleu(refs, hyp, weights=(0.25,) * 4, smoothing_function=smooth))
    assert self_bleu(sents, seed=0, sample_size=10) == pytest.approx(np.mean(expected))
    assert 0.0 < np.mean(expected) < 1.0
    # numpy-array inputs give the same value
    arrs = [np.array(s) for s in sents]
    assert self_bleu(arrs, seed=0, sample_size=10) == pytest.approx(np.mean(expected))


def test_self_bleu_identical_is_one_and_single_is_nan():
    same = [[4, 5, 6, 7, 8]] * 3
    assert self_bleu(same, seed=1, sample_size=3) == pytest.approx(1.0)
    assert math.isnan(self_bleu([[1, 2, 3]], seed=1, sample_size=3))


def test_diversity_metrics_keys_and_values():
    seqs = [[1, 2, 1, 2, 3], [4, 5, 6, 7, 8], [1, 2, 3, 4, 5]]
    out = diversity_metrics(seqs, sample_size=10, seed=0, self_bleu_sample=10)
    expected_keys = {f"distinct_{n}" for n in range(1, 5)} | {f"entropy_{n}" for n in range(1, 5)}
    expected_keys |= {"self_bleu", "sample_size", "self_bleu_sample"}
    assert set(out) == expected_keys
    assert out["distinct_2"] == pytest.approx(distinct_n(seqs, 2))
    assert out["entropy_3"] == pytest.approx(ngram_entropy(seqs, 3))
    assert out["self_bleu"] == pytest.approx(self_bleu(seqs, 0, 10))
    assert out["sample_size"] == 3 and out["self_bleu_sample"] == 3


# ---------------------------------------------------------------- tail

# token: count = 10:50, 11:30, 12:10, 13:5, 14:5 (total 100)
TABLE = {10: 50, 11: 30, 12: 10, 13: 5, 14: 5}


def _seqs_from_table(table, seq_len=7):
    flat = [t for t, c in table.items() for _ in range(c)]
    return [flat[i : i + seq_len] for i in range(0, len(flat), seq_len)]


def test_token_counts():
    assert token_counts([[3, 1, 3], np.array([1, 3])]) == {3: 3, 1: 2}
    assert token_counts([[-5, 10**12, -5]]) == {-5: 2, 10**12: 1}
    assert token_counts([]) == {}
    assert dict(token_counts(_seqs_from_table(TABLE))) == TABLE


def test_head_tail_split_hand_table():
    # sorted: 10(50) 11(30) 12(10) 13(5) 14(5); cumulative 50, 80, 90, 95, 100
    assert head_tail_split(TABLE, 0.9) == ({10, 11, 12}, {13, 14})
    assert head_tail_split(TABLE, 0.85) == ({10, 11, 12}, {13, 14})
    assert head_tail_split(TABLE, 0.8) == ({10, 11}, {12, 13, 14})
    assert head_tail_split(TABLE, 0.95) == ({10, 11, 12, 13}, {14})  # tie 13/14: lower id first
    assert head_tail_split(TABLE, 1.0) == (set(TABLE), set())
    # ties broken by ascending id; cumulative 7/10 reaches head_mass 0.7 exactly
    uniform = {i: 1 for i in range(9, -1, -1)}
    assert head_tail_split(uniform, 0.7) == (set(range(7)), set(range(7, 10)))
    assert head_tail_split({5: 0, 6: 4}, 0.5) == ({6}, set())


def test_tail_mass_ratio():
    human = _seqs_from_table(TABLE)
    same = tail_metrics(human, human, human)
    assert same["tail_mass_ratio"] == pytest.approx(1.0)
    assert same["tail_type_survival"] == pytest.approx(1.0)
    assert same["kl_human_corpus"] == pytest.approx(0.0, abs=1e-12)
    assert same["vanished_types"] == 0 and same["tail_vanished_types"] == 0
    assert same["n_tail_types"] == 2 and same["head_mass"] == 0.9

    no_13 = _seqs_from_table({t: c for t, c in TABLE.items() if t != 13})
    out = tail_metrics(human, no_13, human)
    # corpus tail mass 5/95, human tail mass 10/100
    assert out["tail_mass_ratio"] == pytest.approx((5 / 95) / (10 / 100))
    assert out["tail_mass_ratio"] < 1.0
    # 1 of 2 tail types in corpus, 2 of 2 in the human sample
    assert out["tail_types_in_corpus_frac"] == pytest.approx(0.5)
    assert out["tail_types_in_human_sample_frac"] == pytest.approx(1.0)
    assert out["tail_type_survival"] == pytest.approx(0.5)

    no_tail = _seqs_from_table({10: 50, 11: 30, 12: 10})
    assert tail_metrics(human, no_tail, human)["tail_mass_ratio"] == 0.0


def test_vanished_types():
    human = _seqs_from_table(TABLE)
    corpus = [[10, 11, 14, 99]]  # 12 (head) and 13 (tail) vanished; 99 is new
    out = tail_metrics(human, corpus, human)
    assert out["vanished_types"] == 2
    assert out["tail_vanished_types"] == 1


def test_kl_by_hand_and_scipy():
    # P = (1/2, 1/2), Q = (3/4, 1/4): KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3)
    out = tail_metrics([[1, 2]], [[1, 1, 1, 2]], [[1, 2]], epsilon=0.0)
    assert out["kl_human_corpus"] == pytest.approx(0.5 * math.log(4 / 3))
    # union vocab {1, 2, 3}: human (3, 1, 0), corpus (1, 1, 2), + epsilon each
    eps = 1e-3
    p = np.array([3, 1, 0]) + eps
    q = np.array([1, 1, 2]) + eps
    out = tail_metrics([[1, 1, 1, 2]], [[1, 2, 3, 3]], [[1]], epsilon=eps)
    assert out["kl_human_corpus"] == pytest.approx(scipy_entropy(p / p.sum(), q / q.sum()))


def test_mauve_identical_close_to_one():
    x = np.random.default_rng(0).normal(size=(200, 16))
    out = mauve_score(x, x.copy(), num_buckets="auto", seeds=[1, 2], kmeans_num_redo=1)
    assert out["mauve"] > 0.9
    assert len(out["mauve_runs"]) == 2
    assert out["mauve_std"] == pytest.approx(np.std(out["mauve_runs"]))
    assert out["num_buckets"] == 20  # 'auto' = round(min(n_p, n_q) / 10)
    assert (out["n_p"], out["n_q"]) == (200, 200)


def test_mauve_separated_clusters_close_to_zero():
    rng = np.random.default_rng(0)
    shift = np.zeros(16)
    shift[0] = 10.0  # opposite directions: MAUVE L2-normalises features
    p = rng.normal(size=(200, 16)) + shift
    q = rng.normal(size=(200, 16)) - shift
    out = mauve_score(p, q, num_buckets=np.int64(8), seeds=[0], kmeans_num_redo=1)
    assert out["mauve"] < 0.1
    assert out["num_buckets"] == 8


# ---------------------------------------------------------------- hidden states


def test_terminal_hidden_states_batched_equals_single():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    seqs = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7], [9], np.array([3, 3, 8, 2, 1]), [4, 0, 4, 0]]
    model.train()
    feats = terminal_hidden_states(model, seqs, batch_size=3, pad_id=0)
    assert model.training  # previous mode restored
    assert feats.shape == (5, 16) and feats.dtype == np.float32
    model.eval()
    with torch.no_grad():
        for row, seq in zip(feats, seqs, strict=True):
            ids = torch.tensor([list(seq)])
            alone = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
            np.testing.assert_allclose(row, alone.numpy(), atol=1e-5)
    other = terminal_hidden_states(model, seqs, batch_size=2, pad_id=17)
    np.testing.assert_allclose(other, feats, atol=1e-5)


@pytest.mark.parametrize("trial", range(6))
def test_self_bleu_equals_nltk_on_random_corpora(trial: int) -> None:
    """The one-pass Self-BLEU equals nltk's sentence_bleu called per hypothesis, including
    empty and very short sequences, repeated n-grams and tied reference lengths."""
    rng = np.random.default_rng(trial)
    low = 0 if trial % 2 else 3
    seqs = [list(map(int, rng.integers(0, 4 + 6 * trial, rng.integers(low, 14))))
            for _ in range(30)]
    sample = [list(map(int, s)) for s in fixed_sample(seqs, 24, trial)]
    expected = np.mean([float(sentence_bleu(sample[:i] + sample[i + 1:], hyp,
                                            smoothing_function=SmoothingFunction().method1))
                        for i, hyp in enumerate(sample)])
    assert self_bleu(seqs, trial, 24) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_faiss_k_means_warning_is_explained_once_in_the_log(capfd, caplog, monkeypatch):
    from lmcollapse.metrics import mauve as mauve_module

    monkeypatch.setattr(mauve_module, "_explained", False)
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) + 0.3
    with caplog.at_level("WARNING", logger="lmcollapse"):
        first = mauve_module.mauve_score(p, q, "auto", [1, 2])
        second = mauve_module.mauve_score(p, q, "auto", [1, 2])
    assert first == second
    assert "please provide at least" not in capfd.readouterr().err  # faiss said it 4 times
    import mauve as mauve_lib  # capturing the C++ output changes nothing computed

    direct = [mauve_lib.compute_mauve(p_features=p, q_features=q, num_buckets="auto", seed=s,
                                      verbose=False).mauve for s in (1, 2)]
    assert first["mauve_runs"] == direct
    said = [r.getMessage() for r in caplog.records if "k-means quantizes" in r.getMessage()]
    assert said == [said[0]] and "600 feature vectors into 30 buckets" in said[0]
