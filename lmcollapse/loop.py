"""The collapse loop: runs the steps of every cell, resumes, writes the run directory.

::

    runs/<experiment>/
      experiment.json                     resolved config, versions, git sha, seeds
      tokenizer/                          (scratch models) the tokenizer trained on human train
      seed_<s>/human/metrics.json         the human reference row
      seed_<s>/base/                      (scratch models) the seed's initial weights
      seed_<s>/gen_00/                    shared by every policy: mix, model, corpus, metrics
      seed_<s>/<policy>/gen_<k>/          mix.parquet, model/, corpus.parquet, metrics.json

A step (``train``, ``generate``, ``measure``) is finished when its ``<step>.done`` marker
exists; every file is written atomically, so re-running the same command continues at the
first unfinished step and never redoes a finished one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm

from lmcollapse import io
from lmcollapse.config import ExperimentConfig, PolicySpec, config_diff
from lmcollapse.data import load_human_text, make_synthetic_source, prepare_human_data
from lmcollapse.errors import ConfigError, StepError
from lmcollapse.generate import generate_corpus
from lmcollapse.metrics import METRICS, MeasureContext, metric_meta
from lmcollapse.models import (
    check_pretrained,
    check_vocab,
    context_length,
    load_model,
    load_pretrained,
    load_tokenizer,
    model_config,
    random_model,
    starting_model,
    wrap_tokenizer,
)
from lmcollapse.policies import MixContext, make_policy
from lmcollapse.train import train_generation

log = logging.getLogger(__name__)
PROVENANCE = ["sample_id", "origin", "generation", "prompt_id"]
#: config keys that may change between invocations of one run: the grid grows by cells
GRID_KEYS = ("seeds", "policies", "log_level")


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed for one step of one cell (same on every machine and resume)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def gen_name(k: int) -> str:
    return f"gen_{k:02d}"


def trained_length(cfg: ExperimentConfig, model_config: Any) -> int:
    """The longest sequence the experiment's models are trained on and may be scored at:
    ``data.block_tokens`` for a model built from scratch or re-initialised every
    generation (``model.init: scratch``: it never sees a later position), the
    architecture's context for a pretrained one (1024 when it declares none)."""
    if learns_positions_from_blocks(cfg):
        return cfg.data.block_tokens
    return context_length(model_config) or 1024


def learns_positions_from_blocks(cfg: ExperimentConfig) -> bool:
    """True when every model of the run is trained from random weights on the blocks."""
    return cfg.model.source == "scratch" or cfg.model.init == "scratch"


def make_accelerator(cfg: ExperimentConfig) -> Accelerator:
    """One Accelerator per process; ``mixed_precision: auto`` picks bf16/fp16 on a GPU."""
    mp = cfg.train.mixed_precision
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
                       cpu=multi_cpu)


class Experiment:
    """One experiment: a grid of (policy, seed) cells sharing data, model and metrics."""

    def __init__(self, cfg: ExperimentConfig, accelerator: Accelerator | None = None,
                 new_run: bool = False) -> None:
        self.cfg = cfg
        self.acc = accelerator or make_accelerator(cfg)
        if new_run and cfg.run_dir.exists():
            stamp = [dt.datetime.now().strftime("%Y%m%d-%H%M%S")]
            broadcast_object_list(stamp)
            cfg.experiment = f"{cfg.experiment}-{stamp[0]}"
        self.run_dir = cfg.run_dir
        self.timings: list[dict[str, Any]] = []
        self.trained_length: int | None = None  # set by prepare(), from data and model
        self._model: tuple[Path, torch.nn.Module] | None = None
        self._ref: tuple[int, torch.nn.Module] | None = None
        self._corpora: dict[Path, list[dict[str, Any]]] = {}

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    # --- preflight: everything that can fail before any work ----------------------------

    def prepare(self) -> None:
        """Check the run directory, load data, tokenizer, model config and metrics."""
        cfg = self.cfg
        self._check_compatible()
        with self.acc.main_process_first():
            texts = load_human_text(cfg.data)
        scratch = cfg.model.source == "scratch"
        tok_dir = self.run_dir / "tokenizer"
        resuming = (self.run_dir / "experiment.json").exists()
        if not scratch:
            check_pretrained(cfg.model)  # a missing optional package (gguf), a missing file
            with self.acc.main_process_first():
                self.tokenizer = load_tokenizer(cfg.model)
                check_vocab(self.tokenizer, model_config(cfg.model, self.tokenizer))
        elif resuming and (tok_dir / "tokenizer.json").exists():
            self.tokenizer = load_tokenizer(cfg.model, saved=tok_dir)
        else:
            self.tokenizer = self._train_shared_tokenizer(texts["train"])
        self.human = prepare_human_data(self.tokenizer, texts, cfg.data,
                                        min_train_blocks=max(2, cfg.train.batch_size))
        self.model_config = model_config(cfg.model, self.tokenizer)
        self._check_lengths()
        self.source = make_synthetic_source(cfg.data) if cfg.data.source == "synthetic" else None
        self.metrics = [METRICS.get(name)(cfg) for name in cfg.metrics.names]
        for metric in self.metrics:
            metric.preflight(self._context(None, None, None, None))
        # nothing was written so far; from here on the run directory is ours
        if self.main:
            self._write_experiment_json()
            if scratch and not resuming:
                self.tokenizer.save_pretrained(tok_dir)
        self.acc.wait_for_everyone()
        log.info("human data: %d train blocks, %d validation blocks, %d test tokens",
                 len(self.human.train), len(self.human.validation), len(self.human.test_stream))

    def _train_shared_tokenizer(self, train_texts: list[str]) -> Any:
        """Train the scratch tokenizer on the main process and hand it to the others."""
        payload = [None]
        if self.main:
            payload = [load_tokenizer(self.cfg.model, train_texts).backend_tokenizer.to_str()]
        broadcast_object_list(payload)
        return wrap_tokenizer(payload[0])  # sets <pad>, as the trained one has

    def _check_lengths(self) -> None:
        """The trained-length rule (DESIGN.md): nothing is scored or generated beyond the
        length the model was trained on. A scratch model learns positions only up to
        ``data.block_tokens``; a pretrained model brings its own context."""
        g, d = self.cfg.generate, self.cfg.data
        ctx = context_length(self.model_config)
        if ctx is not None and d.block_tokens > ctx:
            raise ConfigError(f"data.block_tokens ({d.block_tokens}) must fit the model's "
                              f"context of {ctx} tokens")
        self.trained_length = trained_length(self.cfg, self.model_config)
        what = ("data.block_tokens, the length a model trained from scratch sees"
                if learns_positions_from_blocks(self.cfg) else "the model's context")
        if g.prompt_tokens + g.new_tokens > self.trained_length:
            raise ConfigError(
                f"generate.prompt_tokens + generate.new_tokens ({g.prompt_tokens} + "
                f"{g.new_tokens}) must be <= {self.trained_length} ({what}); shorten them or "
                "raise data.block_tokens")

    def _check_compatible(self) -> None:
        path = self.run_dir / "experiment.json"
        if not path.exists():
            return
        old = io.read_json(path)["config"]
        new = self.cfg.to_dict()
        diffs = config_diff({k: v for k, v in old.items() if k not in GRID_KEYS},
                            {k: v for k, v in new.items() if k not in GRID_KEYS})
        old_policies = {p.get("label") or p["name"]: p for p in old.get("policies", [])}
        for p in new["policies"]:
            before = old_policies.get(p["label"] or p["name"])
            if before is not None and before != p:
                diffs.append(f"policies[{p['label'] or p['name']}]: {before} -> {p}")
        if diffs:
            raise ConfigError(
                f"{self.run_dir} was started with a different config:\n  "
                + "\n  ".join(diffs)
                + "\nRe-run with the original config to resume it, choose another "
                "`experiment` name, or pass --new-run to start a fresh run directory.")

    def _write_experiment_json(self) -> None:
        import accelerate
        import datasets
        import transformers

        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent, check=False).stdout.strip()
        except OSError:
            sha = ""
        path = self.run_dir / "experiment.json"
        now = {"started": dt.datetime.now().isoformat(), "git_sha": sha or None,
               "command": sys.argv, "num_processes": self.acc.num_processes,
               "device": str(self.acc.device), "mixed_precision": self.acc.mixed_precision,
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__,
                            "accelerate": accelerate.__version__,
                            "datasets": datasets.__version__}}
        record = io.read_json(path) if path.exists() else {
            "experiment": self.cfg.experiment, "created": now["started"], **now,
            "source": self.source.describe() if self.source is not None else None,
            "invocations": []}
        for key in ("num_processes", "mixed_precision"):
            if record.get(key) != now[key]:
                log.warning("resuming with %s=%s; the steps already done used %s=%s, so their "
                            "numbers may differ from what this setting gives", key, now[key],
                            key, record.get(key))
        record.update(config=self.cfg.to_dict(), seeds=self.cfg.seeds,
                      policies=[p.key for p in self.cfg.policies])
        record["invocations"].append(now)
        io.write_json(path, record)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run (or resume) every step of every cell, generations outermost."""
        self.prepare()
        cfg = self.cfg
        per_seed = 1 + 3 * (1 + cfg.generations * len(cfg.policies))
        self.bar = tqdm(total=per_seed * len(cfg.seeds), desc="steps", unit="step",
                        disable=not self.acc.is_local_main_process)
        for seed in cfg.seeds:
            self._corpora.clear()  # corpora of other seeds are never read again
            self._ensure_base(seed)
            self._generation(seed, None, 0)
            self._step(self.run_dir / f"seed_{seed}" / "human", "measure",
                       f"seed {seed}, human reference", lambda s=seed: self._measure_human(s))
            for k in range(1, cfg.generations + 1):
                for spec in cfg.policies:
                    self._generation(seed, spec, k)
        self.bar.close()
        self._model = None
        log.info("run finished: %s", self.run_dir)

    def gen_dir(self, seed: int, spec: PolicySpec | None, k: int) -> Path:
        seed_dir = self.run_dir / f"seed_{seed}"
        return seed_dir / gen_name(0) if k == 0 else seed_dir / spec.key / gen_name(k)

    def _generation(self, seed: int, spec: PolicySpec | None, k: int) -> None:
        where = f"seed {seed}, policy {spec.key if spec else 'all (shared)'}, generation {k}"
        d = self.gen_dir(seed, spec, k)
        self._step(d, "train", where, lambda: self._train(seed, spec, k, d))
        self._step(d, "generate", where, lambda: self._generate(seed, spec, k, d))
        self._step(d, "measure", where, lambda: self._measure(seed, spec, k, d))

    def _step(self, gen_dir: Path, step: str, where: str, fn) -> None:
        marker = gen_dir / f"{step}.done"
        self.bar.set_description(f"{where}: {step}")
        if marker.exists():
            self.bar.update(1)
            return
        start = time.time()
        try:
            fn()
        except Exception as err:
            raise StepError(f"{where}, step {step} failed: {type(err).__name__}: {err}") from err
        self.acc.wait_for_everyone()
        elapsed = time.time() - start
        if self.main:
            io.write_json(marker, {"step": step, "elapsed_s": elapsed,
                                   "finished": dt.datetime.now().isoformat()})
        self.acc.wait_for_everyone()
        self.timings.append({"where": where, "step": step, "elapsed_s": elapsed})
        log.info("%s: %s done in %.1fs", where, step, elapsed)
        self.bar.update(1)

    # --- steps ----------------------------------------------------------------------------

    def _mix(self, seed: int, spec: PolicySpec | None, k: int) -> list[dict[str, Any]]:
        if k == 0:
            return list(self.human.train)
        corpora = {0: self._corpus(self.gen_dir(seed, None, 0))}
        corpora.update({j: self._corpus(self.gen_dir(seed, spec, j)) for j in range(1, k)})
        rng = np.random.default_rng(derive_seed(seed, spec.key, k, "mix"))
        policy = make_policy(spec, shard_seed=derive_seed(seed, spec.key, "shards"))
        return policy.build(MixContext(k, self.human.train, corpora, rng, self.cfg.generations))

    def _train(self, seed: int, spec: PolicySpec | None, k: int, d: Path) -> None:
        cfg, tag = self.cfg, spec.key if spec else "shared"
        set_seed(derive_seed(seed, tag, k, "train"))
        mix = self._mix(seed, spec, k)
        if self.main:
            io.write_rows(d / "mix.parquet", mix, PROVENANCE)
        model = self._starting_model(seed, spec, k)
        tcfg = cfg.train
        if spec is not None and spec.epochs is not None:
            tcfg = dataclasses.replace(tcfg, epochs=spec.epochs)
        model, records = train_generation(
            self.acc, model, self.tokenizer.pad_token_id, mix, self.human.validation,
            tcfg, seed=derive_seed(seed, tag, k, "order"), desc=f"train gen {k}")
        if self.main:
            self._save_model(model, d / "model")
            io.write_jsonl(d / "train_log.jsonl", records)
        # generate and measure reload the saved weights, so an uninterrupted run and a
        # resumed one use exactly the same model object (fp32, no mixed-precision wrapper)
        self._model = None

    def _base_dir(self, seed: int) -> Path | None:
        """Where the run keeps the weights ``init: base`` starts from: a scratch model's
        initial weights (``seed_<s>/base``), or a GGUF checkpoint dequantized once for all
        seeds (``base_model/``); None for other pretrained models, loaded as named."""
        if self.cfg.model.source == "scratch":
            return self.run_dir / f"seed_{seed}" / "base"
        if self.cfg.model.gguf_file:
            return self.run_dir / "base_model"
        return None

    def _ensure_base(self, seed: int) -> None:
        """Save the ``base`` weights once, on the main process, atomically (a resumed run
        reuses them): a scratch model's initial weights for ``seed``, or the GGUF checkpoint
        as plain float32 weights with its tokenizer, so every generation reloads ordinary
        weights and every saved model is serializable."""
        base_dir = self._base_dir(seed)
        if base_dir is not None and self.main and not (base_dir / "config.json").exists():
            model = (random_model(self.model_config, derive_seed(seed, "base"))
                     if self.cfg.model.source == "scratch" else load_pretrained(self.cfg.model))
            self._save_model(model, base_dir)
        self.acc.wait_for_everyone()

    def _starting_model(self, seed: int, spec: PolicySpec | None, k: int) -> torch.nn.Module:
        cfg = self.cfg
        init_seed = derive_seed(seed, spec.key if spec else "shared", k, "init")
        if k == 0 and cfg.model.init == "scratch":
            return random_model(self.model_config, init_seed)
        previous = self.gen_dir(seed, spec, k - 1) / "model" if k > 0 else None
        init = cfg.model.init if k > 0 else "base"
        return starting_model(cfg.model, self.tokenizer, init, init_seed, self._base_dir(seed),
                              previous)

    def _save_model(self, model: torch.nn.Module, final: Path) -> None:
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():  # left by a killed run
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        io.replace_dir(tmp, final)

    def _load(self, d: Path) -> torch.nn.Module:
        if self._model is None or self._model[0] != d:
            self._model = (d, load_model(d / "model").to(self.acc.device))
        return self._model[1]

    def _generate(self, seed: int, spec: PolicySpec | None, k: int, d: Path) -> None:
        model = self._load(d)
        corpus = generate_corpus(self.acc, model, self.tokenizer, self.human.train,
                                 self.cfg.generate, derive_seed(seed, spec.key if spec else
                                                                "shared", k, "generate"),
                                 generation=k, desc=f"generate gen {k}")
        if self.main:
            io.write_rows(d / "corpus.parquet", corpus)
        self._corpora[d] = _as_arrays(corpus)

    def _corpus(self, d: Path) -> list[dict[str, Any]]:
        if d not in self._corpora:
            self._corpora[d] = _as_arrays(io.read_rows(d / "corpus.parquet"))
        return self._corpora[d]

    def _context(self, seed: int | None, k: int | None, model: Any, corpus: Any,
                 out_dir: Path | None = None) -> MeasureContext:
        seed_dir = self.run_dir / f"seed_{seed}" if seed is not None else None
        return MeasureContext(cfg=self.cfg, accelerator=self.acc, tokenizer=self.tokenizer,
                              human=self.human, generation=k, model=model, corpus=corpus,
                              source=self.source, seed=seed, out_dir=out_dir,
                              seed_dir=seed_dir, reference_model=lambda: self._reference(seed),
                              trained_length=self.trained_length,
                              extras={"model_config": self.model_config})

    def _reference(self, seed: int) -> torch.nn.Module:
        """The seed's generation-0 model, loaded once and kept for reference scoring."""
        d = self.gen_dir(seed, None, 0)
        if self._model is not None and self._model[0] == d:
            return self._model[1]
        if self._ref is None or self._ref[0] != seed:
            self._ref = (seed, load_model(d / "model").to(self.acc.device))
        return self._ref[1]

    def _measure(self, seed: int, spec: PolicySpec | None, k: int, d: Path) -> None:
        ctx = self._context(seed, k, self._load(d), self._corpus(d), out_dir=d)
        result = _collect(self.metrics, lambda m: m.compute(ctx))
        if self.main:
            io.write_json(d / "metrics.json", {"seed": seed, "policy": spec.key if spec else None,
                                               "generation": k, **result})
        self._model = None  # the next step trains a new one

    def _measure_human(self, seed: int) -> None:
        d = self.run_dir / f"seed_{seed}" / "human"
        ctx = self._context(seed, None, None, None, out_dir=d)
        result = _collect(self.metrics, lambda m: m.human_reference(ctx))
        if self.main:
            io.write_json(d / "metrics.json", {"seed": seed, "policy": "human",
                                               "generation": None, **result})


def _collect(metrics: list[Any], fn) -> dict[str, Any]:
    values, meta, details, elapsed = {}, {}, {}, {}
    for metric in metrics:
        start = time.time()
        out = fn(metric) or {}
        elapsed[metric.name] = time.time() - start
        details.update(out.pop("_details", {}))
        values.update(out)
        meta.update(metric_meta(metric, out))
    return {"values": values, "meta": meta, "details": details, "elapsed_s": elapsed}


def _as_arrays(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Provenance and int32 token ids only (no decoded text): a WikiText-2-sized corpus then
    takes ~10 MB in memory."""
    return [{**{k: r[k] for k in PROVENANCE},
             "input_ids": np.asarray(r["input_ids"], dtype=np.int32)} for r in rows]
