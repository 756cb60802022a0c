"""``population``: the unit kind of a policy whose participants write one shared pool and
crawl it (``internet``, Martinez et al.). Its cell expands into one cell per participant
(each a lineage with its own resolved config); its generation k is its ``pool`` step, each
participant's generation k, then its own row (``measure``).

Batch 0 of the pool is the human training pool. Before generation k >= 1 the ``pool`` step
adds batch k: ``round(new_content * N)`` blocks, of which round(share_k * that) are drawn
from the participants' corpora k-1 (split by their weights, largest remainders) and the
rest is new human text (disjoint shards of the reserve, or new documents of the source).
It writes the whole pool generation k may crawl to ``<population>/gen_k/pool.parquet``,
every block with its provenance (``writer``: ``human`` or a participant; ``batch``: when it
was added; ``origin``, ``generation``, ``prompt_id`` as written), and its composition to
``pool.json``. Each participant's mix is a crawl of it (:mod:`lmcollapse.policies.internet`).

After the participants of generation k have written their corpora, the population's
``measure`` step writes its row (``<population>/gen_k/metrics.json``):

- ``jsd_between``: the mean Jensen-Shannon divergence (base 2, in [0, 1]) between the
  n-gram distributions of every pair of participants' corpora, each an equal-size sample
  of S samples (homogenization: it falls as participants grow alike); absent for one
  participant.
- ``jsd_human_pair``: the same number between two disjoint samples of S held-out human
  chunks of the same length: what two independent writers of human text differ by.
- ``jsd_to_human``: the mean over participants of the divergence between its sample and a
  human sample of S (each participant's own in ``details``).
- ``pool_synthetic``: the share of the blocks generation k could crawl that models wrote;
  ``crawl_synthetic``: the mean share of model-written blocks in the participants' mixes
  (0 at generation 0: the human pool).
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from lmcollapse import files
from lmcollapse.cells import Cell, founder_signature, set_key, short
from lmcollapse.data.blocks import PROVENANCE, Sample, fresh_writer
from lmcollapse.errors import ConfigError
from lmcollapse.faults import kill_point
from lmcollapse.grid import Grid
from lmcollapse.layout import METRICS as METRICS_FILE
from lmcollapse.layout import MIX, POOL, POOL_SUMMARY, POPULATION_STEPS, Generation
from lmcollapse.metrics.base import Measurement, Metric, collect, write_row
from lmcollapse.metrics.diversity import ngram_counts
from lmcollapse.plan import Step, lineage_steps
from lmcollapse.registry import UNIT_KINDS
from lmcollapse.sampling import derive_seed, draw_indices, fixed_sample
from lmcollapse.settings import ExperimentConfig, PolicySpec, build, plain, validate
from lmcollapse.units.base import UnitKind

#: the writer of human blocks (a participant's label otherwise)
HUMAN = "human"
#: what a pool block carries besides its tokens
POOL_COLUMNS = [*PROVENANCE, "writer", "batch"]

class PopulationRow(Metric):
    """The population's row, declared as every metric declares its values (its direction,
    display name and default columns) and written by the same writer
    (:func:`lmcollapse.metrics.base.collect`, :func:`~lmcollapse.metrics.base.write_row`).
    Not a registered metric: every population measures it, no config names it."""

    name = display_name = "population"
    #: None: neither direction is better (the divergences compare with jsd_human_pair)
    higher_is_better = None
    directions = {"jsd_to_human": False, "pool_synthetic": False,
                  "pool_synthetic_tokens": False, "crawl_synthetic": False,
                  "crawl_synthetic_tokens": False}
    display_names = {
        "jsd_between": "JSD between participants",
        "jsd_within": "JSD within a participant",
        "jsd_between_excess": "JSD between − within",
        "jsd_human_pair": "JSD between two human samples",
        "jsd_to_human": "JSD to human text",
        "pool_synthetic": "synthetic share of the pool (blocks)",
        "pool_synthetic_tokens": "synthetic share of the pool (tokens)",
        "crawl_synthetic": "synthetic share of the crawls (blocks)",
        "crawl_synthetic_tokens": "synthetic share of the crawls (tokens)",
    }
    columns = ("jsd_between", "jsd_within", "jsd_human_pair", "pool_synthetic")

    def describe(self, m: Measurement) -> str:
        return (f"{m.details['ngram']}-gram JSD, {m.sizes['sample_size']} samples of "
                f"{m.sizes['sample_tokens']} tokens per corpus")


def starting_pool(human: list[Sample]) -> list[Sample]:
    """Batch 0: the human training pool."""
    return [{**h, "writer": HUMAN, "batch": 0} for h in human]


def new_batch(settings: Any, k: int, n: int, generations: int,
              corpora: dict[str, list[Sample]], human_new: list[Sample],
              rng: np.random.Generator) -> list[Sample]:
    """Batch k: the synthetic part drawn from each participant's corpus k-1 (``corpora`` by
    label), then ``human_new``. A block's ``sample_id`` is prefixed with its writer."""
    synthetic, human_count = settings.batch_sizes(n, generations)[k - 1]
    if len(human_new) != human_count:
        raise ValueError(f"batch {k} needs {human_count} human blocks, got {len(human_new)}")
    rows = []
    for p, count in zip(settings.participants, settings.synthetic_split(synthetic), strict=True):
        corpus = corpora[p.label]
        rows += [{**corpus[i], "sample_id": f"{p.label}/{corpus[i]['sample_id']}",
                  "writer": p.label, "batch": k}
                 for i in draw_indices(len(corpus), count, rng).tolist()]
    return rows + [{**h, "writer": HUMAN, "batch": k} for h in human_new]


def composition(pool: list[Sample], crawled: range) -> dict[str, Any]:
    """Blocks and tokens by batch and writer; the synthetic share of the whole pool, of the
    part a generation crawls (the batches ``crawled``) and of each batch, by blocks and by
    tokens (a model-written block is a continuation, shorter than a human block)."""
    by_batch: dict[int, Counter] = {}
    tokens: dict[int, Counter] = {}
    for r in pool:
        by_batch.setdefault(int(r["batch"]), Counter())[r["writer"]] += 1
        tokens.setdefault(int(r["batch"]), Counter())[r["writer"]] += len(r["input_ids"])

    def share(batches: list[int], counts: dict[int, Counter] = by_batch) -> float:
        total = sum(sum(counts[b].values()) for b in batches)
        human = sum(counts[b][HUMAN] for b in batches)
        return (total - human) / total if total else 0.0

    batches = sorted(by_batch)
    reach = [b for b in batches if b in crawled]
    return {"blocks": len(pool),
            "by_batch": {str(b): dict(sorted(by_batch[b].items())) for b in batches},
            "batch_synthetic_share": {str(b): share([b]) for b in batches},
            "synthetic_share": share(batches),
            "crawled_batches": reach,
            "crawled_blocks": sum(sum(by_batch[b].values()) for b in reach),
            "crawled_synthetic_share": share(reach),
            "tokens": sum(sum(c.values()) for c in tokens.values()),
            "tokens_by_batch": {str(b): dict(sorted(tokens[b].items())) for b in batches},
            "batch_synthetic_token_share": {str(b): share([b], tokens) for b in batches},
            "synthetic_token_share": share(batches, tokens),
            "crawled_synthetic_token_share": share(reach, tokens)}


def jsd(a: Counter, b: Counter) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count distributions."""
    keys = sorted(set(a) | set(b))
    p = np.array([a.get(x, 0) for x in keys], dtype=float)
    q = np.array([b.get(x, 0) for x in keys], dtype=float)
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def population_size(cell: Cell, ctx: Any, where: str) -> int:
    """The samples of each corpus (and of human text) the population's row draws: its
    ``sample_size``, refused (naming ``where``) beyond what every row allows. The
    within-participant floor draws two disjoint samples of one corpus, so at most half a
    corpus (N // 2; ``null`` takes the largest size every draw allows)."""
    configured = cell.policy.settings.sample_size
    size = ctx.disjoint_size(configured, where, "population")
    half = len(ctx.human.train) // 2
    if configured is None:
        return min(size, half)
    if size > half:
        raise ConfigError(
            f"{where}: {size} samples requested, but the within-participant floor compares two "
            f"disjoint samples of one corpus of {len(ctx.human.train)} samples, so at most "
            f"{half} each; allowed: 2..{half}, or null for the largest size")
    return size


@UNIT_KINDS.register("population")
class Population(UnitKind):
    """A population: its participants (cells of their own), its pool and its row."""

    #: a crawl's blocks also say who wrote them, and when
    mix_columns = POOL_COLUMNS

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        #: the pool generation k crawls, by (seed, population, k)
        self._pools: dict[tuple[int, str, int], list[Sample]] = {}

    # --- the config layer, set-up and the plan --------------------------------------------

    @classmethod
    def check(cls, spec: PolicySpec, where: str) -> None:
        if spec.continuations != "model":
            raise ConfigError(f"{where}.continuations: a population's participants crawl its "
                              "shared pool, not a lineage of corpora; allowed here: model")

    @classmethod
    def participants(cls, cell: Cell, data: dict[str, Any], i: int, suffix: str,
                     where: str) -> list[Cell]:
        return [_participant(cell, data, i, j, suffix, where)
                for j in range(len(cell.policy.participants))]

    @classmethod
    def preflight(cls, cell: Cell, ctx: Any, where: str) -> None:
        population_size(cell, ctx, f"{where}.sample_size")

    @classmethod
    def steps(cls, grid: Grid, seed: int, cell: Cell, k: int) -> list[Step]:
        """Its ``pool`` (k >= 1), each participant's generation k, then its row."""
        gen, (pool, row) = Generation(seed, k, cell.key), POPULATION_STEPS
        out = [Step(seed, pool, cls.name, gen, cell.key)] if k else []
        for participant in cell.participants:
            out += lineage_steps(grid, seed, participant, k, cell.key)
        return out + [Step(seed, row, cls.name, gen, cell.key)]

    # --- the run --------------------------------------------------------------------------

    def participant_gens(self, seed: int, cell: Cell, k: int) -> list[Generation]:
        """Generation k of every participant (generation 0: as it sees it)."""
        grid = self.host.grid
        gens = [Generation(seed, k, m.key, m.founder) for m in cell.participants]
        return [grid.generation0(g) for g in gens] if k == 0 else gens

    def take(self, step: Step, cell: Cell, d: Path) -> None:
        """A step of the population ``cell``: its ``pool`` before generation k, or its row
        (``measure``) once every participant has written."""
        seed, k = step.seed, step.gen.k
        fn = (lambda: self._build_pool(seed, cell, k, d)) if step.kind == "pool" else (
            lambda: self._measure(seed, cell, k, d))
        self.host.run_step(d, step.kind, step.where, fn)

    # --- the pool -------------------------------------------------------------------------

    def pool(self, seed: int, cell: Cell, k: int) -> list[Sample]:
        """The pool generation k of the population ``cell`` crawls (read back once)."""
        key = (seed, cell.key, k)
        if key not in self._pools:
            path = self.host.layout.gen_dir(Generation(seed, k, cell.key)) / POOL
            files.verify(path)
            self._pools.clear()  # one pool in memory: the next one is built from it
            self._pools[key] = [{**r, "input_ids": np.asarray(r["input_ids"], np.int32)}
                                for r in files.read_rows(path)]
        return self._pools[key]

    def _build_pool(self, seed: int, cell: Cell, k: int, d: Path) -> None:
        host, s = self.host, cell.policy.settings
        human = host.setup.human
        n, generations = len(human.train), host.cfg.generations
        previous = starting_pool(human.train) if k == 1 else self.pool(seed, cell, k - 1)
        corpora = {p.label: host.corpus(host.layout.gen_dir(g)) for p, g in zip(
            s.participants, self.participant_gens(seed, cell, k - 1), strict=True)}
        rows = previous + new_batch(s, k, n, generations, corpora, self._human(seed, cell, k),
                                    np.random.default_rng(derive_seed(seed, cell.key, k, "pool")))
        summary = {"seed": seed, "population": cell.key, "generation": k,
                   **composition(rows, s.crawled_batches(k))}
        if host.is_main:
            files.write_rows(d / POOL, [{**r, "input_ids": np.asarray(r["input_ids"]).tolist()}
                                        for r in rows], [*POOL_COLUMNS, "input_ids"])
            kill_point("pool_written")  # (resume tests) the step half done
            files.write_json(d / POOL_SUMMARY, summary)
        self._pools = {(seed, cell.key, k): rows}

    def _human(self, seed: int, cell: Cell, k: int) -> list[Sample]:
        """The new human blocks of batch k: the next disjoint shard of the reserve (one
        permutation per seed and population), or new documents of the source."""
        host, s = self.host, cell.policy.settings
        human = host.setup.human
        sizes = s.batch_sizes(len(human.train), host.cfg.generations)
        count = sizes[k - 1][1]
        if s.human_source == "source":
            return fresh_writer(host.setup.fresh, host.setup.tokenizer, human,
                                host.cfg.data.block_tokens, k,
                                derive_seed(seed, cell.key, k, "fresh"))(count)
        start = sum(h for _, h in sizes[:k - 1])
        order = np.random.default_rng(derive_seed(seed, cell.key, "reserve")).permutation(
            len(human.reserve))
        return [human.reserve[i] for i in np.sort(order[start:start + count])]

    # --- the population's row -------------------------------------------------------------

    def _measure(self, seed: int, cell: Cell, k: int, d: Path) -> None:
        result = collect([PopulationRow()], lambda _: self._row(seed, cell, k, d))
        if self.host.is_main:
            write_row(d / METRICS_FILE, seed, cell.key, k, result, population=True)

    def _row(self, seed: int, cell: Cell, k: int, d: Path) -> Measurement:
        host, s = self.host, cell.policy.settings
        ctx = host.context(seed, d, "", generation=k)
        size = population_size(cell, ctx, f"{cell.key}.sample_size")
        labels = [p.label for p in s.participants]
        draw = derive_seed(seed, cell.key, k, "similarity")
        dist = {label: ngram_counts(fixed_sample(ctx.content(
                    [r["input_ids"] for r in host.corpus(host.layout.gen_dir(g))]), size, draw),
                    s.ngram)
                for label, g in zip(labels, self.participant_gens(seed, cell, k), strict=True)}
        first, second = ctx.disjoint_human_pairs(size, derive_seed(cell.key, k), 1)[0]
        human_a, human_b = ngram_counts(first, s.ngram), ngram_counts(second, s.ngram)
        pairs = {f"{a}~{b}": jsd(dist[a], dist[b]) for a, b in itertools.combinations(labels, 2)}
        to_human = {label: jsd(dist[label], human_a) for label in labels}
        within = {label: jsd(*(ngram_counts(half, s.ngram) for half in _halves(ctx.content(
                      [r["input_ids"] for r in host.corpus(host.layout.gen_dir(g))]), size,
                      derive_seed(seed, cell.key, k, "within", label))))
                  for label, g in zip(labels, self.participant_gens(seed, cell, k), strict=True)}
        values = {"jsd_human_pair": jsd(human_a, human_b),
                  "jsd_to_human": float(np.mean(list(to_human.values()))),
                  "jsd_within": float(np.mean(list(within.values())))}
        if pairs:
            values["jsd_between"] = float(np.mean(list(pairs.values())))
            values["jsd_between_excess"] = values["jsd_between"] - values["jsd_within"]
        comp = files.read_json(d / POOL_SUMMARY) if k else None
        values["pool_synthetic"] = comp["crawled_synthetic_share"] if comp else 0.0
        values["pool_synthetic_tokens"] = comp["crawled_synthetic_token_share"] if comp else 0.0
        crawls = [_synthetic_share(host.layout.gen_dir(g) / MIX, host.cfg.data.block_tokens,
                                   ctx.sample_tokens)
                  for g in self.participant_gens(seed, cell, k)] if k else [(0.0, 0.0)]
        values["crawl_synthetic"] = float(np.mean([b for b, _ in crawls]))
        values["crawl_synthetic_tokens"] = float(np.mean([t for _, t in crawls]))
        details = {"ngram": s.ngram, "pairs": pairs, "to_human": to_human, "within": within,
                   "composition": comp or composition(starting_pool(ctx.human.train), range(1)),
                   "participants": labels}
        sizes = {"sample_size": size, "sample_tokens": ctx.sample_tokens}
        return Measurement(values, details, sizes)


def _synthetic_share(mix: Path, block_tokens: int, sample_tokens: int) -> tuple[float, float]:
    """The share of a crawl's blocks, and of its tokens, that models wrote (mix.parquet
    holds provenance only: a human block is ``block_tokens`` long, a model's sample
    ``sample_tokens``, its length forced at generation)."""
    files.verify(mix)
    writers = [r["writer"] for r in files.read_rows(mix)]
    synthetic = sum(w != HUMAN for w in writers)
    human = len(writers) - synthetic
    return (synthetic / len(writers),
            synthetic * sample_tokens / (synthetic * sample_tokens + human * block_tokens))


def _halves(samples: list[Any], size: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Two disjoint samples of ``size`` from ``samples`` (the within-participant floor)."""
    order = np.random.default_rng(seed).permutation(len(samples))[:2 * size]
    return [samples[i] for i in sorted(order[:size])], [samples[i] for i in sorted(order[size:])]


def _participant(population: Cell, data: dict[str, Any], i: int, j: int, suffix: str,
                 where: str) -> Cell:
    """Participant ``j`` of the population ``population`` (policy entry ``i`` at one grid
    point, whose plain data is ``data``): the shared config with the participant's own
    settings, and its founder (the generation-0 model it starts from)."""
    spec = population.policy
    p = spec.participants[j]
    at = f"policies[{i}].participants[{j}]"
    member = copy.deepcopy(data)
    sized = sorted(k for k in p.overrides() if k.startswith("model.scratch."))
    if sized and population.cfg.model.source != "scratch":
        raise ConfigError(f"{at}.{sized[0]}: only a model built from scratch (model.source: "
                          f"scratch) takes a size of its own; this one is "
                          f"{population.cfg.model.source}")
    for key, value in p.overrides().items():
        set_key(member, key.split("."), value, at)
    entry = {**plain(spec), "label": f"{spec.key}.{p.label}", "curate": {
        **plain(spec.curate), **p.curate}}
    member["policies"] = [entry]
    try:
        resolved = build(ExperimentConfig, member)
        validate(resolved)
    except ConfigError as err:
        raise ConfigError(f"{where + ': ' if where else ''}{at}: {err}") from None
    parts = [population.founder] if population.founder else []
    if founder_signature(resolved) != founder_signature(population.cfg):
        parts += [f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in sorted(
            p.overrides().items()) if k.startswith(("train.", "model."))]
    if p.seed_offset:
        parts.append(f"seed{p.seed_offset:+d}")
    key = f"{spec.key}.{p.label}" + (f"@{suffix}" if suffix else "")
    return Cell(key, resolved.policies[0], resolved, population.axes, ",".join(parts),
                UNIT_KINDS.default(), unit=population.key, seed_offset=p.seed_offset)
