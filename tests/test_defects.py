"""Defects found by trying to break lmcollapse (each test failed before its fix): a report
over a cut corpus, corpus samples too short to train on, temperatures that overflow the
logits, architectures transformers cannot run, two misleading messages, a human row whose
spread over seeds was zero by construction, a tail reference that overlapped its sample,
and generation 0 ranked as if it were several models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import measure_context, metric, tiny_config
from test_faults import assert_refused, finished  # noqa: F401  (the fixture)

from lmcollapse import models
from lmcollapse.data.blocks import prepare_human_data
from lmcollapse.errors import ConfigError, StepError
from lmcollapse.loop import CollapseLoop
from lmcollapse.metrics import tail as tail_module
from lmcollapse.report.write import write_report
from lmcollapse.settings import ScratchModelConfig

# --- 1. the report reads every file as it reads metrics.json --------------------------------


@pytest.mark.slow
def test_the_report_skips_a_cut_corpus_and_writes_the_rest(finished, tmp_path):  # noqa: F811
    cfg, _ = finished
    corpus = cfg.run_dir / "seed_0" / "gen_00" / "corpus.parquet"
    corpus.write_bytes(corpus.read_bytes()[: corpus.stat().st_size // 2])
    out = tmp_path / "report"
    md = write_report([cfg.run_dir], out=out, plots=False)["markdown"]
    assert "Skipped (could not be read" in md and f"{corpus} has" in md
    assert (out / "leaderboard.html").is_file() and (out / "lineages.md").is_file()
    lineages = (out / "lineages.md").read_text()
    assert "replace" in lineages  # generation 1 of replace is still shown


@pytest.mark.slow
def test_the_report_skips_an_unrecorded_unreadable_corpus(finished, tmp_path):  # noqa: F811
    """A file no manifest records (copied in by hand) that pyarrow cannot read."""
    cfg, _ = finished
    gen = cfg.run_dir / "seed_0" / "replace" / "gen_01"
    manifest = gen / ".checksums.jsonl"
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                                if '"corpus.parquet"' not in line))
    (gen / "corpus.parquet").write_bytes(b"PAR1 not a parquet file")
    md = write_report([cfg.run_dir], out=tmp_path / "report", plots=False)["markdown"]
    assert f"{gen / 'corpus.parquet'}: not readable" in md


# --- 2-4. what cannot work is refused before any work ---------------------------------------


@pytest.mark.parametrize("overrides, says", [
    (["generate.new_tokens=1"], "generate.new_tokens: a corpus sample holds"),
    (["data.block_tokens=2", "generate.prompt_tokens=1", "generate.new_tokens=1"],
     "generate.new_tokens: a corpus sample holds"),
    (["generate.temperature=1e-300"], "generate.temperature: must be >= 0.01"),
    (["generate.temperature=0.001"], "generate.temperature: must be >= 0.01"),
    (["model.scratch.hidden_size=12", "model.scratch.num_heads=4"],
     "rotary position embedding needs an even number"),
    (["model.scratch.hidden_size=10", "model.scratch.num_heads=4"],
     "must be divisible by model.scratch.num_heads"),
])
def test_unusable_settings_are_refused_before_any_work(tmp_path, overrides, says, capsys):
    assert says in assert_refused(tmp_path, overrides, capsys)


def test_a_kept_prompt_makes_a_one_token_continuation_a_sample():
    from lmcollapse.config import load_config

    cfg = load_config(None, ["generate.new_tokens=1", "generate.keep_prompt=true"])
    assert cfg.generate.sample_tokens == 65


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_one_layer_of_the_architecture_is_run(tokenizer, arch):
    """transformers builds an odd llama head size and fails only in its forward pass: the
    check runs one layer on two tokens; a good architecture of every kind passes."""
    models.check_architecture(models.scratch_config(ScratchModelConfig(arch=arch, hidden_size=16,
                                                         num_heads=4), tokenizer))
    from transformers import LlamaConfig

    bad = LlamaConfig(vocab_size=300, hidden_size=12, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=32, num_hidden_layers=1)
    with pytest.raises(ConfigError, match="model.scratch: transformers cannot run"):
        models.check_architecture(bad)


# --- 5. two messages that named the wrong thing ---------------------------------------------


def test_one_train_record_without_validation_says_nothing_is_left(tmp_path, capsys):
    one_line = tmp_path / "train.txt"
    one_line.write_text("a huge line " * 5000 + "\n")
    (tmp_path / "test.txt").write_text("some held-out text\n" * 50)
    err = assert_refused(tmp_path, ["data.source=text", f"data.text.train={one_line}",
                                    f"data.text.test={tmp_path / 'test.txt'}"], capsys)
    assert "data.text.validation: not set" in err and "nothing would be left to train on" in err
    assert "tokenizer" not in err


@pytest.mark.slow
def test_an_empty_train_marker_names_the_missing_model(finished):  # noqa: F811
    cfg, grown = finished
    gen = cfg.run_dir / "seed_0" / "accumulate" / "gen_01"
    gen.mkdir(parents=True)
    (gen / "train.done").write_text("")
    with pytest.raises(StepError, match=rf"{gen / 'model'} is missing: it cannot be used\. "
                                        rf"Restore it, or delete {gen}"):
        CollapseLoop(grown).run()
    assert sorted(p.name for p in gen.iterdir()) == ["train.done"]  # nothing else written


# --- 6, 7, and generations: 0 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory) -> Path:
    """Two seeds, generation 0 only, three policies that share it."""
    root = tmp_path_factory.mktemp("zero")
    cfg = tiny_config(root, "seeds=[0,1]", "generations=0",
                      "metrics.names=[perplexity,reference_perplexity,diversity,tail,mauve]",
                      "metrics.reference.sample_size=20", "metrics.diversity.sample_size=20",
                      "metrics.tail.sample_size=20", "metrics.mauve.num_samples=20")
    CollapseLoop(cfg).run()
    return cfg.run_dir


@pytest.mark.slow
def test_the_human_row_draws_its_samples_per_run_seed(zero_run):
    rows = [json.loads((zero_run / f"seed_{s}" / "human" / "metrics.json").read_text())
            for s in (0, 1)]
    for key in ("ref_ppl_p50", "distinct_4", "self_bleu", "tail_type_survival",
                "kl_human_corpus", "mauve"):
        assert rows[0]["values"][key] != rows[1]["values"][key], key
    lb = write_report([zero_run], plots=False, lineage_prompts=0)["leaderboard"]
    human = lb.rows[0]
    assert human.policy == "human" and human.cells["distinct_4"].stat.std > 0


def _human(run: Path, *overrides: str):
    """The tiny config, the run's tokenizer and its human data (as the loop prepares them)."""
    from lmcollapse.data.base import make_source
    from lmcollapse.models import load_tokenizer

    cfg = tiny_config(run.parent, *overrides)
    tok = load_tokenizer(cfg.model, saved=run / "tokenizer")
    return cfg, tok, prepare_human_data(tok, make_source(cfg.data).load(), cfg.data)


def test_human_draws_depend_on_the_run_seed_only_through_the_context(zero_run, accelerator):
    cfg, tok, human = _human(zero_run, "metrics.tail.sample_size=20")
    ctx = {s: measure_context(cfg, accelerator, tok, human, zero_run, seed=s) for s in (0, 1, 2)}
    draws = {s: [c.tobytes() for c in ctx[s].human_chunks(10, 7)] for s in ctx}
    assert draws[0] != draws[1] != draws[2]
    again = measure_context(cfg, accelerator, tok, human, zero_run, seed=1)
    assert [c.tobytes() for c in again.human_chunks(10, 7)] == draws[1]  # deterministic


def test_the_human_tail_row_compares_disjoint_samples(zero_run, accelerator, monkeypatch):
    cfg, tok, human = _human(zero_run, "metrics.tail.sample_size=null")
    ctx = measure_context(cfg, accelerator, tok, human, zero_run, seed=0)
    chunks = len(ctx.human_chunks(None, 0))
    pairs = []
    real = tail_module.tail_metrics
    monkeypatch.setattr(tail_module, "tail_metrics",
                        lambda train, sample, ref, *a: pairs.append((sample, ref)) or real(
                            train, sample, ref, *a))
    tail = metric(cfg, "tail")
    m = tail.human_reference(ctx)
    assert len(pairs) == cfg.metrics.tail.draws and m.sizes["sample_size"] == chunks // 2
    for sample, ref in pairs:
        assert len(sample) == len(ref) == chunks // 2
        # chunks are views of the test stream: where each starts tells them apart (two
        # chunks may hold the same tokens)
        def starts(chunks):
            return {c.__array_interface__["data"][0] for c in chunks}

        assert len(starts(sample)) == len(sample) and not starts(sample) & starts(ref)
    # a size that cannot give two disjoint samples is refused, naming the field
    too_big = tiny_config(zero_run.parent, f"metrics.tail.sample_size={chunks // 2 + 1}")
    with pytest.raises(ConfigError, match=rf"metrics.tail.sample_size: {chunks // 2 + 1} "
                                          rf"samples requested.*allowed: 2\.\.{chunks // 2}"):
        metric(too_big, "tail").preflight(ctx)


def test_generation_zero_is_one_row_and_says_so(zero_run):
    res = write_report([zero_run], plots=False, lineage_prompts=0)
    labels = [r.label for r in res["leaderboard"].rows]
    assert labels == ["human", "replace = mix-0.1 = accumulate"]
    assert "no policy has acted yet" in res["markdown"]
    assert list(res["generation_table"]) == ["replace = mix-0.1 = accumulate"]
    values = {s: json.loads((zero_run / f"seed_{s}" / "gen_00" / "metrics.json").read_text())
              ["values"]["perplexity"] for s in (0, 1)}
    row = res["leaderboard"].rows[1]
    assert row.cells["perplexity"].stat.mean == pytest.approx(np.mean(list(values.values())))
