"""Curation: each rule keeps exactly the samples it claims (hand-made cases), the oracle
scorer is the source's exact log p, and a curating cell in the loop feeds back what its
rule kept (and the oracle raises the exact log p of what is fed back)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import text_source, tiny_config

from lmcollapse.curation import best_of_groups, candidates_per_prompt, select
from lmcollapse.data.base import load_human_text
from lmcollapse.data.blocks import prepare_human_data
from lmcollapse.data.markov import MarkovSource
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.report import compute, load

SCORES = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])


def test_best_worst_and_tails_keep_what_they_claim():
    kept, repeats = select(SCORES, "best", 3)
    assert kept.tolist() == [4, 5, 7] and repeats == 0  # 5, 9, 6
    assert select(SCORES, "worst", 3)[0].tolist() == [1, 3, 6]  # 1, 1, 2
    assert select(SCORES, "worst", 1)[0].tolist() == [1]  # a tie goes to the earlier one
    assert select(SCORES, "tails", 4)[0].tolist() == [1, 3, 5, 7]  # 1, 1 and 9, 6
    assert select(SCORES, "tails", 3)[0].tolist() == [1, 5, 7]  # 3 // 2 low, the rest high
    with pytest.raises(ValueError, match="cannot keep 9 of 8"):
        select(SCORES, "best", 9)


def test_threshold_thins_tops_up_or_refuses():
    rng = np.random.default_rng(0)
    kept, repeats = select(SCORES, "threshold", 3, threshold=4.0, rng=rng)
    assert repeats == 0 and len(kept) == 3 and set(kept.tolist()) <= {2, 4, 5, 7}
    kept, repeats = select(SCORES, "threshold", 3, threshold=6.0, rng=rng)
    assert repeats == 1 and sorted(set(kept.tolist())) == [5, 7] and len(kept) == 3
    with pytest.raises(ValueError, match="no candidate scores >= 10"):
        select(SCORES, "threshold", 3, threshold=10.0, rng=rng)


def test_best_of_n_keeps_each_prompts_best():
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert best_of_groups(SCORES, groups).tolist() == [0, 2, 5, 7]
    assert best_of_groups([1.0, 1.0], [0, 0]).tolist() == [0]


def test_candidates_per_prompt():
    assert candidates_per_prompt("best", 0.5, 2, 1) == 2
    assert candidates_per_prompt("tails", 0.25, 2, 1) == 4
    assert candidates_per_prompt("threshold", 0.5, 3, 1) == 3
    assert candidates_per_prompt("none", 0.5, 2, 4) == 4
    assert candidates_per_prompt("none", 0.5, 2, 1) == 1


def test_continuation_log_prob_is_the_chain_rule():
    source = MarkovSource(vocab_size=40, branching=5, seed=2)
    doc = source.sample_documents(1, 3, seed=1)[0]
    words = doc.split()
    for cut in (1, 4, len(words) - 1):
        context, rest = " ".join(words[:cut]) + " ", " ".join(words[cut:]) + " "
        log_p, n = source.continuation_log_prob(context, rest)
        assert n == len(words) - cut
        assert log_p == pytest.approx(source.log_prob(doc) - source.log_prob(" ".join(
            words[:cut])), abs=1e-9)
    # a context that ends inside a word: the continuation's first piece completes it
    context = " ".join(words[:3]) + " " + words[3][:1]
    log_p, n = source.continuation_log_prob(context, words[3][1:] + " " + words[4] + " ")
    assert n == 2
    assert log_p == pytest.approx(source.log_prob(" ".join(words[:5]))
                                  - source.log_prob(" ".join(words[:3])), abs=1e-9)
    # ... but where the continuation ends the piece with a space, the piece (no word of
    # the source) is the continuation's first word: an unknown word, -inf
    piece = words[3][:1] if words[3][:1] not in source.word_to_index else words[3][:2]
    assert piece not in source.word_to_index
    context = " ".join(words[:3]) + " " + piece
    assert source.continuation_log_prob(context, " " + words[4] + " ") == (-np.inf, 2)
    floored, n = source.continuation_log_prob(context, " " + words[4] + " ", 1e-6)
    assert n == 2 and floored == pytest.approx(2 * np.log(1e-6))  # into and out of it
    # a context cut at a word's end, continued after a space: that word is the context's
    context = " ".join(words[:4])
    log_p, n = source.continuation_log_prob(context, " " + words[4] + " ")
    assert n == 1 and log_p == pytest.approx(source.log_prob(" ".join(words[:5]))
                                             - source.log_prob(" ".join(words[:4])), abs=1e-9)
    # a last word the text may have cut is not scored (nothing complete: -inf, ranked
    # last); an unknown word scores -inf
    assert source.continuation_log_prob(" ".join(words[:3]) + " ", words[3]) == (-np.inf, 0)
    assert source.continuation_log_prob(words[0] + " ", "zzzz ")[0] == -np.inf
    # with a floor, each word the source cannot produce there costs log(floor): the
    # unknown word and the word after it
    floored, n = source.continuation_log_prob(words[0] + " ", f"zzzz {words[1]} ", 1e-6)
    assert n == 2 and floored == pytest.approx(2 * np.log(1e-6))


def test_bad_curation_settings_are_refused_before_any_work(tmp_path):
    for bad, match in (
            ("{name: replace, curate: {rule: best, best_of: 4}}", r"curate: best_of"),
            ("{name: replace, curate: {rule: threshold}}", r"curate\.threshold"),
            ("{name: replace, curate: {rule: best, scorer: oracel}}",
             r"curate\.scorer\.name: unknown scorer 'oracel'; did you mean 'oracle'"),
            ("{name: replace, curate: {rule: best, scorer: {name: loglik, modle: x}}}",
             r"curate\.scorer\.modle: scorer 'loglik' takes no setting"),
            ("{name: replace, curate: {rule: best, fraction: 0}}", r"curate\.fraction")):
        with pytest.raises(ConfigError, match=match):
            tiny_config(tmp_path, f"policies=[{bad}]")
    cfg = tiny_config(tmp_path, *text_source(tmp_path), "metrics.names=[perplexity]",
                      "policies=[{name: replace, curate: {rule: best, scorer: oracle}}]")
    with pytest.raises(ConfigError, match="'oracle' needs a data source"):
        CollapseLoop(cfg).run()
    assert not (tmp_path / "quickstart").exists()


@pytest.fixture(scope="module")
def curated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation")
    cfg = tiny_config(root, "generations=1", "train.epochs=6", "train.lr=1e-2",
                      "metrics.names=[perplexity,diversity,curation]",
                      "policies=[{name: replace, label: oracle-best, "
                      "curate: {rule: best, fraction: 0.5, scorer: oracle}}, "
                      "{name: replace, label: gen0-best-of-3, curate: {best_of: 3}}]")
    CollapseLoop(cfg).run()
    return cfg


@pytest.mark.slow
def test_a_curating_cell_feeds_back_what_its_rule_keeps(curated_run):
    seed = curated_run.run_dir / "seed_0"
    for k in (0, 1):
        d = seed / "oracle-best" / f"gen_{k:02d}"
        cands = pq.read_table(d / "candidates.parquet").to_pylist()
        corpus = pq.read_table(d / "corpus.parquet").to_pylist()
        n = len(corpus)
        assert len(cands) == 2 * n  # round(1 / 0.5) continuations per prompt
        top = sorted(range(len(cands)), key=lambda i: (-cands[i]["score"], i))[:n]
        assert sorted(c["sample_id"] for c in corpus) == sorted(cands[i]["sample_id"]
                                                                for i in top)
        assert sum(c["kept"] for c in cands) == n
        kept = [c["score"] for c in cands if c["kept"]]
        assert min(kept) >= max(c["score"] for c in cands if not c["kept"])
        summary = json.loads((d / "curation.json").read_text())
        assert summary["kept_fraction"] == 0.5 and summary["per_prompt"] == 2
        assert summary["score_kept"]["n"] == n == summary["score_dropped"]["n"]
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["values"]["kept_fraction"] == 0.5
        assert metrics["values"]["generated_per_kept"] == pytest.approx(2.0)
    # best of 3: one sample per prompt, each its prompt's best under generation 0
    d = seed / "gen0-best-of-3" / "gen_01"
    cands = pq.read_table(d / "candidates.parquet").to_pylist()
    corpus = pq.read_table(d / "corpus.parquet").to_pylist()
    assert [c["prompt_id"] for c in corpus] == sorted({c["prompt_id"] for c in cands})
    best = {}
    for c in cands:
        if c["prompt_id"] not in best or c["score"] > best[c["prompt_id"]]["score"]:
            best[c["prompt_id"]] = c
    assert [c["sample_id"] for c in corpus] == [best[p]["sample_id"] for p in sorted(best)]


def test_the_oracle_raises_the_exact_log_p_of_what_is_fed_back(curated_run):
    """The first candidate of every prompt is the uncurated corpus (same seed); the
    oracle's score is the source's exact log p per word, recomputed here from the decoded
    text; the kept half has a higher exact log p than the uncurated corpus."""
    from lmcollapse.models import load_tokenizer

    seed = curated_run.run_dir / "seed_0"
    shared = pq.read_table(seed / "gen_00" / "corpus.parquet").to_pylist()
    cands = pq.read_table(seed / "oracle-best" / "gen_00" / "candidates.parquet").to_pylist()
    assert [c["sample_id"] for c in cands[:len(shared)]] == [r["sample_id"] for r in shared]
    tok = load_tokenizer(curated_run.model, saved=curated_run.run_dir / "tokenizer")
    source = MarkovSource(vocab_size=60, branching=6, seed=0)  # tiny_config's source
    blocks = prepare_human_data(tok, load_human_text(curated_run.data),
                                curated_run.data).train  # the prompts
    prompt_len = curated_run.generate.prompt_tokens
    floor = curated_run.policies[0].curate.scorer.floor

    def exact(row) -> float:
        prompt = list(blocks[row["prompt_id"]]["input_ids"][:prompt_len])
        context = tok.decode(prompt)
        log_p, words = source.continuation_log_prob(
            context, tok.decode(prompt + list(row["input_ids"]))[len(context):], floor)
        return log_p / max(words, 1)

    by_id = {c["sample_id"]: c["score"] for c in cands}
    for row in shared[:20]:
        assert exact(row) == pytest.approx(by_id[row["sample_id"]])
    fed_back = pq.read_table(seed / "oracle-best" / "gen_00" / "corpus.parquet").to_pylist()
    ours = np.array([exact(r) for r in fed_back])
    theirs = np.array([exact(r) for r in shared])
    # what is fed back dominates the uncurated corpus: its i-th most likely sample is at
    # least as likely as the uncurated i-th (-inf: the source cannot write it), and the
    # top of it is strictly more likely
    assert len(ours) == len(theirs)
    assert np.all(np.sort(ours) >= np.sort(theirs))
    assert np.sort(ours)[::-1][:10].mean() > np.sort(theirs)[::-1][:10].mean()
    assert ours.mean() > theirs.mean()
    # and on the strict exact log p (no floor): more samples the source can write at all
    floor = 0.0
    assert np.isfinite([exact(r) for r in fed_back]).sum() > np.isfinite(
        [exact(r) for r in shared]).sum()
    # the report reads each cell's own generation 0: corpus metrics differ, the model not
    exps = load.load_runs([curated_run.run_dir])
    exp = exps[0]
    shared_row = {s: r["values"] for (p, s, g), r in exp.records.items() if p is None and g == 0}
    own = exp.values("oracle-best", "distinct_4", 0)
    assert exp.values("oracle-best", "perplexity", 0) == {
        s: v["perplexity"] for s, v in shared_row.items()}
    assert own and own != {s: v["distinct_4"] for s, v in shared_row.items()}
    lb = compute.leaderboard(exps)
    assert "kept_fraction" in lb.columns


def test_loglik_scorer_with_a_model_directory_matches_gen0(accelerator, tiny_model, tokenizer,
                                                           texts, tmp_path):
    """An external verifier given as a local directory scores exactly as the same weights
    given as the generation-0 model; per token is the summed score over the continuation's
    token count (its prompt is context only)."""
    from lmcollapse.data.blocks import human_rows
    from lmcollapse.scorers.base import ScoreContext, make_scorer
    from lmcollapse.settings import ScorerSpec, build

    tiny_model.save_pretrained(tmp_path / "verifier")
    stream = [t for text in texts[:40] for t in tokenizer(text + "\n")["input_ids"]]
    prompts = human_rows(stream, 12, "train")[:6]
    samples = [{"prompt_id": i, "sample_id": f"gen_1:{i}", "input_ids": p["input_ids"][4:12]}
               for i, p in enumerate(prompts)]
    ctx = ScoreContext(accelerator=accelerator, tokenizer=tokenizer, prompts=prompts,
                       prompt_tokens=4, generator=lambda: tiny_model,
                       reference_model=lambda: tiny_model)
    by_gen0 = make_scorer(build(ScorerSpec, {"name": "loglik"}, "s")).score(ctx, samples)
    external = build(ScorerSpec, {"name": "loglik", "model": str(tmp_path / "verifier")}, "s")
    by_dir = make_scorer(external).score(ctx, samples)
    assert np.allclose(by_gen0, by_dir, rtol=1e-5)
    summed = make_scorer(build(ScorerSpec, {"name": "loglik", "per_token": False}, "s"))
    assert np.allclose(summed.score(ctx, samples) / 8, by_gen0, rtol=1e-6)
