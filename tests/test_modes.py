"""Minority modes: the source (exact log p and posterior of the mode) and the ``modes`` metric
against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import measure_context, metric, tiny_config

from lmcollapse.data.base import load_human_text, make_source
from lmcollapse.data.blocks import prepare_human_data
from lmcollapse.data.markov import MarkovSource
from lmcollapse.data.modes import ModeMixture, exact_counts, mode_names
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.metrics.modes import form_contexts, mode_composition
from lmcollapse.models import load_tokenizer, model_config, random_model
from lmcollapse.sampling import fixed_sample
from lmcollapse.settings import validate

MODES = ["data.synthetic.modes.shares=[0.9,0.1]", "data.synthetic.modes.words=6"]


@pytest.fixture(scope="module")
def chain() -> MarkovSource:
    return MarkovSource(vocab_size=60, branching=6, seed=2)


@pytest.fixture(scope="module")
def mixture(chain) -> ModeMixture:
    return ModeMixture(chain, [0.7, 0.2, 0.1], words=5, seed=2)


def chain_log_prob(chain: MarkovSource, words: list[str]) -> float:
    """log p of a word list walked through the transition matrix by hand."""
    prev, total = chain.end_index, 0.0
    for w in words:
        total += math.log(chain.transition_matrix[prev, chain.word_to_index[w]])
        prev = chain.word_to_index[w]
    return total


def test_modes_write_the_same_concepts_with_their_own_words(chain, mixture):
    assert mixture.names == ["majority", "minority_1", "minority_2"] == mode_names(3)
    assert mode_names(2) == ["majority", "minority"]
    assert mixture.forms[0] == chain.words[:5]  # the five most frequent concepts
    every = [w for forms in mixture.forms for w in forms]
    assert len(set(every)) == 15 and not set(every[5:]) & set(chain.words)
    docs, labels = mixture.sample_labeled(400, 3, seed=4)
    base = chain.sample_documents(400, 3, seed=4)
    back = {f: chain.words[c] for forms in mixture.forms for c, f in
            zip(mixture.concepts, forms, strict=True)}
    for doc, label, original in zip(docs, labels, base, strict=True):
        # the same concepts in the same order; only the distinctive words change
        assert " ".join(back.get(w, w) for w in doc.split()) == original
        own = set(mixture.forms[label])
        others = {w for m, f in enumerate(mixture.forms) if m != label for w in f}
        assert not set(doc.split()) & others
        assert set(doc.split()) & own  # five frequent concepts: every 3-sentence doc has one
    assert np.bincount(labels).tolist() == exact_counts([0.7, 0.2, 0.1], 400) == [280, 80, 40]
    assert exact_counts([0.9, 0.1], 7) == [6, 1] and sum(exact_counts([1 / 3] * 3, 10)) == 10


def test_log_prob_and_posterior_are_exact(chain, mixture):
    docs, labels = mixture.sample_labeled(60, 2, seed=5)
    back = {f: chain.words[c] for forms in mixture.forms for c, f in
            zip(mixture.concepts, forms, strict=True)}
    for doc, label in zip(docs, labels, strict=True):
        concepts = chain_log_prob(chain, [back.get(w, w) for w in doc.split()])
        assert mixture.log_prob_in_mode(doc, label) == pytest.approx(concepts, rel=1e-12)
        in_modes = [mixture.log_prob_in_mode(doc, m) for m in range(3)]
        assert sum(math.isfinite(v) for v in in_modes) == 1
        # p(x) = sum_m share_m p_m(x), by hand
        total = math.log(sum(s * math.exp(v) for s, v in zip(mixture.shares, in_modes,
                                                             strict=True)))
        assert mixture.log_prob(doc) == pytest.approx(total, rel=1e-12)
        assert mixture.posterior(doc).tolist() == [float(m == label) for m in range(3)]
    shared = [w for w in chain.words[5:-1]][:4]
    assert mixture.posterior(" ".join(shared)).tolist() == pytest.approx([0.7, 0.2, 0.1])
    mixed = f"{mixture.forms[0][0]} {mixture.forms[2][1]}"
    assert mixture.posterior(mixed) is None and mixture.log_prob(mixed) == -math.inf
    # a document of two modes on two lines is two documents: by words, one of each
    composition, mix, n = mixture.composition(f"{mixture.forms[1][0]} a b\n{mixture.forms[2][0]}")
    assert (composition.tolist(), mix, n) == ([0.0, 0.75, 0.25], 0.0, 4)


def test_continuation_log_prob_conditions_on_the_mode_of_the_context(mixture):
    docs, labels = mixture.sample_labeled(40, 3, seed=6)
    checked = 0
    for doc, label in zip(docs, labels, strict=True):
        words = doc.split()
        k = len(words) // 2
        if mixture.posterior(" ".join(words[:k]))[label] < 1.0:
            continue  # a context without a distinctive word: the modes stay mixed
        got, n = mixture.continuation_log_prob(" ".join(words[:k]) + " ",
                                               " ".join(words[k:]) + " ")
        expected = (mixture.log_prob_in_mode(doc, label)
                    - mixture.log_prob_in_mode(" ".join(words[:k]), label))
        assert n == len(words) - k and got == pytest.approx(expected, rel=1e-9)
        checked += 1
    assert checked > 20
    # a word of another mode is impossible after a context that fixed the mode
    ctx = " ".join(mixture.forms[1][:2]) + " "
    assert mixture.continuation_log_prob(ctx, mixture.forms[0][0] + " ")[0] == -math.inf
    low, _ = mixture.continuation_log_prob(ctx, mixture.forms[0][0] + " ", floor=1e-6)
    assert math.isfinite(low) and low < math.log(1e-5)


def test_source_config_builds_the_mixture_and_checks_its_settings(tmp_path):
    cfg = tiny_config(tmp_path, *MODES)
    source = make_source(cfg.data)
    truth = source.truth()
    assert isinstance(truth, ModeMixture) and truth.shares == [0.9, 0.1]
    assert "modes 0.9/0.1 differing in 6 words" in source.describe()
    assert truth.describe()["modes"]["minority"]["share"] == 0.1
    train = source.load()["train"]
    assert [round(float(truth.posterior(d)[1])) for d in train].count(1) == 12  # 10% of 120
    assert isinstance(make_source(tiny_config(tmp_path).data).truth(), MarkovSource)
    for bad, match in [("data.synthetic.modes.shares=[0.9,0.2]", r"modes.shares: .*sum to 1"),
                       ("data.synthetic.modes.shares=[1.0]", r"modes.shares: give at least two"),
                       ("data.synthetic.modes.words=61", r"modes.words: must be in 1..60"),
                       ("data.synthetic.modes.colour=blue", r"unknown key .*modes.colour")]:
        with pytest.raises(ConfigError, match=match):
            validate(tiny_config(tmp_path, *MODES, bad))


# --- the metric ----------------------------------------------------------------------------


def _setup(tmp_path, accelerator, *extra):
    cfg = tiny_config(tmp_path, *MODES, "data.synthetic.test_docs=40",
                      "metrics.names=[ground_truth,modes]", "metrics.modes.contexts=30", *extra)
    texts = load_human_text(cfg.data)
    tok = load_tokenizer(cfg.model, texts["train"])
    human = prepare_human_data(tok, texts, cfg.data)
    model = random_model(model_config(cfg.model, tok), seed=0).eval()
    return cfg, tok, human, model, make_source(cfg.data).truth()


def test_mode_composition_of_human_text_is_the_sampled_mix(mixture):
    docs, labels = mixture.sample_labeled(200, 2, seed=8)
    shares, mixed = mode_composition(mixture, docs)
    # each document is pure: its composition is its label, or the shares where it holds no
    # distinctive word (then every mode could have written it)
    distinctive = {w for forms in mixture.forms for w in forms}
    expected = np.mean([np.eye(3)[label] if set(d.split()) & distinctive else mixture.shares
                        for d, label in zip(docs, labels, strict=True)], axis=0)
    assert any(not set(d.split()) & distinctive for d in docs)  # both cases occur
    assert mixed == 0.0
    assert shares.tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    both = [f"{d}\n{mixture.render(d.split(' . ')[0], 2)}" for d in docs[:3]]
    assert mode_composition(mixture, both)[1] == 0.0  # two documents, not one mixed one
    mixed_docs = [f"{mixture.forms[0][0]} {mixture.forms[1][0]}"] * 3 + docs[:1]
    assert mode_composition(mixture, mixed_docs)[1] == 0.75


def test_form_contexts_stop_before_a_distinctive_word(mixture):
    docs, _ = mixture.sample_labeled(100, 2, seed=9)
    for mode in range(3):
        found = form_contexts(mixture, docs, mode, 25, seed=0)
        assert len(found) == 25
        for prefix, slot in found:
            doc = next(d for d in docs if d.startswith(prefix) and
                       d[len(prefix):].split()[0] == mixture.forms[mode][slot])
            assert mixture.posterior(doc)[mode] == 1.0


def test_modes_metric_against_independent_scoring(tmp_path, accelerator):
    cfg, tok, human, model, truth = _setup(tmp_path, accelerator)
    corpus = [{"input_ids": r["input_ids"][:16]} for r in human.train]
    ctx = measure_context(cfg, accelerator, tok, human, tmp_path, truth=truth, generation=1,
                          model=model, corpus=corpus)
    modes = metric(cfg, "modes")
    modes.preflight(ctx)
    out = modes.compute(ctx)
    v = out.values
    # the shares of the corpus: its samples (the harness's seeded draw) decoded and composed
    drawn = fixed_sample([c["input_ids"] for c in corpus], out.sizes["samples"], 0)
    assert out.sizes["samples"] == ctx.equal_size(None, "x") < len(corpus)
    texts = tok.batch_decode(drawn)
    shares, mixed = mode_composition(truth, texts)
    assert v["minority_share"] == pytest.approx(shares[1]) and v["mixed_share"] == mixed
    assert v["majority_share"] + v["minority_share"] + v["mixed_share"] == pytest.approx(1.0)
    # the excess per mode adds up to ground truth's excess over all documents
    gt = metric(cfg, "ground_truth").compute(ctx)
    # both read each document's NLL from one scoring pass (same windows): computed once
    assert [k[0] for k in ctx.shared] == ["document_nll"]
    words = gt.sizes["words"]
    per_mode = [v[f"{n}_excess"] * sum(truth.n_words(d) * truth.posterior(d)[m]
                                       for d in human.texts["test"])
                for m, n in enumerate(truth.names)]
    assert sum(per_mode) / words == pytest.approx(gt.values["excess_nats_per_word"], rel=1e-9)
    # a form share by a direct forward pass for one context of each mode
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    docs = [d.rstrip("\n") for d in human.texts["test"]]
    for m, name in enumerate(truth.names):
        rows = []
        for prefix, slot in form_contexts(truth, docs, m, 30, seed=0):
            head = nl + tok(prefix, add_special_tokens=False)["input_ids"] if prefix else nl
            q = []
            for forms in truth.forms:
                full = nl + tok(f"{prefix} {forms[slot]}".strip(),
                                add_special_tokens=False)["input_ids"]
                ids = full[-cfg.data.block_tokens:]
                start = len(ids) - (len(full) - len(head))  # the word's tokens
                with torch.no_grad():
                    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0]
                                             .double(), -1)
                q.append(math.exp(sum(logp[t - 1, ids[t]].item()
                                      for t in range(start, len(ids)))))
            rows.append(q[m] / sum(q))
        assert out.sizes[f"{name}_contexts"] == len(rows) > 5
        assert v[f"{name}_form_share"] == pytest.approx(np.mean(rows), rel=1e-6)
    assert [modes.meta(k)["higher_is_better"] for k in
            ("minority_share", "minority_form_share", "majority_excess", "mixed_share")] == \
        [None, True, False, False]
    # the human row: the source's own shares, form shares 1, excess 0
    ref = modes.human_reference(ctx).values
    assert ref["minority_share"] == pytest.approx(0.1, abs=0.06) and ref["mixed_share"] < 0.05
    assert ref["minority_form_share"] == 1.0 and ref["majority_excess"] == 0.0


def test_modes_metric_needs_a_source_with_modes(tmp_path):
    cfg = tiny_config(tmp_path, "metrics.names=[modes]")
    with pytest.raises(ConfigError, match="'modes' needs a source with minority modes"):
        CollapseLoop(cfg).run()
    assert not (tmp_path / "quickstart").exists()
