"""``lmcollapse compare`` and ``lmcollapse plan-seeds``: paired comparisons of chosen cells
of one run, the numbers behind a claim, with the report's own tests.

    lmcollapse compare runs/curation --pair replace replace-gen0-bestof4 \
        --pair replace/gen_0 replace --metrics perplexity,tail_mass_ratio \
        [--generation 3] [--change [--since 1]] [--raw] [--correction holm|bh|none]
    lmcollapse plan-seeds runs/quickstart --pair mix-0.1 replace --metrics perplexity \
        [--power 0.8] [--comparisons 1]

For each ``--pair A B`` and metric: the mean of A and of B over seeds at the generation
(default: the final one; ``A/gen_K`` is A at generation K), the mean per-seed difference
B − A with its 95% t-interval, the per-seed relative change B / A − 1 (mean, min, max over
seeds: how published collapse studies state a change; only where A is positive in every
seed, and not for distances to human; with ``--change`` it is B's change over A's less 1,
so a control B that shows 30% of policy A's change reads −70%), on how many seeds B is
below A, and
the two-sided paired
t-test p over seeds (:func:`lmcollapse.report.stats.paired_test`, the leaderboard's test; seeds
pair because generation 0 is shared), corrected over every test of the invocation (one
family, :func:`lmcollapse.report.stats.adjust`). A metric ranked by closeness to human (≈) is
compared, as the report compares it, by each seed's distance to its human value; ``--raw``
compares the values themselves. ``--change`` compares each side's change since generation
0 (``--since K``: since generation K): B's change against A's, a paired test of the
per-seed difference in differences. ``plan-seeds`` prints, for every pair, the seeds a
paired test needs to detect the observed difference at the observed spread (80% power by
default, alpha / comparisons). Reads metrics.json only, like the report.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from dataclasses import dataclass, field

from lmcollapse.errors import ReportError
from lmcollapse.report.load import RunResults, check_name, load_runs, measured
from lmcollapse.report.stats import (
    ALPHA,
    CORRECTION_NAMES,
    CORRECTIONS,
    POWER,
    Paired,
    adjust,
    paired_test,
    planning_alpha,
    seeds_needed,
)


@dataclass
class Side:
    """One side of a pair: a policy (cell key) at a generation."""

    name: str
    policy: str
    generation: int


@dataclass
class Test:
    metric: str
    a: Side
    b: Side
    mean_a: float
    mean_b: float
    below: int
    paired: Paired
    p_adj: float = math.nan
    #: per-seed B / A − 1 (the published studies' "relative change"): mean, min, max
    relative: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    #: a line per seed of the run the test leaves out, saying which side lacks it and why
    left_out: list[str] = field(default_factory=list)


def parse_side(text: str, exp: RunResults, default_generation: int) -> Side:
    """``policy`` or ``policy/gen_K``; the policy must be one of the run's (a population:
    its row's values)."""
    match = re.fullmatch(r"(.+)/gen_(\d+)", text)
    policy, gen = (match.group(1), int(match.group(2))) if match else (text,
                                                                        default_generation)
    check_name("policy", policy, [*exp.policies, *exp.populations])
    if gen > exp.generations:
        raise ReportError(f"{text}: generation {gen} is past the run's {exp.generations}")
    return Side(text, policy, gen)


def per_seed(exp: RunResults, side: Side, metric: str, direction: bool | None,
             since: int | None = None) -> dict[int, float]:
    """``{seed: value}`` of one side as compared (``direction`` None: distance to human),
    or with ``since`` its change from generation ``since``."""
    values = exp.scored(side.policy, metric, side.generation, direction)
    if since is None:
        return values
    base = exp.scored(side.policy, metric, since, direction)
    return {s: v - base[s] for s, v in values.items() if s in base}


def run_tests(exp: RunResults, pairs: list[tuple[Side, Side]], metrics: list[str],
              change: bool = False, raw: bool = False, correction: str = "holm",
              since: int = 0) -> list[Test]:
    """Every (metric, pair) test, the invocation one family; ``change``: of each side's
    change since generation ``since``."""
    meta = measured([exp], populations=True)
    tests = []
    for metric in metrics:
        check_name("metric", metric, list(meta))
        # scored(): a ≈ metric (direction None) as each seed's distance to its human value
        direction = False if raw else meta[metric]["higher_is_better"]
        for a, b in pairs:
            va, vb = (per_seed(exp, s, metric, direction, since if change else None)
                      for s in (a, b))
            if not va or not vb:
                raise ReportError(f"no {metric!r} for {a.name} or {b.name}")
            both = va.keys() & vb.keys()
            if not both:
                raise ReportError(f"{metric!r}: no seed has both {a.name} and {b.name}")
            # a ratio over A positive in every seed only (with --change: A's change), never
            # of distances to human (≈ without --raw), which may be 0 or < 0
            ratios = [vb[s] / va[s] - 1 for s in both] if (
                direction is not None and both and all(va[s] > 0 for s in both)) else []
            relative = ((statistics.fmean(ratios), min(ratios), max(ratios)) if ratios
                        else (math.nan,) * 3)
            tests.append(Test(metric, a, b, statistics.fmean(va[s] for s in both),
                              statistics.fmean(vb[s] for s in both),
                              sum(vb[s] < va[s] for s in both), paired_test(vb, va),
                              relative=relative, left_out=left_out(
                                  exp, (a, va), (b, vb), metric, direction,
                                  since if change else None)))
    for t, p in zip(tests, adjust([t.paired.p for t in tests], correction), strict=True):
        t.p_adj = p
    return tests


def left_out(exp: RunResults, a: tuple[Side, dict[int, float]], b: tuple[Side, dict[int, float]],
             metric: str, direction: bool | None, since: int | None) -> list[str]:
    """A line per seed of the run that a paired test of ``a`` and ``b`` (each a side and its
    :func:`per_seed` values) leaves out: which side lacks it, and why."""
    return [f"{metric}, {a[0].name} vs {b[0].name}: seed {s} left out; " + "; ".join(
        _absent(exp, side, metric, direction, s, since) for side, v in (a, b) if s not in v)
        for s in exp.seeds if s not in a[1] or s not in b[1]]


def _absent(exp: RunResults, side: Side, metric: str, direction: bool | None, seed: int,
            since: int | None) -> str:
    """Why one seed of one side has no value as compared: its generation's row, its
    change's base row, or (a ≈ metric) its human row."""
    if seed not in exp.values(side.policy, metric, side.generation):
        return f"{side.name} {exp.why_absent(side.policy, seed, side.generation, metric)}"
    if since is not None and seed not in exp.scored(side.policy, metric, since, direction):
        return f"{side.name}'s base {exp.why_absent(side.policy, seed, since, metric)}"
    return f"{side.name}: the human row {exp.why_absent('human', seed, None, metric)}"


def _g(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _pct(r: tuple[float, float, float]) -> str:
    mean, lo, hi = r
    return "–" if not math.isfinite(mean) else f"{mean:+.0%} [{lo:+.0%}, {hi:+.0%}]"


def add_arguments(p: argparse.ArgumentParser, plan: bool = False) -> None:
    p.add_argument("run", help="run directory (runs/<experiment>)")
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A", "B"),
                   help="two cells (policy labels, cell keys; A/gen_K: A at generation K); "
                   "repeat for more pairs")
    p.add_argument("--metrics", required=True, help="comma-separated value keys")
    p.add_argument("--generation", type=int, default=None, help="default: the final one")
    p.add_argument("--change", action="store_true",
                   help="compare the change since generation 0 (--since K: K) instead of "
                   "the values")
    p.add_argument("--since", type=int, default=0, metavar="K",
                   help="with --change: the generation the change is counted from")
    p.add_argument("--raw", action="store_true",
                   help="compare the values of a ≈ metric, not their distance to human")
    p.add_argument("--correction", default="holm", choices=list(CORRECTIONS),
                   help="correction over every test of this invocation (one family)")
    if plan:
        p.add_argument("--power", type=float, default=POWER, help="default 0.8")
        p.add_argument("--comparisons", type=int, default=None,
                       help="comparisons of the family to plan for (alpha / comparisons; "
                       "default: the tests of this invocation, 1 with --correction none)")


def command(args: argparse.Namespace, plan: bool = False) -> int:
    """``lmcollapse compare`` (``plan=False``) or ``lmcollapse plan-seeds``."""
    name = "plan-seeds" if plan else "compare"
    try:
        exp = load_runs([args.run])[0]
        if args.generation is not None and not 0 <= args.generation <= exp.generations:
            raise ReportError(f"--generation: a generation in 0..{exp.generations}, got "
                              f"{args.generation}")
        gen = exp.generations if args.generation is None else args.generation
        pairs = [(parse_side(a, exp, gen), parse_side(b, exp, gen)) for a, b in args.pair]
        for (a, b), (ta, tb) in zip(pairs, args.pair, strict=True):
            if (a.policy, a.generation) == (b.policy, b.generation):
                raise ReportError(f"--pair {ta} {tb}: both sides are {a.policy} at generation "
                                  f"{a.generation}; name two cells, or one at two generations "
                                  "(A/gen_K)")
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if not metrics:
            raise ReportError(f"--metrics: name at least one value key, got {args.metrics!r}")
        twice = sorted({m for m in metrics if metrics.count(m) > 1})
        if twice:
            raise ReportError(f"--metrics: {', '.join(twice)} named twice (each test counts "
                              "once in the family)")
        if plan and args.comparisons is not None and args.comparisons < 1:
            raise ReportError(f"--comparisons: the comparisons of the family, >= 1, got "
                              f"{args.comparisons}")
        if args.since and not args.change:
            raise ReportError("--since: counts a change from generation K; add --change")
        if not 0 <= args.since <= exp.generations:
            raise ReportError(f"--since: a generation in 0..{exp.generations}, got {args.since}")
        tests = run_tests(exp, pairs, metrics, args.change, args.raw, args.correction,
                          args.since)
        if plan and not 0 < args.power < 1:
            raise ReportError(f"--power: a probability in (0, 1), got {args.power}")
    except ReportError as err:
        print(f"lmcollapse {name}: {err}", file=sys.stderr)
        return 2
    what = f"change since generation {args.since}" if args.change else "values"
    how = "values" if args.raw else "as the report compares them (≈ metrics: distance to human)"
    family = sum(math.isfinite(t.paired.p) for t in tests)
    print(f"{exp.key}, {what} at generation {gen} (/gen_K: at K), {how}, paired over the "
          f"seeds both sides have (of {exp.seeds}; means over those seeds); "
          f"{CORRECTION_NAMES[args.correction]} over the {family} tests of this command\n")
    if plan:
        comparisons = args.comparisons or (1 if args.correction == "none" else family)
        alpha = planning_alpha("holm" if comparisons > 1 else "none", comparisons)
        print(f"Seeds a two-sided paired t-test needs, power {args.power:g}, alpha "
              f"{alpha:.3g} ({ALPHA:g} / {comparisons} comparisons):\n")
        print("| metric | A | B | mean(B − A) | sd of differences | effect size | seeds now | "
              "seeds needed |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for t in tests:
            d = t.paired
            need = seeds_needed(d.diff, d.sd, alpha, args.power)
            effect = abs(d.diff) / d.sd if d.sd and math.isfinite(d.sd) else math.nan
            print(f"| {t.metric} | {t.a.name} | {t.b.name} | {d.diff:+.4g} | {_g(d.sd)} | "
                  f"{_g(effect)} | {d.n} | {'–' if need is None else need} |")
        _print_left_out(tests)
        return 0
    alpha = planning_alpha(args.correction, family)
    print("| metric | A | B | mean A | mean B | mean(B − A) [95% CI] | B/A − 1 [min, max] | "
          "seeds B < A | p | p corrected | seeds needed |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in tests:
        d, (lo, hi) = t.paired, t.paired.interval
        open_gap = not (d.n >= 2 and t.p_adj < ALPHA)
        need = seeds_needed(d.diff, d.sd, alpha) if open_gap else None
        print(f"| {t.metric} | {t.a.name} | {t.b.name} | {t.mean_a:.4g} | {t.mean_b:.4g} | "
              f"{d.diff:+.4g} [{_g(lo)}, {_g(hi)}] | {_pct(t.relative)} | {t.below}/{d.n} | "
              f"{_g(d.p)} | "
              f"{_g(t.p_adj)} | {'' if not open_gap else need or '–'} |")
    _print_left_out(tests)
    return 0


def _print_left_out(tests: list[Test]) -> None:
    lines = [line for t in tests for line in t.left_out]
    if lines:
        print("\nLeft out (a test pairs only the seeds both its sides have):\n")
        print("\n".join(f"- {line}" for line in lines))
