"""``lmcollapse bench``: one JSON record holding every figure, consistent with itself.

Nothing here asserts a speed (timings on a shared CI machine are noise); the targets are
for the printed figures."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest

from lmcollapse import bench
from lmcollapse.cells import cells
from lmcollapse.cli import build_parser
from lmcollapse.config import load_config
from lmcollapse.grid import Grid
from lmcollapse.layout import METRICS, Generation, RunLayout

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

#: the test suite's tiny quickstart (conftest.TINY), two policies and two cheap metrics
TINY_BENCH = [
    "data.synthetic.train_docs=120", "data.synthetic.validation_docs=20",
    "data.synthetic.test_docs=20", "data.synthetic.vocab_size=60", "data.synthetic.branching=6",
    "model.scratch.vocab_size=258", "model.scratch.hidden_size=32",
    "model.scratch.intermediate_size=64", "train.budget_steps=4", "train.batch_size=16",
    "generate.new_tokens=16", "generate.batch_size=64", "log_level=WARNING",
    "metrics.names=[perplexity,diversity]", "metrics.diversity.sample_size=null",
    "metrics.diversity.self_bleu_sample=20",
    "policies=[{name: replace}, {name: accumulate}]",
]

#: every ``_speedup`` key: (harness figure, baseline figure)
SPEEDUPS = {
    "generate_sample_speedup": ("generate_sample_tokens_per_s",
                                "generate_sample_naive_tokens_per_s"),
    "generate_beam_speedup": ("generate_beam_tokens_per_s", "generate_beam_naive_tokens_per_s"),
    "train_speedup": ("train_tokens_per_s", "train_trainer_tokens_per_s"),
}
FRACTIONS = ["loop_train_fraction", "loop_generate_fraction", "loop_metrics_fraction",
             "loop_bookkeeping_fraction"]
KEYS = {
    "config", "small", "device", "num_processes", "mixed_precision", "torch_threads",
    "cpu_count", "params_millions", "torch_version", "transformers_version",
    "generate_prompts", "generate_naive_prompts", "generate_batch_size", "generate_new_tokens",
    "train_steps", "train_batch_size", "train_grad_accum", "train_tokens",
    "loop_wall_s", "loop_generation_wall_s", "loop_generations_averaged", "metric_seconds",
    "peak_host_memory_gib", "peak_gpu_memory_gib", "train_model_flops_per_s", "train_mfu",
    "loop_jobs", "loop_jobs_threads", "loop_parallel_wall_s", "loop_parallel_speedup",
    "loop_parallel_identical",
    *FRACTIONS, *SPEEDUPS, *(k for pair in SPEEDUPS.values() for k in pair),
}


@pytest.mark.slow
def test_small_bench_prints_one_consistent_record(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = build_parser().parse_args(
        ["bench", "--config", str(QUICKSTART), "--small", "--prompts", "8",
         "--naive-prompts", "2", "--steps", "2", "--repeats", "1", "--out", str(out),
         *TINY_BENCH])
    assert bench.bench(load_config(args.config, args.overrides), args) == 0

    printed = capsys.readouterr().out
    record = json.loads(printed)  # stdout holds the record and nothing else
    assert json.loads(out.read_text()) == record
    assert KEYS <= record.keys(), KEYS - record.keys()
    assert record["small"] is True and record["num_processes"] == 1
    assert record["skipped"] == []
    assert record["generate_prompts"] == 8 and record["generate_naive_prompts"] == 2
    assert record["train_steps"] == 2
    assert record["train_tokens"] == 2 * 16 * 48  # steps x batch x block tokens

    assert {k for k in record if k.endswith("_speedup")} == {*SPEEDUPS, "loop_parallel_speedup"}
    for key, (harness, baseline) in SPEEDUPS.items():
        for figure in (harness, baseline):
            assert math.isfinite(record[figure]) and record[figure] > 0, figure
        assert record[key] == pytest.approx(record[harness] / record[baseline], rel=1e-12)

    # one seed, two policies, one generation each (--small)
    assert record["loop_generations_averaged"] == 2
    assert all(0.0 <= record[k] <= 1.0 for k in FRACTIONS), {k: record[k] for k in FRACTIONS}
    assert sum(record[k] for k in FRACTIONS) == pytest.approx(1.0, abs=1e-6)
    assert record["loop_generation_wall_s"] > 0 and record["loop_wall_s"] > 0
    assert set(record["metric_seconds"]) == {"perplexity", "diversity"}
    assert all(s >= 0 for s in record["metric_seconds"].values())
    assert record["peak_host_memory_gib"] > 0
    # the same units on the config's jobs (auto: one per core) give the same numbers
    if record["cpu_count"] > 1:
        assert record["loop_jobs"] == 2 and record["loop_parallel_identical"] is True
        assert record["loop_parallel_speedup"] == pytest.approx(
            record["loop_wall_s"] / record["loop_parallel_wall_s"])
    if record["device"] == "cpu":
        assert record["peak_gpu_memory_gib"] is None and record["train_mfu"] is None


def test_loop_breakdown_reads_the_step_markers(tmp_path):
    cfg = load_config(QUICKSTART, ["seeds=[0]", "generations=2", f"output_dir={tmp_path}"])
    layout = RunLayout(cfg.run_dir)
    t0 = dt.datetime(2025, 1, 1, 12, 0, 0)
    # every generation: 10 s of wall time, 4 s training, 3 s generating, 2 s measuring
    steps = {"train": (0, 5, 4.0), "generate": (5, 8.5, 3.0), "measure": (8.5, 10, 2.0)}
    for cell in cells(cfg):
        for k in (1, 2):
            d = layout.gen_dir(Generation(0, k, cell.key, cell.founder))
            d.mkdir(parents=True)
            for step, (start, end, work) in steps.items():
                layout.marker(d, step).write_text(json.dumps({
                    "step": step, "started": (t0 + dt.timedelta(seconds=start)).isoformat(),
                    "finished": (t0 + dt.timedelta(seconds=end)).isoformat(),
                    "elapsed_s": end - start, "work_s": work}))
            (d / METRICS).write_text(json.dumps({"elapsed_s": {"perplexity": k, "mauve": 4}}))

    got = bench.loop_breakdown(Grid.of(cfg))

    assert got["loop_generations_averaged"] == 2 * len(cells(cfg))
    assert got["loop_generation_wall_s"] == pytest.approx(10.0)
    assert got["loop_train_fraction"] == pytest.approx(0.4)
    assert got["loop_generate_fraction"] == pytest.approx(0.3)
    assert got["loop_metrics_fraction"] == pytest.approx(0.2)
    assert got["loop_bookkeeping_fraction"] == pytest.approx(0.1)
    assert got["metric_seconds"] == pytest.approx({"perplexity": 1.5, "mauve": 4.0})
