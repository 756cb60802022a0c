"""Per-document statistics: what the samples behind a number say, seed by seed.

A metric that keeps one value per sample declares it in its metrics.json details
(``per_sample``: the parquet file, its column, and which statistic of the column each
value key is; the reference metric does: each sample's perplexity under generation 0). From
those samples the report draws two things no mean over seeds can give:

- an **early warning**: generation k's samples against generation 0's (did the
  distribution move?) and against the human row's (is it still human-like?), a Mann-Whitney
  U test per seed (:func:`lmcollapse.report.stats.two_sample`, effect size A = P(sample of k >
  other sample)), the seeds' p-values combined by Fisher's method, the tests of one table
  (one experiment, one comparison) one family under the report's correction; the first
  generation beyond noise is the warning;
- a **bootstrap interval** of each value within one seed (its samples resampled), so a
  one-seed run still says how precise its numbers are.

JSON and parquet only, like the rest of the report.

Rendered by :mod:`lmcollapse.report.documents_formats`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmcollapse.report.load import RunResults
from lmcollapse.report.stats import (
    ALPHA,
    TwoSample,
    adjust,
    bootstrap_interval,
    combine,
    two_sample,
)

#: the comparisons of the early warning: generation k against generation 0 and against human
AGAINST = ("gen 0", "human")


@dataclass(frozen=True)
class PerSample:
    """Where the samples behind a metric's values are: file and column of each row's
    directory, and which statistic (``p50``, ``mean``) of them each value key is."""

    metric: str
    file: str
    column: str
    values: dict[str, str]
    #: how the report names it: the metric, or (a metric that declares several columns)
    #: the metric and the column
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.metric)


def per_sample(exp: RunResults) -> list[PerSample]:
    """The per-sample declarations the experiment's metrics.json files carry (one per
    metric and column, in the order first seen; a metric declares one, or a list)."""
    found: dict[tuple[str, str], PerSample] = {}
    for rec in exp.records.values():
        for metric, details in (rec.get("details") or {}).items():
            spec = details.get("per_sample") if isinstance(details, dict) else None
            for one in spec if isinstance(spec, list) else [spec]:
                if not isinstance(one, dict) or (metric, str(one.get("column"))) in found:
                    continue
                try:
                    found[metric, str(one["column"])] = PerSample(
                        metric, str(one["file"]), str(one["column"]),
                        {str(k): str(v) for k, v in one["values"].items()},
                        f"{metric} {one['column']}" if isinstance(spec, list) else metric)
                except (KeyError, TypeError, AttributeError):
                    continue  # a declaration this version cannot read: no per-document numbers
    return list(found.values())


def samples(exp: RunResults, spec: PerSample, policy: str | None, seed: int,
            generation: int | None) -> np.ndarray | None:
    """The per-sample values of one row (generation None: the human row), or None where the
    row or its file is missing or unreadable (:meth:`RunResults.table` names it)."""
    for d in exp.gen_dirs(policy, seed, generation)[:1]:
        if exp.has(d / spec.file):
            rows = exp.table(d / spec.file, [spec.column])
            if rows:
                return np.array([r[spec.column] for r in rows], dtype=float)
    return None


def statistic(name: str) -> Callable[..., Any]:
    """The function a value key's statistic name stands for, ``f(samples, axis=-1)``:
    ``p<q>`` the q-th percentile, ``mean`` the mean."""
    if name == "mean":
        return np.mean
    match = re.fullmatch(r"p(\d+(?:\.\d+)?)", name)
    if not match:
        raise ValueError(f"unknown per-sample statistic {name!r}")
    q = float(match.group(1))
    return lambda x, axis=-1: np.percentile(x, q, axis=axis)


@dataclass
class DocumentTest:
    """Generation ``generation`` of a policy against ``against`` (``gen 0`` or ``human``):
    per seed a Mann-Whitney U test, combined over seeds (Fisher), corrected in its family."""

    generation: int
    against: str
    per_seed: dict[int, TwoSample]
    p: float = math.nan
    p_adj: float = math.nan

    @property
    def effect(self) -> float:
        """Mean over seeds of A = P(a sample of this generation > one of the other)."""
        vals = [t.effect for t in self.per_seed.values() if math.isfinite(t.effect)]
        return float(np.mean(vals)) if vals else math.nan

    @property
    def beyond_noise(self) -> bool:
        return math.isfinite(self.p_adj) and self.p_adj < ALPHA


@dataclass
class EarlyWarning:
    """The per-document tests of one metric of one experiment: ``tests[against][policy]``
    by generation, and the family size of each comparison."""

    spec: PerSample
    correction: str
    tests: dict[str, dict[str, list[DocumentTest]]] = field(default_factory=dict)
    families: dict[str, int] = field(default_factory=dict)

    def first(self, against: str, policy: str) -> int | None:
        """The first generation (>= 1 against generation 0, >= 0 against human) whose
        samples differ beyond noise; None when none does."""
        return next((t.generation for t in self.tests[against].get(policy, [])
                     if t.beyond_noise), None)


def early_warning(exp: RunResults, spec: PerSample, correction: str = "holm",
                  policies: list[str] | None = None) -> EarlyWarning:
    """Every generation of every policy (``policies``: the rows to show, default all)
    against generation 0 of the same seed and against the seed's human row."""
    out = EarlyWarning(spec, correction, {a: {} for a in AGAINST})
    for policy in policies or exp.policies:
        for against in AGAINST:
            start = 1 if against == "gen 0" else 0
            row = []
            for k in range(start, exp.generations + 1):
                per_seed = {}
                for seed in exp.seeds:
                    x = samples(exp, spec, policy, seed, k)
                    y = samples(exp, spec, policy, seed, 0 if against == "gen 0" else None)
                    if x is not None and y is not None:
                        per_seed[seed] = two_sample(x, y)
                if per_seed:
                    row.append(DocumentTest(k, against, per_seed,
                                            combine([t.p for t in per_seed.values()])))
            out.tests[against][policy] = row
    for against in AGAINST:  # one family per comparison
        flat = [t for row in out.tests[against].values() for t in row]
        for t, p in zip(flat, adjust([t.p for t in flat], correction), strict=True):
            t.p_adj = p
        out.families[against] = sum(math.isfinite(t.p) for t in flat)
    return out


def bootstrap(exp: RunResults, spec: PerSample, key: str, policy: str | None,
              generation: int | None) -> dict[int, tuple[float, float]]:
    """``{seed: 95% bootstrap interval}`` of value ``key`` of one row (generation None: the
    human row), each seed's samples resampled (:func:`lmcollapse.stats.bootstrap_interval`)."""
    fn = statistic(spec.values[key])
    out = {}
    for seed in exp.seeds:
        x = samples(exp, spec, policy, seed, generation)
        if x is not None:
            out[seed] = bootstrap_interval(x, fn, seed)
    return out


def intervals(exp: RunResults, key: str, policy: str | None, generation: int | None,
              specs: list[PerSample]) -> dict[int, tuple[float, float]]:
    """The bootstrap intervals of ``key`` if a per-sample declaration covers it, else {}."""
    for spec in specs:
        if key in spec.values:
            return bootstrap(exp, spec, key, policy, generation)
    return {}
