"""The reserve (``data.fresh_reserve``): human text held back from generation 0 and every
mix, from which ``fresh`` with ``human_source: reserve`` draws truly fresh shards."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import text_source, tiny_config
from transformers import AutoTokenizer

from lmcollapse.cells import cells
from lmcollapse.config import load_config
from lmcollapse.data.base import hold_back, hold_out
from lmcollapse.data.blocks import human_rows, tokenize_records
from lmcollapse.data.text import read_records
from lmcollapse.errors import ConfigError
from lmcollapse.layout import RunLayout
from lmcollapse.loop import CollapseLoop
from lmcollapse.policies import MixContext
from lmcollapse.policies.fresh import Fresh
from lmcollapse.preflight import check_compatible

N, BLOCK = 50, 4


def _ctx(k: int, reserve: list[dict], generations: int = 4) -> MixContext:
    human = human_rows(list(range(N * BLOCK)), BLOCK, "train")
    corpora = {j: [{"sample_id": f"gen_{j}:{i}", "origin": f"gen_{j}", "generation": j,
                    "prompt_id": i, "input_ids": [j] * BLOCK} for i in range(N)]
               for j in range(k)}
    return MixContext(k, human, corpora, np.random.default_rng(k), generations,
                      reserve=reserve)


def test_fresh_from_the_reserve_draws_disjoint_shards_and_no_train_block():
    reserve = human_rows(list(range(1000, 1000 + 30 * BLOCK)), BLOCK, "reserve")
    policy = Fresh.with_settings(fraction=0.1, human_source="reserve", shard_seed=5)
    seen: set[str] = set()
    for k in range(1, 5):
        mix = policy.build(_ctx(k, reserve))
        human = [r["sample_id"] for r in mix if r["origin"] == "human"]
        assert len(mix) == N and len(human) == round(0.1 * N)
        assert all(s.startswith("human:reserve:") for s in human)  # never a train block
        assert not seen & set(human)  # each generation's shard is new
        seen |= set(human)
        assert {r["origin"] for r in mix} - {"human"} == {f"gen_{k - 1}"}
    assert Fresh.reserve_needed(policy.config, N, 4) == 4 * 5 == len(seen)
    with pytest.raises(ValueError, match="no shard of 5 blocks left for generation 7"):
        policy.build(_ctx(7, reserve))  # 30 blocks: six shards of 5


def test_hold_back_takes_the_last_records():
    records = [f"r{i}" for i in range(10)]
    assert hold_back(records, 0.0) == (records, [])
    assert hold_back(records, 0.3) == (records[:7], records[7:])
    assert hold_back(records, 0.01) == (records[:9], records[9:])  # at least one


@pytest.mark.parametrize(("overrides", "field", "allowed"), [
    (["policies=[{name: fresh, fraction: 0.1, human_source: reserve}]"],
     r"policies\[0\]\.human_source",
     "set data.fresh_reserve"),
    (["data.fresh_reserve=0.2"], "data.fresh_reserve", "no policy would use"),
    (["data.fresh_reserve=1.0", "policies=[{name: fresh, fraction: 0.1, human_source: reserve}]"],
     "data.fresh_reserve", r"in \[0, 1\)"),
    (["policies=[{name: fresh, human_source: stock}]"], r"policies\[0\]\.human_source", "reserve"),
])
def test_a_reserve_setting_that_cannot_work_is_refused(overrides, field, allowed):
    with pytest.raises(ConfigError, match=f"{field}.*{allowed}"):
        load_config(None, overrides)


def test_a_reserve_too_small_is_refused_before_any_work(tmp_path):
    cfg = tiny_config(tmp_path, *text_source(tmp_path), "generations=3",
                      "metrics.names=[perplexity]", "data.fresh_reserve=0.05",
                      "policies=[{name: fresh, fraction: 0.1, human_source: reserve}]")
    with pytest.raises(ConfigError) as err:
        CollapseLoop(cfg).run()
    msg = str(err.value)
    assert msg.startswith("data.fresh_reserve: fresh (fresh) draws ")
    assert "blocks of never-seen human text over 3 generations from a training pool" in msg
    assert "raise data.fresh_reserve (about 0." in msg
    assert not cfg.run_dir.exists()  # nothing written
    # no share under 1 would do: the message says only what would
    cfg = tiny_config(tmp_path, *text_source(tmp_path), "generations=3",
                      "metrics.names=[perplexity]", "data.fresh_reserve=0.05",
                      "policies=[{name: fresh, fraction: 0.3, human_source: reserve}]")
    with pytest.raises(ConfigError, match=r"holds \d+ blocks; draw less human text per "
                       "generation, or run fewer generations$"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


def test_a_reserve_that_leaves_too_little_train_is_named(tmp_path):
    """A reserve of nearly every record leaves too few train blocks: the refusal names the
    reserve as a way out, not only the text and the block size."""
    cfg = tiny_config(tmp_path, *text_source(tmp_path), "metrics.names=[perplexity]",
                      "data.fresh_reserve=0.999",
                      "policies=[{name: fresh, fraction: 0.1, human_source: reserve}]")
    with pytest.raises(ConfigError, match=r"^data: the train split gives \d+ blocks .*"
                       r"data\.fresh_reserve=0\.999 having held back \d+ of its \d+ records "
                       r"for the reserve\); need at least 16\. Use more text or a smaller "
                       r"data\.block_tokens or data\.fresh_reserve\.$"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


@pytest.mark.slow
def test_the_reserve_through_the_loop(tmp_path):
    """Generation 0 and the other policies never see the reserve; fresh's human blocks
    come from it, a new shard each generation; experiment.json states the sizes."""
    cfg = tiny_config(tmp_path, *text_source(tmp_path), "generations=2",
                      "metrics.names=[perplexity]", "data.fresh_reserve=0.3",
                      "policies=[{name: fresh, fraction: 0.2, human_source: reserve}, "
                      "{name: mix, fraction: 0.2}]")
    CollapseLoop(cfg).run()
    seed = cfg.run_dir / "seed_0"
    sizes = json.loads((cfg.run_dir / "experiment.json").read_text())["sizes"]
    zero = pq.read_table(seed / "gen_00" / "mix.parquet").to_pylist()
    assert len(zero) == sizes["train_blocks"] and sizes["reserve_blocks"] >= 2 * round(
        0.2 * len(zero))
    assert all(r["sample_id"].startswith("human:train:") for r in zero)
    shards = []
    for k in (1, 2):
        fresh = pq.read_table(seed / "fresh" / f"gen_0{k}" / "mix.parquet").to_pylist()
        human = {r["sample_id"] for r in fresh if r["origin"] == "human"}
        assert len(human) == round(0.2 * len(zero)) and len(fresh) == len(zero)
        assert all(s.startswith("human:reserve:") for s in human)
        shards.append(human)
        mix = pq.read_table(seed / "mix" / f"gen_0{k}" / "mix.parquet").to_pylist()
        assert not any(r["sample_id"].startswith("human:reserve:") for r in mix)
    assert not shards[0] & shards[1]
    # by content: generation 0's blocks are cut from the records before the reserve, the
    # fresh blocks from the reserve's records (the last 30% of train after validation)
    records, _ = hold_out(read_records(tmp_path / "train.txt"), "v", "train")
    kept, reserve = hold_back(records, 0.3)
    tok = AutoTokenizer.from_pretrained(cfg.run_dir / "tokenizer")
    block = cfg.data.block_tokens
    kept_stream = [t for r in tokenize_records(tok, kept) for t in r]
    reserve_stream = [t for r in tokenize_records(tok, reserve) for t in r]
    setup = CollapseLoop(cfg).prepare()  # what the run trained on and drew from
    setup.release()
    assert [r["input_ids"] for r in setup.human.train] == [
        kept_stream[i * block:(i + 1) * block] for i in range(len(zero))]
    assert [r["input_ids"] for r in setup.human.reserve] == [
        reserve_stream[i * block:(i + 1) * block] for i in range(len(reserve_stream) // block)]
    assert len(setup.human.reserve) == sizes["reserve_blocks"]


def test_a_grid_may_sweep_the_pool_with_a_reserve():
    """The reserve is checked over every cell: a grid point drawing from it is enough."""
    cfg = load_config(None, ["data.fresh_reserve=0.3", "policies=[{name: fresh, fraction: 0.1}]",
                             "grid=[{key: policy.human_source, values: [shards, reserve]}]"])
    pools = {c.key: c.policy.settings.human_source for c in cells(cfg)}
    assert sorted(pools.values()) == ["reserve", "shards"]
    with pytest.raises(ConfigError, match="no policy would use"):
        load_config(None, ["data.fresh_reserve=0.3", "policies=[{name: fresh, fraction: 0.1}]",
                           "grid=[{key: policy.fraction, values: [0.1, 0.2]}]"])


@pytest.mark.slow
def test_a_run_begun_before_the_reserve_existed_resumes(tmp_path):
    """An experiment.json written without data.fresh_reserve (older code) is compared with
    the key's default, so the run resumes instead of being refused as another config."""
    cfg = tiny_config(tmp_path, "generations=1", "metrics.names=[perplexity]",
                      "policies=[replace]")
    CollapseLoop(cfg).run()
    path = cfg.run_dir / "experiment.json"
    record = json.loads(path.read_text())
    del record["config"]["data"]["fresh_reserve"]
    path.write_text(json.dumps(record))
    loop = CollapseLoop(cfg)
    loop.run()
    assert loop.timings == []  # nothing redone
    with pytest.raises(ConfigError, match=r"data.fresh_reserve: None -> 0.2|fresh_reserve"):
        CollapseLoop(tiny_config(tmp_path, "generations=1", "metrics.names=[perplexity]",
                                 "policies=[{name: fresh, human_source: reserve, fraction: 0.1}]",
                                 "data.fresh_reserve=0.2")).run()


def test_fresh_reads_its_old_key_pool_as_human_source(tmp_path):
    """``fresh``'s ``pool`` was renamed ``human_source`` (``internet``'s word for the same
    choice): a config or a run directory that says ``pool`` is read as before, both keys
    at once are refused, and a run begun under the old name resumes."""
    cfg = load_config(None, ["data.fresh_reserve=0.3",
                             "policies=[{name: fresh, fraction: 0.1, pool: reserve}]"])
    assert cfg.policies[0].settings.human_source == "reserve"
    assert "pool" not in cfg.to_dict()["policies"][0]
    with pytest.raises(ConfigError, match=r"policies\[0\]\.pool: the old name of human_source"):
        load_config(None, ["policies=[{name: fresh, pool: shards, human_source: shards}]"])
    cfg = tiny_config(tmp_path, "policies=[{name: fresh, fraction: 0.1, human_source: source}]")
    layout = RunLayout(cfg.run_dir)
    old = cfg.to_dict()
    old["policies"][0]["pool"] = old["policies"][0].pop("human_source")
    layout.root.mkdir(parents=True)
    layout.experiment_json.write_text(json.dumps({"config": old}))
    check_compatible(cfg, layout)  # the same config: no refusal
    other = tiny_config(tmp_path, "policies=[{name: fresh, fraction: 0.1, human_source: shards}]")
    with pytest.raises(ConfigError, match="different config"):
        check_compatible(other, layout)
