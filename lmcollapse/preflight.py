"""Set-up of a run: everything that can fail is checked here, before any work.

:func:`prepare` loads the human data, the tokenizer and the model's architecture, applies
the trained-length rule, builds the metrics and runs their preflight checks, and only then
claims the run directory (``experiment.json``, the shared tokenizer). What it returns,
:class:`~lmcollapse.prepared.Setup`, is everything the loop reads.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import accelerate
import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    broadcast_object_list,
    is_tensorboard_available,
    is_wandb_available,
)
from tokenizers import Tokenizer

from lmcollapse import files
from lmcollapse.cells import Cell
from lmcollapse.config import config_diff
from lmcollapse.data.base import Source, hold_back, make_source
from lmcollapse.data.blocks import prepare_human_data
from lmcollapse.disk import check_disk, estimate
from lmcollapse.errors import ConfigError
from lmcollapse.grid import Grid
from lmcollapse.layout import SAVED_TOKENIZER, RunLayout
from lmcollapse.metrics.base import MeasureContext
from lmcollapse.models import (
    check_architecture,
    check_pretrained,
    check_vocab,
    context_length,
    load_tokenizer,
    model_config,
    wrap_tokenizer,
)
from lmcollapse.plan import Step, build_plan
from lmcollapse.policies import reserve_needed
from lmcollapse.prepared import Setup
from lmcollapse.registry import METRICS, POLICIES, UNIT_KINDS
from lmcollapse.scorers.base import ScoreContext, make_scorer
from lmcollapse.settings import ExperimentConfig, build, plain

log = logging.getLogger(__name__)
#: how long a job waits for another's claim of the run directory (it takes seconds)
CLAIM_WAIT_S = 600.0
#: config keys that may change between invocations of one run: the grid grows by cells
GRID_KEYS = ("seeds", "policies", "grid", "log_level", "log_with", "keep_models", "jobs",
             "cpu_threads")
#: where the run directory is does not change what it holds: it can be moved and resumed
LOCATION_KEYS = ("output_dir", "experiment")


def setup_logging(level: str, main_process: bool) -> None:
    """Log lines with a time stamp, from the main process only; transformers' own warnings
    and weight-loading bars off."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", level=level if main_process else "ERROR")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight loading/saving bars


def make_accelerator(cfg: ExperimentConfig) -> Accelerator:
    """One Accelerator per process; ``mixed_precision: auto`` picks bf16/fp16 on a GPU."""
    mp = cfg.train.mixed_precision
    if mp == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU and this machine has "
                          "none; allowed here: auto (no on a CPU), no, bf16")
    if mp == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION"):
            mp = None  # set by `accelerate launch --mixed_precision`/accelerate config
        elif torch.cuda.is_available():
            mp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mp = "no"
    # several processes without CUDA (torchrun / accelerate on CPUs): gloo on the CPU
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(gradient_accumulation_steps=cfg.train.grad_accum, mixed_precision=mp,
                       cpu=multi_cpu, log_with=trackers(cfg.log_with) or None,
                       project_dir=str(cfg.run_dir))


#: the optional extra of each tracker ``log_with`` may name
TRACKER_EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def trackers(log_with: str) -> list[str]:
    """The accelerate trackers ``log_with`` asks for; a named one whose package is missing is
    a ConfigError naming the extra (``auto``: TensorBoard if installed, else none)."""
    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    if log_with == "none":
        return []
    if log_with == "auto":
        return ["tensorboard"] if is_tensorboard_available() else []
    if not available[log_with]():
        raise ConfigError(f"log_with: {log_with} needs the {log_with!r} package: pip install "
                          f"'lmcollapse[{TRACKER_EXTRAS[log_with]}]' (or log_with: none)")
    return [log_with]


def start_trackers(acc: Accelerator, cfg: ExperimentConfig, run_dir: Path) -> None:
    """Open the trackers in ``<run dir>/logs/`` (TensorBoard: one event file per job) with
    the config's scalar settings as hyperparameters; W&B uses the experiment as project."""
    if not acc.log_with:
        return
    acc.project_configuration.project_dir = str(run_dir)
    acc.project_configuration.logging_dir = str(run_dir / "logs")
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[prefix] = node if isinstance(node, int | float | str | bool) else str(node)

    walk(cfg.to_dict(), "")
    acc.init_trackers(cfg.experiment, config=flat)


def learns_positions_from_blocks(cfg: ExperimentConfig) -> bool:
    """True when every model of the run is trained from random weights on the blocks."""
    return cfg.model.source == "scratch" or cfg.model.init == "scratch"


def trained_length(cfg: ExperimentConfig, model_config: Any) -> int:
    """The longest sequence the experiment's models are trained on and may be scored at:
    ``data.block_tokens`` for a model built from scratch or re-initialised every
    generation (``model.init: scratch``: it never sees a later position), the
    architecture's context for a pretrained one (1024 when it declares none)."""
    if learns_positions_from_blocks(cfg):
        return cfg.data.block_tokens
    return context_length(model_config) or 1024


def check_lengths(cfg: ExperimentConfig, model_config: Any) -> int:
    """The trained-length rule (docs/design.md): nothing is scored or generated beyond the
    length the model was trained on. Returns the trained length."""
    g, d = cfg.generate, cfg.data
    ctx = context_length(model_config)
    if ctx is not None and d.block_tokens > ctx:
        raise ConfigError(f"data.block_tokens ({d.block_tokens}) must fit the model's "
                          f"context of {ctx} tokens")
    length = trained_length(cfg, model_config)
    what = ("data.block_tokens, the length a model trained from scratch sees"
            if learns_positions_from_blocks(cfg) else "the model's context")
    if g.prompt_tokens + g.new_tokens > length:
        raise ConfigError(
            f"generate.prompt_tokens + generate.new_tokens ({g.prompt_tokens} + "
            f"{g.new_tokens}) must be <= {length} ({what}); shorten them or raise "
            "data.block_tokens")
    return length


def check_compatible(cfg: ExperimentConfig, layout: RunLayout) -> None:
    """Refuse to resume a run directory that was started with a different config (the
    grid may grow: new seeds and policies are new cells)."""
    if not layout.experiment_json.exists():
        return
    old = files.read_json(layout.experiment_json)["config"]
    try:  # a key added since the run began compares as its default (data.fresh_reserve: 0)
        old = build(ExperimentConfig, old).to_dict()
    except ConfigError:
        pass  # compared as written: every difference is listed
    new = cfg.to_dict()
    skip = GRID_KEYS + LOCATION_KEYS
    diffs = config_diff({k: v for k, v in old.items() if k not in skip},
                        {k: v for k, v in new.items() if k not in skip})
    old_policies = {p.get("label") or p["name"]: p for p in old.get("policies", [])}
    for p in new["policies"]:
        before = old_policies.get(p["label"] or p["name"])
        if before is not None and before != p:
            diffs.append(f"policies[{p['label'] or p['name']}]: {before} -> {p}")
    if diffs:
        raise ConfigError(
            f"{layout.root} was started with a different config:\n  " + "\n  ".join(diffs)
            + "\nRe-run with the original config to resume it, choose another "
            "`experiment` name, or pass --new-run to start a fresh run directory.")


def _shared_tokenizer(cfg: ExperimentConfig, acc: Accelerator, layout: RunLayout,
                      train_texts: list[str]) -> tuple[Any, bool]:
    """The run's tokenizer and whether it must be saved: a pretrained model's own, a
    scratch tokenizer saved by an earlier invocation, or one trained now on the main
    process and handed to the others."""
    if cfg.model.source != "scratch":
        check_pretrained(cfg.model)  # a missing optional package (gguf), a missing file
        with acc.main_process_first():
            tokenizer = load_tokenizer(cfg.model)
            check_vocab(tokenizer, model_config(cfg.model, tokenizer))
        return tokenizer, False
    if layout.experiment_json.exists() and (layout.tokenizer / SAVED_TOKENIZER).exists():
        files.verify(layout.tokenizer)
        return load_tokenizer(cfg.model, saved=layout.tokenizer), False
    payload = [None]
    if acc.is_main_process:
        payload = [load_tokenizer(cfg.model, train_texts).backend_tokenizer.to_str()]
    broadcast_object_list(payload)
    return wrap_tokenizer(payload[0]), True  # sets <pad>, as the trained one has


def check_reserve(cfg: ExperimentConfig, grid: dict[str, Cell], n: int, reserve: int) -> None:
    """Each cell's settings against the human pool in blocks (``Policy.check_blocks``), and
    every cell drawing from the reserve (``human_source: reserve``: ``generations``
    disjoint shards of round(r*N) blocks; ``internet`` with ``human_source: reserve``: the
    human part of every new batch) must find enough in it; refuse a reserve too small
    before any work."""
    labels = [p.key for p in cfg.policies]
    for cell in grid.values():
        POLICIES.get(cell.policy.name).check_blocks(
            cell.policy.settings, f"policies[{labels.index(cell.policy.key)}]", n,
            cfg.generations, max(2, *(m.cfg.train.batch_size for m in cell.participants or [cell])))
        need = reserve_needed(cell.policy, n, cfg.generations)
        if need > reserve:
            share = cfg.data.fresh_reserve
            raise ConfigError(
                f"data.fresh_reserve: {cell.key} ({cell.policy.name}) draws {need} blocks of "
                f"never-seen human text over {cfg.generations} generations from a training "
                f"pool of N = {n} blocks, but the reserve ({share} of the training records) "
                f"holds {reserve} blocks; " + (
                    f"raise data.fresh_reserve (about {share * need / reserve:.2f} would do), "
                    if reserve and share * need / reserve < 0.9 else "")
                + "draw less human text per generation, or run fewer generations")


def metric_context(setup: Setup, cfg: ExperimentConfig, acc: Accelerator, seed_dir: Path,
                   out_dir: Path, reference_model: Any, **row: Any) -> MeasureContext:
    """The context every metric reads for one row (``row``: generation, model, corpus)."""
    g = cfg.generate
    return MeasureContext(
        accelerator=acc, tokenizer=setup.tokenizer, human=setup.human,
        trained_length=setup.trained_length, sample_tokens=g.sample_tokens,
        sample_tokens_from="generate.new_tokens" + (" + prompt_tokens" if g.keep_prompt else ""),
        reference_model=reference_model, seed_dir=seed_dir, out_dir=out_dir,
        truth=setup.truth, needs=frozenset(n for m in setup.metrics for n in m.needs),
        prompt_tokens=g.prompt_tokens, keep_prompt=g.keep_prompt, **row)


def _no_model() -> Any:
    raise RuntimeError("no model exists before the first generation is trained")


def prepare(cfg: ExperimentConfig, acc: Accelerator, layout: RunLayout, grid: Grid,
            units: list[tuple[int, str]] | None = None, selection: str = "all cells",
            claim: bool = True, invocation: dict[str, Any] | None = None,
            plan: list[Step] | None = None) -> Setup:
    """Check everything that can fail (the disk this job's ``units`` need included), then
    claim the run directory: the locks of this job's units (a cell another live job runs
    is refused), then experiment.json. Any failure before the claim is a ConfigError (exit
    code 2): a data file that cannot be read, a model that cannot be loaded, a folder in
    the way, a disk too small, a cell in use. ``claim=False`` (a worker process of
    :mod:`lmcollapse.parallel`, whose parent claimed the run) stops before the claim;
    ``invocation`` adds keys to this invocation's record in experiment.json; ``plan``: the
    steps of ``units`` (lmcollapse.plan; built from them when not given), which the disk
    estimate reads."""
    units = units or grid.units()
    plan = build_plan(grid, units) if plan is None else plan
    try:
        return _prepare(cfg, acc, layout, grid, units, plan, selection, claim, invocation or {})
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (anything else at set-up is bad input too)
        raise ConfigError(f"set-up failed before any work: {type(err).__name__}: "
                          f"{str(err)[:500]}") from err


def grid_lineages(grid: dict[str, Cell]) -> list[Cell]:
    """Every cell that trains: the cells, a population's participants in its place."""
    return [m for c in grid.values() for m in (c.participants or [c])]


def _check_output_dir(layout: RunLayout) -> None:
    """The run directory and its parents must be folders (or not exist yet)."""
    for path in [layout.root, *layout.root.parents]:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"output_dir: {path} is a file, not a folder; the run directory "
                              f"would be {layout.root}")


def _prepare(cfg: ExperimentConfig, acc: Accelerator, layout: RunLayout, whole: Grid,
             units: list[tuple[int, str]], plan: list[Step], selection: str, claim: bool,
             invocation: dict[str, Any]) -> Setup:
    grid = whole.cells
    _check_output_dir(layout)
    check_compatible(cfg, layout)
    source = make_source(cfg.data)
    with acc.main_process_first():
        texts = source.load()
    if cfg.data.fresh_reserve:  # held back before anything learns from the pool
        texts["train"], texts["reserve"] = hold_back(texts["train"], cfg.data.fresh_reserve)
    tokenizer, new_tokenizer = _shared_tokenizer(cfg, acc, layout, texts["train"])
    human = prepare_human_data(tokenizer, texts, cfg.data,
                               min_train_blocks=max(2, cfg.train.batch_size))
    check_reserve(cfg, grid, len(human.train), len(human.reserve))
    arch = model_config(cfg.model, tokenizer)
    if cfg.model.source == "scratch":  # built from its config alone: can it run?
        check_architecture(arch)
        for m in (m for c in grid.values() for m in c.participants):  # a participant's size
            if plain(m.cfg.model.scratch) != plain(cfg.model.scratch):
                check_architecture(model_config(m.cfg.model, tokenizer),
                                   f"{m.key}: model.scratch")
    metrics = [METRICS.get(name)(cfg.metrics.of(name)) for name in cfg.metrics.names]
    setup = Setup(tokenizer=tokenizer, human=human, model_config=arch,
                  trained_length=check_lengths(cfg, arch), truth=source.truth(),
                  metrics=metrics, fresh=source.fresh_documents)
    if acc.distributed_type == DistributedType.FSDP and any(
            c.cfg.train.lora.enabled for c in grid.values()):
        raise ConfigError("train.lora: LoRA is not run under FSDP (its few trainable weights "
                          "need no sharding); launch with configs/accelerate/multi_gpu.yaml")
    packed = [m.key for m in grid_lineages(grid) if m.cfg.train.pack]
    if packed and tokenizer.eos_token_id is None:
        raise ConfigError(f"train.pack (cell {packed[0]}): packing separates rows with the "
                          "tokenizer's end-of-text token, and this tokenizer has none; set "
                          "train.pack: false")
    for i, spec in enumerate(cfg.policies):
        if getattr(spec.settings, "human_source", "") == "source" and setup.fresh is None:
            raise ConfigError(f"policies[{i}].human_source: 'source' needs a data source that "
                              f"writes new text (data.source: synthetic); {cfg.data.source!r} "
                              "cannot")
    ctx = metric_context(setup, cfg, acc, layout.root, layout.root, _no_model)
    for metric in metrics:
        metric.preflight(ctx)
    labels = [p.key for p in cfg.policies]
    for cell in grid.values():  # what each unit kind checks once the data is known
        where = f"policies[{labels.index(cell.policy.key)}]"
        UNIT_KINDS.get(cell.kind).preflight(cell, ctx, where)
    scoring = ScoreContext(accelerator=acc, tokenizer=tokenizer, prompts=human.train,
                           prompt_tokens=cfg.generate.prompt_tokens, generator=_no_model,
                           reference_model=_no_model, truth=setup.truth)
    for spec in cfg.policies:
        if spec.curate.active:
            make_scorer(spec.curate.scorer).preflight(scoring)
    if not claim:
        return setup
    if acc.is_main_process:
        check_disk(estimate(whole, plan, arch, len(human.train),
                            getattr(arch, "hidden_size", None)), layout.root)
    locks = {layout.cell_lock(seed, key): f"seed {seed}, cell {key}" for seed, key in units}
    # nothing was written so far; from here on the run directory is ours
    problem = [None]
    if acc.is_main_process:
        try:
            _claim(cfg, acc, layout, setup, list(grid.values()), locks, selection, source,
                   tokenizer if new_tokenizer else None, invocation)
        except ConfigError as err:
            setup.release()
            problem = [str(err)]
    broadcast_object_list(problem)  # every process stops with the main one
    if problem[0] is not None:
        raise ConfigError(problem[0])
    acc.wait_for_everyone()
    log.info("human data: %d train blocks, %d validation blocks, %d test tokens%s",
             len(human.train), len(human.validation), len(human.test_stream),
             f", {len(human.reserve)} reserve blocks" if human.reserve else "")
    return setup


def _claim(cfg: ExperimentConfig, acc: Accelerator, layout: RunLayout, setup: Setup,
           grid: list[Cell], locks: dict[Path, str], selection: str, source: Source,
           new_tokenizer: Any | None, invocation: dict[str, Any]) -> None:
    """Main process: under the claim lock (held for seconds; several jobs may share the
    directory), take this job's cell locks, check the directory's config again, record
    the invocation, save the scratch tokenizer unless another job saved it first."""
    claim = files.RunLock(layout.lock, f"{layout.root} (its claim lock)")
    deadline = time.monotonic() + CLAIM_WAIT_S
    while not claim.try_acquire()[0]:
        if time.monotonic() > deadline:
            raise ConfigError(f"{layout.root}: another job has held its claim lock "
                              f"({layout.lock}) for over {CLAIM_WAIT_S:.0f} s; is it stuck?")
        time.sleep(0.5)
    try:
        for path, what in locks.items():
            lock = files.RunLock(path, what)
            previous = lock.acquire()  # ConfigError when a live job runs the cell
            setup.locks.append(lock)
            if previous:
                log.info("%s: took over the lock of an earlier run that is gone (%s)", what,
                         previous)
        check_compatible(cfg, layout)  # another job may have claimed it while we checked
        h = setup.human
        write_provenance(cfg, acc, layout, source, grid, selection, sizes={
            "train_blocks": len(h.train), "validation_blocks": len(h.validation),
            "reserve_blocks": len(h.reserve), "test_tokens": len(h.test_stream),
            # before data.max_*_blocks: what a larger cap would give (the smoke forecast)
            "train_tokens": sum(map(len, h.records["train"])),
            "validation_tokens": sum(map(len, h.records["validation"]))},
            invocation=invocation)
        if new_tokenizer is not None:
            _save_tokenizer(new_tokenizer, layout)
        if not layout.prompts.exists():
            _save_prompts(cfg, setup, layout)
    finally:
        claim.release()


def _save_prompts(cfg: ExperimentConfig, setup: Setup, layout: RunLayout) -> None:
    """``prompts.parquet``: each prompt (the first ``prompt_tokens`` of a human training
    block) as text and the human text that followed it, so a report can show what each
    generation wrote in its place (the lineages) without a tokenizer or the data."""
    g, tok = cfg.generate, setup.tokenizer
    blocks = [list(r["input_ids"]) for r in setup.human.train]
    prompts = tok.batch_decode([b[:g.prompt_tokens] for b in blocks])
    human = tok.batch_decode([b[g.prompt_tokens:g.prompt_tokens + g.new_tokens] for b in blocks])
    files.write_rows(layout.prompts, [{"prompt_id": i, "prompt": p, "human": h}
                                      for i, (p, h) in enumerate(zip(prompts, human,
                                                                     strict=True))])


def _save_tokenizer(tokenizer: Any, layout: RunLayout) -> None:
    """Save the scratch tokenizer (a temp folder moved into place: never half written); a
    job that finds one saved by another keeps it, after checking it is the same."""
    if (layout.tokenizer / SAVED_TOKENIZER).exists():
        files.verify(layout.tokenizer)
        saved = Tokenizer.from_file(str(layout.tokenizer / SAVED_TOKENIZER))
        if saved.to_str() != tokenizer.backend_tokenizer.to_str():
            raise ConfigError(f"{layout.tokenizer} holds another tokenizer than the one this "
                              "job trained on the same human data; was the data changed?")
        return
    tmp = layout.root / ".tokenizer.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tokenizer.save_pretrained(tmp)
    files.replace_dir(tmp, layout.tokenizer)


def hardware() -> dict[str, Any]:
    """What the numbers were computed on: platform, CPU and, where there are any, GPUs."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "gpus": gpus}


def write_provenance(cfg: ExperimentConfig, acc: Accelerator, layout: RunLayout,
                     source: Source, grid: list[Cell], selection: str = "all cells",
                     sizes: dict[str, int] | None = None,
                     invocation: dict[str, Any] | None = None) -> None:
    """experiment.json: the resolved config, versions, git sha, and one record per
    invocation (a resumed run appends one)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        sha = ""
    path = layout.experiment_json
    now = {"started": dt.datetime.now().isoformat(), "git_sha": sha or None,
           "command": sys.argv, "cells": selection, "num_processes": acc.num_processes,
           "device": str(acc.device), "mixed_precision": acc.mixed_precision,
           "jobs": 1, "threads_per_job": torch.get_num_threads(), **(invocation or {}),
           "hardware": hardware(),
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__,
                        "accelerate": accelerate.__version__,
                        "datasets": datasets.__version__}}
    record = files.read_json(path) if path.exists() else {
        "experiment": cfg.experiment, "created": now["started"], **now, "invocations": []}
    for key in ("num_processes", "mixed_precision"):
        if record.get(key) != now[key]:
            log.warning("resuming with %s=%s; the steps already done used %s=%s, so their "
                        "numbers may differ from what this setting gives", key, now[key], key,
                        record.get(key))
    truth = source.truth()
    record.update(config=cfg.to_dict(), seeds=cfg.seeds, policies=[c.key for c in grid],
                  populations={c.key: [m.key for m in c.participants] for c in grid
                               if c.participants},
                  cells={c.key: {"policy": c.policy.key, "axes": c.axes,
                                 "founder": c.founder} for c in grid},
                  data=source.describe(), source=truth.describe() if truth is not None else None)
    if sizes is not None:  # the human data in blocks (the reserve: data.fresh_reserve)
        record["sizes"] = sizes
    record["invocations"].append(now)
    files.write_json(path, record)
