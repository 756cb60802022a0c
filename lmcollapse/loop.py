"""The collapse loop: set-up, then the cells, then the steps of one generation.

Read it in the order of the data flow (DESIGN.md)::

    human data --tokenize--> blocks --(policy)--> training mix --train--> model k
         prompts (human blocks) --generate (model k)--> corpus k --> policy for k+1
                test text, corpus k, human reference --measure--> metrics k

:class:`CollapseLoop` runs generation 0 of each seed (human data only, shared by every
policy), measures the human reference row, then generations 1..N of every policy. Each
generation is three steps (``train``, ``generate``, ``measure``); a step is finished when
its marker exists (:mod:`lmcollapse.layout`), and every file is written atomically, so
re-running the same command continues at the first unfinished step and never redoes a
finished one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from peft import PeftModel
from tqdm.auto import tqdm

from lmcollapse import files
from lmcollapse.config import Cell, CurationConfig, ExperimentConfig, cells, plain
from lmcollapse.curation import best_of_groups, candidates_per_prompt, quantiles, select
from lmcollapse.data.blocks import PROVENANCE, Sample, human_rows, tokenize_records
from lmcollapse.errors import ConfigError, StepError
from lmcollapse.faults import kill_point
from lmcollapse.generate import generate_corpus
from lmcollapse.layout import (
    ADAPTER,
    CANDIDATES,
    CORPUS,
    CURATION,
    MIX,
    MODEL,
    TRAIN_LOG,
    Generation,
    RunLayout,
)
from lmcollapse.layout import METRICS as METRICS_FILE
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.models import load_model, load_pretrained, random_model, starting_model
from lmcollapse.policies import MixContext, make_policy
from lmcollapse.preflight import (
    Setup,
    make_accelerator,
    metric_context,
    prepare,
    start_trackers,
)
from lmcollapse.sampling import derive_seed
from lmcollapse.scorers.base import ScoreContext, make_scorer
from lmcollapse.shards import Selection, Unit, select_units
from lmcollapse.train import train_generation

log = logging.getLogger(__name__)
#: seconds between two looks at a lock another job holds
LOCK_POLL_S = 2.0


class Steps:
    """Runs a step unless its marker exists; keeps the progress bar and the timings.

    A step's marker records when it started and ended (``started``, ``finished``,
    ``elapsed_s``), ``work_s``: the seconds inside :meth:`work` blocks (training,
    generation, metric computation), and the CPU ``threads`` it ran with. ``elapsed_s -
    work_s`` is the loop's own bookkeeping (building the mix, saving and loading weights,
    writing files, checksums).

    ``listener`` (a worker process of :mod:`lmcollapse.parallel`) receives every step as
    an event: ``{"event": "start" | "done" | "skip", "dir", "step", "where"}`` (and
    ``elapsed_s`` when done); the parent draws the progress from them.
    """

    def __init__(self, acc: Accelerator, total: int,
                 listener: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.acc = acc
        self.timings: list[dict[str, Any]] = []
        self._work = 0.0
        self.listener = listener
        self.bar = tqdm(total=total, desc="steps", unit="step",
                        disable=not acc.is_local_main_process or listener is not None)

    def _tell(self, event: str, directory: Path, step: str, where: str, **more: Any) -> None:
        if self.listener is not None:
            self.listener({"event": event, "dir": str(directory), "step": step,
                           "where": where, **more})

    def run(self, directory: Path, step: str, where: str, fn: Callable[[], None]) -> None:
        marker = RunLayout.marker(directory, step)
        self.bar.set_description(f"{where}: {step}")
        if marker.exists():
            files.verify_folder(directory)  # what finished steps wrote is all still there
            self.bar.update(1)
            self._tell("skip", directory, step, where)
            return
        self._tell("start", directory, step, where)
        started, start, self._work = dt.datetime.now().isoformat(), time.perf_counter(), 0.0
        try:
            fn()
        except Exception as err:
            raise StepError(f"{where}, step {step} failed: {type(err).__name__}: {err}") from err
        self.acc.wait_for_everyone()
        elapsed = time.perf_counter() - start
        timing = {"step": step, "started": started, "finished": dt.datetime.now().isoformat(),
                  "elapsed_s": elapsed, "work_s": self._work,
                  "threads": torch.get_num_threads()}
        if self.acc.is_main_process:
            files.write_json(marker, timing)
        self.acc.wait_for_everyone()
        self.timings.append({"where": where, **timing})
        log.info("%s: %s done in %.1fs", where, step, elapsed)
        self.bar.update(1)
        self._tell("done", directory, step, where, elapsed_s=elapsed)

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """Time spent computing (train, generate, a metric), not on bookkeeping."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._work += time.perf_counter() - start

    def close(self) -> None:
        self.bar.close()


class CollapseLoop:
    """One experiment: a grid of (policy, seed) cells sharing data, model and metrics.

    Args:
        cfg: the validated config (not modified).
        accelerator: the process's Accelerator (one is made from ``cfg`` if not given).
        new_run: when the run directory exists, start a fresh one named with a time stamp.
    """

    def __init__(self, cfg: ExperimentConfig, accelerator: Accelerator | None = None,
                 new_run: bool = False, selection: Selection | None = None) -> None:
        selection = selection or Selection()
        if new_run and not selection.everything:
            raise ConfigError("--new-run starts a fresh directory per job, so jobs that each "
                              f"run part of the experiment ({selection.describe()}) would not "
                              "share one; give every job the same new `experiment` name instead")
        if new_run and cfg.run_dir.exists():
            stamp = [dt.datetime.now().strftime("%Y%m%d-%H%M%S")]
            broadcast_object_list(stamp)
            cfg = dataclasses.replace(cfg, experiment=f"{cfg.experiment}-{stamp[0]}")
        self.cfg = cfg
        #: the cells of the grid (one per policy without a grid), by key
        self.cells: dict[str, Cell] = {c.key: c for c in cells(cfg)}
        #: the (seed, cell key) units this job runs (all of them unless a selection is given)
        self.selection = selection
        self.units: list[Unit] = select_units(cfg, self.cells, selection)
        #: what this invocation adds to its record in experiment.json (the CLI sets the
        #: worker plan of --jobs here)
        self.invocation: dict[str, Any] = {}
        self.acc = accelerator or make_accelerator(cfg)
        self.layout = RunLayout(cfg.run_dir)
        #: fixed by :meth:`prepare` (data, tokenizer, architecture, metrics)
        self.setup: Setup | None = None
        self.steps: Steps | None = None
        #: the one model in memory: (its weights' directory, the model), and the seed's
        #: generation-0 model
        self._model: tuple[Path, torch.nn.Module] | None = None
        self._reference: tuple[Path, torch.nn.Module] | None = None
        #: corpora of the current seed, by generation directory
        self._corpora: dict[Path, list[Sample]] = {}
        self._corpora_seed: int | None = None

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    @property
    def timings(self) -> list[dict[str, Any]]:
        return self.steps.timings if self.steps is not None else []

    def prepare(self, claim: bool = True) -> Setup:
        """Set-up: everything that can fail is checked before any work. ``claim=False``: a
        worker process of :mod:`lmcollapse.parallel` (its parent claimed the run)."""
        self.setup = prepare(self.cfg, self.acc, self.layout, self.units,
                             self.selection.describe(), claim=claim, invocation=self.invocation)
        return self.setup

    # --- the cells ----------------------------------------------------------------------

    def run(self) -> None:
        """Run (or resume) every step of every cell, generations outermost."""
        self.prepare()
        start_trackers(self.acc, self.cfg, self.run_dir)
        try:
            self._run_cells()
        finally:
            self.setup.release()
            for tracker in self.acc.trackers:  # flush and close; end_training() would also
                tracker.finish()  # tear down the process group the caller may still use
            self.acc.trackers = []

    def _run_cells(self) -> None:
        """Seed by seed: the shared part (waiting while another job builds it), then this
        job's cells, generations outermost (a stopped run has comparable rows)."""
        seeds = list(dict.fromkeys(seed for seed, _ in self.units))
        mine = {seed: [self.cells[k] for s, k in self.units if s == seed] for seed in seeds}
        self.steps = Steps(self.acc, sum(self.step_count(c) for c in mine.values()))
        for seed in seeds:
            self._run_seed(seed, mine[seed])
        self.steps.close()
        self._model = None
        log.info("run finished: %s (%s)", self.run_dir, self.selection.describe())

    def run_unit(self, seed: int, key: str,
                 listener: Callable[[dict[str, Any]], None]) -> None:
        """One (seed, cell) unit, for a worker process of :mod:`lmcollapse.parallel` (set
        up with ``prepare(claim=False)``): the seed's shared part if no other worker has
        built it (waiting while one builds it), then the cell's generations. Each step is
        told to ``listener``."""
        if self.steps is None or self.steps.listener is not listener:
            self.steps = Steps(self.acc, 0, listener)
        self._run_seed(seed, [self.cells[key]])

    def _run_seed(self, seed: int, cells: list[Cell]) -> None:
        if self._corpora_seed != seed:  # corpora of other seeds are never read again
            self._corpora.clear()
            self._corpora_seed = seed
        with self._waiting_lock(self.layout.seed_lock(seed),
                                f"seed {seed}, generation 0 and the human row"):
            self._ensure_base(seed)
            for group in self._zero_groups(cells):  # one model 0 per training setting
                self.generation(Generation(seed, 0, None, group))
            self.steps.run(self.layout.human(seed), "measure",
                           f"seed {seed}, human reference",
                           lambda s=seed: self.measure_human(s))
        for cell in cells:  # a shared model 0 writes the cell its own corpus 0
            if self._own_zero(cell):
                self.generation(Generation(seed, 0, cell.key, cell.zero_group))
        for k in range(1, self.cfg.generations + 1):
            for cell in cells:
                self.generation(Generation(seed, k, cell.key, cell.zero_group))

    @staticmethod
    def _zero_groups(cells: list[Cell]) -> list[str]:
        """The generation-0 models ``cells`` need: the seed's shared one (the human row's
        reference) and one per other training setting."""
        return ["", *sorted({c.zero_group for c in cells} - {""})]

    def step_count(self, cells: list[Cell]) -> int:
        """Steps of one seed's shared part and ``cells`` (for the progress bar)."""
        zero = 3 + 1 + (len(self._zero_groups(cells)) - 1)  # model 0, human row, others
        return zero + sum(2 * self._own_zero(c) + 3 * self.cfg.generations for c in cells)

    @contextlib.contextmanager
    def _waiting_lock(self, path: Path, what: str) -> Iterator[None]:
        """Hold the lock at ``path``, waiting (polling) while another job holds it. Every
        process of this job polls with the main one, so no collective call blocks for long."""
        lock = files.RunLock(path, what) if self.acc.is_main_process else None
        waited = False
        while True:
            state = [lock.try_acquire() if lock is not None else (True, "")]
            broadcast_object_list(state)
            if state[0][0]:
                break
            if not waited:
                log.info("%s: being built by another job (%s); waiting for it", what,
                         state[0][1])
                waited = True
            time.sleep(LOCK_POLL_S)
        if waited:
            log.info("%s: the other job is done with it; going on", what)
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def generation(self, gen: Generation) -> None:
        """The steps of one generation: train on the mix, write corpus k, measure. A cell's
        own generation 0 only writes and measures (its model is shared); the generation-0
        model of a grid's other training setting is only trained (its cells write their own
        corpus 0)."""
        d = self.layout.gen_dir(gen)
        if gen.k > 0 or gen.policy is None:
            self.steps.run(d, "train", str(gen), lambda: self.train(gen, d))
        if gen.policy is None and gen.group:
            return
        self.steps.run(d, "generate", str(gen), lambda: self.generate(gen, d))
        self.steps.run(d, "measure", str(gen), lambda: self.measure(gen, d))
        self._prune(gen)

    # --- the steps of one generation ------------------------------------------------------

    def mix(self, gen: Generation) -> list[Sample]:
        """The training mix: human train at generation 0, else what the policy builds from
        human train and the corpora of generations 0..k-1 of this cell."""
        human = self.setup.human.train
        if gen.k == 0:
            return list(human)
        corpora = {0: self._corpus(self.layout.gen_dir(self._zero(gen)))}
        corpora.update({j: self._corpus(self.layout.gen_dir(Generation(gen.seed, j, gen.policy)))
                        for j in range(1, gen.k)})
        rng = np.random.default_rng(derive_seed(gen.seed, gen.policy, gen.k, "mix"))
        policy = make_policy(self.cells[gen.policy].policy,
                             shard_seed=derive_seed(gen.seed, gen.policy, "shards"))
        fresh = (lambda count: self._fresh_human(gen, count)) if self.setup.fresh else None
        return policy.build(MixContext(gen.k, human, corpora, rng, self.cfg.generations, fresh,
                                       reserve=self.setup.human.reserve))

    def _fresh_human(self, gen: Generation, count: int) -> list[Sample]:
        """``count`` blocks of new human text for generation ``gen`` (documents the data
        source writes with a seed of this cell and generation, cut like human train)."""
        per_doc = len(self.setup.human.train) / max(1, len(self.setup.human.texts["train"]))
        docs = max(1, int(count / max(per_doc, 1e-9) * 1.2) + 2)
        seed = derive_seed(gen.seed, gen.policy, gen.k, "fresh")
        while True:
            texts = self.setup.fresh(docs, seed)
            stream = [t for rec in tokenize_records(self.setup.tokenizer, texts) for t in rec]
            rows = human_rows(stream, self.cfg.data.block_tokens, f"fresh{gen.k}")
            if len(rows) >= count or count == 0:
                return rows[:count]
            docs *= 2

    def train(self, gen: Generation, d: Path) -> None:
        set_seed(derive_seed(gen.seed, gen.tag, gen.k, "train"))
        mix = self.mix(gen)
        if self.acc.is_main_process:
            files.write_rows(d / MIX, mix, PROVENANCE)
        tcfg = self._cfg(gen).train
        cell = self.cells.get(gen.policy)
        if cell is not None and cell.policy.epochs is not None:
            tcfg = dataclasses.replace(tcfg, epochs=cell.policy.epochs)
        start = self._starting_model(gen)
        with self.steps.work():
            model, records = train_generation(
                self.acc, start, self.setup.tokenizer.pad_token_id, mix,
                self.setup.human.validation, tcfg,
                seed=derive_seed(gen.seed, gen.tag, gen.k, "order"), desc=f"train gen {gen.k}",
                log_tag=str(self.layout.gen_dir(gen).relative_to(self.run_dir)),
                save_adapter=(lambda peft: self._save_model(peft, d / ADAPTER))
                if self.acc.is_main_process else None)
        if self.acc.is_main_process:
            if not (tcfg.lora.enabled and gen.k > 0 and self.cfg.keep_models == "none"):
                self._save_model(model, d / MODEL)  # (LoRA: the adapters rebuild it)
            files.write_jsonl(d / TRAIN_LOG, records)
        # generate and measure reload the saved weights, so an uninterrupted run and a
        # resumed one use exactly the same model object (fp32, no mixed-precision wrapper)
        self._model = None

    def generate(self, gen: Generation, d: Path) -> None:
        """Corpus k: one continuation per human training block, or, for a curating cell,
        the curated pick of several candidates per block."""
        cell = self.cells.get(gen.policy)
        if cell is not None and cell.policy.curate.active:
            corpus = self._curated(gen, d, cell.policy.curate)
        else:
            corpus = self._continue(gen, 0)
        if self.acc.is_main_process:
            files.write_rows(d / CORPUS, corpus)
        self._corpora[d] = _as_arrays(corpus)

    def _continue(self, gen: Generation, draw: int) -> list[Sample]:
        """One continuation of every prompt by generation ``gen``'s model. Draw 0 uses the
        seed an uncurated cell uses (the shared one at generation 0), so a curating cell's
        first candidates are exactly the uncurated corpus."""
        tag = gen.tag if gen.k > 0 else gen.shared_zero.tag
        seed = (derive_seed(gen.seed, tag, gen.k, "generate") if draw == 0
                else derive_seed(gen.seed, gen.tag, gen.k, "generate", draw))
        model = self._load(gen)
        with self.steps.work():
            rows = generate_corpus(self.acc, model, self.setup.tokenizer,
                                   self.setup.human.train, self._cfg(gen).generate, seed,
                                   generation=gen.k, desc=f"generate gen {gen.k}")
        if draw:
            for r in rows:
                r["sample_id"] = f"{r['sample_id']}:{draw}"
        return rows

    def _curated(self, gen: Generation, d: Path, curate: CurationConfig) -> list[Sample]:
        """Generate the candidates, score them, keep a corpus of N (lmcollapse.curation);
        every candidate's score and whether it was kept go to candidates.parquet, the
        summary (kept share, score quantiles, generation cost) to curation.json."""
        n = len(self.setup.human.train)
        per_prompt = candidates_per_prompt(curate.rule, curate.fraction, curate.candidates,
                                           curate.best_of)
        candidates = [r for j in range(per_prompt) for r in self._continue(gen, j)]
        scorer = make_scorer(curate.scorer)
        with self.steps.work():
            scores = scorer.score(self._score_context(gen), candidates)
        if curate.best_of > 1:
            kept, repeats = best_of_groups(scores, [r["prompt_id"] for r in candidates]), 0
        else:
            rng = np.random.default_rng(derive_seed(gen.seed, gen.tag, gen.k, "curate"))
            kept, repeats = select(scores, curate.rule, n, curate.threshold, rng)
        times = np.bincount(kept, minlength=len(candidates))
        if self.acc.is_main_process:
            rule = f"best of {curate.best_of}" if curate.best_of > 1 else curate.rule
            files.write_rows(d / CANDIDATES, [
                {"sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "score": float(s),
                 "kept": int(t), "rule": rule} for r, s, t in zip(candidates, scores, times,
                                                                   strict=True)])
            files.write_json(d / CURATION, {
                "rule": rule, "scorer": scorer.describe(), "candidates": len(candidates),
                "per_prompt": per_prompt, "kept": int(len(kept)), "repeats": int(repeats),
                "kept_fraction": float((times > 0).mean()),
                "generated_tokens": int(sum(len(r["input_ids"]) for r in candidates)),
                "kept_tokens": int(sum(len(candidates[i]["input_ids"]) for i in kept)),
                "score_kept": quantiles(scores[times > 0]),
                "score_dropped": quantiles(scores[times == 0])})
        return [candidates[i] for i in kept]

    def _score_context(self, gen: Generation) -> ScoreContext:
        return ScoreContext(accelerator=self.acc, tokenizer=self.setup.tokenizer,
                            prompts=self.setup.human.train,
                            prompt_tokens=self._cfg(gen).generate.prompt_tokens,
                            generator=lambda: self._load(gen),
                            reference_model=lambda: self._reference_model(gen.seed, gen.group),
                            truth=self.setup.truth)

    def _zero(self, gen: Generation) -> Generation:
        """Generation 0 as ``gen``'s cell sees it: its own corpus 0 or the shared one."""
        cell = self.cells[gen.policy]
        return Generation(gen.seed, 0, cell.key, cell.zero_group) if self._own_zero(cell) \
            else gen.shared_zero

    def _own_zero(self, cell: Cell) -> bool:
        """Whether a cell needs a corpus 0 of its own: it curates, decodes otherwise than
        the shared corpus 0 was written, or starts from another training setting's model."""
        return (cell.policy.curate.active or bool(cell.zero_group)
                or plain(cell.cfg.generate) != plain(self.cfg.generate))

    def _cfg(self, gen: Generation) -> ExperimentConfig:
        """The settings generation ``gen`` runs with: its cell's (a grid point's); for the
        seed's shared generation 0 the base config (it writes the corpus 0 of every cell at
        the base decoding); for another training setting's generation 0 (trained only)
        those of a cell with that setting."""
        if gen.policy is not None:
            return self.cells[gen.policy].cfg
        if not gen.group:
            return self.cfg
        return next(c.cfg for c in self.cells.values() if c.zero_group == gen.group)

    def measure(self, gen: Generation, d: Path) -> None:
        ctx = self._context(gen.seed, d, gen.group, generation=gen.k, model=self._load(gen),
                            corpus=self._corpus(d))
        with self.steps.work(), self._scoring_precision():
            result = _collect(self.setup.metrics, lambda m: m.compute(ctx))
        if self.acc.is_main_process:
            files.write_json(d / METRICS_FILE, {"seed": gen.seed, "policy": gen.policy,
                                                "generation": gen.k, **result})
        self._model = None  # the next step trains a new one

    def measure_human(self, seed: int) -> None:
        d = self.layout.human(seed)
        ctx = self._context(seed, d, "")
        with self.steps.work(), self._scoring_precision():
            result = _collect(self.setup.metrics, lambda m: m.human_reference(ctx))
        if self.acc.is_main_process:
            files.write_json(d / METRICS_FILE, {"seed": seed, "policy": "human",
                                                "generation": None, **result})

    def _scoring_precision(self) -> contextlib.AbstractContextManager[Any]:
        """``metrics.precision``: bf16 autocast around every forward pass of a measurement
        (weights stay float32), or nothing (fp32)."""
        if self.cfg.metrics.precision == "bf16":
            return torch.autocast(self.acc.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- weights and corpora ----------------------------------------------------------------

    def _base_dir(self, seed: int) -> Path | None:
        """Where the run keeps the weights ``init: base`` starts from: a scratch model's
        initial weights, or a GGUF checkpoint dequantized once for all seeds; None for other
        pretrained models, loaded as named."""
        if self.cfg.model.source == "scratch":
            return self.layout.scratch_base(seed)
        if self.cfg.model.gguf_file:
            return self.layout.base_model
        return None

    def _ensure_base(self, seed: int) -> None:
        """Save the ``base`` weights once, on the main process, atomically (a resumed run
        reuses them): a scratch model's initial weights for ``seed``, or the GGUF checkpoint
        as plain float32 weights with its tokenizer, so every generation reloads ordinary
        weights and every saved model is serializable."""
        base_dir = self._base_dir(seed)
        if base_dir is None:
            return
        shared = self.cfg.model.source != "scratch"  # the GGUF copy serves every seed
        with (self._waiting_lock(self.layout.base_lock, "the dequantized GGUF model")
              if shared else contextlib.nullcontext()):
            if self.acc.is_main_process and not (base_dir / "config.json").exists():
                model = (load_pretrained(self.cfg.model) if shared else
                         random_model(self.setup.model_config, derive_seed(seed, "base")))
                self._save_model(model, base_dir)
            self.acc.wait_for_everyone()

    def _starting_model(self, gen: Generation) -> torch.nn.Module:
        """The weights generation ``gen`` trains from (``model.init``): the base weights,
        fresh random ones, or generation k-1's model (:meth:`_weights`)."""
        init_seed = derive_seed(gen.seed, gen.tag, gen.k, "init")
        model_cfg = self._cfg(gen).model
        base = self._base_dir(gen.seed)
        if base is not None and base.exists():  # the weights it may start from, as written
            files.verify(base)
        if gen.k == 0:
            if model_cfg.init == "scratch":
                return random_model(self.setup.model_config, init_seed)
            return starting_model(model_cfg, self.setup.tokenizer, "base", init_seed, base, None)
        if model_cfg.init == "previous":
            return self._weights(gen.previous)
        return starting_model(model_cfg, self.setup.tokenizer, model_cfg.init, init_seed, base,
                              None)

    def _weights(self, gen: Generation) -> torch.nn.Module:
        """Generation ``gen``'s trained model (generation 0: the shared one), on the CPU:
        its saved weights, or with LoRA the weights it started from plus its adapter (for
        ``init: previous`` the chain of adapters back to generation 0), merged exactly as
        training merged them."""
        gen = gen if gen.k > 0 else gen.shared_zero
        if not self._cfg(gen).train.lora.enabled:
            path = self.layout.model_dir(gen)
            files.verify(path)
            return load_model(path)
        adapter = self.layout.adapter_dir(gen)
        files.verify(adapter)
        return PeftModel.from_pretrained(self._starting_model(gen), adapter).merge_and_unload()

    def _save_model(self, model: torch.nn.Module, final: Path) -> None:
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():  # left by a killed run
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        if not isinstance(model, PeftModel):  # an adapter folder holds the adapter only
            self.setup.tokenizer.save_pretrained(tmp)
        files.replace_dir(tmp, final)

    def _prune(self, gen: Generation) -> None:
        """``keep_models``: once generation k of a cell is measured, drop the weights no
        later step needs: model k-1 (``last``, ``none``), and model k when it is the
        cell's final one (``none``). Generation 0 and LoRA adapters always stay."""
        keep = self.cfg.keep_models
        if keep == "all" or gen.k == 0 or gen.policy is None:
            return
        doomed = [self.layout.model_dir(gen.previous)] if gen.k > 1 else []
        if keep == "none" and gen.k == self.cfg.generations:
            doomed.append(self.layout.model_dir(gen))
        if self.acc.is_main_process:
            for folder in doomed:
                if folder.exists():
                    freed = files.remove_dir(folder)
                    log.info("keep_models=%s: removed %s (%.1f MB)", keep,
                             folder.relative_to(self.run_dir), freed / 1e6)
        self.acc.wait_for_everyone()

    def _load(self, gen: Generation) -> torch.nn.Module:
        """Generation ``gen``'s model (the one in memory, or loaded from its directory)."""
        path = self.layout.model_dir(gen)
        if self._model is None or self._model[0] != path:
            self._model = (path, self._weights(gen).to(self.acc.device))
        return self._model[1]

    def _reference_model(self, seed: int, group: str = "") -> torch.nn.Module:
        """The seed's generation-0 model (of the cell's training setting), loaded once and
        kept for reference scoring."""
        zero = Generation(seed, 0, None, group)
        path = self.layout.model_dir(zero)
        if self._model is not None and self._model[0] == path:
            return self._model[1]
        if self._reference is None or self._reference[0] != path:
            self._reference = (path, self._weights(zero).to(self.acc.device))
        return self._reference[1]

    def _corpus(self, d: Path) -> list[Sample]:
        if d not in self._corpora:
            files.verify(d / CORPUS)
            self._corpora[d] = _as_arrays(files.read_rows(d / CORPUS))
        return self._corpora[d]

    def _context(self, seed: int, out_dir: Path, group: str, **row: Any) -> MeasureContext:
        return metric_context(self.setup, self.cfg, self.acc, self.layout.seed_dir(seed),
                              out_dir, lambda: self._reference_model(seed, group),
                              reference_group=group, seed=seed, **row)


def _collect(metrics: list[Metric], fn: Callable[[Metric], Measurement | None]) -> dict[str, Any]:
    """metrics.json of one row: values, their meta, details, sizes, conditions, timing."""
    out: dict[str, dict[str, Any]] = {"values": {}, "meta": {}, "details": {}, "sizes": {},
                                      "conditions": {}, "elapsed_s": {}}
    for metric in metrics:
        start = time.time()
        m = fn(metric)
        out["elapsed_s"][metric.name] = time.time() - start
        kill_point("measure_metric")
        if m is None:
            continue
        out["values"].update(m.values)
        out["meta"].update({k: metric.meta(k) for k in m.values})
        out["details"][metric.name] = m.details
        out["sizes"][metric.name] = m.sizes
        out["conditions"][metric.name] = metric.describe(m)
    return out


def _as_arrays(rows: list[Sample]) -> list[Sample]:
    """Provenance and int32 token ids only (no decoded text): a WikiText-2-sized corpus then
    takes ~10 MB in memory."""
    return [{**{k: r[k] for k in PROVENANCE},
             "input_ids": np.asarray(r["input_ids"], dtype=np.int32)} for r in rows]
