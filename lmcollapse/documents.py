"""Per-document statistics: what the samples behind a number say, seed by seed.

A metric that keeps one value per sample declares it in its metrics.json details
(``per_sample``: the parquet file, its column, and which statistic of the column each
value key is; the reference metric does: each sample's perplexity under generation 0). From
those samples the report draws two things no mean over seeds can give:

- an **early warning**: generation k's samples against generation 0's (did the
  distribution move?) and against the human row's (is it still human-like?), a Mann-Whitney
  U test per seed (:func:`lmcollapse.stats.two_sample`, effect size A = P(sample of k >
  other sample)), the seeds' p-values combined by Fisher's method, the tests of one table
  (one experiment, one comparison) one family under the report's correction; the first
  generation beyond noise is the warning;
- a **bootstrap interval** of each value within one seed (its samples resampled), so a
  one-seed run still says how precise its numbers are.

JSON and parquet only, like the rest of the report.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmcollapse.report_formats import md_table
from lmcollapse.results import RunResults
from lmcollapse.stats import (
    ALPHA,
    CORRECTION_NAMES,
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


def per_sample(exp: RunResults) -> list[PerSample]:
    """The per-sample declarations the experiment's metrics.json files carry (one per
    metric, in the order first seen)."""
    found: dict[str, PerSample] = {}
    for rec in exp.records.values():
        for metric, details in (rec.get("details") or {}).items():
            spec = details.get("per_sample") if isinstance(details, dict) else None
            if metric in found or not isinstance(spec, dict):
                continue
            try:
                found[metric] = PerSample(metric, str(spec["file"]), str(spec["column"]),
                                          {str(k): str(v) for k, v in spec["values"].items()})
            except (KeyError, TypeError, AttributeError):
                continue  # a declaration this version cannot read: no per-document numbers
    return list(found.values())


def samples(exp: RunResults, spec: PerSample, policy: str | None, seed: int,
            generation: int | None) -> np.ndarray | None:
    """The per-sample values of one row (generation None: the human row), or None where the
    row or its file is missing or unreadable (:meth:`RunResults.table` names it)."""
    for d in exp.gen_dirs(policy, seed, generation)[:1]:
        if (d / spec.file).is_file():
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


def describe(w: EarlyWarning) -> str:
    """The rule of an early-warning table, for its notes."""
    return (f"Per-document tests of {w.spec.metric} ({w.spec.column} of each sample, "
            f"{w.spec.file}): Mann-Whitney U (two-sided) of generation k's samples against "
            "generation 0's or the human row's, per seed; the seeds' p-values combined by "
            f"Fisher's method; each comparison's tests one family ({CORRECTION_NAMES[w.correction]}"
            f", {w.families.get('gen 0', 0)} and {w.families.get('human', 0)} tests); "
            f"A = P(a sample of k > one of the other), mean over seeds (0.5 = no shift); "
            f"✱ = beyond noise (corrected p < {ALPHA:g}).")


def as_rows(w: EarlyWarning, against: str) -> tuple[list[str], list[list[str]]]:
    """Header and display rows of one comparison: one row per policy, one column per
    generation (``A 0.61 ✱``), then the first generation beyond noise."""
    gens = sorted({t.generation for row in w.tests[against].values() for t in row})
    header = ["policy", *(f"gen {g}" for g in gens), "first beyond noise"]
    rows = []
    for policy, row in w.tests[against].items():
        by_gen = {t.generation: t for t in row}
        cells = [_cell(by_gen.get(g)) for g in gens]
        first = w.first(against, policy)
        rows.append([policy, *cells, "none" if first is None else str(first)])
    return header, rows


def _cell(t: DocumentTest | None) -> str:
    if t is None:
        return "–"
    return f"A {t.effect:.2f}" + (" ✱" if t.beyond_noise else "")


def render_markdown(warnings: list[tuple[str, EarlyWarning]]) -> str:
    """``## Early warning`` sections, one per (experiment, metric): against generation 0,
    then against human text, then the rule."""
    out = []
    for key, w in warnings:
        out += [f"## Early warning: {w.spec.metric}" + (f" ({key})" if key else ""), ""]
        for against, what in (("gen 0", "against generation 0 of the same seed"),
                              ("human", "against held-out human text of the same seed")):
            out += [f"Each generation's samples {what}:", "",
                    md_table(*as_rows(w, against), left=1), ""]
        out += [f"- {describe(w)}", ""]
    return "\n".join(out)


def render_html(warnings: list[tuple[str, EarlyWarning]]) -> str:
    """The same sections as HTML, each cell's hover giving p, corrected p and per seed."""
    e = html.escape
    parts = []
    for key, w in warnings:
        parts.append(f"<h2>Early warning: {e(w.spec.metric)}"
                     + (f" <small>({e(key)})</small>" if key else "") + "</h2>")
        for against, what in (("gen 0", "against generation 0 of the same seed"),
                              ("human", "against held-out human text of the same seed")):
            header, rows = as_rows(w, against)
            by_policy = {p: {t.generation: t for t in row}
                         for p, row in w.tests[against].items()}
            gens = [int(h.split()[1]) for h in header[1:-1]]
            body = ""
            for r in rows:
                cells = [f"<td>{e(r[0])}</td>"]
                for g, text in zip(gens, r[1:-1], strict=True):
                    t = by_policy[r[0]].get(g)
                    hover = "" if t is None else _hover(t)
                    cls = ' class="warn"' if t is not None and t.beyond_noise else ""
                    cells.append(f'<td{cls} title="{e(hover)}">{e(text)}</td>')
                cells.append(f"<td>{e(r[-1])}</td>")
                body += "<tr>" + "".join(cells) + "</tr>\n"
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            parts.append(f"<p>Each generation's samples {e(what)}:</p>"
                         f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                         f"<tbody>{body}</tbody></table></div>")
        parts.append(f'<p class="small">{e(describe(w))}</p>')
    return "\n".join(parts)


def _hover(t: DocumentTest) -> str:
    seeds = ", ".join(f"seed {s}: A {x.effect:.3f}, p {x.p:.2g} ({x.n_x} vs {x.n_y} samples)"
                      for s, x in t.per_seed.items())
    return f"combined p = {t.p:.2g}, corrected p = {t.p_adj:.2g}; {seeds}"


def render_csv(warnings: list[tuple[str, EarlyWarning]]) -> str:
    """One line per (experiment, metric, comparison, policy, generation)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "metric", "against", "policy", "generation", "effect_A", "p",
                "p_adj", "correction", "family", "beyond_noise", "per_seed"])
    for key, warn in warnings:
        for against in AGAINST:
            for policy, row in warn.tests[against].items():
                for t in row:
                    w.writerow([key, warn.spec.metric, against, policy, t.generation,
                                repr(t.effect), repr(t.p), repr(t.p_adj), warn.correction,
                                warn.families[against], int(t.beyond_noise),
                                ";".join(f"{s}:{x.effect!r}:{x.p!r}"
                                         for s, x in t.per_seed.items())])
    return buf.getvalue()
