"""The words metric: word-frequency bands of human train, usage relative to human text,
invented words, types at equal size; checked by hand and through the loop."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from conftest import tiny_config

from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.metrics.words import band_of, word_metrics


def test_word_metrics_by_hand():
    # edges [1, 3]: band 1 = seen once, band 2 = 2-3 times, band 3 = more
    train = Counter({"x": 5, "y": 2, "z": 1, "w": 1})
    assert [band_of(c, [1, 3]) for c in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    sample = [["x", "x"], ["y", "q"]]  # q: a word human train never had
    reference = [["x", "z"], ["y", "w"]]
    got = word_metrics(train, sample, reference, [1, 3])
    # usage shares: sample band1 0/4, band2 1/4, band3 2/4; reference 2/4, 1/4, 1/4
    assert got["word_usage_1"] == 0.0 and got["word_usage_2"] == 1.0
    assert got["word_usage_3"] == 2.0
    # band types present in the sample: band 1 {z, w}: none; band 2 {y}; band 3 {x}
    assert (got["word_types_1"], got["word_types_2"], got["word_types_3"]) == (0.0, 1.0, 1.0)
    assert got["invented_share"] == 0.25
    assert got["word_types"] == 3 and got["word_ttr"] == 0.75
    assert got["word_types_known"] == 2 and got["word_ttr_known"] == pytest.approx(2 / 3)
    assert got["first_band_below_half"] == 1
    # a band the reference never uses has no ratio
    assert math.isnan(word_metrics(train, sample, [["x", "y"]], [1, 3])["word_usage_1"])


@pytest.mark.parametrize("bands", ["[]", "[0, 5]", "[10, 5]", "[3, 3]"])
def test_bad_band_edges_are_refused(bands):
    with pytest.raises(ConfigError, match=r"metrics.words.bands: increasing counts >= 1"):
        load_config(None, [f"metrics.words.bands={bands}"])


@pytest.mark.slow
def test_the_words_metric_through_the_loop(tmp_path):
    cfg = tiny_config(tmp_path, "generations=1", "policies=[replace]",
                      "metrics.names=[words]", "metrics.words.sample_size=10",
                      "metrics.words.bands=[2, 20]")
    CollapseLoop(cfg).run()
    seed = cfg.run_dir / "seed_0"
    human = json.loads((seed / "human" / "metrics.json").read_text())
    corpus = json.loads((seed / "replace" / "gen_01" / "metrics.json").read_text())
    for row in (human, corpus):
        assert row["sizes"]["words"] == {"sample_size": 10, "draws": 3}
        assert set(row["values"]) >= {"word_usage_1", "word_usage_3", "invented_share",
                                      "word_ttr", "first_band_below_half"}
        assert row["meta"]["word_usage_1"]["higher_is_better"] is None
    assert human["details"]["words"]["bands"] == {"1": "1-2", "2": "3-20", "3": ">20"}
    # the human row compares two disjoint held-out samples: near the human rate of the
    # common words
    assert 0.5 < human["values"]["word_usage_3"] < 1.5


def test_a_band_without_human_words_is_refused_before_any_work(tmp_path):
    cfg = tiny_config(tmp_path, "generations=1", "policies=[replace]",
                      "metrics.names=[words]", "metrics.words.bands=[1000000, 2000000]")
    with pytest.raises(ConfigError, match=r"metrics.words.bands: \[1000000, 2000000\] leaves "
                                          r"band\(s\) \[2, 3\]"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()
