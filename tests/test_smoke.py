"""``lmcollapse run --smoke``: the rehearsal runs every cell and metric on the real paths
and reports each step; a failing step is reported with its message; the forecast's parts
match a computation by hand on a small case; the Shumailov config rehearses on CPU with a
local OPT and WikiText-2 text from files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART, TINY, tiny_config
from test_pretrained import _ids, _tokenizer
from transformers import OPTConfig, OPTForCausalLM

from lmcollapse import files
from lmcollapse.cells import cells
from lmcollapse.cli import run_main
from lmcollapse.config import load_config
from lmcollapse.smoke import _train_cost, mix_rows, simulate, smoke_config

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


def _passes(out: str) -> list[str]:
    return [line.split(" s  ", 1)[1] for line in out.splitlines() if line.startswith("  PASS")]


@pytest.mark.slow
def test_the_rehearsal_runs_every_cell_and_forecasts(tmp_path, capsys):
    code = run_main(["run", "--config", str(QUICKSTART), *TINY, "seeds=[3,4]",
                     "generations=3", f"output_dir={tmp_path}", "--smoke"])
    out = capsys.readouterr().out
    assert code == 0, out
    passed = _passes(out)
    for step in ("train", "generate", "measure"):  # the shared generation 0 and every cell
        assert f"seed 3, generation 0 (shared): {step}" in passed
        for cell in ("replace", "mix-0.1", "accumulate"):
            assert f"seed 3, {cell}, generation 1: {step}" in passed
    assert "seed 3, human reference: measure" in passed
    assert not any("seed 4" in p or "generation 2" in p for p in passed)  # first seed, 0-1
    assert "forecast of the full run (6 units" in out and "wall time:" in out
    assert not (tmp_path / "quickstart").exists()  # the real run directory is untouched
    tmp = next(line.split(" in ")[-1] for line in out.splitlines() if
               line.startswith("rehearsal:"))
    assert not Path(tmp).exists()  # removed once it passed


def test_a_failing_step_is_reported_and_its_directory_kept(tmp_path, capsys, monkeypatch):
    import lmcollapse.loop

    def boom(*args, **kwargs):
        raise RuntimeError("beam search ran out of memory")

    monkeypatch.setattr(lmcollapse.loop, "generate_corpus", boom)
    code = run_main(["run", "--config", str(QUICKSTART), *TINY, f"output_dir={tmp_path}",
                     "--smoke"])
    out = capsys.readouterr().out
    assert code == 1
    assert _passes(out) == ["seed 0, generation 0 (shared): train"]
    fail = next(line for line in out.splitlines() if line.startswith("  FAIL"))
    assert ("generation 0, step generate failed: RuntimeError: beam search ran out of memory"
            in fail)
    kept = Path(out.strip().splitlines()[-1].split("kept: ")[1])
    assert (kept / "quickstart-smoke" / "seed_0" / "gen_00" / "train.done").exists()


def test_the_rehearsal_config_keeps_paths_and_cuts_sizes(tmp_path):
    cfg = load_config(ROOT / "configs" / "shumailov2023.yaml")
    s = smoke_config(cfg, tmp_path)
    assert (s.seeds, s.generations, s.data.max_train_blocks, s.train.epochs) == ([0], 1, 64, 1)
    assert [p.epochs for p in s.policies] == [1, 1]
    assert (s.model, s.generate) == (cfg.model, cfg.generate)  # the real model and decoding
    assert s.metrics.names == cfg.metrics.names
    assert s.metrics.of("perplexity").max_tokens == 8 * 1024
    assert s.metrics.of("diversity").sample_size == 64


def test_mix_rows_follow_each_policy(tmp_path):
    cfg = tiny_config(tmp_path, "policies=[replace,{name: mix, fraction: 0.1},accumulate,"
                      "{name: accumulate-subsample},{name: fresh, fraction: 0.2}]")
    got = {c.key: [mix_rows(c, 100, k, 3) for k in range(4)] for c in cells(cfg)}
    assert got["replace"] == got["mix"] == [100] * 4
    assert got["accumulate"] == [100, 200, 300, 400]  # human + every corpus so far
    assert got["accumulate-subsample"] == got["fresh"] == [100] * 4


def test_the_schedule_is_simulated_as_the_scheduler_hands_out_units():
    units = [(0, "a", 10.0), (0, "b", 10.0), (1, "a", 10.0), (1, "b", 10.0)]
    # worker 0: seed 0's generation 0 (5) then its cell a; worker 1: seed 1 the same; then
    # each takes the other cell of a seed whose generation 0 is built
    assert simulate(units, 5.0, 2) == 25.0
    assert simulate(units, 5.0, 1) == 50.0
    assert simulate(units, 5.0, 4) == 5.0 + 10.0  # a second unit of a seed waits for it


def test_training_is_forecast_from_steps_passes_and_fixed_costs(tmp_path):
    """8 steps in 2.0 s of which 0.4 s in 4 validation passes, 0.5 s outside the loop: a
    full generation of 100 steps (4 passes, validation set 3x larger) by hand."""
    files.write_jsonl(tmp_path / "train_log.jsonl", [
        {"step": 4 * i, "elapsed_s": 0.5 * i, "eval_s": 0.1 * i, "tokens_per_step": 64 * 48}
        for i in (1, 2, 3, 4)])
    tcfg = tiny_config(tmp_path, "train.budget_steps=100", "train.batch_size=64").train
    seconds, tokens = _train_cost(tmp_path, {"elapsed_s": 2.5}, tcfg, rows=653, val_ratio=3.0)
    step_s, eval_s = (2.0 - 0.4) / 16, 0.4 / 4
    assert math.isclose(seconds, 0.5 + 100 * step_s + 4 * eval_s * 3.0)
    assert tokens == 100 * 64 * 48


@pytest.mark.slow
@pytest.mark.skipif(not (WIKITEXT / "valid.txt").exists(), reason="needs ../shared/data")
def test_shumailov_config_rehearses_on_cpu_with_local_files(tmp_path, capsys):
    """The paper's config with a small OPT saved here (an OPT-style tokenizer: BOS before
    every text, a 1024-token context) and WikiText-2 from files: every step passes (5-beam
    generation, epochs with select_best, the reference histograms' scores)."""
    tok = _tokenizer(tmp_path, bos=True)
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                             max_position_embeddings=1024, **_ids(tok))
                   ).save_pretrained(tmp_path / "opt")
    tok.save_pretrained(tmp_path / "opt")
    code = run_main(["run", "--config", str(ROOT / "configs" / "shumailov2023.yaml"), "--smoke",
                     "model.name_or_path=" + str(tmp_path / "opt"), "data.source=text",
                     f"data.text.train={WIKITEXT / 'valid.txt'}",
                     f"data.text.test={WIKITEXT / 'test.txt'}", f"output_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0, out
    passed = _passes(out)
    assert len(passed) == 3 + 1 + 2 * 3  # generation 0, the human row, 2 cells x 3 steps
    assert "replace-5ep: a generation" in out and "mix-0.1-10ep: a generation" in out
