"""An imperfect verifier: a noisy copy of the synthetic source with a stated quality (its
KL rate from the source), the scorer that curates by it, and the metric of how far each
generation has moved toward it."""

from __future__ import annotations

import json
import math
import re

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


def test_a_word_owns_the_tokens_from_the_end_of_the_word_before_it():
    """Character spans: 'a b' + 'c d ' scores c and d (each from the end of the word before
    it); a token crossing a span boundary leaves the sample out."""
    from lmcollapse.data.markov import scored_spans
    from lmcollapse.metrics.verifier import word_of_tokens

    prev, spans = scored_spans("a b", " c dd ")
    assert prev == "b" and spans == [(3, 4, 5), (5, 6, 8)]
    # byte-level pieces: "a", " b", " c", " d", "d" (the space goes with the word after it)
    assert word_of_tokens([(0, 1), (1, 3), (3, 5), (5, 7), (7, 8)], spans) == [-1, -1, 0, 1, 1]
    assert word_of_tokens([(0, 1), (1, 4), (4, 5), (5, 8)], spans) is None  # " b " crosses
    assert word_of_tokens([(0, 1), (1, 3), (3, 6), (6, 8)], spans) is None  # "c d" crosses
    # a word the continuation completes: the context's cut piece is scored from 0
    prev, spans = scored_spans("wor", "d next ")
    assert prev == "." and spans == [(0, 0, 4), (4, 5, 9)]


@pytest.mark.slow
def test_measure_toward_a_model_verifier(tmp_path, accelerator):
    """Toward a model (the seed's generation-0 model, or the same weights as a directory):
    each word's log v is the model's log-probability of the text up to the word's end minus
    that up to the end of the word before it (recomputed here from whole forward passes);
    the gap sums log v - log p over the words the source can produce there; the human row is
    minus the verifier's stated excess log-loss, which equals ground_truth's excess of the
    generation-0 model."""
    import dataclasses
    import shutil

    import torch
    from conftest import measure_context

    from lmcollapse.data.markov import scored_words
    from lmcollapse.metrics.verifier import TowardVerifier, VerifierMetricSettings
    from lmcollapse.models import load_model

    cfg = tiny_config(tmp_path, "generations=1", "train.epochs=6", "train.lr=1e-2",
                      "metrics.names=[perplexity,ground_truth,verifier]",
                      "metrics.verifier.model=gen0",
                      "policies=[replace, {name: replace, label: by-gen0, curate: {rule: best, "
                      "fraction: 0.5, scorer: {name: loglik, model: gen0}}}]")
    loop = CollapseLoop(cfg)
    loop.run()
    seed = cfg.run_dir / "seed_0"
    source = MarkovSource(vocab_size=60, branching=6, seed=0)  # tiny_config's source
    tok = load_tokenizer(cfg.model, saved=cfg.run_dir / "tokenizer")
    gen0 = load_model(seed / "gen_00" / "model").eval()
    blocks, length = loop.setup.human.train, cfg.generate.prompt_tokens
    nl = tok("\n", add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def log_v(text: str, cut: int) -> float:
        """log q0 of the text's tokens after a newline, the first ``cut`` tokens dropped
        (context only: what a window of the trained length keeps)."""
        ids = torch.tensor([(nl + tok(text, add_special_tokens=False)["input_ids"])[cut:]])
        if ids.shape[1] < 2:
            return 0.0
        logp = torch.log_softmax(gen0(input_ids=ids).logits[0, :-1].double(), -1)
        return float(logp.gather(-1, ids[0, 1:, None]).sum())

    corpus = pq.read_table(seed / "by-gen0" / "gen_01" / "corpus.parquet").to_pylist()

    def expected(window: int) -> tuple[float, float, float, float, int, int]:
        """(gap, truth, words, impossible, samples cut, samples left out) by whole forward
        passes: each word's log v is log q0 of the text to its end minus that to the
        previous word's end; a sample whose scored words alone fill the window is left
        out."""
        gap = truth = words = impossible = 0.0
        cut_samples = left_out = 0
        for row in corpus:
            prompt = [int(t) for t in blocks[row["prompt_id"]]["input_ids"][:length]]
            context = tok.decode(prompt)
            full = tok.decode(prompt + [int(t) for t in row["input_ids"]])
            prev, scored = scored_words(context, full[len(context):],
                                        source.word_to_index.__contains__)
            if not scored:
                continue
            prev = prev if prev in source.word_to_index else "."
            found = [(m.start(), m.end()) for m in re.finditer(r"\S+", full)]
            last = len(found) if full[-1].isspace() else len(found) - 1  # a cut last word
            first = last - len(scored)
            assert [full[a:e] for a, e in found[first:last]] == scored
            ends = [e for _, e in found[first:last]]
            before = [full[:found[i - 1][1]] if i else "" for i in range(first, last)]
            cut = max(0, len(nl + tok(full[:ends[-1]], add_special_tokens=False)["input_ids"])
                      - window)
            cut_samples += cut > 0
            if len(nl + tok(before[0], add_special_tokens=False)["input_ids"]) - cut < 1:
                left_out += 1
                continue
            for w, e, b, p_prev in zip(scored, ends, before, [prev, *scored[:-1]],
                                       strict=True):
                i, j = source.word_to_index.get(p_prev, -1), source.word_to_index.get(w, -1)
                p = source.transition_matrix[i, j] if min(i, j) >= 0 else 0.0
                words += 1
                if p == 0:
                    impossible += 1
                    continue
                word_log_v = log_v(full[:e], cut) - log_v(b, cut)
                gap, truth = gap + word_log_v - math.log(p), truth - math.log(p)
        return gap, truth, words, impossible, cut_samples, left_out

    gap, truth, words, impossible, cut_samples, _ = expected(cfg.data.block_tokens)
    assert cut_samples == 0  # prompt + continuation + newline fit the trained length here
    rec = json.loads((seed / "by-gen0" / "gen_01" / "metrics.json").read_text())
    values = rec["values"]
    assert values["unaligned_share"] == 0.0  # byte-level BPE never joins across a space
    assert values["verifier_gap"] == pytest.approx(gap / (words - impossible), rel=1e-5)
    assert values["truth_nats_per_word"] == pytest.approx(truth / (words - impossible))
    assert values["impossible_share"] == pytest.approx(impossible / words)
    excess0 = json.loads((seed / "gen_00" / "metrics.json").read_text())["values"][
        "excess_nats_per_word"]
    human = json.loads((seed / "human" / "metrics.json").read_text())
    stated = human["details"]["verifier"]["verifier_excess_nats_per_word"]
    assert stated == pytest.approx(excess0, rel=1e-6)
    assert human["values"]["verifier_gap"] == pytest.approx(-excess0, rel=1e-6)
    assert rec["details"]["verifier"]["verifier_excess_nats_per_word"] == stated

    # the same weights given as a directory measure the same
    shutil.copytree(seed / "gen_00" / "model", tmp_path / "judge")
    metric = TowardVerifier(VerifierMetricSettings(model=str(tmp_path / "judge")))
    ctx = measure_context(cfg, accelerator, tok, loop.setup.human, tmp_path,
                          generation=1, corpus=corpus, truth=source,
                          prompt_tokens=length, keep_prompt=cfg.generate.keep_prompt)
    metric.preflight(ctx)
    again = metric.compute(ctx)
    assert again.values["verifier_gap"] == pytest.approx(values["verifier_gap"], rel=1e-6)
    assert again.details["verifier_excess_nats_per_word"] == pytest.approx(stated, rel=1e-6)

    # a trained length shorter than the samples: each is scored in its last 20 tokens only
    gap, _, words, impossible, cut_samples, left_out = expected(20)
    assert cut_samples > len(corpus) // 2  # the window cuts most samples' context
    short = TowardVerifier(VerifierMetricSettings(model=str(tmp_path / "judge"))).compute(
        dataclasses.replace(ctx, trained_length=20))
    assert short.values["unaligned_share"] == pytest.approx(left_out / len(corpus))
    assert short.values["verifier_gap"] == pytest.approx(gap / (words - impossible), rel=1e-5)
    assert short.values["verifier_gap"] != pytest.approx(values["verifier_gap"], rel=1e-3)


@pytest.mark.parametrize(("value", "message"), [
    ("generator", r"metrics\.verifier\.model: 'gen0' or a model directory"),
    ("/nonexistent/judge", r"metrics\.verifier\.model: cannot load '/nonexistent/judge'"),
])
def test_a_model_verifier_that_cannot_be_measured_is_refused_first(tmp_path, value, message):
    cfg_args = ("metrics.names=[verifier]", f"metrics.verifier.model={value}")
    if value == "generator":
        with pytest.raises(ConfigError, match=message):
            tiny_config(tmp_path, *cfg_args)
        return
    cfg = tiny_config(tmp_path, *cfg_args)
    with pytest.raises(ConfigError, match=message):
        CollapseLoop(cfg).run()
    assert not (cfg.run_dir / "seed_0").exists()


def test_a_verifier_model_that_cannot_read_the_run_tokens_is_refused_first(tmp_path):
    """A model whose embedding matrix is smaller than the run's tokenizer (another
    tokenizer's model) is refused at set-up, naming the field, for the metric and for the
    scorer alike."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2)).save_pretrained(tmp_path / "small")
    judge = tmp_path / "small"
    for args, field in (
            (("metrics.names=[verifier]", f"metrics.verifier.model={judge}"),
             r"metrics\.verifier\.model: .* does not share the run's tokenizer"),
            (("metrics.names=[perplexity]", "policies=[{name: replace, curate: {rule: best, "
              f"scorer: {{name: loglik, model: {judge}}}}}}}]"),
             r"curate\.scorer\.model: .* does not share the run's tokenizer")):
        cfg = tiny_config(tmp_path / field[:8], *args)
        with pytest.raises(ConfigError, match=field):
            CollapseLoop(cfg).run()
        assert not (cfg.run_dir / "seed_0").exists()
