"""The real-text study (configs/wikitext-laptop.yaml) in CI size, offline from local copies
of WikiText-2's validation and test splits; and the unigram baseline its perplexity is
read against."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmcollapse.config import load_config
from lmcollapse.loop import CollapseLoop
from lmcollapse.metrics.perplexity import unigram_nll
from lmcollapse.report import write as report

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"


def test_unigram_baseline_by_hand():
    # windows of 2, stride 2 over [5, 6, 5, 7]: (0,2), (2,4); each scores its second token
    nll, count = unigram_nll([[5, 5, 6]], [5, 6, 5, 7], 2, 2, vocab_size=3)
    # add-one: p(6) = (1 + 1) / (3 + 3), p(7) = (0 + 1) / 6
    assert count == 2 and nll == pytest.approx(math.log(3) + math.log(6))


@pytest.mark.slow
@pytest.mark.skipif(not WIKITEXT.is_dir(), reason=f"WikiText-2 files not at {WIKITEXT}")
def test_the_wikitext_study_in_ci_size(tmp_path):
    """The committed config, pointed at the local files and cut to 300 training blocks,
    one seed and one generation: every policy runs, generation 0 beats the unigram
    baseline, fresh draws never-seen text, and the words metric reads real words."""
    cfg = load_config(ROOT / "configs" / "wikitext-laptop.yaml", [
        "data.source=text", f"data.text.train={WIKITEXT / 'valid.txt'}",
        f"data.text.test={WIKITEXT / 'test.txt'}", f"output_dir={tmp_path}", "seeds=[0]",
        "generations=1", "data.max_train_blocks=300", "train.budget_steps=40",
        "metrics.perplexity.max_tokens=8000", "metrics.reference.sample_size=150",
        "metrics.diversity.sample_size=150", "metrics.diversity.self_bleu_sample=50",
        "metrics.tail.sample_size=150", "metrics.words.sample_size=150",
        "metrics.mauve.num_samples=150", "metrics.mauve.seeds=[1]", "log_level=WARNING"])
    CollapseLoop(cfg).run()
    run, seed = cfg.run_dir, cfg.run_dir / "seed_0"
    sizes = json.loads((run / "experiment.json").read_text())["sizes"]
    assert sizes["train_blocks"] == 300 and sizes["reserve_blocks"] >= round(0.1 * 300)
    human = json.loads((seed / "human" / "metrics.json").read_text())["values"]
    zero = json.loads((seed / "gen_00" / "metrics.json").read_text())["values"]
    assert zero["perplexity"] < 0.8 * human["unigram_perplexity"]
    # held-out human text uses the rarest band at about the rate of another human sample
    assert 0.5 < human["word_usage_1"] < 2.0 and human["invented_share"] < 0.2
    for cell in ("replace", "mix-0.1", "fresh-0.1", "accumulate"):
        values = json.loads((seed / cell / "gen_01" / "metrics.json").read_text())["values"]
        assert math.isfinite(values["perplexity"]) and 0 < values["mauve"] <= 1
    mix = pq.read_table(seed / "fresh-0.1" / "gen_01" / "mix.parquet").to_pylist()
    fresh = [r["sample_id"] for r in mix if r["origin"] == "human"]
    assert len(fresh) == 30 and all(s.startswith("human:reserve:") for s in fresh)
    corpus = pq.read_table(seed / "replace" / "gen_01" / "corpus.parquet").to_pylist()
    assert len(corpus) == 300
    # the report: the unigram baseline is the human row's, with no per-generation table or
    # plot of its own (no generation has it)
    res = report.write_report([run], columns=["perplexity", "unigram_perplexity"],
                              lineage_prompts=0, out=tmp_path / "report")
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    human_row = next(ln for ln in md.splitlines() if ln.startswith("| ref | human"))
    assert f"{human['unigram_perplexity']:.1f}" in human_row
    assert "(unigram_perplexity)" not in md and "Per generation: Held-out perplexity" in md
    assert not any("unigram" in p.name for p in res["files"])
