"""The two measurement rules of docs/design.md that every metric obeys: trained length (no model is
scored or asked to generate beyond the length it was trained on) and equal sizes (the human
row and every corpus row are measured on samples of the same size)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_config

from lmcollapse.data.markov import MarkovSource
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop


def _text_config(tmp_path: Path, *extra: str):
    """Held-out text == validation text, so held-out perplexity and validation loss score the
    same tokens."""
    docs = MarkovSource(vocab_size=60, branching=6, seed=5).sample_documents(160, 3, seed=2)
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("".join(d if d.endswith("\n") else d + "\n" for d in docs[:130]))
    val.write_text("".join(d if d.endswith("\n") else d + "\n" for d in docs[130:]))
    return tiny_config(tmp_path, "data.source=text", f"data.text.train={train}",
                       f"data.text.validation={val}", f"data.text.test={val}",
                       "data.block_tokens=32", "generate.prompt_tokens=8",
                       "generate.new_tokens=16", "metrics.names=[perplexity]",
                       "train.epochs=2", *extra)


@pytest.mark.slow
def test_perplexity_at_the_trained_length_is_the_validation_loss(tmp_path):
    """With non-overlapping windows of the trained length (the block length), held-out
    perplexity scores exactly what validation scores: the selected validation loss of the
    training log."""
    cfg = _text_config(tmp_path, "generations=0", "metrics.perplexity.stride=32")
    exp = CollapseLoop(cfg)
    exp.run()
    gen0 = cfg.run_dir / "seed_0" / "gen_00"
    log = [json.loads(x) for x in (gen0 / "train_log.jsonl").read_text().splitlines()]
    selected = next(r for r in log if r["selected"])
    metrics = json.loads((gen0 / "metrics.json").read_text())
    details = {**metrics["details"]["perplexity"], **metrics["sizes"]["perplexity"]}
    assert details["max_length"] == 32 == details["trained_length"]  # the default window
    # the validation blocks are the first len(validation) * 32 tokens of the same stream;
    # the stream's remainder (less than one block) is scored too, so compare on the blocks
    n_blocks = len(exp.setup.human.validation)
    assert details["test_tokens"] - n_blocks * 32 < 32
    # the same scorer on exactly the validation blocks' tokens, with the metric's windows
    from lmcollapse.metrics.perplexity import stream_perplexity
    from lmcollapse.models import load_model

    max_length, stride = cfg.metrics.perplexity.windows(exp.setup.trained_length, "x")
    nll, count = stream_perplexity(exp.acc, load_model(gen0 / "model"),
                                   exp.setup.human.test_stream[: n_blocks * 32], max_length,
                                   stride, exp.setup.tokenizer.pad_token_id, batch_size=16)
    assert count == n_blocks * 31  # every block's first token is context only, as in validation
    assert nll / count == pytest.approx(selected["val_loss"], rel=1e-6)
    # and the metric itself, on the whole test stream, is within the remainder's reach of it
    assert metrics["values"]["test_nll_per_token"] == pytest.approx(selected["val_loss"],
                                                                    rel=0.05)


def test_window_longer_than_the_trained_length_is_refused(tmp_path):
    cfg = _text_config(tmp_path, "metrics.perplexity.max_length=64")
    with pytest.raises(ConfigError, match=r"metrics.perplexity.max_length: 64 exceeds the "
                                          r"trained length of 32 tokens.*allowed: 1..32"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()  # refused before any work


def test_generation_beyond_the_trained_length_is_refused(tmp_path):
    cfg = _text_config(tmp_path, "generate.prompt_tokens=16", "generate.new_tokens=24")
    with pytest.raises(ConfigError, match=r"generate.prompt_tokens \+ generate.new_tokens "
                                          r"\(16 \+ 24\) must be <= 32 \(data.block_tokens"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


def test_sample_size_larger_than_the_test_split_allows_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, "metrics.tail.sample_size=100000")
    with pytest.raises(ConfigError, match=r"metrics.tail.sample_size: 100000 samples "
                                          r"requested.*allowed: 2\.\.\d+, or null"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


@pytest.fixture(scope="module")
def sized_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sizes")
    cfg = tiny_config(root, "generations=1", "policies=[replace]",
                      "metrics.names=[reference_perplexity,diversity,tail,mauve]",
                      "metrics.reference.sample_size=30", "metrics.diversity.sample_size=30",
                      "metrics.diversity.self_bleu_sample=20", "metrics.tail.sample_size=25",
                      "metrics.mauve.num_samples=30", "metrics.tail.draws=2")
    CollapseLoop(cfg).run()
    return cfg.run_dir / "seed_0"


@pytest.mark.slow
def test_human_and_corpus_rows_are_measured_at_equal_size(sized_run):
    rows = {"human": sized_run / "human", "gen_00": sized_run / "gen_00",
            "replace/gen_01": sized_run / "replace" / "gen_01"}
    for name, d in rows.items():
        details = json.loads((d / "metrics.json").read_text())["sizes"]
        assert details["reference_perplexity"]["samples"] == 30, name
        # what was drawn, in samples and in tokens (16 new tokens per sample)
        assert details["diversity"]["sample_size"] == 30, name
        assert details["diversity"]["sample_tokens"] == 30 * 16, name
        assert details["diversity"]["self_bleu_sample"] == 20, name
        assert details["tail"]["sample_size"] == 25 and details["tail"]["draws"] == 2, name
        assert details["tail"]["sample_tokens"] == 25 * 16, name
        assert details["mauve"]["n_p"] == details["mauve"]["n_q"] == 30, name
        # the per-sample scores behind the histogram: exactly the fixed sample, whatever the
        # size of the test split (the human row's cost follows the sample size)
        assert pq.read_table(d / "reference_scores.parquet").num_rows == 30, name


def test_pretrained_model_reinitialised_each_generation_has_the_block_length():
    """``model.init: scratch`` trains fresh weights on ``data.block_tokens``-token blocks
    every generation, so a pretrained architecture's long context does not apply."""
    from transformers import OPTConfig

    from lmcollapse.config import load_config
    from lmcollapse.preflight import trained_length

    arch = OPTConfig(max_position_embeddings=512)
    pretrained = load_config(None, ["model.source=pretrained", "data.block_tokens=128"])
    assert trained_length(pretrained, arch) == 512
    scratch_init = load_config(None, ["model.source=pretrained", "model.init=scratch",
                                      "data.block_tokens=128"])
    assert trained_length(scratch_init, arch) == 128
