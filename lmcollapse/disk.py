"""How much disk a run will write, printed before it starts and refused when it cannot fit.

Weights dominate: a float32 checkpoint of ``P`` parameters takes ``4 P`` bytes (OPT-125m:
~500 MB), written once per generation of every cell unless ``keep_models`` prunes them
(:meth:`lmcollapse.weights.Weights.prune`). The estimate reads this job's plan
(:mod:`lmcollapse.plan`): it counts the models that exist at the fullest moment (seed by
seed, generations outermost), the LoRA adapters, and per step a corpus (``~8`` bytes per
token with its text) with the metrics' feature caches, a mix (provenance rows) or a pool.
What the run directory already holds (a resumed run) is subtracted.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lmcollapse.errors import ConfigError
from lmcollapse.files import tree_size
from lmcollapse.grid import Grid
from lmcollapse.plan import Step

log = logging.getLogger(__name__)
#: bytes per corpus token on disk (int32 id, its share of the decoded text, parquet overhead)
CORPUS_BYTES_PER_TOKEN = 8
#: bytes per row of a mix or candidates file (provenance only)
ROW_BYTES = 48


@dataclass
class DiskEstimate:
    model_bytes: int
    models: int
    adapter_bytes: int
    adapters: int
    other_bytes: int
    #: what the run directory holds already (counted in ``total``)
    written: int = 0

    @property
    def total(self) -> int:
        return (self.model_bytes * self.models + self.adapter_bytes * self.adapters
                + self.other_bytes)

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.written)

    def describe(self) -> str:
        lora = (f" + {self.adapters} LoRA adapters x {_size(self.adapter_bytes)}"
                if self.adapters else "")
        return (f"{_size(self.total)} at its fullest: {self.models} models x "
                f"{_size(self.model_bytes)}{lora} + {_size(self.other_bytes)} of corpora, "
                f"mixes and features")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def parameter_count(model_config: Any, lora: Any | None = None) -> int:
    """Parameters of the architecture (tied weights once), or of the LoRA adapter on it;
    built on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
        if lora is None:
            return sum(p.numel() for p in model.parameters())
        peft = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora.r,
                                                lora_alpha=lora.alpha,
                                                target_modules=lora.target_modules))
        return peft.get_nb_trainable_parameters()[0]


def estimate(grid: Grid, plan: list[Step], model_config: Any, train_rows: int,
             hidden_size: int | None = None) -> DiskEstimate:
    """The disk the steps of ``plan`` (this job's, lmcollapse.plan) need with the config's
    ``keep_models``: a model per ``train`` step, a corpus per ``generate`` step, a mix per
    generation trained after 0 and a pool per ``pool`` step."""
    cfg = grid.cfg
    trains = [s for s in plan if s.kind == "train"]
    # the lineages of each seed (a population's participants each train and keep models)
    per_seed: dict[int, set[str]] = {}
    for s in trains:
        if s.unit is not None:
            per_seed.setdefault(s.seed, set()).add(s.gen.cell_key)
    seeds = {s.seed for s in plan}
    widest = max((len(v) for v in per_seed.values()), default=0)
    owners = sum(len(v) for v in per_seed.values())
    lora = any(grid.cell(s.gen.cell_key).cfg.train.lora.enabled for s in trains if s.unit)
    # generation 0 of each training setting, and the scratch initial weights, per seed
    shared = sum(s.unit is None for s in trains) + (cfg.model.source == "scratch") * len(seeds)
    shared += bool(cfg.model.gguf_file)  # the dequantized GGUF checkpoint
    keep = cfg.keep_models
    if keep == "all":
        cell_models = sum(s.unit is not None for s in trains)
    elif keep == "last":  # each finished cell its last model; the seed in progress k-1 and k
        cell_models = owners + widest
    else:  # none: only the seed in progress (LoRA: its adapters rebuild every model)
        cell_models = 0 if lora else 2 * widest
    model_bytes = 4 * parameter_count(model_config)
    adapter_bytes = 4 * parameter_count(model_config, cfg.train.lora) if lora else 0
    adapters = len(trains) if lora else 0
    features = 3 * 4 * 1000 * (hidden_size or 1024)  # human/corpus/train samples, float32
    corpus = train_rows * cfg.generate.sample_tokens * CORPUS_BYTES_PER_TOKEN + features
    corpora = corpus * sum(s.kind == "generate" for s in plan)
    mixes = sum(train_rows * (s.gen.k + 1) * ROW_BYTES for s in trains if s.gen.k)
    # a population's pool, rewritten whole each generation: at most N + k x N blocks (the
    # tokens with their provenance), taking new content of N per generation (default N/2)
    pools = sum(train_rows * (s.gen.k + 1) * (cfg.data.block_tokens * CORPUS_BYTES_PER_TOKEN
                                              + ROW_BYTES) for s in plan if s.kind == "pool")
    return DiskEstimate(model_bytes, shared + cell_models, adapter_bytes, adapters,
                        corpora + mixes + pools)


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds (or will hold) ``path``."""
    for folder in [path, *path.parents]:
        if folder.exists():
            return shutil.disk_usage(folder).free
    return shutil.disk_usage(".").free


def check_disk(est: DiskEstimate, run_dir: Path) -> DiskEstimate:
    """Log the estimate; ConfigError when the free space cannot hold what is still to be
    written (suggesting the ``keep_models`` that would fit)."""
    est.written = tree_size(run_dir)
    free = free_bytes(run_dir)
    log.info("disk: this job writes about %s (%s already written); %s free at %s",
             est.describe(), _size(est.written), _size(free), run_dir)
    if est.remaining > free:
        raise ConfigError(
            f"keep_models: this job needs about "
            f"{_size(est.remaining)} more disk ({est.describe()}) but {run_dir} has "
            f"{_size(free)} free. Set keep_models to last or none (all, last, none: what "
            "resume and the report need is always kept), run fewer cells per directory "
            "(--shard), or free space")
    return est
