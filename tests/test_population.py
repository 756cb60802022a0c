"""Populations (the ``internet`` policy): several participants writing one shared pool.

The pool's composition is checked against every block's provenance (and against the
participants' own corpora), the crawl against the window, the population's row against a
recomputation by hand, bad settings are refused before any work, and a run killed in the
middle of a population resumes to the same numbers."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import QUICKSTART, TINY, executed_steps, planned_steps, tiny_config

from lmcollapse.cli import run_main
from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError
from lmcollapse.grid import Grid
from lmcollapse.loop import CollapseLoop
from lmcollapse.policies.internet import InternetSettings, ParticipantSpec
from lmcollapse.sampling import derive_seed
from lmcollapse.units.population import composition, jsd, new_batch

SCHEDULE = [0.3, 0.6]
SHARED = ("synthetic_share: [0.3, 0.6], new_content: 0.5, human_source: HS, crawl: CRAWL, "
          "window: 2, crawl_size: 0.9")
POPULATION = ("{name: internet, label: web, " + SHARED + ", participants: [{label: a}, "
              "{label: b, generate: {temperature: 0.8}, "
              "model: {scratch: {hidden_size: 16, intermediate_size: 32}}}]}")
SINGLE = "{name: internet, label: single, " + SHARED + ", participants: [{label: a}]}"


def population_overrides(human_source: str = "reserve", crawl: str = "all") -> list[str]:
    cells = ", ".join(x.replace("HS", human_source).replace("CRAWL", crawl)
                      for x in (POPULATION, SINGLE))
    extra = ["data.fresh_reserve=0.45"] if human_source == "reserve" else []
    return [f"policies=[{cells}]", "metrics.names=[perplexity,diversity]", *extra]


def population(**changes) -> str:
    entry = {"name": "internet", "synthetic_share": [0.3, 0.6], "human_source": "source",
             "participants": [{"label": "a"}, {"label": "b"}], **changes}
    return "policies=[" + json.dumps(entry) + "]"


# --- bad input: one line naming the field, before any work ------------------------------------

@pytest.mark.parametrize("override, field, allowed", [
    (population(synthetic_share=[0.1, 0.2, 0.3]), r"policies\[0\]\.synthetic_share",
     "one share per generation 1..2"),
    (population(synthetic_share=[0.1]), None, None),  # one number for all: fine
    (population(synthetic_share=[0.5, 1.2]), r"policies\[0\]\.synthetic_share\[1\]",
     r"in \[0, 1\]"),
    (population(participants=[{"label": "a"}, {"label": "a"}]), r"policies\[0\]\.participants",
     "labels must be unique"),
    (population(participants=[{"label": "a", "data": {"block_tokens": 32}}]),
     r"policies\[0\]\.participants\[0\]\.data", "must be shared"),
    (population(participants=[{"label": "a", "generate": {"new_tokens": 8}}]),
     r"policies\[0\]\.participants\[0\]\.generate\.new_tokens", "must be shared"),
    (population(participants=[{"label": "a", "model": {"scratch": {"vocab_size": 300}}}]),
     r"policies\[0\]\.participants\[0\]\.model\.scratch\.vocab_size", "must be shared"),
    (population(participants=[{"label": "a", "model": {"scratch": {"hidden_size": 30}}}]),
     r"policies\[0\]\.participants\[0\]: model\.scratch", "num_heads"),
    (population(crawl_size=2.0), r"policies\[0\]\.crawl_size", "larger than the pool"),
    (population(crawl="window", window=1, new_content=0.5), r"policies\[0\]\.crawl_size",
     "last 1 batches"),
    (population(participants=[{"label": "a", "weight": 0}]),
     r"policies\[0\]\.participants\[0\]\.weight", "> 0"),
    (population(human_source="reserve"), r"policies\[0\]\.human_source", "fresh_reserve"),
    # weights near the largest float: their sum overflows, the split would be NaN
    (population(participants=[{"label": "a", "weight": 1.0e308}, {"label": "b",
                                                                  "weight": 1.0e308}]),
     r"policies\[0\]\.participants", "the weights sum past the largest number"),
    # what the run's one Accelerator applies cannot be one participant's
    *[(population(participants=[{"label": "a", "train": {key: value}}]),
       rf"policies\[0\]\.participants\[0\]\.train\.{key}", "the run's one Accelerator")
      for key, value in (("mixed_precision", "fp16"), ("mixed_precision", "bf16"),
                         ("grad_accum", 2))],
    # a section that is not a mapping: named as what it is, not as a shared key
    *[(population(participants=[{"label": "a", "curate": bad}]),
       r"policies\[0\]\.participants\[0\]\.curate", "a mapping of the participant's own curate")
      for bad in (None, 3, [1], "best")],
    (population(participants=[{"label": "a", "model": {"scratch": {"hiden_size": 16}}}]),
     r"policies\[0\]\.participants\[0\]\.model\.scratch\.hiden_size",
     "did you mean 'scratch.hidden_size'"),
    (population(participants=[{"label": "a", "generate": {"temperature.x": 1}}]),
     r"policies\[0\]\.participants\[0\]: generate\.temperature\.x", "is not a config key"),
    *[(population(participants=[{"label": "a", section: None}]),
       rf"policies\[0\]\.participants\[0\]\.{section}", f"own {section} settings")
      for section in ("generate", "train", "model")],
])
def test_bad_population_settings_are_refused_naming_the_field(override, field, allowed):
    args = ["generations=2", override]
    if field is None:
        load_config(QUICKSTART, args)
        return
    with pytest.raises(ConfigError, match=f"^{field}.*({allowed})"):
        load_config(QUICKSTART, args)


def test_a_refused_population_exits_2_and_writes_nothing(tmp_path):
    run = subprocess.run([sys.executable, "-m", "lmcollapse.cli", "run", "--config",
                          str(QUICKSTART), f"output_dir={tmp_path}", "generations=2",
                          population(synthetic_share=[0.1, 0.2, 0.3])],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "policies[0].synthetic_share" in run.stderr.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())


def test_a_crawl_a_block_larger_than_its_pool_is_refused_at_set_up(tmp_path):
    """The config allows a crawl of N from the last two batches of N/2 each; with an odd
    N the batches round to a block fewer, which only the set-up can see."""
    cfg = tiny_config(tmp_path, population(crawl="window", window=2, new_content=0.5),
                      "data.max_train_blocks=201")
    with pytest.raises(ConfigError, match=r"^policies\[0\]\.crawl_size: a crawl of (\d+) "
                       r"blocks .* larger than the pool generation 2 crawls"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


@pytest.mark.parametrize("change, field, message", [
    ({"crawl_size": 1.0e-9}, "crawl_size", r"a crawl of 0 blocks .* smaller than the least a "
     r"training mix may be \(16 blocks"),
    ({"crawl_size": 0.01}, "crawl_size", r"a crawl of \d blocks .* smaller than the least"),
    ({"new_content": 1.0e-9}, "new_content", r"round\(1e-09 x N = \d+\) = 0 blocks would be "
     "added before each generation"),
    ({"new_content": 0.005, "synthetic_share": [0.1, 0.5]}, "synthetic_share",
     r"generation 1's share 0\.1 of a batch of \d blocks rounds to no model-written block"),
])
def test_a_schedule_that_rounds_to_nothing_is_refused_at_set_up(tmp_path, change, field,
                                                                 message):
    """Shares of N that round to no block (a crawl smaller than a batch, no new content, a
    scheduled synthetic share of no block) are refused once the text is tokenised, before
    any work, instead of failing in training or running something else."""
    cfg = tiny_config(tmp_path, population(**change))
    with pytest.raises(ConfigError, match=rf"^policies\[0\]\.{field}: {message}"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


def test_a_grid_cannot_sweep_what_the_accelerator_applies(tmp_path):
    for key, values in (("train.grad_accum", "[1, 2]"), ("train.mixed_precision", "[no, bf16]")):
        with pytest.raises(ConfigError, match=rf"grid\[0\]\.key: '{key}' cannot be swept: "
                           "the run's one Accelerator"):
            tiny_config(tmp_path, f"grid=[{{key: {key}, values: {values}}}]")


def test_a_sample_size_the_test_text_cannot_give_is_refused_at_set_up(tmp_path):
    cfg = tiny_config(tmp_path, population(sample_size=100000))
    with pytest.raises(ConfigError, match=r"^policies\[0\]\.sample_size: .*allowed: 2\.\."):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


def test_the_within_participant_floor_needs_two_disjoint_halves_of_a_corpus():
    """The population's sample size: at most half a corpus (N // 2), as the floor draws two
    disjoint samples of one participant's corpus; null takes the largest that fits."""
    from types import SimpleNamespace

    from lmcollapse.units.population import population_size

    def cell(size):
        return SimpleNamespace(policy=SimpleNamespace(settings=SimpleNamespace(sample_size=size)))

    ctx = SimpleNamespace(human=SimpleNamespace(train=[{}] * 21),
                          disjoint_size=lambda configured, where, metric: configured or 40)
    assert population_size(cell(None), ctx, "policies[0].sample_size") == 10
    assert population_size(cell(10), ctx, "policies[0].sample_size") == 10
    with pytest.raises(ConfigError, match=r"^policies\[0\]\.sample_size: 11 samples .*"
                       r"at most 10 each; allowed: 2\.\.10"):
        population_size(cell(11), ctx, "policies[0].sample_size")


def test_composition_counts_blocks_and_tokens():
    pool = ([{"batch": 0, "writer": "human", "input_ids": [0] * 48}] * 4
            + [{"batch": 1, "writer": "a", "input_ids": [0] * 32}] * 3
            + [{"batch": 1, "writer": "human", "input_ids": [0] * 48}])
    comp = composition(pool, range(1, 2))
    assert comp["crawled_synthetic_share"] == 3 / 4
    assert comp["crawled_synthetic_token_share"] == 96 / (96 + 48)
    assert comp["synthetic_token_share"] == 96 / (96 + 5 * 48)
    assert comp["tokens_by_batch"] == {"0": {"human": 192}, "1": {"a": 96, "human": 48}}


def test_a_seed_offset_gives_a_participant_initial_weights_of_its_own(tmp_path, tokenizer,
                                                                     accelerator):
    """Participants that decode and train alike but have a seed offset start from initial
    weights of their own (and train a generation-0 model of their own); one without an
    offset shares the run's."""
    from types import SimpleNamespace

    import torch

    from lmcollapse.layout import RunLayout
    from lmcollapse.models import load_model, scratch_config
    from lmcollapse.settings import ScratchModelConfig
    from lmcollapse.weights import Weights

    cfg = tiny_config(tmp_path, population(participants=[{"label": "a"}, {
        "label": "b", "seed_offset": 1}, {"label": "c", "seed_offset": 2}]))
    grid = Grid.of(cfg)
    groups = grid.founders(list(grid.cells.values()))
    assert groups == ["", "seed+1", "seed+2"]
    arch = scratch_config(ScratchModelConfig(hidden_size=32, num_layers=1, num_heads=4,
                                             intermediate_size=64), tokenizer)
    weights = Weights(grid, accelerator, RunLayout(tmp_path / "run"),
                      SimpleNamespace(model_config=arch, tokenizer=tokenizer))
    weights.ensure_base(0, groups)
    seed = tmp_path / "run" / "seed_0"
    assert sorted(p.name for p in seed.iterdir() if p.is_dir()) == ["base", "base@seed+1",
                                                                    "base@seed+2"]
    first = [next(iter(load_model(seed / d).state_dict().values()))
             for d in ("base", "base@seed+1", "base@seed+2")]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert weights.base_dir(0, "seed+1") == seed / "base@seed+1"
    assert weights.base_dir(0, "") == seed / "base"


# --- the grid: one unit per population, one cell per participant -------------------------------

def test_participants_are_cells_and_a_grid_sweeps_the_schedule(tmp_path):
    cfg = tiny_config(tmp_path, population(participants=[
        {"label": "a"}, {"label": "b", "generate": {"temperature": 0.8}},
        {"label": "c", "train": {"lr": 0.001}}, {"label": "d", "seed_offset": 1}]),
        "grid=[{key: policy.synthetic_share, values: [[0.5], [0.0]], name: share}]")
    grid = Grid.of(cfg)
    assert list(grid.cells) == ["internet@share=0.5", "internet@share=0.0"]
    members = grid.cells["internet@share=0.5"].participants
    assert [m.key for m in members] == [f"internet.{x}@share=0.5" for x in "abcd"]
    assert [m.cfg.generate.temperature for m in members] == [1.0, 0.8, 1.0, 1.0]
    assert [m.cfg.train.lr for m in members] == [cfg.train.lr, cfg.train.lr, 0.001,
                                                 cfg.train.lr]
    # decoding shares model 0 (own corpus 0); training and a seed offset train their own
    assert [m.founder for m in members] == ["", "", "lr=0.001", "seed+1"]
    assert [grid.own_corpus0(m) for m in members] == [False, True, True, True]
    assert grid.cells["internet@share=0.0"].policy.synthetic_share == [0.0]
    assert grid.units() == [(0, "internet@share=0.5"), (0, "internet@share=0.0")]


# --- the pieces, by hand -----------------------------------------------------------------------

def test_jsd_matches_a_hand_computation():
    a, b = Counter({"x": 3, "y": 1}), Counter({"y": 2, "z": 2})
    p, q = {"x": 0.75, "y": 0.25, "z": 0.0}, {"x": 0.0, "y": 0.5, "z": 0.5}
    m = {k: (p[k] + q[k]) / 2 for k in p}

    def kl(u):
        return sum(u[k] * math.log2(u[k] / m[k]) for k in u if u[k] > 0)

    assert jsd(a, b) == pytest.approx((kl(p) + kl(q)) / 2, abs=1e-12)
    assert jsd(a, a) == pytest.approx(0.0, abs=1e-12)
    assert jsd(Counter({"x": 1}), Counter({"y": 5})) == pytest.approx(1.0)


def test_a_new_batch_follows_the_schedule_and_the_weights():
    s = InternetSettings(participants=[ParticipantSpec("a", weight=2.0), ParticipantSpec("b")],
                         synthetic_share=[0.3, 0.6], new_content=0.5)
    n = 101
    assert s.batch_sizes(n, 2) == [(15, 35), (30, 20)]  # round(0.5*101) = 50 per batch
    assert s.synthetic_split(30) == [20, 10] and s.synthetic_split(15) == [10, 5]
    corpora = {w: [{"sample_id": f"gen_1:{i}", "origin": "gen_1", "generation": 1,
                    "prompt_id": i, "input_ids": [i]} for i in range(n)] for w in "ab"}
    human = [{"sample_id": f"human:fresh2:{i}", "origin": "human", "generation": -1,
              "prompt_id": -1, "input_ids": [0]} for i in range(20)]
    batch = new_batch(s, 2, n, 2, corpora, human, np.random.default_rng(0))
    assert Counter(r["writer"] for r in batch) == {"a": 20, "b": 10, "human": 20}
    assert {r["batch"] for r in batch} == {2}
    assert len({r["sample_id"] for r in batch}) == 50  # unique: prefixed with the writer
    comp = composition(batch + [{**h, "batch": 0, "writer": "human"} for h in human],
                       range(1, 3))
    assert comp["by_batch"] == {"0": {"human": 20}, "2": {"a": 20, "b": 10, "human": 20}}
    assert comp["crawled_blocks"] == 50 and comp["crawled_synthetic_share"] == 0.6
    assert comp["synthetic_share"] == pytest.approx(30 / 70)


# --- through the loop ---------------------------------------------------------------------------

def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def population_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("population"),
                      *population_overrides("reserve", "window"))
    loop = CollapseLoop(cfg)
    loop.run()
    return cfg, loop


@pytest.mark.slow
def test_the_loop_takes_exactly_the_planned_steps_in_order(population_run, capsys):
    """The plan (lmcollapse.plan) is the run: the markers a population run leaves, in the
    order their steps started, are the plan's steps in its order: the shared part (model 0
    of each training setting, the human row), then by generation the pools, the
    participants' generations (a participant's own corpus 0) and the population rows; and
    `lmcollapse plan` prints that many steps."""
    cfg, _ = population_run
    planned = planned_steps(cfg)
    assert executed_steps(cfg.run_dir) == planned
    kinds = {kind for _, kind in planned}
    assert kinds == {"pool", "train", "generate", "measure"}
    assert any(d.endswith("gen_00@hidden_size=16,intermediate_size=32") for d, _ in planned)
    assert run_main(["plan", "--config", str(QUICKSTART), *TINY, f"output_dir={cfg.output_dir}",
                     *population_overrides("reserve", "window")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{len(planned)} steps: ")


@pytest.mark.slow
def test_the_pool_is_what_its_provenance_says(population_run):
    cfg, loop = population_run
    seed, d = cfg.run_dir / "seed_0", cfg.run_dir / "seed_0" / "web"
    n = len(loop.setup.human.train)
    reserve = {r["sample_id"] for r in loop.setup.human.reserve}
    train = {r["sample_id"] for r in loop.setup.human.train}
    corpus = {(w, k): {r["sample_id"]: r["input_ids"] for r in _rows(
        seed / f"web.{w}" / f"gen_{k:02d}" / "corpus.parquet")}
        for w in "ab" for k in (1,)}
    corpus[("a", 0)] = {r["sample_id"]: r["input_ids"] for r in _rows(
        seed / "gen_00" / "corpus.parquet")}  # a decodes as the base: the shared corpus 0
    corpus[("b", 0)] = {r["sample_id"]: r["input_ids"] for r in _rows(
        seed / "web.b" / "gen_00" / "corpus.parquet")}
    seen_human: set[str] = set()
    for k in (1, 2):
        pool = _rows(d / f"gen_{k:02d}" / "pool.parquet")
        summary = json.loads((d / f"gen_{k:02d}" / "pool.json").read_text())
        counted: dict[str, Counter] = {}
        for r in pool:
            counted.setdefault(str(r["batch"]), Counter())[r["writer"]] += 1
        assert summary["by_batch"] == {b: dict(c) for b, c in counted.items()}
        tokens: dict[str, Counter] = {}  # and by tokens: a continuation is shorter
        for r in pool:
            tokens.setdefault(str(r["batch"]), Counter())[r["writer"]] += len(r["input_ids"])
        assert summary["tokens_by_batch"] == {b: dict(c) for b, c in tokens.items()}
        reach = [str(b) for b in summary["crawled_batches"]]
        crawled = sum(sum(tokens[b].values()) for b in reach)
        assert summary["crawled_synthetic_token_share"] == pytest.approx(
            sum(v for b in reach for w, v in tokens[b].items() if w != "human") / crawled)
        assert summary["crawled_synthetic_token_share"] < summary["crawled_synthetic_share"]
        assert summary["blocks"] == len(pool) == n + k * round(0.5 * n)
        new = [r for r in pool if r["batch"] == k]
        synthetic = round(SCHEDULE[k - 1] * round(0.5 * n))
        assert sum(r["writer"] != "human" for r in new) == synthetic
        assert summary["batch_synthetic_share"][str(k)] == synthetic / len(new)
        for r in new:  # every block is what its writer wrote (or human text never seen)
            if r["writer"] == "human":
                assert r["sample_id"] in reserve and r["sample_id"] not in seen_human
                seen_human.add(r["sample_id"])
            else:
                assert r["generation"] == k - 1
                writer, _, sid = r["sample_id"].partition("/")
                assert writer == r["writer"]
                assert r["input_ids"] == corpus[(writer, k - 1)][sid]
        assert {r["sample_id"] for r in pool if r["batch"] == 0} == train
        # the crawl: N blocks of the batches in the window, and nothing else
        for w in "ab":
            mix = _rows(seed / f"web.{w}" / f"gen_{k:02d}" / "mix.parquet")
            assert len(mix) == round(0.9 * n)
            assert {r["batch"] for r in mix} <= set(range(max(0, k - 1), k + 1))
            assert {r["sample_id"] for r in mix} <= {r["sample_id"] for r in pool}
    assert not seen_human & train


@pytest.mark.slow
def test_the_population_row_matches_a_recomputation(population_run):
    cfg, loop = population_run
    seed = cfg.run_dir / "seed_0"
    for k in (0, 1, 2):
        row = json.loads((seed / "web" / f"gen_{k:02d}" / "metrics.json").read_text())
        size = row["sizes"]["population"]["sample_size"]
        dirs = {"a": seed / ("gen_00" if k == 0 else f"web.a/gen_{k:02d}"),
                "b": seed / f"web.b/gen_{k:02d}"}
        samples = {}
        for w, g in dirs.items():
            ids = [r["input_ids"] for r in _rows(g / "corpus.parquet")]
            draw = np.sort(np.random.default_rng(
                derive_seed(0, "web", k, "similarity")).choice(len(ids), size, replace=False))
            samples[w] = Counter(tuple(ids[i][j:j + 2]) for i in draw
                                 for j in range(len(ids[i]) - 1))
        assert row["values"]["jsd_between"] == pytest.approx(jsd(samples["a"], samples["b"]))
        within = {}  # the floor: two disjoint halves of one participant's own corpus
        for w, g in dirs.items():
            ids = [r["input_ids"] for r in _rows(g / "corpus.parquet")]
            order = np.random.default_rng(derive_seed(0, "web", k, "within", w)).permutation(
                len(ids))
            halves = [sorted(order[:size]), sorted(order[size:2 * size])]
            assert not set(halves[0]) & set(halves[1])
            within[w] = jsd(*(Counter(tuple(ids[i][j:j + 2]) for i in half
                                      for j in range(len(ids[i]) - 1)) for half in halves))
        assert row["details"]["population"]["within"] == pytest.approx(within)
        assert row["values"]["jsd_within"] == pytest.approx(np.mean(list(within.values())))
        assert row["values"]["jsd_between_excess"] == pytest.approx(
            row["values"]["jsd_between"] - row["values"]["jsd_within"])
        assert row["details"]["population"]["pairs"]["a~b"] == row["values"]["jsd_between"]
        assert 0 < row["values"]["jsd_human_pair"] < 1
        if k:
            mixes = [_rows(seed / f"web.{w}" / f"gen_{k:02d}" / "mix.parquet") for w in "ab"]
            share = np.mean([sum(r["writer"] != "human" for r in m) / len(m) for m in mixes])
            assert row["values"]["crawl_synthetic"] == pytest.approx(share)
            lengths = {r["sample_id"]: len(r["input_ids"]) for r in _rows(
                seed / "web" / f"gen_{k:02d}" / "pool.parquet")}
            share = np.mean([sum(lengths[r["sample_id"]] for r in m if r["writer"] != "human")
                             / sum(lengths[r["sample_id"]] for r in m) for m in mixes])
            assert row["values"]["crawl_synthetic_tokens"] == pytest.approx(share)
            pool = json.loads((seed / "web" / f"gen_{k:02d}" / "pool.json").read_text())
            assert row["values"]["pool_synthetic"] == pool["crawled_synthetic_share"] > 0
            assert row["values"]["pool_synthetic_tokens"] == \
                pool["crawled_synthetic_token_share"] > 0
        else:
            assert row["values"]["pool_synthetic"] == 0.0
    single = json.loads((seed / "single" / "gen_02" / "metrics.json").read_text())["values"]
    assert "jsd_between" not in single  # one participant: no pair


@pytest.mark.slow
def test_a_participant_of_its_own_size(population_run):
    """b is built smaller: its own initial weights and generation-0 model, and every
    generation of it at that size; a keeps the run's size and the shared generation 0."""
    cfg, _ = population_run
    seed = cfg.run_dir / "seed_0"

    def hidden(d: Path) -> int:
        return json.loads((d / "config.json").read_text())["hidden_size"]

    group = "hidden_size=16,intermediate_size=32"
    assert hidden(seed / f"base@{group}") == 16 and hidden(seed / "base") == 32
    assert hidden(seed / f"gen_00@{group}" / "model") == 16
    assert [hidden(seed / f"web.b/gen_{k:02d}/model") for k in (1, 2)] == [16, 16]
    assert [hidden(seed / f"web.a/gen_{k:02d}/model") for k in (1, 2)] == [32, 32]
    assert not (seed / "web.a" / "gen_00").exists()  # a writes the shared corpus 0


# --- killed in the middle of a population, resumed -----------------------------------------------

def _state(run_dir: Path) -> dict[str, str]:
    out = {str(p.relative_to(run_dir)): json.dumps(json.loads(p.read_text())["values"])
           for p in sorted(run_dir.rglob("metrics.json"))}
    out.update({str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(run_dir.rglob("*.parquet"))})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", ["pool_written:2"])  # inside the pool step; test_kills: the rest
def test_a_population_killed_anywhere_resumes_to_the_same_numbers(tmp_path, point,
                                                                  population_run):
    reference, _ = population_run
    overrides = [*TINY, *population_overrides("reserve", "window"), f"output_dir={tmp_path}"]
    args = [sys.executable, "-m", "lmcollapse.cli", "run", "--config", str(QUICKSTART),
            *overrides]
    killed = subprocess.run(args, env={**os.environ, "LMCOLLAPSE_KILL_AT": point},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "quickstart"
    assert _state(run_dir) != _state(reference.run_dir)  # it really stopped before the end
    CollapseLoop(load_config(QUICKSTART, overrides)).run()
    assert _state(run_dir) == _state(reference.run_dir)


@pytest.mark.slow
def test_the_report_shows_the_populations(population_run, tmp_path):
    from lmcollapse.report.write import write_report

    cfg, _ = population_run
    out = write_report([cfg.run_dir], out=tmp_path, lineage_prompts=0)
    names = {p.relative_to(tmp_path).as_posix() for p in out["files"]}
    assert {"plots/pool_web.png", "plots/pool_single.png", "plots/homogenization.png"} <= names
    # the participants are leaderboard rows; the populations are not
    assert {r.policy for r in out["leaderboard"].rows} - {"human"} == {"web.a", "web.b",
                                                                  "single.a"}
    md = (tmp_path / "leaderboard.md").read_text()
    section = md[md.index("## Populations"):]
    assert "### web: participants a, b" in section and "### single: participants a" in section
    pool = json.loads((cfg.run_dir / "seed_0/web/gen_02/pool.json").read_text())
    row = next(line for line in section[section.index("### web"):].splitlines()
               if line.startswith("| 2 |"))
    shown = float(row.split("|")[2])  # one seed: the value itself, to the digits shown
    assert shown == pytest.approx(pool["crawled_synthetic_share"], abs=5e-4)
    html = (tmp_path / "leaderboard.html").read_text()
    assert ">Populations</h2>" in html and "JSD between participants" in html


@pytest.mark.slow
def test_the_rehearsal_runs_a_population_and_forecasts_it(tmp_path, capsys):
    from lmcollapse.cli import run_main

    code = run_main(["run", "--config", str(QUICKSTART), *TINY, f"output_dir={tmp_path}",
                 *population_overrides("source", "all"), "--smoke"])
    out = capsys.readouterr().out
    assert code == 0, out
    for where in ("web.a, generation 1: train", "web.b, generation 1: train",
                  "web, generation 1: pool", "web, generation 1: measure",
                  "single.a, generation 1: measure"):
        assert where in out, out
    web = next(line for line in out.splitlines() if line.strip().startswith("web:"))
    assert "train" in web and "the cell" in web  # the population costed as one unit


# --- names from settings: bounded, and old runs keep theirs --------------------------------

LONG_TRAIN = {"lr": 0.00123456789, "batch_size": 17, "weight_decay": 0.0123456789,
              "lora": {"enabled": True, "target_modules": [
                  f"model.layers.{i}.{m}" for i in (0, 1)
                  for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj",
                            "mlp.up_proj")]}}


@pytest.mark.slow
def test_settings_that_make_a_long_name_run_and_resume(tmp_path):
    """A participant whose training settings make a generation-0 folder name past what a file
    system takes (255 bytes) runs: the folder is a readable prefix and a digest; a second
    run resumes it (nothing is trained again)."""
    args = ["generations=1", "metrics.names=[perplexity]", population(
        synthetic_share=0.3, participants=[{"label": "a"}, {"label": "b", "train": LONG_TRAIN}])]
    cfg = tiny_config(tmp_path, *args)
    group = next(m.founder for m in Grid.of(cfg).lineages.values() if m.founder)
    assert len(f"gen_00@{group}") > 255
    CollapseLoop(cfg).run()
    seed = cfg.run_dir / "seed_0"
    names = sorted(p.name for p in seed.iterdir())
    long = [n for n in names if n.startswith("gen_00@")]
    assert len(long) == 1 and len(long[0]) <= 200
    assert long[0].startswith(f"gen_00@{group}"[:100])
    assert (seed / long[0] / "train.done").exists()
    assert (seed / "internet.b" / "gen_01" / "measure.done").exists()
    before = {p: p.stat().st_mtime_ns for p in seed.rglob("*.done")}
    CollapseLoop(tiny_config(tmp_path, *args)).run()
    assert {p: p.stat().st_mtime_ns for p in seed.rglob("*.done")} == before


def test_a_name_past_the_bound_is_a_prefix_and_a_digest_and_an_old_folder_is_kept(tmp_path):
    from lmcollapse.layout import MAX_NAME, Generation, RunLayout, bounded

    short = "replace@temperature=0.7"
    assert bounded(short) == short
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(bounded(a).encode()) == MAX_NAME and bounded(a) != bounded(b)
    assert bounded(a).startswith("x" * 150) and bounded("é" * 200).encode().decode()
    layout = RunLayout(tmp_path)
    key = "mix@" + "lr=0.001," * 25  # 229 characters: a folder name a run could make before
    gen = Generation(0, 1, key)
    assert layout.gen_dir(gen).parent.name == bounded(key) != key
    (tmp_path / "seed_0" / key).mkdir(parents=True)  # a run made before the bound
    assert layout.gen_dir(gen).parent.name == key
    assert len(layout.cell_lock(0, key).name.encode()) <= 255


@pytest.mark.slow
def test_a_participants_progress_names_its_populations_pool(population_run, tmp_path):
    """A stopped population: a participant's unfinished generation starts with the
    population's ``pool`` step, which lives in the population's folder, and the report's
    progress note says which of the four steps are done."""
    from lmcollapse.report import compute
    from lmcollapse.report.load import load_runs

    cfg, _ = population_run
    run = tmp_path / "run"
    shutil.copytree(cfg.run_dir, run)
    gen2 = run / "seed_0" / "web.a" / "gen_02"
    (gen2 / "metrics.json").unlink()
    for step in ("generate", "measure"):
        (gen2 / f"{step}.done").unlink()
    notes = " ".join(n for r in compute.leaderboard(load_runs([run])).rows for n in r.notes)
    assert "web.a seed 0: finished gen 1; gen 2: pool, train done, generate and measure " \
           "pending" in notes
    (run / "seed_0" / "web" / "gen_02" / "pool.done").unlink()
    (gen2 / "train.done").unlink()
    notes = " ".join(n for r in compute.leaderboard(load_runs([run])).rows for n in r.notes)
    assert "web.a seed 0: finished gen 1; gen 2: pool, train, generate and measure " \
           "pending" in notes
