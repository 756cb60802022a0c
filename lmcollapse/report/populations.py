"""Compute: the populations of an experiment (:mod:`lmcollapse.units.population`), over seeds.

Per population and generation: its row's values (the synthetic share of the pool and of
the crawls, by blocks and by tokens; the Jensen-Shannon divergence between participants,
within one participant (two halves of its corpus: the floor) and between two human
samples; the divergence to human text), each participant's divergence to human text, and
the composition of the pool the generation crawled (the mean share of each writer).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lmcollapse.report.load import RunResults
from lmcollapse.report.stats import Stat, stat

#: the population row's values, in the order tables show them
VALUES = ("pool_synthetic", "pool_synthetic_tokens", "crawl_synthetic", "crawl_synthetic_tokens",
          "jsd_between", "jsd_within", "jsd_between_excess", "jsd_human_pair", "jsd_to_human")
#: the writer of human blocks
HUMAN = "human"


@dataclass
class PopulationSummary:
    """One population of one experiment, over its seeds."""

    experiment: str
    key: str
    #: the participants' labels, in config order
    participants: list[str]
    #: value -> generation -> over seeds
    values: dict[str, dict[int, Stat]]
    #: participant -> generation -> its divergence to human text, over seeds
    to_human: dict[str, dict[int, Stat]]
    #: generation -> writer -> the mean share of the blocks that generation could crawl
    composition: dict[int, dict[str, float]]
    #: the row's display names and directions (from its meta)
    meta: dict[str, dict[str, Any]]


def summarize(exps: list[RunResults]) -> list[PopulationSummary]:
    """Every population of ``exps`` that has at least one measured row."""
    out = []
    for exp in exps:
        for key in exp.populations:
            gens = sorted({k for (p, _, k) in exp.population_records if p == key})
            if gens:
                out.append(_summary(exp, key, gens))
    return out


def _summary(exp: RunResults, key: str, gens: list[int]) -> PopulationSummary:
    rows = {k: [exp.population_records[(key, s, k)] for s in exp.seeds
                if (key, s, k) in exp.population_records] for k in gens}
    details = {k: [r["details"]["population"] for r in rows[k]] for k in gens}
    labels = details[gens[0]][0]["participants"]
    meta: dict[str, dict[str, Any]] = {}
    for r in (r for k in gens for r in rows[k]):
        meta.update(r.get("meta", {}))
    return PopulationSummary(
        experiment=exp.key, key=key, participants=labels,
        values={v: {k: stat(r["values"].get(v) for r in rows[k]) for k in gens} for v in VALUES},
        to_human={lbl: {k: stat(d["to_human"].get(lbl) for d in details[k]) for k in gens}
                  for lbl in labels},
        composition={k: _crawled_shares([d["composition"] for d in details[k]], labels)
                     for k in gens},
        meta=meta)


def _crawled_shares(comps: list[dict[str, Any]], labels: list[str]) -> dict[str, float]:
    """The mean over seeds of each writer's share of the crawled batches."""
    shares: dict[str, list[float]] = {w: [] for w in [HUMAN, *labels]}
    for comp in comps:
        counts: Counter = Counter()
        for b in comp["crawled_batches"]:
            counts.update(comp["by_batch"][str(b)])
        total = sum(counts.values())
        for w in shares:
            shares[w].append(counts.get(w, 0) / total if total else 0.0)
    return {w: statistics.fmean(v) for w, v in shares.items() if v}
