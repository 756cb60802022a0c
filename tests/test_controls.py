"""The controls of a study (issue: format and token budget): the human-continuation control
(``continuations: human``) and packed training rows (``train.pack``), by hand on small
inputs and through the loop."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config

from lmcollapse import files
from lmcollapse.cells import founder_signature
from lmcollapse.data.blocks import human_continuations, human_rows, pack_rows
from lmcollapse.errors import ConfigError
from lmcollapse.grid import Grid
from lmcollapse.layout import CORPUS, MIX

# ---------------------------------------------------------------- by hand


def test_pack_rows_concatenates_short_rows_with_a_separator_and_keeps_full_ones() -> None:
    rows = [[1, 2, 3, 4], [5, 6], [7], [8, 9, 10], [11, 12, 13, 14]]
    packed = pack_rows(rows, 4, separator=0)
    # full rows as they are, then 5 6 | 7 | 8 9 10 | with a separator after each, cut by 4
    assert packed == [[1, 2, 3, 4], [11, 12, 13, 14], [5, 6, 0, 7], [0, 8, 9, 10], [0]]
    # no token is dropped: every short row's tokens, each followed by one separator
    short = [t for r in rows if len(r) < 4 for t in [*r, 0]]
    assert [t for r in packed[2:] for t in r] == short
    assert all(len(r) == 4 for r in packed[:-1])


def test_pack_rows_leaves_a_mix_of_full_blocks_alone() -> None:
    blocks = [list(range(i * 6, i * 6 + 6)) for i in range(5)]
    assert pack_rows(blocks, 6, separator=99) == blocks  # generation 0: human blocks only
    assert pack_rows([np.arange(3, dtype=np.int32)], 6, 7) == [[0, 1, 2, 7]]


def test_human_continuations_are_the_rest_of_each_prompts_block() -> None:
    human = human_rows(list(range(80)), 8, "train")  # block i holds 8i..8i+7
    corpus = [{"sample_id": f"gen_0:{i}", "origin": "gen_0", "generation": 0, "prompt_id": i,
               "input_ids": np.array([500 + i] * 3, dtype=np.int32)} for i in (4, 0, 9)]
    out = human_continuations(corpus, human, prompt_tokens=4, keep_prompt=False)
    assert [r["input_ids"].tolist() for r in out] == [[36, 37, 38], [4, 5, 6], [76, 77, 78]]
    assert [r["prompt_id"] for r in out] == [4, 0, 9]  # same rows, same order, same lengths
    assert {r["origin"] for r in out} == {"human"}
    assert out[0]["sample_id"] == "human-continuation:gen_0:4"
    # a kept prompt: the sample is prompt + continuation, so is its stand-in
    kept = [{**r, "input_ids": np.zeros(7, dtype=np.int32)} for r in corpus]
    out = human_continuations(kept, human, prompt_tokens=4, keep_prompt=True)
    assert out[1]["input_ids"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    # a continuation running past its block is refused, naming the settings
    long = [{**corpus[0], "input_ids": np.zeros(5, dtype=np.int32)}]
    with pytest.raises(ValueError, match="generate.prompt_tokens"):
        human_continuations(long, human, prompt_tokens=4, keep_prompt=False)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(("extra", "needle"), [
    (["policies=[{name: replace, continuations: human, curate: {rule: best}}]"],
     "policies[0].continuations: human stands"),
    (["policies=[{name: internet, continuations: human, participants: [{label: a}]}]"],
     "policies[0].continuations: a population"),
    (["policies=[{name: replace, continuations: human}]", "generate.new_tokens=40"],
     "policies[0].continuations: human takes"),
    (["policies=[{name: replace, continuations: humans}]"], "continuations"),
    (["train.pack=yes please"], "train.pack"),
])
def test_bad_control_settings_are_refused_naming_the_field(tmp_path, extra, needle) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(tmp_path, *extra)
    assert not (tmp_path / "quickstart").exists()


def test_packing_shares_generation_zero() -> None:
    cfg = tiny_config("/tmp/unused", "grid=[{key: train.pack, values: [false, true]}]")
    grid = Grid.of(cfg)
    assert len(grid.cells) == 6 and {c.founder for c in grid.cells.values()} == {""}
    other = tiny_config("/tmp/unused", "train.lr=0.003")
    # a real training setting still splits
    assert founder_signature(other) != founder_signature(cfg)


# ---------------------------------------------------------------- through the loop


@pytest.mark.slow
def test_controls_through_the_loop(tmp_path, monkeypatch) -> None:
    import lmcollapse.loop as loop_module
    from lmcollapse.loop import CollapseLoop

    seen: dict[str, list[list[int]]] = {}
    real = loop_module.train_generation

    def recording(acc, model, pad, rows, *args, **kwargs):
        seen[kwargs["log_tag"]] = [list(map(int, r["input_ids"])) for r in rows]
        return real(acc, model, pad, rows, *args, **kwargs)

    monkeypatch.setattr(loop_module, "train_generation", recording)
    cfg = tiny_config(tmp_path, "policies=[{name: replace}, {name: replace, label: "
                      "replace-human, continuations: human}, {name: accumulate, label: "
                      "acc-human, continuations: human}]",
                      "grid=[{key: train.pack, values: [false, true]}]")
    loop = CollapseLoop(cfg)
    loop.run()
    run, g = loop.run_dir / "seed_0", cfg.generate
    human = loop.setup.human.train
    n, block = len(human), cfg.data.block_tokens
    truth = [list(map(int, h["input_ids"][g.prompt_tokens:g.prompt_tokens + g.new_tokens]))
             for h in human]
    eos = loop.setup.tokenizer.eos_token_id

    def mix_tokens(cell: str, k: int) -> list[list[int]]:
        """The tokens of a mix, from its provenance (mix.parquet holds no tokens)."""
        corpus = {r["sample_id"]: list(r["input_ids"]) for j in range(k) for r in
                  files.read_rows((run / cell / f"gen_{j:02d}" if j else run / "gen_00") / CORPUS)}
        out = []
        for r in files.read_rows(run / cell / f"gen_{k:02d}" / MIX):
            sid = r["sample_id"]
            out.append(truth[r["prompt_id"]] if sid.startswith("human-continuation:") else
                       list(map(int, human[int(sid.rsplit(":", 1)[1])]["input_ids"]))
                       if sid.startswith("human:train:") else corpus[sid])
        return out
    # one generation 0 for all six cells: packing leaves its full human blocks alone
    assert not any((run / c / "gen_00").exists() for c in loop.grid.cells)
    assert seen["seed_0/gen_00"] == [list(map(int, h["input_ids"])) for h in human]
    for k in (1, 2):
        for pack in ("false", "true"):
            # the control's mix: the true continuation of every prompt, in corpus format
            mix = files.read_rows(run / f"replace-human@pack={pack}" / f"gen_{k:02d}" / MIX)
            corpus = files.read_rows(run / f"replace@pack={pack}" / f"gen_{k - 1:02d}" / CORPUS) \
                if k > 1 else files.read_rows(run / "gen_00" / CORPUS)
            assert len(mix) == len(corpus) == n
            assert {r["origin"] for r in mix} == {"human"}
            assert [r["prompt_id"] for r in mix] == [r["prompt_id"] for r in corpus]
            if pack == "false":  # what it trained on: each prompt's true continuation,
                # as long as the model's sample it stands in for
                rows = seen[f"seed_0/replace-human@pack=false/gen_{k:02d}"]
                assert rows == [truth[r["prompt_id"]] for r in mix]
                assert list(map(len, rows)) == [len(r["input_ids"]) for r in corpus]
            # accumulate's control: human train plus k copies of the continuations
            acc = files.read_rows(run / f"acc-human@pack={pack}" / f"gen_{k:02d}" / MIX)
            assert len(acc) == n * (k + 1)
            assert sum(r["sample_id"].startswith("human:train:") for r in acc) == n
            assert sum(r["sample_id"].startswith("human-continuation:") for r in acc) == k * n
        for cell in ("replace", "replace-human", "acc-human"):
            for pack in ("false", "true"):
                trained = seen[f"seed_0/{cell}@pack={pack}/gen_{k:02d}"]
                mix = mix_tokens(f"{cell}@pack={pack}", k)
                if pack == "false":  # the mix's rows as they are
                    assert trained == mix
                    continue
                # packed: full rows as they were, then every short row's tokens in order,
                # each followed by the end-of-text separator, cut into full-length rows
                full = [r for r in mix if len(r) == block]
                short = [t for r in mix if len(r) < block for t in [*r, eos]]
                assert trained[:len(full)] == full
                assert [t for r in trained[len(full):] for t in r] == short
                assert all(len(r) == block for r in trained[:-1])
                assert len(trained) == len(full) + -(-len(short) // block)
    # the control and the policy it controls train different text: their models differ
    a = files.read_json(run / "replace@pack=false" / "gen_02" / "metrics.json")["values"]
    b = files.read_json(run / "replace-human@pack=false" / "gen_02" / "metrics.json")["values"]
    assert a["perplexity"] != b["perplexity"]
