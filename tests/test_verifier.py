"""An imperfect verifier: a noisy copy of the synthetic source with a stated quality (its
KL rate from the source), the scorer that curates by it, and the metric of how far each
generation has moved toward it."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tiny_config

from lmcollapse.config import load_config
from lmcollapse.data.markov import MarkovSource, kl_rate, perturbed
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.models import load_tokenizer


def test_a_perturbed_source_keeps_the_support_and_states_its_distance():
    source = MarkovSource(vocab_size=60, branching=6, seed=0)
    same = perturbed(source, 0.0, 3)
    np.testing.assert_allclose(same.transition_matrix, source.transition_matrix, atol=1e-15)
    assert kl_rate(source, same) == pytest.approx(0.0, abs=1e-12)
    near, far = perturbed(source, 0.5, 3), perturbed(source, 2.0, 3)
    for v in (near, far):
        assert np.array_equal(v.transition_matrix > 0, source.transition_matrix > 0)
        np.testing.assert_allclose(v.transition_matrix.sum(axis=1), 1.0, atol=1e-12)
    assert 0 < kl_rate(source, near) < kl_rate(source, far)
    # the KL rate by hand: sum_i pi_i KL(P_i || Q_i), row by row
    P, Q, pi = source.transition_matrix, near.transition_matrix, source.stationary
    by_hand = sum(pi[i] * sum(P[i, j] * math.log(P[i, j] / Q[i, j])
                              for j in range(len(P)) if P[i, j] > 0) for i in range(len(P)))
    assert kl_rate(source, near) == pytest.approx(by_hand, rel=1e-12)
    # text drawn from the source is, per word, less likely under the verifier by about KL
    docs = source.sample_documents(400, 5, seed=1)
    gap = sum(near.log_prob(d) - source.log_prob(d) for d in docs) / sum(
        source.n_words(d) for d in docs)
    assert gap == pytest.approx(-kl_rate(source, near), rel=0.15)


@pytest.mark.parametrize(("override", "field"), [
    ("policies=[{name: replace, curate: {rule: best, scorer: {name: verifier, noise: -1}}}]",
     r"curate\.scorer\.noise"),
    ("metrics.verifier.noise=11", r"metrics\.verifier\.noise"),
])
def test_bad_verifier_settings_are_refused(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, [override])


def test_a_verifier_needs_the_markov_source(tmp_path):
    """A mixture of modes is not one chain to copy: refused at set-up, nothing written."""
    cfg = tiny_config(tmp_path, "data.synthetic.modes.shares=[0.9,0.1]",
                      "data.synthetic.modes.words=6", "metrics.names=[verifier]")
    with pytest.raises(ConfigError, match=r"metrics\.verifier: a verifier is a noisy copy"):
        CollapseLoop(cfg).run()
    assert not (cfg.run_dir / "seed_0").exists()


@pytest.mark.slow
def test_curation_by_a_verifier_and_the_measure_toward_it(tmp_path):
    """The verifier's scores are its chain's exact log p per word (noise 0: the oracle's);
    the metric's human row is about minus the stated KL rate, and a generation's values
    match a recomputation from its corpus (whether curation moves generations toward the
    verifier is the study's claim, over seeds: docs/studies.md)."""
    scorer = "{name: verifier, noise: 1.0, seed: 4}"
    cfg = tiny_config(tmp_path, "generations=1", "train.epochs=6", "train.lr=1e-2",
                      "metrics.names=[perplexity,verifier]",
                      "metrics.verifier.noise=1.0", "metrics.verifier.seed=4",
                      "policies=[replace, {name: replace, label: by-verifier, "
                      f"curate: {{rule: best, fraction: 0.5, scorer: {scorer}}}}}, "
                      "{name: replace, label: by-oracle, curate: {rule: best, fraction: 0.5, "
                      "scorer: {name: verifier, noise: 0.0}}}]")
    loop = CollapseLoop(cfg)
    loop.run()
    seed = cfg.run_dir / "seed_0"
    source = MarkovSource(vocab_size=60, branching=6, seed=0)  # tiny_config's source
    chain = perturbed(source, 1.0, 4)
    tok = load_tokenizer(cfg.model, saved=cfg.run_dir / "tokenizer")
    blocks, length = loop.setup.human.train, cfg.generate.prompt_tokens

    def exact(chain_, row):
        prompt = [int(t) for t in blocks[row["prompt_id"]]["input_ids"][:length]]
        context = tok.decode(prompt)
        log_p, words = chain_.continuation_log_prob(
            context, tok.decode(prompt + [int(t) for t in row["input_ids"]])[len(context):],
            1e-6)
        return log_p / max(words, 1)

    # the first candidate of every prompt is the shared, uncurated corpus 0 (same seed)
    shared_rows = pq.read_table(seed / "gen_00" / "corpus.parquet").to_pylist()
    for label, chain_ in (("by-verifier", chain), ("by-oracle", source)):
        scores = {c["sample_id"]: c["score"] for c in pq.read_table(
            seed / label / "gen_00" / "candidates.parquet").to_pylist()}
        for row in shared_rows[:20]:
            assert scores[row["sample_id"]] == pytest.approx(exact(chain_, row))
    human = json.loads((seed / "human" / "metrics.json").read_text())
    kl = human["details"]["verifier"]["kl_rate_truth_to_verifier"]
    assert kl == pytest.approx(kl_rate(source, chain), rel=1e-12)
    assert human["values"]["verifier_gap"] == pytest.approx(-kl, rel=0.5)  # 20 test documents
    # the metric of a generation, recomputed from its corpus with the two chains
    corpus = pq.read_table(seed / "by-verifier" / "gen_01" / "corpus.parquet").to_pylist()
    log_p = log_v = words = impossible = 0
    for row in corpus:
        prompt = [int(t) for t in blocks[row["prompt_id"]]["input_ids"][:length]]
        context = tok.decode(prompt)
        rest = tok.decode(prompt + [int(t) for t in row["input_ids"]])[len(context):]
        p, n, bad = source.continuation_parts(context, rest)
        log_p, log_v = log_p + p, log_v + chain.continuation_parts(context, rest)[0]
        words, impossible = words + n, impossible + bad
    rec = json.loads((seed / "by-verifier" / "gen_01" / "metrics.json").read_text())["values"]
    assert rec["verifier_gap"] == pytest.approx((log_v - log_p) / (words - impossible))
    assert rec["truth_nats_per_word"] == pytest.approx(-log_p / (words - impossible))
    assert rec["impossible_share"] == pytest.approx(impossible / words)
