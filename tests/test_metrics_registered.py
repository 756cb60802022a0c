"""The registered metrics against independent computations, and their preflight errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import measure_context, metric, tiny_config

from lmcollapse.data.base import load_human_text, make_source
from lmcollapse.data.blocks import prepare_human_data
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.metrics.base import MeasureContext
from lmcollapse.metrics.reference import per_sample_perplexity
from lmcollapse.registry import METRICS


def test_every_metric_declares_name_display_and_direction(tmp_path):
    cfg = tiny_config(tmp_path)
    assert set(METRICS.names()) >= {"perplexity", "reference_perplexity", "diversity", "tail",
                                    "mauve", "ground_truth"}
    for name in METRICS.names():
        part = metric(cfg, name)
        assert part.display_name and part.name == name
        assert part.higher_is_better in (True, False, None)
        assert part.columns, name  # every metric puts at least one value on the leaderboard


def test_per_sample_perplexity_matches_model_loss(accelerator, tiny_model, tokenizer, texts):
    seqs = [tokenizer(t)["input_ids"][:n] for t, n in zip(texts[:5], (9, 20, 33, 2, 15),
                                                          strict=True)]
    got = per_sample_perplexity(accelerator, tiny_model, seqs, tokenizer.pad_token_id,
                                batch_size=2)
    for s, value in zip(seqs, got, strict=True):
        with torch.no_grad():
            loss = tiny_model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss
        assert value == pytest.approx(math.exp(loss.item()), rel=1e-5)


@pytest.mark.parametrize("window", [None, 8])
def test_ground_truth_matches_token_by_token_scoring(accelerator, tmp_path, window):
    """Excess log-loss per word against log p from the transition matrix and log q from one
    forward pass per token (no batching, no masking). With a trained length of 8 and stride
    1, every token is scored with at most the 7 tokens before it: never past the trained
    length, and as much context as that allows."""
    extra = [] if window is None else [f"metrics.ground_truth.max_length={window}",
                                       "metrics.ground_truth.stride=1"]
    cfg = tiny_config(tmp_path, "data.synthetic.test_docs=3",
                      "data.synthetic.sentences_per_doc=2",
                      "model.scratch.max_position_embeddings=1024", *extra)
    source = make_source(cfg.data).truth()
    from lmcollapse.models import load_tokenizer, model_config, random_model

    texts = load_human_text(cfg.data)
    tok = load_tokenizer(cfg.model, texts["train"])
    human = prepare_human_data(tok, texts, cfg.data)
    model = random_model(model_config(cfg.model, tok), seed=0).eval()
    ctx = MeasureContext(accelerator=accelerator, tokenizer=tok, human=human,
                         trained_length=window or 1024, sample_tokens=cfg.generate.sample_tokens,
                         sample_tokens_from="generate.new_tokens", reference_model=lambda: model,
                         seed_dir=tmp_path, out_dir=tmp_path, truth=source, generation=1,
                         model=model)
    truth = METRICS.get("ground_truth")(cfg.metrics.ground_truth)
    truth.preflight(ctx)
    out = truth.compute(ctx).values
    log_p = log_q = 0.0
    words = 0
    index = source.word_to_index
    for doc in texts["test"]:
        doc = doc.rstrip("\n")
        prev = source.end_index
        for w in doc.split():
            log_p += math.log(source.transition_matrix[prev, index[w]])
            prev = index[w]
        words += len(doc.split())
        ids = tok("\n", add_special_tokens=False)["input_ids"] + tok(
            doc, add_special_tokens=False)["input_ids"]
        assert window is None or len(ids) > 3 * window  # the windows really slide
        for t in range(1, len(ids)):
            context = ids[:t] if window is None else ids[max(0, t - (window - 1)):t]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([context])).logits[0, -1]
            log_q += torch.log_softmax(logits.double(), -1)[ids[t]].item()
    assert out["source_nats_per_word"] == pytest.approx(-log_p / words, rel=1e-9)
    assert out["model_nats_per_word"] == pytest.approx(-log_q / words, rel=1e-5)
    assert out["excess_nats_per_word"] == pytest.approx((log_p - log_q) / words, rel=1e-5)
    assert out["source_entropy_rate"] == pytest.approx(source.entropy_rate())
    # an untrained model is far worse than the source
    assert out["excess_nats_per_word"] > 1.0


def test_ground_truth_needs_the_synthetic_source(tmp_path):
    cfg = tiny_config(tmp_path, "data.source=text",
                      f"data.text.train={tmp_path / 'train.txt'}",
                      f"data.text.test={tmp_path / 'test.txt'}")
    words = make_source(tiny_config(tmp_path).data).truth().sample_documents(150, 4, seed=0)
    (tmp_path / "train.txt").write_text("\n".join(words[:120]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(words[120:]) + "\n")
    with pytest.raises(ConfigError, match="ground_truth.*data.source: synthetic"):
        CollapseLoop(cfg).run()
    assert not (tmp_path / "quickstart").exists()


def test_unloadable_featurizer_fails_before_any_work(tmp_path):
    cfg = tiny_config(tmp_path, "metrics.mauve.featurizer=/no/such/featurizer")
    with pytest.raises(ConfigError, match="metrics.mauve.featurizer: cannot load"):
        CollapseLoop(cfg).run()
    assert not (tmp_path / "quickstart").exists()


def test_diversity_human_and_corpus_samples_have_equal_size(tmp_path, accelerator):
    cfg = tiny_config(tmp_path)
    from lmcollapse.models import load_tokenizer

    texts = load_human_text(cfg.data)
    tok = load_tokenizer(cfg.model, texts["train"])
    human = prepare_human_data(tok, texts, cfg.data)
    # a corpus holds one sample per human training block, as the loop writes it
    corpus = [{"input_ids": np.arange(16) % 7 + 2, "sample_id": f"gen_1:{i}"}
              for i in range(len(human.train))]
    ctx = measure_context(cfg, accelerator, tok, human, tmp_path, generation=1, corpus=corpus)
    diversity = metric(cfg, "diversity")
    got, ref = diversity.compute(ctx), diversity.human_reference(ctx)
    assert got.sizes["sample_size"] == ref.sizes["sample_size"]
    # a corpus of one repeated sample: 7 distinct unigrams (no special token), Self-BLEU 1
    assert got.values["distinct_1"] == pytest.approx(7 / (16 * got.sizes["sample_size"]))
    assert got.values["self_bleu"] == pytest.approx(1.0)
    assert ref.values["distinct_1"] > got.values["distinct_1"]
    assert ref.values["self_bleu"] < 0.9


def test_special_tokens_are_left_out_of_word_statistics(tmp_path, accelerator):
    """A pretrained tokenizer puts BOS/EOS into human text (OPT: ``</s>`` before every
    record) but a corpus never holds them; tail and diversity count words only, and human
    samples are cut from the test text without them (as many words as a corpus sample), so
    adding special tokens to the human train blocks, the test text and the corpus changes
    no value of a corpus row or of the human row."""
    cfg = tiny_config(tmp_path)
    from lmcollapse.models import load_tokenizer

    texts = load_human_text(cfg.data)
    tok = load_tokenizer(cfg.model, texts["train"])
    plain = prepare_human_data(tok, texts, cfg.data)
    marked = prepare_human_data(tok, texts, cfg.data)
    specials = [tok.eos_token_id, tok.pad_token_id]
    marked.train = [{**r, "input_ids": [specials[i % 2], *r["input_ids"]]}
                    for i, r in enumerate(plain.train)]
    marked.test_stream = [t for i, x in enumerate(plain.test_stream)
                          for t in ((specials[0], x) if i % 10 == 0 else (x,))]
    rng = np.random.default_rng(0)
    corpus = [{"sample_id": f"gen_1:{i}", "input_ids": rng.integers(2, 150, 16)}
              for i in range(len(plain.train))]
    corpus_marked = [{**r, "input_ids": np.r_[specials[0], r["input_ids"], specials[1]]}
                     for r in corpus]
    for name in ("tail", "diversity"):
        part = metric(cfg, name)
        ctxs = [measure_context(cfg, accelerator, tok, h, tmp_path, generation=1, corpus=c)
                for h, c in ((plain, corpus), (marked, corpus_marked))]
        for row in ("compute", "human_reference"):
            got = [getattr(part, row)(c) for c in ctxs]
            assert got[0].values == got[1].values, (name, row)
            # human and corpus samples hold the same number of tokens
            assert got[1].sizes["sample_tokens"] == got[1].sizes["sample_size"] * 16, (name, row)
    ctx = measure_context(cfg, accelerator, tok, marked, tmp_path)
    assert ctx.content([[specials[0], 5, specials[1], 7]])[0].tolist() == [5, 7]
