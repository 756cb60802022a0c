"""The shared scorer and held-out perplexity against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from lmcollapse.metrics.perplexity import sliding_windows, stream_perplexity
from lmcollapse.scoring import masked_nll


def test_masked_nll_matches_model_loss(tiny_model, tokenizer, texts):
    ids = tokenizer(texts[0])["input_ids"][:40]
    nll, count = masked_nll(tiny_model, [ids], [1], tokenizer.pad_token_id)
    with torch.no_grad():
        ref = tiny_model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert count.item() == len(ids) - 1
    assert nll.item() / count.item() == pytest.approx(ref.item(), rel=1e-5)


def test_masked_nll_padding_and_score_from(tiny_model, tokenizer, texts):
    a = tokenizer(texts[1])["input_ids"][:30]
    b = tokenizer(texts[2])["input_ids"][:12]
    batch_nll, batch_count = masked_nll(tiny_model, [a, b], [1, 5], tokenizer.pad_token_id)
    alone_b, count_b = masked_nll(tiny_model, [b], [5], tokenizer.pad_token_id)
    alone_a, _ = masked_nll(tiny_model, [a], [1], tokenizer.pad_token_id)
    assert batch_count.tolist() == [29, 7]
    assert count_b.item() == 7
    assert batch_nll[1].item() == pytest.approx(alone_b.item(), rel=1e-5)
    assert batch_nll[0].item() == pytest.approx(alone_a.item(), rel=1e-5)


def _guide_perplexity(model, ids: torch.Tensor, max_length: int, stride: int) -> tuple:
    """The loop of the transformers guide "Perplexity of fixed-length models", with one fix.

    The guide weights each window's mean loss by ``valid labels - batch size``; that is right
    for a window whose first token is a target, but one token short for later overlapping
    windows, whose targets all lie past position 0. Here each window is weighted by the
    number of labels the model actually scores (``target_ids[:, 1:]``).
    """
    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        num_valid = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += loss.item() * num_valid
        n_tokens += num_valid
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.parametrize("max_length,stride", [(32, 16), (32, 32), (50, 7)])
def test_sliding_window_perplexity_matches_guide(tiny_model, tokenizer, texts, accelerator,
                                                 max_length, stride):
    stream = [t for text in texts[:6] for t in tokenizer(text)["input_ids"]][:203]
    nll, count = stream_perplexity(accelerator, tiny_model, stream, max_length, stride,
                                   tokenizer.pad_token_id, batch_size=3)
    expected, n_tokens = _guide_perplexity(tiny_model, torch.tensor([stream]), max_length, stride)
    assert count == n_tokens
    assert math.exp(nll / count) == pytest.approx(expected, rel=1e-5)


def test_sliding_windows_score_each_token_at_most_once():
    # overlapping windows score every token but the first; non-overlapping ones (stride ==
    # max_length) cannot score the first token of each window, which has no context
    for n, m, s in [(100, 32, 16), (100, 32, 32), (31, 32, 8), (1000, 64, 5)]:
        scored = []
        windows = sliding_windows(n, m, s)
        for begin, end, score_from in windows:
            assert end - begin <= m
            scored += list(range(begin + max(1, score_from), end))
        unscored = {0} if s < m else {b for b, _, _ in windows}
        assert scored == [t for t in range(n) if t not in unscored]
