"""Generated population configs (participants, schedules, crawls, the reserve): every one is
either refused in one line naming its field, before any work, or passes the set-up and
draws every generation's pool as its settings say. (Issue 34's probe found configs accepted
here that failed later in the pool step or in training.)"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import tiny_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.units.population import new_batch

#: a refusal's first words: the field, as a config path (``policies[0].weight``,
#: ``data.fresh_reserve``, ``grid``...) or the overrides it came from, then a colon
FIELD = re.compile(r"^(policies\[\d+\](\.participants\[\d+\])?[\w.\[\]]*|data\.[\w.]+|"
                   r"model\.[\w.]+|train\.[\w.]+|generate\.[\w.]+|metrics\.[\w.]+|grid[\w.\[\]]*|"
                   r"data|generations|seeds|overrides?[^:]*): ")

def mostly(valid, invalid):
    """Three draws in four from ``valid``: most generated configs should get past the
    config check, so that the set-up and the pool draws are exercised too."""
    return st.integers(0, 3).flatmap(lambda i: invalid if i == 0 else valid)


numbers = mostly(st.floats(0.01, 100), st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0, 1e-300, 1e308, -1])))
shares = mostly(st.floats(0, 1), st.one_of(st.floats(-0.5, 1.5), st.sampled_from([1e-9])))


@st.composite
def participants(draw):
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        p = {"label": draw(st.sampled_from([f"p{i}", "p0", "a b", "x" * 130, "human"]))
             if draw(st.integers(0, 19)) == 0 else f"p{i}"}
        if draw(st.booleans()):
            p["weight"] = draw(numbers)
        if draw(st.integers(0, 3)) == 0:
            p["seed_offset"] = draw(st.integers(-2, 3))
        if draw(st.integers(0, 3)) == 0:
            p["generate"] = {"temperature": draw(st.sampled_from([0.7, 1.3, 0, -1]))}
        if draw(st.integers(0, 9)) == 0:
            p["curate"] = draw(mostly(st.sampled_from([{"rule": "best", "fraction": 0.5}, {}]),
                                      st.sampled_from([None, 3, [], "best"])))
        out.append(p)
    return out


@st.composite
def population_configs(draw):
    source = draw(st.sampled_from(["source", "reserve"]))
    entry = {"name": "internet", "participants": draw(participants()), "human_source": source}
    entry["synthetic_share"] = draw(mostly(shares, st.lists(shares, min_size=1, max_size=3)))
    if draw(st.booleans()):
        entry["new_content"] = draw(mostly(st.floats(0.05, 1), st.sampled_from(
            [1e-9, 0.005, 0.0, 11.0])))
    entry["crawl"] = draw(st.sampled_from(["all", "window"]))
    if draw(st.booleans()):
        entry["window"] = draw(mostly(st.integers(1, 3), st.integers(-1, 0)))
    if draw(st.booleans()):
        entry["crawl_size"] = draw(mostly(st.floats(0.1, 1.0), st.sampled_from(
            [None, 1e-9, 0.01, 0.05, 5.0])))
    if draw(st.integers(0, 3)) == 0:
        entry["sample_size"] = draw(st.sampled_from([None, 1, 2, 20, 10**6]))
    # the reserve: what human_source reserve draws from (an unused reserve is refused)
    reserve = draw(mostly(st.sampled_from([0.45, 0.6] if source == "reserve" else [None]),
                          st.sampled_from([None, 0.0, 0.2, 0.9, 0.999, 1.0, -0.1])))
    return entry, [] if reserve is None else [f"data.fresh_reserve={reserve}"]


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(population_configs())
def test_every_generated_population_is_refused_cleanly_or_pools_as_it_says(tmp_path_factory,
                                                                             case):
    entry, extra = case
    root = tmp_path_factory.mktemp("fuzz")
    try:
        cfg = tiny_config(root, "generations=2", f"policies=[{json.dumps(entry)}]", *extra)
        loop = CollapseLoop(cfg)
        loop.prepare(claim=False)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message.strip() and "Traceback" not in message, message
        assert FIELD.match(message), f"names no field: {message}"
        assert not any(root.iterdir()), "a refusal wrote into the output directory"
        event(f"refused: {message.split(': ')[0]}")
        return
    event("accepted")
    # accepted: every generation's batch and crawl are drawn as the settings say
    n = len(loop.setup.human.train)
    for cell in loop.grid.cells.values():
        s = cell.policy.settings
        if not hasattr(s, "participants"):
            continue
        sizes = s.batch_sizes(n, cfg.generations)
        assert all(syn >= 0 and hum >= 0 for syn, hum in sizes)
        crawl = s.crawl_blocks(n)
        assert crawl >= cfg.train.batch_size  # the least a training mix may be
        corpora = {p.label: [{"sample_id": f"c:{i}", "input_ids": [i]} for i in range(n)]
                   for p in s.participants}
        for k, (syn, hum) in enumerate(sizes, 1):
            split = s.synthetic_split(syn)
            assert sum(split) == syn and min(split) >= 0
            weights = [p.weight for p in s.participants]
            assert all(math.isfinite(w) and w > 0 for w in weights)
            human = [{"sample_id": f"h:{i}", "input_ids": [0]} for i in range(hum)]
            batch = new_batch(s, k, n, cfg.generations, corpora, human,
                              np.random.default_rng(k))
            assert len(batch) == syn + hum
            assert sum(r["writer"] != "human" for r in batch) == syn
            # generation k crawls its batches in reach (batch 0: the human pool of N)
            reach = sum(n if b == 0 else sum(sizes[b - 1]) for b in s.crawled_batches(k))
            assert crawl <= reach


def test_the_field_pattern_names_what_refusals_name():
    """The pattern the fuzz test holds refusals to, checked on refusals written by hand."""
    for message in ("policies[0].participants[1].weight: must be > 0, got -1",
                    "data.fresh_reserve: a share of the training records in [0, 1)",
                    "policies[0].synthetic_share[1]: must be a number in [0, 1], got 1.2"):
        assert FIELD.match(message)
    assert not FIELD.match("TypeError: 'NoneType' object is not a mapping")
    with pytest.raises(ConfigError) as err:
        tiny_config(__import__("pathlib").Path("/nonexistent"), "policies=[{name: internet, "
                    "participants: [{label: a, weight: -1}]}]")
    assert FIELD.match(str(err.value)), str(err.value)
