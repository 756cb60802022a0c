"""Grids: any generate/train key (and any policy setting) as an axis crossed with policies
and seeds; generation 0 trained once per training setting and shared by every cell whose
swept keys cannot change it; resume and the report per setting."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import text_source, tiny_config

from lmcollapse.cells import cells
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.report import compute, load
from lmcollapse.report import write as report


def test_axes_cross_policies_and_name_their_cells(tmp_path):
    cfg = tiny_config(tmp_path, "policies=[replace, {name: mix, fraction: 0.1}]",
                      "grid=[{key: generate.temperature, values: [0.7, 1.0]}, "
                      "{key: train.lr, values: [0.005, 0.001]}, "
                      "{key: policy.epochs, values: [1, 2], name: ep}]")
    grid = cells(cfg)
    assert len(grid) == 2 * 2 * 2 * 2
    cell = next(c for c in grid if c.key == "mix@temperature=0.7,lr=0.001,ep=2")
    assert cell.cfg.generate.temperature == 0.7 and cell.cfg.train.lr == 0.001
    assert cell.policy.epochs == 2 and cell.policy.fraction == 0.1
    assert cell.axes == {"generate.temperature": 0.7, "train.lr": 0.001, "policy.epochs": 2}
    # a nested policy key: the curation rule of every policy entry
    rules = cells(tiny_config(tmp_path, "grid=[{key: policy.curate.rule, values: [none, best]}]"))
    assert [c.policy.curate.rule for c in rules if c.policy.name == "replace"] == ["none", "best"]
    assert rules[-1].key.endswith("@rule=best")
    # generation 0 depends on training, not on decoding nor on a policy setting
    assert {c.founder for c in grid if c.cfg.train.lr == 0.005} == {""}  # the base lr
    assert {c.founder for c in grid if c.cfg.train.lr == 0.001} == {"lr=0.001"}


@pytest.mark.parametrize(("axis", "match"), [
    ("{key: data.block_tokens, values: [32, 48]}", r"grid\[0\]\.key: 'data\.block_tokens'"),
    ("{key: generate.new_tokens, values: [8, 16]}", r"grid\[0\]\.key: 'generate\.new_tokens'"),
    ("{key: generate.temperature, values: [1.0, -1]}",
     r"grid\[0\]\.values\[1\] \(generate\.temperature=-1\): generate\.temperature"),
    ("{key: generate.temperature, values: [1.0, 1.0]}", r"grid\[0\]\.values: give distinct"),
    ("{key: policy.fraction, values: [0.1]}", r"policy 'replace' takes no setting 'fraction'"),
])
def test_bad_axes_are_refused_naming_the_axis(tmp_path, axis, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(tmp_path, f"grid=[{axis}]")


GRID_ARGS = ["generations=1", "policies=[replace]", "metrics.names=[perplexity,diversity,mauve]",
             "grid=[{key: generate.temperature, values: [0.5, 1.0]}, "
             "{key: train.lr, values: [0.005, 0.002]}]"]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    cfg = tiny_config(root, *GRID_ARGS)
    CollapseLoop(cfg).run()
    return cfg


@pytest.mark.slow
def test_generation_zero_is_trained_once_per_training_setting(grid_run):
    seed = grid_run.run_dir / "seed_0"
    trained = sorted(p.parent.name for p in seed.glob("gen_00*/train.done"))
    assert trained == ["gen_00", "gen_00@lr=0.002"]  # 2 settings of lr, not 4 cells
    assert not (seed / "gen_00@lr=0.002" / "corpus.parquet").exists()  # its cells write own
    # the base setting (temperature 1.0, lr 0.005) uses the shared corpus 0 as it is
    base = "replace@temperature=1.0,lr=0.005"
    assert not (seed / base / "gen_00").exists()
    shared = [r["sample_id"] for r in pq.read_table(seed / "gen_00" / "corpus.parquet")
              .to_pylist()]
    mix = pq.read_table(seed / base / "gen_01" / "mix.parquet").to_pylist()
    assert [r["sample_id"] for r in mix] == shared
    # decoding at 0.5 with the shared model: its own corpus 0, no model of its own
    cold = seed / "replace@temperature=0.5,lr=0.005" / "gen_00"
    assert (cold / "corpus.parquet").exists() and not (cold / "model").exists()
    assert not (cold / "train.done").exists()
    cold_ids = [r["input_ids"] for r in pq.read_table(cold / "corpus.parquet").to_pylist()]
    hot_ids = [r["input_ids"] for r in pq.read_table(seed / "gen_00" / "corpus.parquet")
               .to_pylist()]
    assert cold_ids != hot_ids
    # the same model scored both: held-out perplexity of generation 0 is the same number
    ppl = [json.loads((d / "metrics.json").read_text())["values"]["perplexity"]
           for d in (cold, seed / "gen_00")]
    assert ppl[0] == ppl[1]
    other = json.loads((seed / "replace@temperature=1.0,lr=0.002" / "gen_00" / "metrics.json")
                       .read_text())["values"]["perplexity"]
    assert other != ppl[1]  # another learning rate, another generation-0 model


@pytest.mark.slow
def test_grid_resumes_and_reports_per_setting(grid_run, tmp_path):
    again = CollapseLoop(grid_run)
    again.run()
    assert again.timings == []
    info = json.loads((grid_run.run_dir / "experiment.json").read_text())
    assert info["cells"]["replace@temperature=0.5,lr=0.002"]["axes"] == {
        "generate.temperature": 0.5, "train.lr": 0.002}
    exps = load.load_runs([grid_run.run_dir])
    lb = compute.leaderboard(exps)
    assert sorted(r.policy for r in lb.rows if r.policy != "human") == sorted(info["cells"])
    lines = compute.sweep(exps[0], "perplexity", "generate.temperature")
    assert set(lines) == {"replace (lr=0.005)", "replace (lr=0.002)"}
    assert all(set(points) == {0.5, 1.0} for points in lines.values())
    res = report.write_report([grid_run.run_dir], out=tmp_path)
    names = {p.name for p in res["files"]}
    assert {"sweep_perplexity_generate.temperature.png", "sweep_perplexity_train.lr.png"} <= names
    # growing the grid runs only the new cells; changing another key is refused
    grown = tiny_config(grid_run.output_dir, *GRID_ARGS[:-1],
                        "grid=[{key: generate.temperature, values: [0.5, 1.0, 0.8]}, "
                        "{key: train.lr, values: [0.005, 0.002]}]")
    loop = CollapseLoop(grown)
    loop.run()
    # 2 new cells (lr 0.005, 0.002) x (own corpus 0: generate, measure; generation 1: train,
    # generate, measure)
    assert len(loop.timings) == 10
    assert all("temperature=0.8" in t["where"] for t in loop.timings)
    with pytest.raises(ConfigError, match="was started with a different config"):
        CollapseLoop(tiny_config(grid_run.output_dir, *GRID_ARGS,
                                 "train.weight_decay=0.1")).run()


@pytest.mark.slow
def test_fresh_human_text_from_the_source(tmp_path):
    """``fresh`` with ``human_source: source``: the human half of generation 1's mix is new text the
    synthetic source wrote for it (sample ids ``human:fresh1:*``), none of it human train."""
    cfg = tiny_config(tmp_path, "generations=1", "metrics.names=[perplexity]",
                      "policies=[{name: fresh, fraction: 0.5, human_source: source}]")
    CollapseLoop(cfg).run()
    seed = cfg.run_dir / "seed_0"
    mix = pq.read_table(seed / "fresh" / "gen_01" / "mix.parquet").to_pylist()
    train = pq.read_table(seed / "gen_00" / "mix.parquet").to_pylist()
    fresh = [r for r in mix if r["origin"] == "human"]
    assert len(fresh) == round(0.5 * len(train)) and len(mix) == len(train)
    assert all(r["sample_id"].startswith("human:fresh1:") for r in fresh)


def test_fresh_from_a_source_that_cannot_write_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, *text_source(tmp_path), "metrics.names=[perplexity]",
                      "policies=[{name: fresh, fraction: 0.5, human_source: source}]")
    with pytest.raises(ConfigError,
                       match=r"policies\[0\]\.human_source: 'source' needs a data source"):
        CollapseLoop(cfg).run()
    assert not (tmp_path / "quickstart").exists()


def test_a_cell_whose_values_make_a_long_name_gets_a_bounded_folder(tmp_path):
    """A grid value as long as a list of module names makes a cell key past a file name's
    255 bytes: the key stays the cell's name, its folders are a prefix and a digest."""
    from lmcollapse.layout import MAX_NAME, Generation, RunLayout

    modules = [f"model.layers.{i}.self_attn.{m}_proj" for i in range(4) for m in "qkv"]
    grid = cells(tiny_config(tmp_path, "grid=[{key: train.lora.target_modules, values: "
                             f"[null, {json.dumps(modules)}]}}]"))
    key = grid[-1].key
    assert len(key) > 255 and "@target_modules=model.layers.0" in key
    layout = RunLayout(tmp_path / "run")
    for path in (layout.gen_dir(Generation(0, 1, key)).parent,
                 layout.gen_dir(Generation(0, 0, None, grid[-1].founder)),
                 layout.cell_lock(0, key)):
        assert len(path.name.encode()) <= MAX_NAME + len("seed_0..lock")
        path.mkdir(parents=True)  # the file system takes it
