"""How much disk a run will write, printed before it starts and refused when it cannot fit.

Weights dominate: a float32 checkpoint of ``P`` parameters takes ``4 P`` bytes (OPT-125m:
~500 MB), written once per generation of every cell unless ``keep_models`` prunes them
(:meth:`lmcollapse.loop.CollapseLoop._prune`). The estimate counts the models that exist at
the fullest moment of this job's units (seed by seed, generations outermost), the LoRA
adapters, and per generation a corpus (``~8`` bytes per token with its text), a mix
(provenance rows) and the metrics' feature caches. What the run directory already holds
(a resumed run) is subtracted.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lmcollapse.config import Cell, ExperimentConfig
from lmcollapse.errors import ConfigError
from lmcollapse.files import tree_size

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


def estimate(cfg: ExperimentConfig, cells: dict[str, Cell], units: list[tuple[int, str]],
             model_config: Any, train_rows: int, hidden_size: int | None = None) -> DiskEstimate:
    """The disk this job's ``units`` need with the config's ``keep_models``."""
    # a population's participants each train, write and keep models like a cell
    per_seed = Counter()
    for seed, k in units:
        per_seed[seed] += len(cells[k].members) or 1
    widest = max(per_seed.values())
    owners = sum(per_seed.values())
    gens = cfg.generations
    lora = any(cells[k].cfg.train.lora.enabled for _, k in units)
    shared = sum(1 + len({cells[k].zero_group for s, k in units if s == seed} - {""})
                 + (cfg.model.source == "scratch") for seed in per_seed)
    shared += bool(cfg.model.gguf_file)  # the dequantized GGUF checkpoint
    keep = cfg.keep_models
    if keep == "all":
        cell_models = owners * gens
    elif keep == "last":  # each finished cell its last model; the seed in progress k-1 and k
        cell_models = owners + widest
    else:  # none: only the seed in progress (LoRA: its adapters rebuild every model)
        cell_models = 0 if lora else 2 * widest
    model_bytes = 4 * parameter_count(model_config)
    adapter_bytes = 4 * parameter_count(model_config, cfg.train.lora) if lora else 0
    adapters = (owners * gens + len(per_seed)) if lora else 0
    tokens = cfg.generate.sample_tokens
    features = 3 * 4 * 1000 * (hidden_size or 1024)  # human/corpus/train samples, float32
    per_gen = train_rows * tokens * CORPUS_BYTES_PER_TOKEN + features
    mixes = sum(train_rows * (k + 1) * ROW_BYTES for k in range(1, gens + 1)) * owners
    # a population's pool, rewritten whole each generation: at most N + k x N blocks (the
    # tokens with their provenance), taking new content of N per generation (default N/2)
    pools = sum(train_rows * (k + 1) * (cfg.data.block_tokens * CORPUS_BYTES_PER_TOKEN
                                        + ROW_BYTES) for k in range(1, gens + 1)) * sum(
        bool(cells[k].members) for _, k in units)
    other = per_gen * (owners * gens + len(per_seed)) + mixes + pools
    return DiskEstimate(model_bytes, shared + cell_models, adapter_bytes, adapters, other)


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
