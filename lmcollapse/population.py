"""A population (an ``internet`` cell): the shared pool its participants crawl and the
population's own row.

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

import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from lmcollapse import files
from lmcollapse.config import Cell
from lmcollapse.data.blocks import PROVENANCE, Sample, fresh_writer
from lmcollapse.faults import kill_point
from lmcollapse.layout import METRICS as METRICS_FILE
from lmcollapse.layout import MIX, POOL, POOL_SUMMARY, Generation
from lmcollapse.metrics.diversity import ngram_counts
from lmcollapse.sampling import derive_seed, draw_indices, fixed_sample

#: the writer of human blocks (a participant's label otherwise)
HUMAN = "human"
#: what a pool block carries besides its tokens
POOL_COLUMNS = [*PROVENANCE, "writer", "batch"]

#: the population row's values: direction (None: compare with jsd_human_pair) and name
VALUES = {
    "jsd_between": (None, "JSD between participants"),
    "jsd_human_pair": (None, "JSD between two human samples"),
    "jsd_to_human": (False, "JSD to human text"),
    "pool_synthetic": (False, "synthetic share of the pool"),
    "crawl_synthetic": (False, "synthetic share of the crawls"),
}


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
    """Blocks by batch and writer; the synthetic share of the whole pool, of the part a
    generation crawls (the batches ``crawled``) and of each batch."""
    by_batch: dict[int, Counter] = {}
    for r in pool:
        by_batch.setdefault(int(r["batch"]), Counter())[r["writer"]] += 1

    def share(batches: list[int]) -> float:
        total = sum(sum(by_batch[b].values()) for b in batches)
        human = sum(by_batch[b][HUMAN] for b in batches)
        return (total - human) / total if total else 0.0

    batches = sorted(by_batch)
    reach = [b for b in batches if b in crawled]
    return {"blocks": len(pool),
            "by_batch": {str(b): dict(sorted(by_batch[b].items())) for b in batches},
            "batch_synthetic_share": {str(b): share([b]) for b in batches},
            "synthetic_share": share(batches),
            "crawled_batches": reach,
            "crawled_blocks": sum(sum(by_batch[b].values()) for b in reach),
            "crawled_synthetic_share": share(reach)}


def jsd(a: Counter, b: Counter) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count distributions."""
    keys = sorted(set(a) | set(b))
    p = np.array([a.get(x, 0) for x in keys], dtype=float)
    q = np.array([b.get(x, 0) for x in keys], dtype=float)
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def population_size(cell: Cell, ctx: Any, where: str) -> int:
    """The samples of each corpus (and of human text) the population's row draws: its
    ``sample_size``, refused (naming ``where``) beyond what every row allows."""
    return ctx.disjoint_size(cell.policy.settings.sample_size, where, "population")


class Population:
    """The pool and population steps of a loop's populations (the loop passes itself: its
    grid, layout, set-up, steps, corpora and metric contexts)."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        #: the pool generation k crawls, by (seed, population, k)
        self._pools: dict[tuple[int, str, int], list[Sample]] = {}

    def members(self, seed: int, cell: Cell, k: int) -> list[Generation]:
        """Generation k of every participant (generation 0: as it sees it)."""
        grid = self.loop.grid
        gens = [Generation(seed, k, m.key, m.zero_group) for m in cell.members]
        return [grid.zero_of(g) for g in gens] if k == 0 else gens

    def generation(self, seed: int, k: int, cell: Cell) -> None:
        """Generation k of the population ``cell``: the pool it crawls (k >= 1), each
        participant's steps (k = 0: those that write a corpus 0 of their own), its row."""
        if k:
            self.pool_step(seed, cell, k)
        for m in cell.members:
            if k or self.loop.grid.own_zero(m):
                self.loop.generation(Generation(seed, k, m.key, m.zero_group))
        self.measure_step(seed, cell, k)

    # --- the pool -------------------------------------------------------------------------

    def pool(self, seed: int, population: str, k: int) -> list[Sample]:
        """The pool generation k of ``population`` crawls (read back once)."""
        key = (seed, population, k)
        if key not in self._pools:
            path = self.loop.layout.gen_dir(Generation(seed, k, population)) / POOL
            files.verify(path)
            self._pools.clear()  # one pool in memory: the next one is built from it
            self._pools[key] = [{**r, "input_ids": np.asarray(r["input_ids"], np.int32)}
                                for r in files.read_rows(path)]
        return self._pools[key]

    def pool_step(self, seed: int, cell: Cell, k: int) -> None:
        d = self.loop.layout.gen_dir(Generation(seed, k, cell.key))
        self.loop.steps.run(d, "pool", f"seed {seed}, population {cell.key}, pool {k}",
                            lambda: self._build_pool(seed, cell, k, d))

    def _build_pool(self, seed: int, cell: Cell, k: int, d: Path) -> None:
        loop, s = self.loop, cell.policy.settings
        human = loop.setup.human
        n, generations = len(human.train), loop.cfg.generations
        previous = starting_pool(human.train) if k == 1 else self.pool(seed, cell.key, k - 1)
        corpora = {p.label: loop.corpus(loop.layout.gen_dir(g)) for p, g in zip(
            s.participants, self.members(seed, cell, k - 1), strict=True)}
        rows = previous + new_batch(s, k, n, generations, corpora, self._human(seed, cell, k),
                                    np.random.default_rng(derive_seed(seed, cell.key, k, "pool")))
        summary = {"seed": seed, "population": cell.key, "generation": k,
                   **composition(rows, s.crawled_batches(k))}
        if loop.acc.is_main_process:
            files.write_rows(d / POOL, [{**r, "input_ids": np.asarray(r["input_ids"]).tolist()}
                                        for r in rows], [*POOL_COLUMNS, "input_ids"])
            kill_point("pool_written")  # (resume tests) the step half done
            files.write_json(d / POOL_SUMMARY, summary)
        self._pools = {(seed, cell.key, k): rows}

    def _human(self, seed: int, cell: Cell, k: int) -> list[Sample]:
        """The new human blocks of batch k: the next disjoint shard of the reserve (one
        permutation per seed and population), or new documents of the source."""
        loop, s = self.loop, cell.policy.settings
        human = loop.setup.human
        sizes = s.batch_sizes(len(human.train), loop.cfg.generations)
        count = sizes[k - 1][1]
        if s.human_source == "source":
            return fresh_writer(loop.setup.fresh, loop.setup.tokenizer, human,
                                loop.cfg.data.block_tokens, k,
                                derive_seed(seed, cell.key, k, "fresh"))(count)
        start = sum(h for _, h in sizes[:k - 1])
        order = np.random.default_rng(derive_seed(seed, cell.key, "reserve")).permutation(
            len(human.reserve))
        return [human.reserve[i] for i in np.sort(order[start:start + count])]

    # --- the population's row -------------------------------------------------------------

    def measure_step(self, seed: int, cell: Cell, k: int) -> None:
        d = self.loop.layout.gen_dir(Generation(seed, k, cell.key))
        self.loop.steps.run(d, "measure", f"seed {seed}, population {cell.key}, generation {k}",
                            lambda: self._measure(seed, cell, k, d))

    def _measure(self, seed: int, cell: Cell, k: int, d: Path) -> None:
        loop, s = self.loop, cell.policy.settings
        start = time.time()
        ctx = loop.context(seed, d, "", generation=k)
        size = population_size(cell, ctx, f"{cell.key}.sample_size")
        labels = [p.label for p in s.participants]
        draw = derive_seed(seed, cell.key, k, "similarity")
        dist = {label: ngram_counts(fixed_sample(ctx.content(
                    [r["input_ids"] for r in loop.corpus(loop.layout.gen_dir(g))]), size, draw),
                    s.ngram)
                for label, g in zip(labels, self.members(seed, cell, k), strict=True)}
        first, second = ctx.disjoint_human_pairs(size, derive_seed(cell.key, k), 1)[0]
        human_a, human_b = ngram_counts(first, s.ngram), ngram_counts(second, s.ngram)
        pairs = {f"{a}~{b}": jsd(dist[a], dist[b]) for a, b in itertools.combinations(labels, 2)}
        to_human = {label: jsd(dist[label], human_a) for label in labels}
        values = {"jsd_human_pair": jsd(human_a, human_b),
                  "jsd_to_human": float(np.mean(list(to_human.values()))),
                  **({"jsd_between": float(np.mean(list(pairs.values())))} if pairs else {})}
        comp = files.read_json(d / POOL_SUMMARY) if k else None
        values["pool_synthetic"] = comp["crawled_synthetic_share"] if comp else 0.0
        values["crawl_synthetic"] = float(np.mean([_synthetic_share(loop.layout.gen_dir(g) / MIX)
                                                   for g in self.members(seed, cell, k)])) \
            if k else 0.0
        details = {"ngram": s.ngram, "pairs": pairs, "to_human": to_human,
                   "composition": comp or composition(starting_pool(ctx.human.train), range(1)),
                   "participants": labels}
        sizes = {"sample_size": size, "sample_tokens": ctx.sample_tokens}
        if loop.acc.is_main_process:
            files.write_json(d / METRICS_FILE, {
                "seed": seed, "policy": cell.key, "generation": k, "population": True,
                "values": values,
                "meta": {key: _meta(key) for key in values},
                "details": {"population": details}, "sizes": {"population": sizes},
                "conditions": {"population": f"{s.ngram}-gram JSD, {size} samples of "
                                             f"{ctx.sample_tokens} tokens per corpus"},
                "elapsed_s": {"population": time.time() - start}})


def _synthetic_share(mix: Path) -> float:
    files.verify(mix)
    writers = [r["writer"] for r in files.read_rows(mix)]
    return sum(w != HUMAN for w in writers) / len(writers)


def _meta(key: str) -> dict[str, Any]:
    direction, name = VALUES[key]
    return {"metric": "population", "display_name": name, "higher_is_better": direction,
            "column": key in ("jsd_between", "jsd_human_pair", "pool_synthetic")}
