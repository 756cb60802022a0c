"""The collapse loop: set-up, then the steps of the job's plan, each to its work.

Read it in the order of the data flow (docs/design.md)::

    human data --tokenize--> blocks --(policy)--> training mix --train--> model k
         prompts (human blocks) --generate (model k)--> corpus k --> policy for k+1
                test text, corpus k, human reference --measure--> metrics k

:class:`CollapseLoop` takes the steps of its plan (:mod:`lmcollapse.plan`, where their
order is written): generation 0 of each seed (human data only, shared by every cell), the
human reference row, then generations 1..N of every unit, each as its unit kind lists it
(a lineage: ``train``, ``generate``, ``measure``; a population adds its ``pool`` and row,
steps of its own that it takes itself, :mod:`lmcollapse.units`). A step is finished when
its marker exists (:mod:`lmcollapse.layout`), and every file is written atomically, so
re-running the same command continues at the first unfinished step and never redoes a
finished one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from lmcollapse import curation, files
from lmcollapse.curation import candidates_per_prompt
from lmcollapse.data.blocks import PROVENANCE, Sample, fresh_writer, human_continuations, pack_rows
from lmcollapse.errors import ConfigError
from lmcollapse.generate import generate_corpus
from lmcollapse.grid import Grid
from lmcollapse.layout import CANDIDATES, CORPUS, CURATION, MIX, TRAIN_LOG, Generation, RunLayout
from lmcollapse.layout import METRICS as METRICS_FILE
from lmcollapse.metrics.base import (
    MeasureContext,
    Measurement,
    Metric,
    collect,
    scoring_precision,
    write_row,
)
from lmcollapse.plan import GENERATION, HUMAN, Step, build_plan
from lmcollapse.policies import MixContext, make_policy
from lmcollapse.preflight import make_accelerator, metric_context, prepare, start_trackers
from lmcollapse.prepared import Setup
from lmcollapse.registry import UNIT_KINDS
from lmcollapse.sampling import derive_seed
from lmcollapse.scorers.base import ScoreContext, make_scorer
from lmcollapse.settings import CurationConfig, ExperimentConfig
from lmcollapse.shards import Selection, Unit
from lmcollapse.steps import Steps, waiting_lock
from lmcollapse.train import train_generation
from lmcollapse.units import Host, UnitKind
from lmcollapse.weights import Weights

log = logging.getLogger(__name__)


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
        if new_run:
            cfg = _new_run(cfg, selection)
        self.cfg = cfg
        #: the cells, who shares generation 0, each generation's settings
        self.grid = Grid.of(cfg)
        #: the (seed, cell key) units this job runs (all of them unless a selection is given)
        self.selection = selection
        self.units: list[Unit] = self.grid.units(selection)
        #: every step those units take, in order (lmcollapse.plan; the progress bars count it)
        self.plan: list[Step] = build_plan(self.grid, self.units)
        #: what this invocation adds to its record in experiment.json (the CLI sets the
        #: worker plan of --jobs here)
        self.invocation: dict[str, Any] = {}
        self.acc = accelerator or make_accelerator(cfg)
        self.layout = RunLayout(cfg.run_dir)
        #: fixed by :meth:`prepare` (data, tokenizer, architecture, metrics)
        self.setup: Setup | None = None
        self.steps: Steps | None = None
        #: which weights a generation starts from and where they go (made by prepare)
        self.weights: Weights | None = None
        #: every unit kind, by name, taking its own steps (made by prepare)
        self.kinds: dict[str, UnitKind] = {}
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
        self.setup = prepare(self.cfg, self.acc, self.layout, self.grid, self.units,
                             self.selection.describe(), claim, self.invocation, self.plan)
        self.weights = Weights(self.grid, self.acc, self.layout, self.setup)
        host = Host(self.grid, self.layout, self.setup, self.acc.is_main_process,
                    lambda *step: self.steps.run(*step), self.corpus, self.context)
        self.kinds = {name: kind(host) for name, kind in UNIT_KINDS.items()}
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
        """This job's plan (lmcollapse.plan): seed by seed, the shared part (waiting while
        another job builds it), then this job's cells, generations outermost (a stopped run
        has comparable rows)."""
        self.steps = Steps(self.acc, len(self.plan))
        self.execute(self.plan)
        self.steps.close()
        self.weights.forget()
        log.info("run finished: %s (%s)", self.run_dir, self.selection.describe())

    def run_unit(self, seed: int, key: str,
                 listener: Callable[[dict[str, Any]], None]) -> None:
        """One (seed, cell) unit, for a worker process of :mod:`lmcollapse.parallel` (set
        up with ``prepare(claim=False)``): the seed's shared part if no other worker has
        built it (waiting while one builds it), then the cell's generations. Each step is
        told to ``listener``."""
        if self.steps is None or self.steps.listener is not listener:
            self.steps = Steps(self.acc, 0, listener)
        self.execute(build_plan(self.grid, [(seed, key)]))

    def execute(self, plan: list[Step]) -> None:
        """Take every step of ``plan`` in order (each at most once: its marker); a seed's
        shared part under the seed's lock."""
        for (seed, shared), group in itertools.groupby(plan, lambda s: (s.seed, s.unit is None)):
            if self._corpora_seed != seed:  # corpora of other seeds are never read again
                self._corpora.clear()
                self._corpora_seed = seed
            if not shared:
                for step in group:
                    self.take(step)
                continue
            steps = list(group)
            with waiting_lock(self.acc, self.layout.seed_lock(seed),
                              f"seed {seed}, generation 0 and the human row"):
                self.weights.ensure_base(seed, [s.gen.founder for s in steps
                                                if s.kind == "train"])
                for step in steps:
                    self.take(step)

    def take(self, step: Step) -> None:
        """One step: its work, unless its marker says it is done."""
        d = step.directory(self.layout)
        if step.target not in (GENERATION, HUMAN):  # a unit kind's own step
            self.kinds[step.target].take(step, self.grid.cells[step.unit], d)
            return
        work = {"train": self.train, "generate": self.generate, "measure": self.measure}
        fn = (lambda: self.measure_human(step.seed)) if step.target == HUMAN else (
            lambda: work[step.kind](step.gen, d))
        self.steps.run(d, step.kind, step.where, fn)
        if step.kind == "measure" and step.gen is not None:
            self.weights.prune(step.gen)

    # --- the steps of one generation ------------------------------------------------------

    def mix(self, gen: Generation) -> list[Sample]:
        """The training mix: human train at generation 0, else what the policy builds from
        human train and the corpora of generations 0..k-1 of this cell."""
        human, cell = self.setup.human.train, self.grid.lineages.get(gen.cell_key)
        if gen.k == 0:
            return list(human)
        unit = self.grid.unit_of(cell)  # a unit's shared pool, if it has one, is crawled in
        pool = self.kinds[unit.kind].pool(gen.seed, unit, gen.k)  # place of its own corpora
        corpora = {j: self.corpus(self.layout.gen_dir(
            Generation(gen.seed, j, gen.cell_key) if j else self.grid.generation0(gen)))
            for j in range(gen.k if pool is None else 0)}
        corpora = _perfect(corpora, human, self.grid.settings(gen), cell.policy.continuations)
        rng = np.random.default_rng(derive_seed(gen.seed, gen.cell_key, gen.k, "mix"))
        policy = make_policy(cell.policy,
                             shard_seed=derive_seed(gen.seed, gen.cell_key, "shards"))
        fresh = fresh_writer(self.setup.fresh, self.setup.tokenizer, self.setup.human,
                             self.cfg.data.block_tokens, gen.k,
                             derive_seed(gen.seed, gen.cell_key, gen.k, "fresh"))
        return policy.build(MixContext(gen.k, human, corpora, rng, self.cfg.generations, fresh,
                                       reserve=self.setup.human.reserve, pool=pool))

    def train(self, gen: Generation, d: Path) -> None:
        set_seed(derive_seed(gen.seed, gen.tag, gen.k, "train"))
        mix = self.mix(gen)
        if self.acc.is_main_process:  # (a crawl also says who wrote each block, and when)
            kind = self.kinds[self.grid.kind_of(gen)] if gen.k else None
            files.write_rows(d / MIX, mix, kind.mix_columns if kind else PROVENANCE)
        tcfg = self.grid.train_settings(gen)
        start = self.weights.starting(gen)
        with self.steps.work():
            model, records = train_generation(
                self.acc, start, self.setup.tokenizer.pad_token_id, _rows(mix, tcfg, self.setup),
                self.setup.human.validation, tcfg,
                seed=derive_seed(gen.seed, gen.tag, gen.k, "order"), desc=f"train gen {gen.k}",
                log_tag=str(self.layout.gen_dir(gen).relative_to(self.run_dir)),
                save_adapter=self.weights.adapter_saver(d))
        self.weights.keep_trained(gen, d, model, tcfg)  # generate and measure reload it
        if self.acc.is_main_process:
            files.write_jsonl(d / TRAIN_LOG, records)

    def generate(self, gen: Generation, d: Path) -> None:
        """Corpus k: one continuation per human training block, or, for a curating cell,
        the curated pick of several candidates per block."""
        cell = self.grid.lineages.get(gen.cell_key)
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
        tag = gen.tag if gen.k > 0 else gen.founder_generation.tag
        seed = (derive_seed(gen.seed, tag, gen.k, "generate") if draw == 0
                else derive_seed(gen.seed, gen.tag, gen.k, "generate", draw))
        model = self.weights.load(gen)
        with self.steps.work():
            rows = generate_corpus(self.acc, model, self.setup.tokenizer,
                                   self.setup.human.train, self.grid.settings(gen).generate, seed,
                                   generation=gen.k, desc=f"generate gen {gen.k}")
        if draw:
            for r in rows:
                r["sample_id"] = f"{r['sample_id']}:{draw}"
        return rows

    def _curated(self, gen: Generation, d: Path, curate: CurationConfig) -> list[Sample]:
        """Generate the candidates, score them, keep a corpus of N (lmcollapse.curation);
        every candidate's score and whether it was kept go to candidates.parquet, the
        summary (kept share, score quantiles, generation cost) to curation.json."""
        per_prompt = candidates_per_prompt(curate.rule, curate.fraction, curate.candidates,
                                           curate.best_of)
        candidates = [r for j in range(per_prompt) for r in self._continue(gen, j)]
        scorer = make_scorer(curate.scorer)
        with self.steps.work():
            scores = scorer.score(self._score_context(gen), candidates)
        rng = np.random.default_rng(derive_seed(gen.seed, gen.tag, gen.k, "curate"))
        out = curation.curate(curate, candidates, scores, len(self.setup.human.train),
                              per_prompt, scorer.describe(), rng)
        if self.acc.is_main_process:
            files.write_rows(d / CANDIDATES, out.candidates)
            files.write_json(d / CURATION, out.summary)
        return out.corpus

    def _score_context(self, gen: Generation) -> ScoreContext:
        return ScoreContext(accelerator=self.acc, tokenizer=self.setup.tokenizer,
                            prompts=self.setup.human.train,
                            prompt_tokens=self.grid.settings(gen).generate.prompt_tokens,
                            generator=lambda: self.weights.load(gen),
                            reference_model=lambda: self.weights.reference(gen.seed, gen.founder),
                            truth=self.setup.truth)

    def measure(self, gen: Generation, d: Path) -> None:
        ctx = self.context(gen.seed, d, gen.founder, generation=gen.k, model=self.weights.load(gen),
                           corpus=self.corpus(d))
        self._row(d, gen.seed, gen.cell_key, gen.k, lambda m: m.compute(ctx))
        self.weights.forget()  # the next step trains a new one

    def measure_human(self, seed: int) -> None:
        ctx = self.context(seed, self.layout.human(seed), "")
        self._row(self.layout.human(seed), seed, "human", None, lambda m: m.human_reference(ctx))

    def _row(self, d: Path, seed: int, policy: str | None, k: int | None,
             fn: Callable[[Metric], Measurement | None]) -> None:
        """Every metric of one row (``fn`` of each), into ``d``'s metrics.json."""
        with self.steps.work(), scoring_precision(self.cfg.metrics.precision, self.acc.device):
            result = collect(self.setup.metrics, fn)
        if self.acc.is_main_process:
            write_row(d / METRICS_FILE, seed, policy, k, result)

    # --- corpora ---------------------------------------------------------------------------

    def corpus(self, d: Path) -> list[Sample]:
        if d not in self._corpora:
            files.verify(d / CORPUS)
            self._corpora[d] = _as_arrays(files.read_rows(d / CORPUS))
        return self._corpora[d]

    def context(self, seed: int, out_dir: Path, founder: str, **row: Any) -> MeasureContext:
        return metric_context(self.setup, self.cfg, self.acc, self.layout.seed_dir(seed),
                              out_dir, lambda: self.weights.reference(seed, founder),
                              reference_founder=founder, seed=seed, **row)


def _new_run(cfg: ExperimentConfig, selection: Selection) -> ExperimentConfig:
    """``--new-run``: when the run directory exists, a fresh one named with a time stamp
    (the same on every process)."""
    if not selection.everything:
        raise ConfigError("--new-run starts a fresh directory per job, so jobs that each "
                          f"run part of the experiment ({selection.describe()}) would not "
                          "share one; give every job the same new `experiment` name instead")
    if not cfg.run_dir.exists():
        return cfg
    stamp = [dt.datetime.now().strftime("%Y%m%d-%H%M%S")]
    broadcast_object_list(stamp)
    return dataclasses.replace(cfg, experiment=f"{cfg.experiment}-{stamp[0]}")


def _perfect(corpora: dict[int, list[Sample]], human: list[Sample], cfg: ExperimentConfig,
             continuations: str) -> dict[int, list[Sample]]:
    """The corpora a policy reads: as written, or with ``continuations: human`` (the
    control) the true continuation of every prompt in place of the model's
    (:func:`~lmcollapse.data.blocks.human_continuations`)."""
    if continuations == "model":
        return corpora
    g = cfg.generate
    return {j: human_continuations(c, human, g.prompt_tokens, g.keep_prompt)
            for j, c in corpora.items()}


def _rows(mix: list[Sample], tcfg: Any, setup: Setup) -> list[Sample]:
    """The rows a generation trains on: the mix, or with ``train.pack`` rows of
    ``data.block_tokens`` tokens (:func:`~lmcollapse.data.blocks.pack_rows`; mix.parquet
    keeps the samples unpacked)."""
    if not tcfg.pack:
        return mix
    length = len(setup.human.train[0]["input_ids"])  # a human block: data.block_tokens
    rows = pack_rows([m["input_ids"] for m in mix], length, setup.tokenizer.eos_token_id)
    log.info("train.pack: %d samples (%d tokens) packed into %d rows of up to %d tokens",
             len(mix), sum(len(m["input_ids"]) for m in mix), len(rows), length)
    return [{"input_ids": r} for r in rows]


def _as_arrays(rows: list[Sample]) -> list[Sample]:
    """Provenance and int32 token ids only (no decoded text): a WikiText-2-sized corpus then
    takes ~10 MB in memory."""
    return [{**{k: r[k] for k in PROVENANCE},
             "input_ids": np.asarray(r["input_ids"], dtype=np.int32)} for r in rows]
