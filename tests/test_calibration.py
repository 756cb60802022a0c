"""Calibration on held-out text: ECE, Brier, confidence, entropy and top-k mass against an
independent computation from the model's logits, one held-out pass shared with perplexity,
and the per-window values through the loop and the report's early warning."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_config

from lmcollapse.loop import CollapseLoop
from lmcollapse.metrics.calibration import expected_calibration_error
from lmcollapse.metrics.perplexity import sliding_windows
from lmcollapse.models import load_model
from lmcollapse.scoring import masked_nll


def _ece_by_hand(conf, correct, bins):
    """ECE with an explicit loop over bins [i/B, (i+1)/B), the last one closed at 1."""
    total = 0.0
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        inside = [(c, a) for c, a in zip(conf, correct, strict=True)
                  if lo <= c < hi or (i == bins - 1 and c == 1.0)]
        if inside:
            total += len(inside) / len(conf) * abs(np.mean([a for _, a in inside])
                                                   - np.mean([c for c, _ in inside]))
    return total


def test_ece_matches_a_hand_computation():
    conf = [0.05, 0.15, 0.5, 0.55, 0.95, 1.0, 0.99, 0.3]
    correct = [0, 0, 1, 0, 1, 1, 0, 1]
    for bins in (1, 2, 10, 15):
        assert expected_calibration_error(np.array(conf), np.array(correct, float), bins) == \
            pytest.approx(_ece_by_hand(conf, correct, bins), abs=1e-12)
    # 2 bins: [0, .5) holds .05 .15 .3 (acc 1/3, conf .5/3); [.5, 1] the rest (acc 3/5)
    assert expected_calibration_error(np.array(conf), np.array(correct, float), 2) == \
        pytest.approx(3 / 8 * abs(1 / 3 - 0.5 / 3) + 5 / 8 * abs(3 / 5 - 3.99 / 5))


def test_token_statistics_match_the_softmax(tiny_model, tokenizer):
    """The held-out pass's per-token values, recomputed from the logits with numpy; the NLL
    of the same call is the one perplexity sums."""
    seqs = [tokenizer.encode("a b c d e f g h")[:10], tokenizer.encode("i j k l")[:6]]
    nll, count, stats = masked_nll(tiny_model, seqs, [3, 0], tokenizer.pad_token_id, stats_k=5)
    plain = masked_nll(tiny_model, seqs, [3, 0], tokenizer.pad_token_id)
    assert torch.equal(nll, plain[0]) and torch.equal(count, plain[1])
    for i, seq in enumerate(seqs):
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([seq])).logits[0, :-1].double().numpy()
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        scored = range(max(1, [3, 0][i]) - 1, len(seq) - 1)  # positions predicting t >= start
        target = np.array([seq[t + 1] for t in scored])
        q = p[list(scored)]
        s = stats[i]
        assert len(s["confidence"]) == count[i] == len(scored)
        np.testing.assert_allclose(s["confidence"], q.max(-1), rtol=1e-5)
        np.testing.assert_array_equal(s["correct"], q.argmax(-1) == target)
        np.testing.assert_allclose(s["p_target"], q[np.arange(len(q)), target], rtol=1e-5)
        brier = ((q - np.eye(q.shape[1])[target]) ** 2).sum(-1)
        np.testing.assert_allclose(1 - 2 * s["p_target"] + s["sum_sq"], brier, rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(s["entropy"], -(q * np.log(q)).sum(-1), rtol=1e-5)
        np.testing.assert_allclose(s["top_k_mass"], np.sort(q, -1)[:, -5:].sum(-1), rtol=1e-5)
        assert -np.log(s["p_target"]).sum() == pytest.approx(float(nll[i]), rel=1e-5)


@pytest.mark.slow
def test_calibration_through_the_loop_and_the_report(tmp_path):
    """Perplexity's values are the same with calibration measured beside it (one pass);
    calibration's metrics.json matches a recomputation from the saved model, and its
    per-window file feeds the early warning (NLL and Brier, two tables)."""
    common = ["generations=1", "policies=[replace]", "keep_models=all"]
    alone = tiny_config(tmp_path / "alone", *common, "metrics.names=[perplexity]")
    both = tiny_config(tmp_path / "both", *common, "metrics.names=[perplexity,calibration]",
                       "metrics.calibration.bins=10")
    CollapseLoop(alone).run()
    loop = CollapseLoop(both)
    loop.run()
    gen1 = both.run_dir / "seed_0" / "replace" / "gen_01"
    rec = json.loads((gen1 / "metrics.json").read_text())
    solo = json.loads((alone.run_dir / "seed_0" / "replace" / "gen_01" / "metrics.json")
                      .read_text())
    assert rec["values"]["perplexity"] == solo["values"]["perplexity"]
    assert rec["values"]["test_nll_per_token"] == solo["values"]["test_nll_per_token"]
    # recompute from the saved model over the same windows
    model = load_model(gen1 / "model").eval()
    stream = loop.setup.human.test_stream
    length = both.data.block_tokens
    confs, hits, briers, ents = [], [], [], []
    windows = sliding_windows(len(stream), length, length // 2)
    for begin, end, start in windows:
        ids = torch.tensor([stream[begin:end]])
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids).logits[0, :-1].double(), -1).numpy()
        rows = range(max(1, start) - 1, end - begin - 1)
        target = np.array([stream[begin + t + 1] for t in rows])
        q = p[list(rows)]
        confs += q.max(-1).tolist()
        hits += (q.argmax(-1) == target).tolist()
        briers += ((q - np.eye(q.shape[1])[target]) ** 2).sum(-1).tolist()
        ents += (-(q * np.log(q)).sum(-1)).tolist()
    values = rec["values"]
    assert values["ece"] == pytest.approx(_ece_by_hand(confs, hits, 10), abs=1e-4)
    assert values["brier"] == pytest.approx(np.mean(briers), rel=1e-4)
    assert values["top1_accuracy"] == pytest.approx(np.mean(hits), abs=1e-9)
    assert values["entropy"] == pytest.approx(np.mean(ents), rel=1e-4)
    assert math.isclose(values["overconfidence"],
                        values["top1_confidence"] - values["top1_accuracy"], abs_tol=1e-12)
    table = pq.read_table(gen1 / "calibration.parquet").to_pylist()
    assert len(table) == len(windows)
    assert sum(r["scored_tokens"] for r in table) == rec["sizes"]["calibration"]["scored_tokens"]
    from lmcollapse.report.write import write_report
    write_report([both.run_dir], out=tmp_path / "report", lineage_prompts=0)
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "Early warning: calibration nll" in md and "Early warning: calibration brier" in md
    # no human row (it needs a model): no comparison with human text, no empty table
    section = md[md.index("Early warning: calibration nll"):]
    section = section[:section.index("Early warning: calibration brier")]
    assert "against held-out human text" not in section
    assert "against generation 0's, per seed" in section and "(Holm, 1 tests)" in section
