"""Training lowers loss and keeps the best checkpoint; generation has forced length,
provenance and seeded determinism."""

from __future__ import annotations

import copy

import pytest
import torch

from lmcollapse.data.blocks import human_rows
from lmcollapse.generate import generate_corpus
from lmcollapse.settings import GenerateConfig, TrainConfig
from lmcollapse.train import evaluate, train_generation


@pytest.fixture()
def blocks(tokenizer, texts):
    stream = [t for text in texts for t in tokenizer(text + "\n")["input_ids"]]
    rows = human_rows(stream, 24, "train")
    return rows[:160], rows[160:190]


def test_training_lowers_validation_loss_and_selects_best(accelerator, tiny_model, tokenizer,
                                                          blocks):
    train, val = blocks
    from torch.utils.data import DataLoader

    before = evaluate(accelerator, tiny_model, DataLoader([r["input_ids"] for r in val],
                                                          batch_size=8, collate_fn=list),
                      tokenizer.pad_token_id)
    tcfg = TrainConfig(epochs=3, lr=3e-3, batch_size=16, eval_batch_size=16)
    model, log = train_generation(accelerator, tiny_model, tokenizer.pad_token_id, train, val,
                                  tcfg, seed=0)
    assert [r["step"] for r in log] == [10, 20, 30]  # 160 rows / 16 = 10 steps per pass
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert min(r["val_loss"] for r in log) < before - 0.5
    best = min(log, key=lambda r: r["val_loss"])
    assert [r["selected"] for r in log] == [r is best for r in log]
    after = evaluate(accelerator, model, DataLoader([r["input_ids"] for r in val], batch_size=8,
                                                    collate_fn=list), tokenizer.pad_token_id)
    assert after == pytest.approx(best["val_loss"], rel=1e-6)


def test_fixed_budget_sets_the_step_count(accelerator, tiny_model, tokenizer, blocks, caplog):
    train, val = blocks
    with caplog.at_level("INFO", logger="lmcollapse.train"):
        _, log = train_generation(accelerator, tiny_model, tokenizer.pad_token_id, train, val,
                                  TrainConfig(batch_size=16, budget_steps=25), seed=0)
    assert log[-1]["step"] == 25
    # the derived numbers are logged before the first step: 16 blocks of 24 tokens a step,
    # 10 steps a pass over 160 blocks, 25 steps, a fixed budget evaluates every ceil(25/4)
    assert ("160 samples, 1 processes x batch 16 x accumulation 1 = 384 tokens per step; "
            "25 steps (10 per pass over the mix), validation every 7 steps on 30 blocks"
            ) in caplog.text
    _, log = train_generation(accelerator, copy.deepcopy(tiny_model), tokenizer.pad_token_id,
                              train, val, TrainConfig(batch_size=16, budget_tokens=16 * 24 * 7),
                              seed=0)
    assert log[-1]["step"] == 7


@pytest.mark.parametrize("strategy", ["beam", "greedy", "sample"])
def test_generation_forced_length_and_provenance(accelerator, tiny_model, tokenizer, blocks,
                                                 strategy):
    prompts = blocks[0][:20]
    gcfg = GenerateConfig(prompt_tokens=8, new_tokens=12, strategy=strategy, num_beams=3,
                          batch_size=7)
    corpus = generate_corpus(accelerator, tiny_model, tokenizer, prompts, gcfg, seed=1,
                             generation=3)
    assert [r["prompt_id"] for r in corpus] == list(range(20))
    assert all(len(r["input_ids"]) == 12 for r in corpus)
    assert {r["origin"] for r in corpus} == {"gen_3"}
    assert len({r["sample_id"] for r in corpus}) == 20
    again = generate_corpus(accelerator, tiny_model, tokenizer, prompts, gcfg, seed=1,
                            generation=3)
    assert [r["input_ids"] for r in again] == [r["input_ids"] for r in corpus]
    if strategy == "sample":
        other = generate_corpus(accelerator, tiny_model, tokenizer, prompts, gcfg, seed=2,
                                generation=3)
        assert [r["input_ids"] for r in other] != [r["input_ids"] for r in corpus]


def test_keep_prompt_prepends_the_prompt(accelerator, tiny_model, tokenizer, blocks):
    prompts = blocks[0][:5]
    gcfg = GenerateConfig(prompt_tokens=8, new_tokens=6, strategy="greedy", keep_prompt=True)
    corpus = generate_corpus(accelerator, tiny_model, tokenizer, prompts, gcfg, seed=0,
                             generation=1)
    for row, prompt in zip(corpus, prompts, strict=True):
        assert len(row["input_ids"]) == 14
        assert list(row["input_ids"][:8]) == list(prompt["input_ids"][:8])


def test_lora_trains_only_the_adapted_modules(accelerator, tiny_model, tokenizer, blocks):
    from lmcollapse.settings import LoraConfig

    train, val = blocks
    from torch.utils.data import DataLoader

    val_loader = DataLoader([r["input_ids"] for r in val], batch_size=8, collate_fn=list)
    start_loss = evaluate(accelerator, tiny_model, val_loader, tokenizer.pad_token_id)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tcfg = TrainConfig(epochs=4, lr=3e-2, batch_size=16,
                       lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0,
                                       target_modules=["q_proj", "v_proj"]))
    model, log = train_generation(accelerator, tiny_model, tokenizer.pad_token_id, train, val,
                                  tcfg, seed=0)
    after = model.state_dict()
    assert set(after) == set(before)  # merged back into a plain model
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    assert min(r["val_loss"] for r in log) < start_loss - 0.1
    assert evaluate(accelerator, model, val_loader, tokenizer.pad_token_id) == pytest.approx(
        min(r["val_loss"] for r in log), rel=1e-6)


def test_top_k_zero_means_no_top_k_limit(tokenizer):
    """transformers fills a None top_k with its default (50): 0 must reach generate as 0."""
    from lmcollapse.generate import generation_config

    assert generation_config(GenerateConfig(strategy="sample", top_k=0), tokenizer).top_k == 0
    assert generation_config(GenerateConfig(strategy="sample", top_k=7), tokenizer).top_k == 7


def test_generation_never_writes_the_pad_token(accelerator, tiny_model, tokenizer, blocks,
                                               monkeypatch):
    """An untrained model gives the pad token some mass; a corpus must not hold padding."""
    import lmcollapse.generate as gen

    prompts = (blocks[0] * 10)[:150]
    gcfg = GenerateConfig(prompt_tokens=8, new_tokens=16, strategy="sample", batch_size=50)
    pad = tokenizer.pad_token_id
    assert gen.generation_config(gcfg, tokenizer).suppress_tokens == [pad]
    corpus = generate_corpus(accelerator, tiny_model, tokenizer, prompts, gcfg, seed=3,
                             generation=1)
    assert not any(pad in r["input_ids"] for r in corpus)
    # the same sampling without the suppression does write it (so the check above can fail)
    configured = gen.generation_config

    def without_suppression(*args, **kwargs):
        config = configured(*args, **kwargs)
        config.suppress_tokens = None
        return config

    monkeypatch.setattr(gen, "generation_config", without_suppression)
    corpus = generate_corpus(accelerator, tiny_model, tokenizer, prompts, gcfg, seed=3,
                             generation=1)
    assert any(pad in r["input_ids"] for r in corpus)
