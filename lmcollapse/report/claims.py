"""``lmcollapse claims``: the claims a study declares before its numbers exist, each tested
exactly as it is stated.

    lmcollapse claims runs/wikitext-controls [--claims configs/wikitext-controls.claims.yaml]
        [--out DIR]

A claims file (by default ``configs/<experiment>.claims.yaml``) lists claims::

    claims:
      - id: replace-degrades            # a name, unique in the file
        family: headline                # Holm corrects within each family
        text: replace degrades          # the sentence the docs quote
        metric: perplexity              # a value key of the rows
        a: replace/gen_0                # a cell (or population) at a generation (default:
        b: replace                      #   the final one): the claim is about B − A
        expect: higher                  # higher | lower | equivalent
        since: 1                        # optional: each side's change from generation 1
                                        #   (a difference in differences)
        margin: 5.0                     # equivalent: |mean(B − A)| < margin (metric units)
        relative_margin: 0.05           #   or a share of mean A (one of the two)
        distance_to_human: false        # true: compare |value − human value| per seed

Each claim is one paired test over the seeds (they pair: generation 0 is shared):

- **higher / lower**: the two-sided paired t-test of the per-seed differences
  d = B − A (with ``since``: (B − B_j) − (A − A_j), the difference in differences), the
  report's own test (:func:`lmcollapse.report.stats.paired_test`). *supported* when the
  Holm-corrected p is below alpha and the mean difference lies in the declared direction,
  *contradicted* when it is below alpha the other way, *inconclusive* otherwise (with the
  seeds a test would need to see the observed difference).
- **equivalent**: two one-sided paired t-tests against the margin (TOST,
  ``statsmodels.stats.weightstats.ttost_paired``; its p is the larger of the two).
  *equivalent within the margin* when the corrected TOST p is below alpha, *contradicted*
  when the whole 95% interval of the mean difference lies outside the margin, *inconclusive*
  otherwise. No difference found is never read as equivalence without a margin.

Alpha is the report's (:data:`lmcollapse.report.stats.ALPHA`), the one rule of every page
(docs/reports.md). The effect is stated as the paired mean difference with its 95%
t-interval and as the per-seed relative change B / A − 1 (mean, min, max; with ``since``,
B's change over A's, less 1), with the seeds in the claimed direction. Writes
``claims.md`` and ``claims.csv`` (into ``--out``, default the run directory) and prints the
Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from statsmodels.stats.weightstats import ttost_paired

from lmcollapse import files
from lmcollapse.errors import ConfigError, ReportError
from lmcollapse.layout import EXPERIMENT_JSON
from lmcollapse.report.compare import Side, left_out, parse_side, per_seed
from lmcollapse.report.load import RunResults, check_name, load_runs, measured
from lmcollapse.report.stats import ALPHA, Paired, adjust, paired_test, planning_alpha, seeds_needed
from lmcollapse.settings import build, parse_yaml

#: the verdicts, in the words every page uses
SUPPORTED, CONTRADICTED, EQUIVALENT, INCONCLUSIVE = (
    "supported", "contradicted", "equivalent within the margin", "inconclusive")


@dataclass
class Claim:
    """One declared claim (a row of the claims file)."""

    id: str = ""
    family: str = "main"
    text: str = ""
    metric: str = ""
    a: str = ""
    b: str = ""
    expect: Literal["higher", "lower", "equivalent"] = "higher"
    since: int | None = None
    margin: float | None = None
    relative_margin: float | None = None
    distance_to_human: bool = False

    def check(self, where: str) -> None:
        for name in ("id", "metric", "a", "b"):
            if not getattr(self, name):
                raise ConfigError(f"{where}.{name}: required")
        bounds = [m for m in (self.margin, self.relative_margin) if m is not None]
        if self.expect == "equivalent" and len(bounds) != 1:
            raise ConfigError(f"{where}: expect: equivalent needs a margin: set exactly one of "
                              "margin (in the metric's units) or relative_margin (a share of "
                              "mean A)")
        if self.expect != "equivalent" and bounds:
            raise ConfigError(f"{where}: a margin only goes with expect: equivalent")
        if any(not (math.isfinite(m) and m > 0) for m in bounds):
            raise ConfigError(f"{where}: the margin must be a positive number, got {bounds[0]}")
        if self.since is not None and self.since < 0:
            raise ConfigError(f"{where}.since: a generation >= 0, got {self.since}")


@dataclass
class ClaimsFile:
    claims: list[Claim]


@dataclass
class Result:
    """A claim tested: the sides, the per-seed differences' test and the verdict."""

    claim: Claim
    a: Side
    b: Side
    mean_a: float
    mean_b: float
    paired: Paired
    #: seeds whose difference lies in the claimed direction (equivalent: inside the margin)
    agreeing: int
    #: per-seed B / A − 1 (with since: B's change over A's, less 1): mean, min, max
    relative: tuple[float, float, float]
    #: the p of the claim's own test (two-sided; equivalence: TOST) and corrected
    p: float
    p_adj: float = math.nan
    #: the equivalence bound in the metric's units (equivalence only)
    bound: float = math.nan
    verdict: str = INCONCLUSIVE
    needed: int | None = None
    #: a line per seed of the run the test leaves out (compare.left_out)
    left_out: list[str] = field(default_factory=list)


def load_claims(path: Path) -> list[Claim]:
    """The claims of ``path``, each checked; errors name the entry and the key."""
    if not path.is_file():
        raise ReportError(f"claims file {path} not found (declare the study's claims there, "
                          "or name the file with --claims)")
    try:
        data = parse_yaml(path.read_text(), str(path))
        claims = build(ClaimsFile, data, str(path)).claims
        for i, claim in enumerate(claims):
            claim.check(f"{path}: claims[{i}]")
    except ConfigError as err:
        raise ReportError(str(err)) from None
    ids = [c.id for c in claims]
    if not claims or len(set(ids)) != len(ids):
        raise ReportError(f"{path}: claims must be a non-empty list with unique ids, got {ids}")
    return claims


def evaluate(exp: RunResults, claims: list[Claim]) -> list[Result]:
    """Every claim tested on ``exp``; Holm within each family."""
    known = measured([exp], populations=True)
    out = []
    for claim in claims:
        check_name("metric", claim.metric, list(known))
        a, b = (parse_side(s, exp, exp.generations) for s in (claim.a, claim.b))
        if claim.since is not None and claim.since > min(a.generation, b.generation):
            raise ReportError(f"claim {claim.id}: since: {claim.since} is after a side's "
                              "generation")
        direction = None if claim.distance_to_human else False
        va, vb = (per_seed(exp, side, claim.metric, direction, claim.since) for side in (a, b))
        seeds = sorted(va.keys() & vb.keys())
        if len(seeds) < 2:
            raise ReportError(f"claim {claim.id}: {claim.metric} of {a.name} and {b.name} "
                              f"is measured on {len(seeds)} common seed(s); a paired test "
                              "needs 2")
        paired = paired_test(vb, va)
        d = [vb[s] - va[s] for s in seeds]
        mean_a = statistics.fmean(va[s] for s in seeds)
        ratios = [vb[s] / va[s] - 1 for s in seeds] if all(va[s] > 0 for s in seeds) else []
        relative = (statistics.fmean(ratios), min(ratios), max(ratios)) if ratios else \
            (math.nan,) * 3
        result = Result(claim, a, b, mean_a, statistics.fmean(vb[s] for s in seeds), paired,
                        0, relative, paired.p, left_out=left_out(
                            exp, (a, va), (b, vb), claim.metric, direction, claim.since))
        if claim.expect == "equivalent":
            bound = claim.margin if claim.margin is not None else \
                claim.relative_margin * abs(mean_a)
            result.bound = bound
            result.agreeing = sum(abs(x) < bound for x in d)
            result.p = tost(vb, va, bound)
        else:
            sign = 1 if claim.expect == "higher" else -1
            result.agreeing = sum(sign * x > 0 for x in d)
        out.append(result)
    for family in dict.fromkeys(r.claim.family for r in out):
        members = [r for r in out if r.claim.family == family]
        for r, p in zip(members, adjust([r.p for r in members], "holm"), strict=True):
            r.p_adj = p
        alpha = planning_alpha("holm", len(members))
        for r in members:
            r.verdict = verdict(r)
            if r.verdict == INCONCLUSIVE and r.claim.expect != "equivalent":
                r.needed = seeds_needed(r.paired.diff, r.paired.sd, alpha)
    return out


def tost(b: dict[int, float], a: dict[int, float], bound: float) -> float:
    """The p-value of two one-sided paired t-tests that mean(B − A) lies in (−bound, bound)
    (statsmodels ``ttost_paired``: the larger of the two one-sided p)."""
    seeds = sorted(a.keys() & b.keys())
    x, y = np.array([b[s] for s in seeds]), np.array([a[s] for s in seeds])
    if np.all(x - y == (x - y)[0]):  # no spread: the t statistics are infinite
        return 0.0 if abs((x - y)[0]) < bound else 1.0
    return float(ttost_paired(x, y, -bound, bound)[0])


def verdict(r: Result) -> str:
    """The verdict of a tested claim (its corrected p set)."""
    significant = math.isfinite(r.p_adj) and r.p_adj < ALPHA
    if r.claim.expect == "equivalent":
        if significant:
            return EQUIVALENT
        lo, hi = r.paired.interval
        outside = math.isfinite(lo) and (lo >= r.bound or hi <= -r.bound)
        return CONTRADICTED if outside else INCONCLUSIVE
    if not significant:
        return INCONCLUSIVE
    along = r.paired.diff > 0 if r.claim.expect == "higher" else r.paired.diff < 0
    return SUPPORTED if along else CONTRADICTED


# --- the table ---------------------------------------------------------------------------

COLUMNS = ["id", "family", "claim", "test", "verdict", "mean A", "mean B",
           "mean(B − A) [95% CI]", "B/A − 1 [min, max]", "seeds agreeing", "p", "p corrected",
           "seeds needed"]


def _g(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.4g}"


def describe(r: Result) -> str:
    """What was tested, in one line."""
    c = r.claim
    what = f"{c.metric}{' (distance to human)' if c.distance_to_human else ''}"
    sides = f"{r.b.policy}/gen_{r.b.generation} vs {r.a.policy}/gen_{r.a.generation}"
    change = f", changes since gen {c.since}" if c.since is not None else ""
    test = (f"TOST, |B − A| < {_g(r.bound)}" if c.expect == "equivalent"
            else f"B {'>' if c.expect == 'higher' else '<'} A, paired t")
    return f"{what}: {sides}{change}; {test}"


def rows(results: list[Result]) -> list[list[str]]:
    out = []
    for r in results:
        lo, hi = r.paired.interval
        rel = r.relative
        out.append([r.claim.id, r.claim.family, r.claim.text, describe(r), r.verdict,
                    _g(r.mean_a), _g(r.mean_b), f"{r.paired.diff:+.4g} [{_g(lo)}, {_g(hi)}]",
                    "–" if not math.isfinite(rel[0]) else
                    f"{rel[0]:+.1%} [{rel[1]:+.1%}, {rel[2]:+.1%}]",
                    f"{r.agreeing}/{r.paired.n}", _g(r.p), _g(r.p_adj),
                    "" if r.needed is None else str(r.needed)])
    return out


QUOTE_COLUMNS = ["claim", "verdict", "mean(B − A) [95% CI]", "B/A − 1 [min, max]",
                 "seeds agreeing", "p corrected"]


def quote(results: list[Result]) -> str:
    """The claims as the docs quote them: one row per claim, its sentence and verdict, the
    effect and its corrected p (``lmcollapse claims RUN --quote``;
    ``scripts/check_claims.py`` checks every quoted block against it)."""
    lines = ["| " + " | ".join(QUOTE_COLUMNS) + " |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        lo, hi = r.paired.interval
        rel = r.relative
        verdict = r.verdict + (f" ({r.needed} seeds needed)" if r.needed else "")
        cells = [r.claim.text, verdict, f"{_q(r.paired.diff)} [{_q(lo)}, {_q(hi)}]",
                 "–" if not math.isfinite(rel[0]) else
                 f"{rel[0]:+.1%} [{rel[1]:+.1%}, {rel[2]:+.1%}]",
                 f"{r.agreeing}/{r.paired.n}",
                 _p(r.p_adj) + (" (TOST)" if r.claim.expect == "equivalent" else "")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    """A p-value with 2 significant digits, or 3 where 2 would round it across alpha (a
    corrected p of 0.0496 is quoted 0.0496, not 0.05, beside the verdict it earned)."""
    text = f"{p:.2g}"
    return f"{p:.3g}" if math.isfinite(p) and (float(text) < ALPHA) != (p < ALPHA) else text


def _q(x: float) -> str:
    """A signed effect with 3 significant digits, whole numbers from 100 on (no 1e+03)."""
    return "–" if not math.isfinite(x) else f"{x:+.0f}" if abs(x) >= 100 else f"{x:+.3g}"


#: a block of a Markdown page that quotes a run's claims: ``<!-- claims: RUN [FILE] -->``,
#: the table :func:`quote` prints, then ``<!-- /claims -->``
QUOTE_BLOCK = re.compile(r"(<!-- claims: (\S+)(?: (\S+))? -->\n)(.*?)(<!-- /claims -->)",
                         re.DOTALL)


def check_quotes(text: str, root: Path, write: bool = False) -> tuple[str, list[str]]:
    """Every quoted block of a page against what ``lmcollapse claims`` gives for its run
    (a path relative to ``root``). Returns the page (with ``write``: every block
    regenerated) and one line per block: ``ok``, ``differs`` (then the page is wrong) or
    ``skipped`` (its run is not here)."""
    report = []

    def check(m: re.Match[str]) -> str:
        run, claims_file = m.group(2), m.group(3)
        if not (root / run / EXPERIMENT_JSON).is_file():
            report.append(f"skipped {run}: no run directory here")
            return m.group(0)
        exp = load_runs([root / run])[0]
        path = root / (claims_file or f"configs/{exp.name}.claims.yaml")
        fresh = quote(evaluate(exp, load_claims(path)))
        report.append(f"{'ok' if fresh == m.group(4) else 'differs'} {run}")
        return m.group(1) + fresh + m.group(5) if write else m.group(0)

    return QUOTE_BLOCK.sub(check, text), report


def markdown(results: list[Result], exp: RunResults) -> str:
    head = (f"Claims of {exp.key}, each paired over the seeds both its sides have (of "
            f"{exp.seeds}): Holm within each family, alpha {ALPHA:g}.\n\n")
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
              for row in rows(results)]
    lost = [f"- {r.claim.id}: {line}" for r in results for line in r.left_out]
    tail = ["", "Left out (a claim pairs only the seeds both its sides have):", "", *lost] \
        if lost else []
    return head + "\n".join(table + tail) + "\n"


def to_csv(results: list[Result]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows(rows(results))
    return buf.getvalue()


# --- the command -------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory (runs/<experiment>)")
    p.add_argument("--claims", type=Path, default=None,
                   help="the claims file (default: configs/<experiment>.claims.yaml)")
    p.add_argument("--out", type=Path, default=None,
                   help="where claims.md and claims.csv go (default: the run directory)")
    p.add_argument("--quote", action="store_true",
                   help="also print the table as the docs quote it, in its markers "
                   "(scripts/check_claims.py checks the docs against it)")


def command(args: argparse.Namespace) -> int:
    try:
        exp = load_runs([args.run])[0]
        path = args.claims or Path("configs") / f"{exp.key}.claims.yaml"
        results = evaluate(exp, load_claims(path))
    except ReportError as err:
        print(f"lmcollapse claims: {err}", file=sys.stderr)
        return 2
    text = markdown(results, exp)
    out = args.out or Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "claims.md", text)
    files.write_text(out / "claims.csv", to_csv(results))
    print(text)
    if args.quote:
        print(f"<!-- claims: {args.run} -->\n{quote(results)}<!-- /claims -->")
    return 0
