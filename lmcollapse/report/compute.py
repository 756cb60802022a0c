"""Compute: the leaderboard, per-generation tables, onsets and paired tests of loaded
results (the second phase of a report).

Seeds pair policies (generation 0 is trained once per seed and shared), so every shown cell
is compared with the same metric of the row ranked directly above it by a paired t-test over
seeds (:func:`lmcollapse.report.stats.paired_test`); a gap that is not significant after the
family's correction is marked :data:`MARK`.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

from lmcollapse.errors import ReportError
from lmcollapse.layout import METRICS, POPULATION_STEPS, REFERENCE_SCORES, STEPS, RunLayout
from lmcollapse.report.load import RunResults, check_name, default_columns, measured
from lmcollapse.report.stats import (
    ALPHA,
    CORRECTION_NAMES,
    CORRECTIONS,
    Stat,
    Unpaired,
    adjust,
    paired_test,
    planning_alpha,
    seeds_needed,
    stat,
    t_interval,
    welch_test,
)

log = logging.getLogger("lmcollapse.report")

ARROWS = {True: "↑", False: "↓", None: "≈"}


NAN = math.nan


#: appended to a cell whose gap to the row above is within the seed noise
MARK = "~"


class Comparison(NamedTuple):
    """One cell against another (the row ranked directly above it, same experiment, same
    generation): a paired test over seeds, corrected within its family.

    ``n`` seeds have a value in both cells; ``diff`` is the mean over them of (this − the
    other), of the values or, for a metric whose direction is None, of each seed's distance
    to its human value, ``sd`` the sample std of those differences; ``p`` the two-sided
    paired t-test p-value (NaN when n < 2), ``p_adj`` the same after the family's
    correction (:func:`lmcollapse.stats.adjust`), ``family`` the comparisons the correction
    counted; :attr:`interval` the 95% t-interval of ``diff``; ``seeds_needed`` (a gap that
    is not significant) the seeds a paired test would need at 80% power
    (:func:`lmcollapse.stats.seeds_needed`).
    """

    above: str
    n: int
    diff: float
    p: float
    sd: float = NAN
    p_adj: float = NAN
    family: int = 0
    seeds_needed: int | None = None
    #: set when the two cells cannot be paired by seed (merged results files whose
    #: generation 0 differ): Welch's test, whose p and interval these are
    unpaired: Unpaired | None = None

    @property
    def interval(self) -> tuple[float, float]:
        if self.unpaired is not None:
            return self.unpaired.interval
        return t_interval(self.diff, self.sd, self.n)

    @property
    def within_noise(self) -> bool:
        """True (the cell is marked) unless n >= 2 and the corrected p < :data:`ALPHA`."""
        return not (self.n >= 2 and self.p_adj < ALPHA)


def correct(comparisons: list[Comparison], correction: str) -> list[Comparison]:
    """One family's comparisons with their adjusted p-values and, where a gap stays within
    noise, the seeds a paired test would need to settle it at the family's level."""
    adjusted = adjust([c.p if c.n >= 2 else NAN for c in comparisons], correction)
    size = sum(math.isfinite(p) for p in adjusted)
    alpha = planning_alpha(correction, size)
    out = []
    for c, p in zip(comparisons, adjusted, strict=True):
        c = c._replace(p_adj=p, family=size)
        if c.n >= 2 and c.within_noise and c.unpaired is None:
            c = c._replace(seeds_needed=seeds_needed(c.diff, c.sd, alpha))
        out.append(c)
    return out


def onset(values: dict[int, float], threshold: float, direction: bool | None = False
          ) -> int | None:
    """First generation k >= 1 whose value is worse than generation 0's by more than
    ``threshold`` (relative, strictly), else None. Worse: higher when lower is better
    (``value_k > value_0 * (1 + threshold)``), lower when higher is better (``value_k <
    value_0 * (1 - threshold)``); for direction None pass each generation's distance to the
    human value, which is worse when higher."""
    base = values.get(0)
    if base is None:
        return None
    if direction:
        return next((k for k in sorted(values) if k >= 1
                     and values[k] < base * (1 - threshold)), None)
    return next((k for k in sorted(values) if k >= 1
                 and values[k] > base * (1 + threshold)), None)


def noise_onset(exp: RunResults, policy: str, metric: str, direction: bool | None,
                correction: str) -> tuple[int | None, list[Comparison]]:
    """The first generation k >= 1 that differs from generation 0 beyond noise, in the
    worse direction: each generation's per-seed values (distances to human for direction
    None) paired with generation 0's by seed, the row's generations one family
    (``correction``). Returns (k or None, every generation's comparison)."""
    zero = exp.scored(policy, metric, 0, direction)
    gens = [k for k in range(1, exp.generations + 1) if exp.values(policy, metric, k)]
    tests = correct([Comparison("gen 0", *_paired(exp.scored(policy, metric, k, direction),
                                                  zero)) for k in gens], correction)
    worse = (lambda d: d < 0) if direction else (lambda d: d > 0)
    first = next((k for k, c in zip(gens, tests, strict=True)
                  if not c.within_noise and worse(c.diff)), None)
    return first, tests


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[int, float, float, float]:
    """(n, mean diff, p, sd) of :func:`lmcollapse.stats.paired_test`, in Comparison order."""
    t = paired_test(a, b)
    return t.n, t.diff, t.p, t.sd


def median_onset(onsets: list[int | None]) -> float | None:
    """Median over seeds, a seed that never crossed counting as never (None when that wins)."""
    if not onsets:
        return None
    med = statistics.median([math.inf if o is None else o for o in onsets])
    return None if math.isinf(med) else med


class Cell(NamedTuple):
    """One metric of one row: its value at ``generation`` and the change from generation 0."""

    stat: Stat
    generation: int | None
    delta: Stat = Stat(NAN, NAN, 0)


@dataclass
class LeaderboardRow:
    """One leaderboard row: a policy of an experiment, or its human reference."""

    experiment: RunResults
    policy: str
    label: str
    cells: dict[str, Cell]
    finished: dict[int, int | None] = field(default_factory=dict)
    onsets: dict[int, int | None] = field(default_factory=dict)
    rank: int | None = None
    notes: list[str] = field(default_factory=list)
    #: metric -> comparison with the row ranked directly above (same experiment, >= 2 seeds)
    versus: dict[str, Comparison] = field(default_factory=dict)
    #: with the ``noise`` onset rule: the first generation beyond noise (None: none)
    onset_test: int | None = None
    #: metric -> {seed: 95% bootstrap interval over that seed's samples} where the metric
    #: keeps per-sample values (filled by the report: :mod:`lmcollapse.documents`)
    bootstrap: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)

    @property
    def n_final(self) -> int:
        if self.policy == "human":
            return max((c.stat.n for c in self.cells.values()), default=0)
        return sum(g == self.experiment.generations for g in self.finished.values())

    @property
    def partial(self) -> bool:
        return self.policy != "human" and self.n_final < len(self.experiment.seeds)


@dataclass
class Leaderboard:
    """Ranked rows (human references first) and what they were built from."""

    rows: list[LeaderboardRow]
    columns: list[str]
    meta: dict[str, dict[str, Any]]
    rank_by: str
    onset: Onset
    experiments: list[RunResults]
    #: how the significance marks of one family (one column of one experiment) are corrected
    correction: str = "holm"

    @property
    def onset_threshold(self) -> float:
        return self.onset.threshold


@dataclass(frozen=True)
class Onset:
    """How the onset of collapse is read: the first generation at which ``metric`` turns
    worse than at generation 0, either by more than ``threshold`` (rule ``relative``, per
    seed, :func:`onset`) or beyond noise (rule ``noise``, over seeds, :func:`noise_onset`)."""

    metric: str = "perplexity"
    rule: str = "relative"
    threshold: float = 0.1

    RULES: ClassVar[tuple[str, ...]] = ("relative", "noise")

    def describe(self, direction: bool | None, correction: str) -> str:
        """The rule in words, for a table's notes."""
        worse = {False: "higher", True: "lower",
                 None: "farther from the seed's human value"}[direction]
        if self.rule == "relative":
            size = f"more than {self.threshold * 100:g}%"
            if direction is None:
                what = (f"whose distance to the human value of {self.metric} exceeds "
                        f"generation 0's by {size}")
            else:
                what = f"whose {self.metric} is {worse} than generation 0's by {size}"
            return (f"Onset: first generation k ≥ 1 {what} (strictly); median over seeds, a "
                    "seed that never crosses counting as never; (c/n) = seeds that crossed.")
        return (f"Onset: first generation k ≥ 1 whose {self.metric} is {worse} than generation "
                "0's beyond noise: paired t-test over seeds of each generation against "
                f"generation 0, the row's generations one family ({CORRECTION_NAMES[correction]}"
                f", p < {ALPHA:g}); (test) = read over seeds, not per seed.")


def sharing_generation0(exp: RunResults) -> list[str]:
    """The policies whose rows are all one model and corpus: with ``generations: 0`` no
    policy has acted yet, and every policy without a corpus 0 of its own (no curation, the
    base decoding) shows the seed's shared generation 0. Empty when there are later
    generations or fewer than two such policies."""
    if exp.generations != 0:
        return []
    shared = [p for p in exp.policies if not any((p, s, 0) in exp.records for s in exp.seeds)]
    return shared if len(shared) > 1 else []


def _policy_row(exp: RunResults, policy: str, metrics: list[str], rule: Onset,
                direction: bool | None, correction: str, label: str) -> LeaderboardRow:
    top = exp.generations
    cells = {}
    for m in metrics:
        gen = exp.latest(policy, m)
        vals = exp.values(policy, m, gen) if gen is not None else {}
        base = exp.values(policy, m, 0)
        cells[m] = Cell(stat(vals.values()), gen, stat(v - base[s] for s, v in vals.items()
                                                        if s in base))
    row = LeaderboardRow(exp, policy, label, cells,
                         {s: exp.finished(policy, s) for s in exp.seeds})
    if rule.rule == "noise":
        row.onset_test = noise_onset(exp, policy, rule.metric, direction, correction)[0]
    else:
        per_seed: dict[int, dict[int, float]] = {}
        for g in range(top + 1):
            for s, v in exp.scored(policy, rule.metric, g, direction).items():
                per_seed.setdefault(s, {})[g] = v
        row.onsets = {s: onset(v, rule.threshold, direction)
                      for s, v in sorted(per_seed.items()) if 0 in v}
    for s, done in row.finished.items():
        if done != top:
            row.notes.append(f"{label} seed {s}: {_progress(exp, policy, s, done)}")
    row.notes += _left_out(exp, policy, label, cells, row.finished)
    return row


def _left_out(exp: RunResults, policy: str, label: str, cells: dict[str, Cell],
              finished: dict[int, int | None]) -> list[str]:
    """One note per seed a finished row's value or change leaves out, and why (a missing or
    unreadable metrics.json, a metric not measured): the columns' n are then below the
    row's."""
    out = []
    for s in exp.seeds:
        lost: dict[tuple[str, int], list[str]] = {}
        for m, c in cells.items():
            if c.generation is None:
                continue
            if s not in exp.values(policy, m, c.generation):
                if finished.get(s) == exp.generations:  # (else: the progress note says)
                    lost.setdefault(("value and change", c.generation), []).append(m)
            elif c.generation and s not in exp.values(policy, m, 0):
                lost.setdefault(("change", 0), []).append(m)
        for (what, g), ms in lost.items():
            which = "every column" if len(ms) == len(cells) else ", ".join(ms)
            out.append(f"{label} seed {s}: left out of the {what} ({which}); "
                       f"{exp.why_absent(policy, s, g, ms[0])}")
    return out


def _progress(exp: RunResults, policy: str, seed: int, done: int | None) -> str:
    """``finished gen 2; gen 3: train done, generate and measure pending``; a participant's
    generation k >= 1 starts with its population's ``pool`` step (in the population's
    folder): ``gen 3: pool done, train, generate and measure pending``."""
    nxt = 0 if done is None else done + 1
    head = "nothing measured" if done is None else f"finished gen {done}"
    steps = [(s, exp.gen_dirs(policy, seed, nxt)) for s in STEPS]
    unit = next((u for u, members in exp.populations.items() if policy in members), None)
    if unit is not None and nxt:
        steps.insert(0, (POPULATION_STEPS[0], exp.gen_dirs(unit, seed, nxt)))
    if not any(dirs for _, dirs in steps):
        return f"{head}; gen {nxt} not started"
    have = [s for s, dirs in steps if any(RunLayout.marker(d, s).exists() for d in dirs)]
    todo = [s for s, _ in steps if s not in have]
    if not todo:  # measured, but its record is gone or unreadable
        return f"{head}; {exp.why_absent(policy, seed, nxt)}"
    pending = " and ".join([", ".join(todo[:-1]), todo[-1]] if len(todo) > 1 else todo)
    return (f"{head}; gen {nxt}: " + (f"{', '.join(have)} done, " if have else "")
            + f"{pending} pending")


def leaderboard(exps: list[RunResults], rank_by: str | None = None,
                columns: list[str] | None = None, onset_threshold: float = 0.1,
                correction: str = "holm", onset_metric: str = "perplexity",
                onset_rule: str = "relative") -> Leaderboard:
    """Rank every (experiment, policy) by ``rank_by`` at the final generation.

    Args:
        exps: from :func:`load_runs`.
        rank_by: value key; direction from its ``higher_is_better`` (None: closest to human).
        columns: value keys to show; default those the metrics mark (:func:`default_columns`).
        onset_threshold: with ``onset_rule`` ``relative``: the relative change of
            ``onset_metric`` over generation 0 (in the worse direction) that marks onset.
        correction: ``holm``, ``bh`` or ``none``: how each family of comparisons (one column
            of one experiment) is corrected (:func:`lmcollapse.stats.adjust`).
        onset_metric, onset_rule: see :class:`Onset`.
    """
    meta = measured(exps)
    names = list(meta)
    if not names:
        dirs = ", ".join(str(d) for e in exps for d in e.dirs)
        raise ReportError(f"nothing measured yet in {dirs}: no seed_*/**/metrics.json")
    check_name("correction", correction, list(CORRECTIONS))
    check_name("onset rule", onset_rule, list(Onset.RULES))
    if not math.isfinite(onset_threshold) or onset_threshold < 0:
        raise ReportError(f"--onset-threshold: a relative change >= 0, got {onset_threshold}")
    columns = list(dict.fromkeys(columns or default_columns(exps)))
    for c in columns:
        check_name("metric", c, names)
    rank_by = rank_by or ("perplexity" if "perplexity" in meta else (columns or names)[0])
    check_name("metric", rank_by, names)
    onset_metric = onset_metric if onset_metric in meta or onset_metric != "perplexity" \
        else rank_by
    check_name("metric", onset_metric, names)
    rule = Onset(onset_metric, onset_rule, onset_threshold)
    columns = columns if rank_by in columns else [rank_by, *columns]
    many = len(exps) > 1
    humans, rows = [], []
    for exp in exps:
        pre = f"{exp.key} / " if many else ""
        humans.append(LeaderboardRow(exp, "human", f"{pre}human", {m: Cell(exp.human(m), None)
                                                         for m in columns}))
        shared = sharing_generation0(exp)  # one model and corpus: one row, not one per policy
        rows += [_policy_row(exp, p, columns, rule, meta[onset_metric]["higher_is_better"],
                             correction, pre + " = ".join(shared) if p in shared else pre + p)
                 for p in exp.policies if p not in shared[1:]]
    direction = meta[rank_by]["higher_is_better"]
    rows.sort(key=lambda r: _score(r.experiment, r.policy, rank_by, r.cells[rank_by].generation,
                                   direction))
    above: dict[int, LeaderboardRow] = {}
    for i, row in enumerate(rows, 1):
        row.rank = i
        prev = above.get(id(row.experiment))
        if prev is not None and len(row.experiment.seeds) > 1:
            row.versus = {m: _compare(row.experiment, m, meta[m]["higher_is_better"],
                                      (row.policy, row.cells[m].generation),
                                      (prev.policy, prev.cells[m].generation), prev.label)
                          for m in columns}
        above[id(row.experiment)] = row
    for exp in exps:  # each column of each experiment is one family
        mine = [r for r in rows if r.experiment is exp and r.versus]
        for m in columns:
            for r, c in zip(mine, correct([r.versus[m] for r in mine], correction),
                            strict=True):
                r.versus[m] = c
    return Leaderboard(humans + rows, columns, meta, rank_by, rule, exps, correction)


def _score(exp: RunResults, policy: str, metric: str, generation: int | None,
           direction: bool | None) -> tuple[bool, float]:
    """Sort key, best first: mean over seeds of the value (negated when higher is better) or,
    for direction None, of each seed's distance to its human value; missing last."""
    vals = exp.scored(policy, metric, generation, direction) if generation is not None else {}
    m = statistics.fmean(vals.values()) if vals else NAN
    m = -m if direction else m
    return math.isnan(m), 0.0 if math.isnan(m) else m


def _compare(exp: RunResults, metric: str, direction: bool | None,
             this: tuple[str, int | None], above: tuple[str, int | None],
             label: str) -> Comparison:
    """Paired test of ``this`` (policy, generation) against ``above`` (Welch's unpaired test
    where they cannot be paired: :meth:`RunResults.pairable`); cells shown at different
    generations are not compared (n = 0)."""
    if this[1] is None or this[1] != above[1]:
        return Comparison(label, 0, NAN, NAN)
    a = exp.scored(this[0], metric, this[1], direction)
    b = exp.scored(above[0], metric, above[1], direction)
    if not exp.pairable(this[0], above[0]):
        u = welch_test(a, b)
        return Comparison(label, u.n, u.diff, u.p, unpaired=u)
    return Comparison(label, *_paired(a, b))


def _ranked_policies(exp: RunResults, metric: str, direction: bool | None) -> list[str]:
    """The experiment's policies, best first by ``metric`` at their latest generation."""
    return sorted(exp.policies, key=lambda p: _score(exp, p, metric, exp.latest(p, metric),
                                                    direction))


def per_generation(exps: list[RunResults], metric: str) -> dict[str, dict[int | str, Stat]]:
    """``{row label: {generation: Stat, "human": Stat}}`` of one metric (gen 0 is shared).

    Rows are grouped by experiment and ranked within it by ``metric`` at the latest
    generation, as the leaderboard ranks (direction None: mean distance to human).
    """
    meta = measured(exps)
    check_name("metric", metric, list(meta))
    direction = meta[metric]["higher_is_better"]
    many, table = len(exps) > 1, {}
    for exp in exps:
        human, shared = exp.human(metric), sharing_generation0(exp)
        for p in _ranked_policies(exp, metric, direction):
            if p in shared[1:]:
                continue
            label = " = ".join(shared) if p in shared else p
            row: dict[int | str, Stat] = {g: stat(exp.values(p, metric, g).values())
                                          for g in range(exp.generations + 1)}
            row = {g: s for g, s in row.items() if s.n}
            table[f"{exp.key} / {label}" if many else label] = {**row, "human": human}
    return table


def generation_marks(exps: list[RunResults], metric: str, correction: str = "holm"
                     ) -> dict[str, dict[int, Comparison]]:
    """``{row label: {generation: Comparison}}`` for :func:`per_generation`'s rows: each
    policy against the row directly above it (same experiment) at every generation k >= 1
    either has; nothing for the first row, generation 0 (shared) or one-seed experiments.
    The comparisons of one experiment's table are one family (``correction``)."""
    meta = measured(exps)
    check_name("metric", metric, list(meta))
    direction = meta[metric]["higher_is_better"]
    many, marks = len(exps) > 1, {}
    for exp in exps:
        order = _ranked_policies(exp, metric, direction)
        if len(exp.seeds) < 2:
            continue
        found: list[tuple[str, int, Comparison]] = []
        for prev, p in zip(order[:-1], order[1:], strict=True):
            label = f"{exp.key} / {p}" if many else p
            found += [(label, g, _compare(exp, metric, direction, (p, g), (prev, g),
                                          f"{exp.key} / {prev}" if many else prev))
                      for g in range(1, exp.generations + 1) if exp.values(p, metric, g)]
        for (label, g, _), c in zip(found, correct([c for *_, c in found], correction),
                                    strict=True):
            marks.setdefault(label, {})[g] = c
    return marks


def sweep(exp: RunResults, metric: str, axis: str) -> dict[str, dict[Any, Stat]]:
    """``{line label: {value of axis: Stat at the final generation}}``: one line per policy
    and values of the other grid axes, from experiment.json's ``cells``."""
    cells = exp.info.get("cells", {})
    out: dict[str, dict[Any, Stat]] = {}
    for key, cell in cells.items():
        axes = cell.get("axes", {})
        if axis not in axes:
            continue
        others = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in axes.items() if k != axis)
        label = cell["policy"] + (f" ({others})" if others else "")
        gen = exp.latest(key, metric)
        if gen is not None:
            out.setdefault(label, {})[axes[axis]] = stat(exp.values(key, metric, gen).values())
    return out


def grid_axes(exps: list[RunResults]) -> list[str]:
    """The swept config keys of the experiments, in order."""
    return list(dict.fromkeys(k for e in exps for c in e.info.get("cells", {}).values()
                              for k in c.get("axes", {})))


def reference_scores(exp: RunResults, policy: str) -> list[tuple[str, Any]]:
    """``[(label, per-sample perplexities)]`` for each measured generation and human (pooled
    over seeds), from ``reference_scores.parquet``."""
    out = []
    for gen in [*range(exp.generations + 1), None]:
        tables = [exp.table(d / REFERENCE_SCORES, ["perplexity"]) for s in exp.seeds
                  for d in exp.gen_dirs(policy, s, gen)[:1]
                  if exp.has(d / REFERENCE_SCORES) and exp.has(d / METRICS)]
        parts = [np.array([r["perplexity"] for r in t], dtype=float) for t in tables if t]
        if parts:
            out.append(("human" if gen is None else f"gen {gen}", np.concatenate(parts)))
    return out
