"""Rehearsal and forecast: ``lmcollapse run --smoke`` (in the spirit of Lightning's
``fast_dev_run``).

The rehearsal runs every cell of the config on its first seed through generations 0 and 1
with a handful of blocks, steps and samples, in a temporary directory, on the real paths:
the model and tokenizer as configured (a hub id, a directory, a GGUF), the data source,
the decoding, every metric, and the workers of ``--jobs`` with the threads each would
get. It prints every step's pass or failure with its time, then forecasts the full run
from what it just measured:

- training, per cell: seconds per optimizer step, per validation pass (scaled to the
  full validation set) and the fixed cost of a generation (loading, saving), times the
  steps and passes of the full run's schedule (:func:`lmcollapse.train.schedule` on the
  mix the cell's policy builds at each generation: :func:`mix_rows`);
- generation: seconds per prompt, times the full run's prompts (one per training block);
- measurement: each metric's seconds times the ratio of what it scores in the full run to
  what it scored here (its samples, or its test tokens), plus the row's bookkeeping;
- wall time: the units (seed, cell) scheduled on the workers as the run schedules them
  (a seed's generation 0 first), plus the set-up measured here;
- tokens trained, generated and scored per cell; the peak memory of the rehearsal; the
  disk the full run writes (:mod:`lmcollapse.disk`).

The rehearsal's own numbers are not results: its directory is deleted when it passes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import lmcollapse
from lmcollapse import files
from lmcollapse.cells import Cell
from lmcollapse.config import from_dict
from lmcollapse.disk import estimate
from lmcollapse.errors import ConfigError, StepError
from lmcollapse.grid import Grid
from lmcollapse.layout import MARKER_SUFFIX, METRICS, TRAIN_LOG, RunLayout
from lmcollapse.loop import CollapseLoop
from lmcollapse.parallel import Failure, make_plan, run_parallel, set_threads
from lmcollapse.plan import GENERATION, HUMAN, Step, build_plan
from lmcollapse.policies import MixContext, make_policy
from lmcollapse.registry import POLICIES
from lmcollapse.settings import ExperimentConfig
from lmcollapse.train import evaluations, schedule

log = logging.getLogger(__name__)
#: the rehearsal's training blocks: at least this many, two training batches and one
#: generation batch (so generation runs at its batch size)
SMOKE_BLOCKS = 64
#: optimizer steps per generation (a fixed budget), or one pass (epochs)
SMOKE_STEPS = 8
#: validation blocks
SMOKE_VALIDATION = 64
#: held-out perplexity scores this many windows of the test text
SMOKE_WINDOWS = 8
#: setting names of a metric's sample size (``null``: every corpus sample)
SAMPLE_KEYS = ("sample_size", "num_samples")


# --- the rehearsal's config --------------------------------------------------------------


def smoke_config(cfg: ExperimentConfig, out_dir: Path) -> ExperimentConfig:
    """``cfg`` cut to a rehearsal: its first seed, generations 0 and 1, a handful of blocks,
    steps and samples, written under ``out_dir``; everything else as configured."""
    d = cfg.to_dict()
    t, g = cfg.train, cfg.generate
    blocks = max(SMOKE_BLOCKS, 2 * t.batch_size * t.grad_accum, g.batch_size)
    if cfg.data.max_train_blocks:
        blocks = min(blocks, cfg.data.max_train_blocks)
    d.update(seeds=cfg.seeds[:1], generations=min(cfg.generations, 1), output_dir=str(out_dir),
             experiment=f"{cfg.experiment}-smoke", log_level="WARNING", log_with="none")
    d["data"].update(max_train_blocks=blocks, max_validation_blocks=min(
        cfg.data.max_validation_blocks or SMOKE_VALIDATION, SMOKE_VALIDATION))
    train = d["train"]
    if t.budget_steps is not None or t.budget_tokens is not None:
        train.update(budget_steps=min(t.budget_steps or SMOKE_STEPS, SMOKE_STEPS),
                     budget_tokens=None, eval_every=None)
    else:  # epochs: one pass over the rehearsal's blocks
        train.update(epochs=1, eval_every=None)
    for policy in d["policies"]:
        if policy.get("epochs") is not None:
            policy["epochs"] = 1
        POLICIES.get(policy["name"]).rehearsal(policy, d["generations"])
    window = cfg.data.block_tokens if cfg.model.source == "scratch" else 1024
    for settings in d["metrics"].values():  # every metric's section
        if not isinstance(settings, dict):
            continue
        for key in SAMPLE_KEYS + ("self_bleu_sample",):
            if settings.get(key) is not None:
                settings[key] = min(settings[key], blocks)
        if "max_tokens" in settings:
            cap = SMOKE_WINDOWS * (settings.get("max_length") or window)
            settings["max_tokens"] = min(settings["max_tokens"] or cap, cap)
    return from_dict(d)


def mix_rows(cell: Cell, n: int, k: int, generations: int) -> int:
    """Rows of the mix ``cell``'s policy builds at generation ``k`` from N = ``n`` human
    blocks and corpora of ``n`` samples (built on placeholders: sizes only)."""
    if k == 0:
        return n
    row: dict[str, Any] = {"sample_id": "", "input_ids": []}
    ctx = MixContext(k, [row] * n, {j: [row] * n for j in range(k)},
                     np.random.default_rng(0), generations, lambda count: [row] * count,
                     reserve=[row] * (n * generations),  # a participant's pool: ample batches
                     pool=[{**row, "batch": j} for j in range(k + 1) for _ in range(10 * n)]
                     if cell.unit else None)  # a participant crawls its unit's pool
    return len(make_policy(cell.policy, shard_seed=0).build(ctx))


# --- running it ---------------------------------------------------------------------------


def rehearse(grid: Grid, accelerator: Any, plan: Any, units: list[tuple[int, str]]) -> int:
    """Run the rehearsal of ``grid``'s config with the workers of ``plan`` (the full run's plan for
    its ``units``), print each step and the forecast; exit code 0 when every step passed,
    1 when one failed (2: bad input found before any step)."""
    tmp = Path(tempfile.mkdtemp(prefix="lmcollapse-smoke-"))
    scfg = smoke_config(grid.cfg, tmp)
    loop = CollapseLoop(scfg, accelerator)
    # the full run's workers, each with its threads and GPU (never more than the cells)
    splan = make_plan(plan.jobs, len(loop.units), plan.jobs * plan.threads,
                      list(dict.fromkeys(d for d in plan.devices if d)), plan.threads)
    print(f"rehearsal: {len(loop.units)} cell(s) of seed {scfg.seeds[0]}, generations 0-"
          f"{scfg.generations}, {scfg.data.max_train_blocks} blocks, "
          f"{_steps_text(scfg)}, on {splan.describe()}; in {tmp}", flush=True)
    failure: Exception | None = None
    try:
        if splan.jobs == 1:
            set_threads(splan.threads)
            loop.run()
        else:
            run_parallel(loop, splan)
    except (StepError, Failure, ConfigError) as err:
        failure = err
    steps = read_steps(loop.run_dir)
    for s in steps:
        print(f"  PASS {s['elapsed_s']:7.1f} s  {s['where']}: {s['step']}")
    if failure is not None:
        print(f"  FAIL            {failure}")
        print(f"rehearsal failed; its directory is kept: {tmp}")
        return 2 if isinstance(failure, ConfigError) and not steps else 1
    fc = forecast(grid, scfg, loop.run_dir, plan, loop.setup, units)
    print(describe(fc))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _steps_text(scfg: ExperimentConfig) -> str:
    t = scfg.train
    return (f"{t.budget_steps} steps a generation" if t.budget_steps is not None
            else "one pass a generation")


def read_steps(run_dir: Path) -> list[dict[str, Any]]:
    """Every finished step of a run directory (its markers), in the order they finished."""
    out = []
    for marker in run_dir.rglob(f"*{MARKER_SUFFIX}"):
        rec = files.read_json(marker)
        rel = marker.parent.relative_to(run_dir).parts
        out.append({**rec, "dir": marker.parent, "where": _where(rel)})
    return sorted(out, key=lambda r: r["finished"])


def _where(parts: tuple[str, ...]) -> str:
    seed = parts[0].removeprefix("seed_")
    if parts[1] == "human":
        return f"seed {seed}, human reference"
    if len(parts) == 2:
        return f"seed {seed}, generation 0 (shared{', ' + parts[1][7:] if '@' in parts[1] else ''})"
    return f"seed {seed}, {parts[1]}, generation {int(parts[2].removeprefix('gen_'))}"


# --- the forecast -------------------------------------------------------------------------


def forecast(grid: Grid, scfg: ExperimentConfig, smoke_dir: Path, plan: Any,
             setup: Any, full_units: list[tuple[int, str]]) -> dict[str, Any]:
    """The ``full_units`` of ``grid`` on ``plan``'s workers, from the rehearsal in
    ``smoke_dir`` (config ``scfg``): seconds per unit and phase, the wall time, tokens,
    memory, disk."""
    cfg, cells = grid.cfg, grid.cells
    layout, steps = RunLayout(smoke_dir), read_steps(smoke_dir)
    sizes = files.read_json(layout.experiment_json)["sizes"]
    n_smoke = sizes["train_blocks"]
    n_full = _blocks(sizes["train_tokens"], cfg.data.block_tokens, cfg.data.max_train_blocks)
    val_full = _blocks(sizes["validation_tokens"], cfg.data.block_tokens,
                       cfg.data.max_validation_blocks)
    ratio = {"prompts": n_full / n_smoke, "validation": val_full / sizes["validation_blocks"]}
    seed = scfg.seeds[0]
    measured = {str(s["dir"].relative_to(smoke_dir)) + "/" + s["step"]: s for s in steps}

    def cost(step: Step) -> dict[str, float]:
        """A step of the full run, from its rehearsal counterpart (generation k >= 1: the
        rehearsal's generation 1 of the cell, on the full run's mix and sizes); a unit
        kind's own steps (a population's pool and row) count as measuring."""
        smoke = None if step.gen is None else dataclasses.replace(
            step.gen, seed=seed, k=min(step.gen.k, 1))
        d = layout.human(seed) if smoke is None else layout.gen_dir(smoke)
        marker = measured.get(f"{d.relative_to(smoke_dir)}/{step.kind}")
        if marker is None:
            return {}
        if step.target not in (GENERATION, HUMAN):
            return {"measure": marker["elapsed_s"] * ratio["prompts"]}
        if step.kind == "train":
            k, cell = step.gen.k, grid.cell(step.gen.cell_key) if step.gen.cell_key else None
            rows = mix_rows(cell, n_full, k, cfg.generations) if cell else n_full
            seconds, tokens = _train_cost(d, marker, grid.train_settings(smoke), rows,
                                          ratio["validation"])
            return {"train": seconds, "train_tokens": tokens}
        if step.kind == "generate":
            return {"generate": marker["elapsed_s"] * ratio["prompts"]}
        return {"measure": _measure_cost(d, marker, cfg, scfg, sizes, n_full, n_smoke)}

    # every cell's steps, as one seed of the full run takes them (lmcollapse.plan)
    costed = [(step, cost(step)) for step in build_plan(grid, [(cfg.seeds[0], key)
                                                               for key in cells])]
    shared = [c for step, c in costed if step.unit is None]
    per_cell = {key: [c for step, c in costed if step.unit == key] for key in cells}
    #: a cell's last generation (a population's: every participant's, its pool and row)
    last = {key: {p: sum(c.get(p, 0.0) for step, c in costed if step.unit == key
                         and step.gen.k == cfg.generations)
                  for p in ("train", "generate", "measure")} for key in cells}
    shared_s = sum(_total(c) for c in shared)
    units = [(s, key, sum(_total(c) for c in per_cell[key])) for s, key in full_units]
    started = min(s["started"] for s in steps)
    setup_s = max(0.0, _ts(started) - lmcollapse.STARTED)
    wall = setup_s + simulate(units, shared_s, plan.jobs)
    seeds = len({s for s, _, _ in units})
    phases = {p: seeds * sum(c.get(p, 0.0) for c in shared)
              + sum(c.get(p, 0.0) for _, key, _ in units for c in per_cell[key])
              for p in ("train", "generate", "measure")}
    tokens = {
        "train_per_cell_generation": _mean([c.get("train_tokens", 0.0) for key in cells
                                            for c in per_cell[key] if "train" in c]),
        "generate_per_generation": n_full * cfg.generate.new_tokens,
        "score_test_tokens": sizes["test_tokens"]}
    return {"wall_s": wall, "setup_s": setup_s, "work_s": sum(u[2] for u in units)
            + shared_s * seeds, "phases_s": phases, "shared_per_seed_s": shared_s,
            "unit_s": {key: sum(_total(c) for c in per_cell[key]) for key in cells},
            "per_generation_s": last,
            "units": len(units), "jobs": plan.jobs, "threads": plan.threads,
            "train_blocks": n_full, "tokens": tokens, "peak_memory_gb": _peak_memory_gb(),
            "disk_bytes": _disk(grid, full_units, setup, n_full)}


def _blocks(tokens: int, block: int, cap: int | None) -> int:
    return min(tokens // block, cap) if cap else tokens // block


def _ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _train_cost(d: Path, marker: dict[str, Any], tcfg: Any, rows: int,
                val_ratio: float) -> tuple[float, float]:
    """A full generation's training seconds and tokens from the rehearsal's: per step, per
    validation pass and fixed, on the full schedule (one process trains a cell)."""
    processes = 1
    records = [json.loads(line) for line in (d / TRAIN_LOG).read_text().splitlines() if line]
    last = records[-1]
    step_s = max(0.0, last["elapsed_s"] - last["eval_s"]) / max(1, last["step"])
    eval_s = last["eval_s"] / max(1, len(records))
    fixed = max(0.0, marker["elapsed_s"] - last["elapsed_s"])
    mean_len = last["tokens_per_step"] / (tcfg.batch_size * tcfg.grad_accum * processes)
    batches = math.ceil(rows / (tcfg.batch_size * processes))
    _, tokens_per_step, total, every = schedule(tcfg, batches, mean_len, processes)
    cost = fixed + total * step_s + evaluations(total, every) * eval_s * val_ratio
    return cost, total * tokens_per_step


def _measure_cost(d: Path, marker: dict[str, Any], cfg: ExperimentConfig,
                  scfg: ExperimentConfig, sizes: dict[str, int], n_full: int,
                  n_smoke: int) -> float:
    """A full row's measurement seconds: each metric's rehearsal seconds times the ratio of
    its full size to its rehearsal size, plus the row's bookkeeping."""
    seconds = files.read_json(d / METRICS).get("elapsed_s", {})
    total = max(0.0, marker["elapsed_s"] - sum(seconds.values()))
    test = sizes["test_tokens"]
    for name, s in seconds.items():
        full, smoke = cfg.metrics.of(name), scfg.metrics.of(name)
        r = 1.0
        if hasattr(full, "max_tokens"):
            r = min(full.max_tokens or test, test) / max(1, min(smoke.max_tokens or test, test))
        else:
            for key in SAMPLE_KEYS:
                if hasattr(full, key):
                    r = (min(getattr(full, key) or n_full, n_full)
                         / max(1, min(getattr(smoke, key) or n_smoke, n_smoke)))
        total += s * r
    return total


def _total(cost: dict[str, float]) -> float:
    return sum(v for k, v in cost.items() if k in ("train", "generate", "measure"))


def simulate(units: list[tuple[int, str, float]], shared_s: float, jobs: int) -> float:
    """Seconds until the last unit ends on ``jobs`` workers, scheduled as
    :class:`lmcollapse.parallel.Scheduler` does: a unit of a seed whose generation 0 is
    built first, else one of a seed nobody is on (its worker builds generation 0:
    ``shared_s`` more), else the next one, which waits for its seed's generation 0."""
    free = [0.0] * max(1, jobs)
    built: dict[int, float] = {}  # seed -> when its generation 0 is ready
    running: dict[int, float] = {}  # seed -> when its first unit's worker started it
    pending = list(units)
    while pending:
        w = min(range(len(free)), key=free.__getitem__)
        now = free[w]
        ready = [u for u in pending if u[0] in built and built[u[0]] <= now]
        fresh = [u for u in pending if u[0] not in running]
        seed, _, cost = (ready or fresh or pending)[0]
        pending.remove((ready or fresh or pending)[0])
        if seed not in running:
            running[seed] = now
            built[seed] = now + shared_s
            free[w] = built[seed] + cost
        else:
            free[w] = max(now, built[seed]) + cost
    return max(free)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _peak_memory_gb() -> float:
    """Peak resident memory of this process and of its finished workers."""
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return rss / 1024 ** 2  # kilobytes on Linux


def _disk(grid: Grid, units: list[tuple[int, str]], setup: Any, n_full: int) -> int:
    arch = setup.model_config
    return estimate(grid, build_plan(grid, units), arch, n_full,
                    getattr(arch, "hidden_size", None)).total


def describe(fc: dict[str, Any]) -> str:
    """The forecast as lines for people."""
    def t(s: float) -> str:
        return (f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min" if s >= 90
                else f"{s:.0f} s")

    lines = [f"forecast of the full run ({fc['units']} units, {fc['jobs']} worker(s) x "
             f"{fc['threads']} thread(s), {fc['train_blocks']} training blocks):"]
    for key, gen in fc["per_generation_s"].items():
        lines.append(f"  {key}: a generation {t(_total(gen))} (train {gen.get('train', 0):.1f} s"
                     f", generate {gen.get('generate', 0):.1f} s, measure "
                     f"{gen.get('measure', 0):.1f} s); the cell {t(fc['unit_s'][key])}")
    ph = fc["phases_s"]
    work = sum(ph.values()) or 1.0
    lines.append(f"  generation 0 and the human row of a seed: {t(fc['shared_per_seed_s'])}")
    lines.append(f"  work: {t(fc['work_s'])} (train {ph['train'] / work:.0%}, generate "
                 f"{ph['generate'] / work:.0%}, measure {ph['measure'] / work:.0%}); tokens "
                 f"per cell and generation: train {fc['tokens']['train_per_cell_generation']:.3g}"
                 f", generate {fc['tokens']['generate_per_generation']:.3g}, score "
                 f"{fc['tokens']['score_test_tokens']:.3g} test tokens")
    lines.append(f"  wall time: {t(fc['wall_s'])} (set-up {t(fc['setup_s'])}); peak memory of "
                 f"the rehearsal {fc['peak_memory_gb']:.2f} GB; disk about "
                 f"{fc['disk_bytes'] / 1e9:.2f} GB")
    return "\n".join(lines)
