"""``lmcollapse bench``: what a config costs on this machine, against plain baselines.

    lmcollapse bench --config configs/quickstart.yaml                 # several minutes
    lmcollapse bench --config configs/quickstart.yaml --small         # about a minute (CI)
    lmcollapse bench --config configs/quickstart.yaml --out bench.json
    accelerate launch scripts/bench.py --config configs/shumailov2023.yaml

Prints one JSON record on stdout (progress goes to stderr; ``--out`` also writes it to a
file) of figures measured in one process on the current machine, side by side:

1. **Generation** (``generate_*``): new tokens/s of the harness
   (:func:`~lmcollapse.generate.generate_corpus`, the config's ``generate.batch_size``)
   against a naive loop that calls ``model.generate`` once per prompt with the same model,
   prompts and decoding, for sampling (the config's temperature/top-p/top-k) and for
   5-way beam search.
2. **Training** (``train_*``): tokens/s of the harness
   (:func:`~lmcollapse.train.train_generation`) against ``transformers.Trainer`` with the
   same data, initial weights, batch, accumulation, steps, AdamW settings and schedule, each
   finishing with one evaluation on the same validation blocks.
3. **The loop** (``loop_*``): the config's own collapse loop, run for real in a temporary
   run directory, and where a generation's wall time goes (training, generation, metrics,
   and the loop's bookkeeping between them), read from the step markers; then the
   seconds of each metric and the process's peak memory.

A key ending in ``_speedup`` is always harness / baseline (above 1: the harness is faster).
Each timed figure is the best of ``--repeats`` runs, harness and baseline alternating,
after a warm-up of each, so neither pays first-call costs. The model is the config's with
untrained weights (as fast as trained ones), so the figures predict a run's cost. Under
``accelerate launch`` every process benchmarks its share of the harness and the main
process prints; the naive loop and the Trainer are single-process baselines and are then
skipped (``null``, named in ``skipped``).

``--small`` shrinks the loop (one seed, one generation, 20 training steps, the tiny
language and model of the test suite) and the prompt and step counts, to run in about a
minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from lmcollapse import files
from lmcollapse.config import load_config
from lmcollapse.data.base import load_human_text
from lmcollapse.data.blocks import HumanData, Sample, prepare_human_data
from lmcollapse.generate import eos_token_ids, generate_corpus, generation_config
from lmcollapse.grid import Grid
from lmcollapse.layout import METRICS, STEPS, Generation, RunLayout
from lmcollapse.loop import CollapseLoop
from lmcollapse.models import load_tokenizer, model_config, random_model, starting_model
from lmcollapse.parallel import cpu_cores, make_plan, run_parallel, set_threads, visible_gpus
from lmcollapse.preflight import make_accelerator
from lmcollapse.settings import ExperimentConfig, GenerateConfig
from lmcollapse.train import Collate, train_generation, with_lora

#: what ``--small`` adds to the loop's config (before the command line's own overrides):
#: one seed and one generation of the test suite's tiny language and model
SMALL_LOOP = [
    "seeds=[0]", "generations=1", "train.budget_steps=20",
    "data.synthetic.train_docs=120", "data.synthetic.validation_docs=20",
    "data.synthetic.test_docs=20", "data.synthetic.vocab_size=60",
    "data.synthetic.branching=6", "model.scratch.vocab_size=258",
    "model.scratch.hidden_size=32", "model.scratch.intermediate_size=64",
    "train.batch_size=16", "generate.new_tokens=16", "generate.batch_size=64",
    "log_level=WARNING", "metrics.mauve.num_samples=null",
    "metrics.diversity.sample_size=null", "metrics.diversity.self_bleu_sample=50",
    "metrics.reference.sample_size=null", "metrics.tail.sample_size=null",
]
#: peak dense bf16 FLOP/s of one GPU, by a part of its name (first match wins)
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12),
                   ("A100", 312e12))
#: the beam width of the beam-search comparison
BEAMS = 5
#: validation blocks both trainers evaluate on at the end
VALIDATION_BLOCKS = 8
#: (harness prompts, naive-loop prompts, optimizer steps, repeats): full and --small
FULL_SIZES, SMALL_SIZES = (512, 32, 30, 3), (128, 8, 8, 2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lmcollapse bench`` (beside ``--config`` and overrides)."""
    p.add_argument("--small", action="store_true",
                   help="shrink the loop and the counts to run in about a minute on a CPU")
    p.add_argument("--out", default=None, help="also write the JSON record to this file")
    sized = (("--prompts", "prompts the harness continues"),
             ("--naive-prompts", "prompts the naive per-prompt loop continues"),
             ("--steps", "optimizer steps to time"),
             ("--repeats", "timed runs of each side, best kept"))
    for i, (flag, what) in enumerate(sized):  # the order of FULL_SIZES
        p.add_argument(flag, type=int, default=None,
                       help=f"{what} (default {FULL_SIZES[i]}, --small {SMALL_SIZES[i]})")
    p.add_argument("--loop-dir", default=None,
                   help="run the loop in this new directory and keep it (default: a "
                        "temporary directory, removed afterwards)")
    p.add_argument("--no-loop", action="store_true",
                   help="skip the loop section (its keys are then null)")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each section does."""

    prompts: int
    naive_prompts: int
    steps: int
    repeats: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sizes:
        default = SMALL_SIZES if args.small else FULL_SIZES
        given = (args.prompts, args.naive_prompts, args.steps, args.repeats)
        sizes = cls(*(d if g is None else g for g, d in zip(given, default, strict=True)))
        for name, value in dataclasses.asdict(sizes).items():
            if value < 1:
                raise ValueError(f"bench: --{name.replace('_', '-')} must be at least 1")
        return sizes


def bench(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    """Run every section and print the record (main process); returns an exit code.

    Args:
        cfg: the config as loaded from ``args.config`` with ``args.overrides``.
        args: the parsed command line: ``config``, ``overrides`` and the options of
            :func:`add_arguments`.
    """
    try:
        sizes = Sizes.from_args(args)
        if args.loop_dir is not None and Path(args.loop_dir).is_dir() and any(
                Path(args.loop_dir).iterdir()):
            raise ValueError(f"--loop-dir {args.loop_dir} is not empty: the loop must run "
                             "from scratch to be timed")
    except ValueError as err:
        print(f"lmcollapse: bench: {err}", file=sys.stderr)
        return 2
    acc = make_accelerator(cfg)
    # stdout carries the record only: whatever a library prints goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        record = measure(cfg, acc, sizes, args.config, list(args.overrides or []),
                         small=args.small, loop=not args.no_loop, loop_dir=args.loop_dir)
    if acc.is_main_process:
        text = json.dumps(record, indent=2)
        print(text, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


def measure(cfg: ExperimentConfig, acc: Accelerator, sizes: Sizes, config_path: str | Path,
            overrides: list[str], small: bool = False, loop: bool = True,
            loop_dir: str | Path | None = None) -> dict[str, Any]:
    """The record: the loop first (so the peak memory is the loop's), then generation and
    training throughput against their baselines.

    Args:
        cfg: the config the throughput sections use (``config_path`` with ``overrides``).
        sizes: prompt and step counts of the throughput sections.
        config_path, overrides: what the loop's config is loaded from (``small``: shrunk).
        loop: run the loop section (else its keys are null).
        loop_dir: the loop's ``output_dir``, kept afterwards; default a temporary one.
    """
    load_start, wall = os.getloadavg()[0], time.perf_counter()
    skipped: list[str] = []
    # --- the loop, for real, then the peak memory it took
    if loop:
        looped = loop_section(acc, config_path, overrides, small, loop_dir)
    else:
        looped = dict.fromkeys(LOOP_KEYS + PARALLEL_KEYS)
        skipped.append("loop")
    looped["peak_host_memory_gib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                      / 2**20)  # KiB on Linux
    looped["peak_gpu_memory_gib"] = (torch.cuda.max_memory_allocated() / 2**30
                                     if torch.cuda.is_available() else None)
    # --- the config's data and (untrained) model
    _progress(acc, "bench: preparing data and model")
    texts = load_human_text(cfg.data)
    tok = load_tokenizer(cfg.model, texts["train"])
    human = prepare_human_data(tok, texts, cfg.data)
    config = model_config(cfg.model, tok)
    model = (random_model(config, 0) if cfg.model.source == "scratch"
             else starting_model(cfg.model, tok, "base", 0, None, None))
    params = sum(p.numel() for p in model.parameters())
    # --- generation and training against their baselines
    baselines = acc.num_processes == 1
    if not baselines:
        skipped += ["generate naive loop", "transformers.Trainer"]
    generated = generation_section(acc, model, tok, human, cfg.generate, sizes, baselines)
    trained = training_section(acc, model, tok.pad_token_id, human, cfg, sizes, baselines)
    trained.update(utilization(params, trained["train_tokens_per_s"], acc.num_processes))
    return {"config": str(config_path), "small": small, **context(cfg, acc, params),
            **generated, **trained, **looped, "skipped": skipped,
            "bench_wall_s": time.perf_counter() - wall, "load_average_start": load_start,
            # a load above cpu_count: the machine was shared while it ran
            "load_average_end": os.getloadavg()[0]}


def context(cfg: ExperimentConfig, acc: Accelerator, params: int) -> dict[str, Any]:
    """Where the figures were measured."""
    return {"experiment": cfg.experiment, "device": str(acc.device),
            "gpu_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "num_processes": acc.num_processes, "mixed_precision": str(acc.mixed_precision),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "params_millions": params / 1e6, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__}


# --- generation -----------------------------------------------------------------------------

def generation_section(acc: Accelerator, model: torch.nn.Module, tok: Any, human: HumanData,
                       gcfg: GenerateConfig, sizes: Sizes, baselines: bool) -> dict[str, Any]:
    """New tokens/s of the harness and of a per-prompt ``model.generate`` loop, for sampling
    and for beam search; the harness on ``sizes.prompts`` prompts, the loop on
    ``sizes.naive_prompts`` (it is slow)."""
    prompts = _repeat(human.train, max(sizes.prompts, sizes.naive_prompts))
    out: dict[str, Any] = {"generate_prompts": sizes.prompts,
                           "generate_naive_prompts": sizes.naive_prompts if baselines else None,
                           "generate_batch_size": gcfg.batch_size,
                           "generate_prompt_tokens": gcfg.prompt_tokens,
                           "generate_new_tokens": gcfg.new_tokens,
                           "generate_num_beams": BEAMS}
    decodings = {"sample": dataclasses.replace(gcfg, strategy="sample"),
                 "beam": dataclasses.replace(gcfg, strategy="beam", num_beams=BEAMS)}
    for name, dcfg in decodings.items():
        _progress(acc, f"bench: generation ({name})")

        def harness(n: int, dcfg: GenerateConfig = dcfg) -> Callable[[], Any]:
            return lambda: generate_corpus(acc, model, tok, prompts[:n], dcfg, seed=0,
                                           generation=1, desc=f"bench generate {dcfg.strategy}")

        def naive(n: int, dcfg: GenerateConfig = dcfg) -> Callable[[], Any]:
            return lambda: naive_generate(acc, model, tok, prompts[:n], dcfg)

        # warm-up: one batch on every process; one prompt for the loop
        warm = min(sizes.prompts, gcfg.batch_size * acc.num_processes)
        sides = {"harness": (harness(warm), lambda: harness(sizes.prompts))}
        if baselines:
            sides["naive"] = (naive(1), lambda: naive(sizes.naive_prompts))
        seconds = best_of(acc, sides, sizes.repeats)
        mine = sizes.prompts * gcfg.new_tokens / seconds["harness"]
        theirs = (sizes.naive_prompts * gcfg.new_tokens / seconds["naive"]
                  if baselines else None)
        out[f"generate_{name}_tokens_per_s"] = mine
        out[f"generate_{name}_naive_tokens_per_s"] = theirs
        out[f"generate_{name}_speedup"] = mine / theirs if theirs else None
    return out


@torch.no_grad()
def naive_generate(acc: Accelerator, model: torch.nn.Module, tok: Any, prompts: list[Sample],
                   gcfg: GenerateConfig) -> list[list[int]]:
    """The baseline: ``model.generate`` on one prompt at a time, decoding exactly as
    :func:`~lmcollapse.generate.generate_corpus` does (same generation config, the
    checkpoint's defaults set aside, same autocast); returns the new tokens."""
    model.eval()
    model.to(acc.device)
    config = generation_config(gcfg, tok, eos_token_ids(model, tok))
    checkpoint_defaults, model.generation_config = (model.generation_config,
                                                    transformers.GenerationConfig())
    written = []
    try:
        for i, prompt in enumerate(prompts):
            torch.manual_seed(i)
            ids = torch.tensor([prompt["input_ids"][: gcfg.prompt_tokens]], device=acc.device)
            with acc.autocast():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     generation_config=config)
            written.append(out[0, ids.shape[1]:].tolist())
    finally:
        model.generation_config = checkpoint_defaults
    return written


# --- training -------------------------------------------------------------------------------

def training_section(acc: Accelerator, model: torch.nn.Module, pad_id: int, human: HumanData,
                     cfg: ExperimentConfig, sizes: Sizes, baselines: bool) -> dict[str, Any]:
    """Training tokens/s of the harness and of ``transformers.Trainer``, each from a fresh
    copy of ``model`` on the same rows, ending with one evaluation on the same blocks."""
    _progress(acc, "bench: training")
    tcfg = cfg.train
    rows_per_step = tcfg.batch_size * tcfg.grad_accum * acc.num_processes
    validation = human.validation[:VALIDATION_BLOCKS]
    rows = _repeat(human.train, sizes.steps * rows_per_step)
    tokens = sum(len(r["input_ids"]) for r in rows)

    # each run trains a fresh copy of the same weights, copied before the clock starts
    def harness(steps: int) -> Callable[[], Any]:
        fresh = copy.deepcopy(model)
        run = dataclasses.replace(tcfg, budget_steps=steps, budget_tokens=None, eval_every=steps)
        return lambda: train_generation(acc, fresh, pad_id, rows[: steps * rows_per_step],
                                        validation, run, seed=0, desc="bench train")

    def trainer(steps: int) -> Callable[[], Any]:
        fresh = copy.deepcopy(model)
        return lambda: trainer_run(fresh, pad_id, rows[: steps * rows_per_step], validation,
                                   cfg, steps, str(acc.mixed_precision))

    # warm-up: 2 steps of each
    sides = {"harness": (harness(2), lambda: harness(sizes.steps))}
    if baselines:
        sides["trainer"] = (trainer(2), lambda: trainer(sizes.steps))
    seconds = best_of(acc, sides, sizes.repeats)
    mine = tokens / seconds["harness"]
    theirs = tokens / seconds["trainer"] if baselines else None
    return {"train_steps": sizes.steps, "train_batch_size": tcfg.batch_size,
            "train_grad_accum": tcfg.grad_accum, "train_block_tokens": cfg.data.block_tokens,
            "train_tokens": tokens, "train_validation_blocks": len(validation),
            "train_tokens_per_s": mine, "train_trainer_tokens_per_s": theirs,
            "train_speedup": mine / theirs if theirs else None}


def trainer_run(model: torch.nn.Module, pad_id: int, rows: list[Sample],
                validation: list[Sample], cfg: ExperimentConfig, steps: int,
                mixed_precision: str) -> None:
    """The baseline: ``transformers.Trainer`` set up as the harness trains (AdamW, the
    config's lr, weight decay, warm-up, schedule and clipping; LoRA adapters when the
    config trains them; right-padded batches with padding masked out of the labels),
    ``steps`` optimizer steps, then one evaluation."""
    tcfg = cfg.train
    if tcfg.lora.enabled:
        model = with_lora(model, tcfg)
    collate = Collate(pad_id)
    with tempfile.TemporaryDirectory(prefix="lmcollapse-bench-trainer-") as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=tcfg.batch_size,
            per_device_eval_batch_size=tcfg.eval_batch_size,
            gradient_accumulation_steps=tcfg.grad_accum, max_steps=steps,
            learning_rate=tcfg.lr, weight_decay=tcfg.weight_decay,
            warmup_steps=int(tcfg.warmup_ratio * steps), lr_scheduler_type=tcfg.scheduler,
            max_grad_norm=tcfg.max_grad_norm, optim="adamw_torch", report_to="none",
            save_strategy="no", logging_strategy="no", eval_strategy="no",
            prediction_loss_only=True, dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(), bf16=mixed_precision == "bf16",
            fp16=mixed_precision == "fp16", disable_tqdm=True, seed=0)
        trainer = transformers.Trainer(
            model=model, args=args,
            train_dataset=[{"input_ids": r["input_ids"]} for r in rows],
            eval_dataset=[{"input_ids": r["input_ids"]} for r in validation],
            data_collator=lambda features: collate([f["input_ids"] for f in features]))
        trainer.train()
        trainer.evaluate()


# --- the loop -------------------------------------------------------------------------------

#: the keys of the loop section (``null`` when it is skipped)
LOOP_KEYS = ("loop_wall_s", "loop_seeds", "loop_policies", "loop_generations",
             "loop_generations_averaged", "loop_generation_wall_s", "loop_train_fraction",
             "loop_generate_fraction", "loop_metrics_fraction", "loop_bookkeeping_fraction",
             "metric_seconds")


def loop_section(acc: Accelerator, config_path: str | Path, overrides: list[str],
                 small: bool, keep_in: str | Path | None = None) -> dict[str, Any]:
    """Run the config's loop from scratch (``small``: shrunk by :data:`SMALL_LOOP`, the
    command line's overrides still last) in a new directory, ``keep_in`` or a temporary
    one (removed afterwards), and break its wall time down (:func:`loop_breakdown`)."""
    where: list[str | None] = [str(keep_in) if keep_in is not None else None]
    if keep_in is None and acc.is_main_process:
        where[0] = tempfile.mkdtemp(prefix="lmcollapse-bench-loop-")
    broadcast_object_list(where)  # one run directory for every process (of one machine)
    try:
        cfg = load_config(config_path, [*(SMALL_LOOP if small else []), *overrides,
                                        f"output_dir={where[0]}"])
        grid = Grid.of(cfg)
        _progress(acc, f"bench: running the loop in {cfg.run_dir} ({len(cfg.seeds)} seeds x "
                  f"{len(grid.cells)} cells x {cfg.generations} generations)")
        threads = torch.get_num_threads()
        if cfg.cpu_threads:  # as `lmcollapse run` sets them
            set_threads(cfg.cpu_threads)
        start = time.perf_counter()
        # the loop's own accelerator, as `lmcollapse run` makes it: its trackers (opened in
        # the run directory, closed at the end) are not left on ``acc``
        try:
            CollapseLoop(cfg).run()
        finally:
            wall = time.perf_counter() - start
            set_threads(threads)
        return {"loop_wall_s": wall, "loop_seeds": len(cfg.seeds),
                "loop_policies": len(grid.cells), "loop_generations": cfg.generations,
                **loop_breakdown(grid), **parallel_section(acc, cfg, wall)}
    finally:
        try:
            acc.wait_for_everyone()  # every process has read the markers
        finally:
            if keep_in is None and acc.is_main_process:
                shutil.rmtree(where[0], ignore_errors=True)


def parallel_section(acc: Accelerator, cfg: ExperimentConfig, wall: float) -> dict[str, Any]:
    """The same units again on the config's ``jobs`` worker processes (``auto``: one per
    core or GPU), beside the run directory of one process: their wall time, the speed-up
    (one process's wall time over theirs) and whether every metric came out identical.
    Null where the plan has one worker or this is a multi-process launch."""
    loop = CollapseLoop(dataclasses.replace(cfg, experiment=f"{cfg.experiment}-jobs"))
    plan = make_plan(cfg.jobs, len(loop.units), cpu_cores(), visible_gpus(), cfg.cpu_threads)
    if plan.jobs == 1 or acc.num_processes > 1:
        return dict.fromkeys(PARALLEL_KEYS)
    _progress(acc, f"bench: the same units on {plan.describe()}")
    start = time.perf_counter()
    run_parallel(loop, plan)
    parallel = time.perf_counter() - start
    values = [{str(p.relative_to(root)): files.read_json(p)["values"]
               for p in RunLayout(root).metrics_files()}
              for root in (cfg.run_dir, loop.run_dir)]
    return {"loop_jobs": plan.jobs, "loop_jobs_threads": plan.threads,
            "loop_parallel_wall_s": parallel, "loop_parallel_speedup": wall / parallel,
            "loop_parallel_identical": values[0] == values[1]}


#: keys of :func:`parallel_section`
PARALLEL_KEYS = ("loop_jobs", "loop_jobs_threads", "loop_parallel_wall_s",
                 "loop_parallel_speedup", "loop_parallel_identical")


def loop_breakdown(grid: Grid) -> dict[str, Any]:
    """Where the wall time of every generation >= 1 of a finished run of ``grid`` went,
    from its step markers (:class:`~lmcollapse.steps.Steps`).

    A generation's wall time runs from its ``train`` step's start to its ``measure`` step's
    end; training, generation and metrics are the ``work_s`` of those three steps, and
    bookkeeping is the rest (building mixes, saving and loading weights, writing files,
    checksums). Returns the mean fractions over those generations, their mean wall time
    and count, and the mean seconds of each metric (``metrics.json``'s ``elapsed_s``).
    """
    cfg = grid.cfg
    layout = RunLayout(cfg.run_dir)
    parts: list[dict[str, float]] = []
    metric_seconds: dict[str, list[float]] = {}
    for seed in cfg.seeds:
        for cell in grid.lineages.values():  # a population: its participants' generations
            for k in range(1, cfg.generations + 1):
                d = layout.gen_dir(Generation(seed, k, cell.key, cell.founder))
                marks = {step: files.read_json(layout.marker(d, step)) for step in STEPS}
                wall = (dt.datetime.fromisoformat(marks["measure"]["finished"])
                        - dt.datetime.fromisoformat(marks["train"]["started"])).total_seconds()
                work = {"train": marks["train"]["work_s"],
                        "generate": marks["generate"]["work_s"],
                        "metrics": marks["measure"]["work_s"]}
                parts.append({"wall": wall, **work,
                              "bookkeeping": wall - sum(work.values())})
                for name, seconds in files.read_json(d / METRICS).get("elapsed_s", {}).items():
                    metric_seconds.setdefault(name, []).append(seconds)
    if not parts:
        return {"loop_generations_averaged": 0, "loop_generation_wall_s": None,
                **{f"loop_{p}_fraction": None
                   for p in ("train", "generate", "metrics", "bookkeeping")},
                "metric_seconds": {}}
    out: dict[str, Any] = {"loop_generations_averaged": len(parts),
                           "loop_generation_wall_s": _mean([p["wall"] for p in parts])}
    for name in ("train", "generate", "metrics", "bookkeeping"):
        out[f"loop_{name}_fraction"] = _mean([p[name] / p["wall"] for p in parts])
    out["metric_seconds"] = {name: _mean(v) for name, v in metric_seconds.items()}
    return out


# --- helpers --------------------------------------------------------------------------------

def best_of(acc: Accelerator, sides: dict[str, tuple[Callable[[], Any], Callable[[], Any]]],
            repeats: int) -> dict[str, float]:
    """Seconds of each side's fastest run.

    ``sides[name]`` is ``(warm_up, prepare)``: ``warm_up()`` runs once before any timing
    (first-call costs); ``prepare()``, untimed, returns the run to time (holding, e.g., a
    fresh copy of a model). After every side's warm-up, ``repeats`` rounds run with the
    order reversed every other round (A B, B A, ...), so load spikes and warm caches favour
    neither side.
    """
    for warm_up, _ in sides.values():
        warm_up()
    best = dict.fromkeys(sides, math.inf)
    names = list(sides)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            run = sides[name][1]()
            acc.wait_for_everyone()
            start = time.perf_counter()
            run()
            acc.wait_for_everyone()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def utilization(params: int, tokens_per_s: float, processes: int) -> dict[str, Any]:
    """Model FLOP/s of training (6 x parameters x tokens/s) and their share of the GPUs'
    peak dense bf16 FLOP/s (MFU); null on a CPU or an unknown GPU."""
    if not torch.cuda.is_available():
        return {"train_model_flops_per_s": None, "train_mfu": None}
    flops = 6 * params * tokens_per_s
    name = torch.cuda.get_device_name()
    peak = next((value for part, value in PEAK_BF16_FLOPS if part in name), None)
    return {"train_model_flops_per_s": flops,
            "train_mfu": flops / (peak * processes) if peak else None}


def _repeat(rows: list[Sample], n: int) -> list[Sample]:
    """The first ``n`` rows of ``rows`` repeated as often as needed."""
    return (rows * (n // len(rows) + 1))[:n]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _progress(acc: Accelerator, message: str) -> None:
    if acc.is_main_process:
        print(message, file=sys.stderr, flush=True)
