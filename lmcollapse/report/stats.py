"""The statistics of a report: intervals, paired tests over seeds, corrections for many
comparisons, seeds needed, and two-sample tests of per-document values.

Every number here is what scipy or statsmodels compute (named in each function); this module
only chooses what is tested and how the answers are combined. No torch, no files: the
report and ``lmcollapse compare`` call the same functions, so a claim in the docs and a report
mark cannot disagree.

The rules, in one place:

- **Over seeds.** Seeds pair policies (generation 0 is trained once per seed and shared),
  so two cells are compared by a two-sided paired t-test of their per-seed differences
  (:func:`paired_test`), with a t-based 95% interval of the mean difference.
- **Many comparisons.** A table makes many such tests; the marks control them within a
  *family* (one column of the leaderboard of one experiment, one per-generation table, one
  ``compare`` invocation): Holm by default (controls the chance of any false "beyond noise"
  in the family), Benjamini-Hochberg (controls the expected share of false ones), or none
  (:func:`adjust`, ``statsmodels.stats.multitest.multipletests``).
- **Seeds needed.** For a gap that is not significant, the smallest number of seeds at
  which a paired t-test detects the observed mean difference at the observed spread of the
  differences with 80% power (:func:`seeds_needed`, ``statsmodels`` ``TTestPower``), at the
  strictest level the correction may apply (alpha / comparisons for Holm and BH).
- **Per document.** Where a metric keeps a value per sample (reference perplexity), the
  samples of generation k are compared with those of generation 0 (or of human text) by a
  Mann-Whitney U test per seed (:func:`two_sample`), its effect size the probability that a
  sample of k exceeds one of the other (Vargha-Delaney A; 0.5 = no shift), and the seeds'
  p-values combined by Fisher's method (:func:`combine`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

NAN = math.nan
#: significance level of every test (family-wise with Holm, false discovery rate with BH)
ALPHA = 0.05
#: power at which :func:`seeds_needed` plans
POWER = 0.8
#: confidence level of every interval
LEVEL = 0.95
#: ``--correction`` values and what statsmodels calls them
CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "none": None}
#: how a correction is named in a table's notes
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no correction"}


def t_interval(mean: float, std: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The t-based interval of a mean over ``n`` values (``scipy.stats.t``): mean ± t(level,
    n − 1) · std / √n; NaN when n < 2."""
    if n < 2 or not (math.isfinite(mean) and math.isfinite(std)):
        return NAN, NAN
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Paired:
    """A paired comparison over seeds: ``n`` seeds, the mean and sample std of the per-seed
    differences ``a − b``, the two-sided p-value and the t-based interval of the mean."""

    n: int
    diff: float
    sd: float
    p: float

    @property
    def interval(self) -> tuple[float, float]:
        return t_interval(self.diff, self.sd, self.n)


def paired_test(a: dict[int, float], b: dict[int, float]) -> Paired:
    """Two-sided paired t-test of ``a − b`` over the seeds both have.

    The p-value is ``scipy.stats.ttest_rel``'s (t = mean(d) / (stdev(d) / √n) on n − 1
    degrees of freedom, d the per-seed differences). Where stdev(d) = 0 the differences are
    all equal and scipy gives NaN: p = 0 when they are nonzero, 1 when they are all zero.
    p is NaN when n < 2 or a difference is not finite.
    """
    seeds = sorted(a.keys() & b.keys())
    d = [a[s] - b[s] for s in seeds]
    n = len(d)
    if not n:
        return Paired(0, NAN, NAN, NAN)
    mean = statistics.fmean(d)
    if n < 2 or not all(map(math.isfinite, d)):
        return Paired(n, mean, NAN, NAN)
    sd = statistics.stdev(d)
    if sd == 0:
        return Paired(n, mean, 0.0, 0.0 if mean else 1.0)
    p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return Paired(n, mean, sd, p)


@dataclass(frozen=True)
class Unpaired:
    """An unpaired comparison of two cells' values over seeds (Welch): ``n`` the fewer
    seeds of the two sides, ``diff`` mean(a) − mean(b), ``se`` its standard error, ``df``
    the Welch–Satterthwaite degrees of freedom, the two-sided p-value."""

    n: int
    diff: float
    se: float
    df: float
    p: float

    @property
    def interval(self) -> tuple[float, float]:
        if not (self.n >= 2 and math.isfinite(self.se) and math.isfinite(self.df)):
            return NAN, NAN
        half = float(stats.t.ppf((1 + LEVEL) / 2, self.df)) * self.se
        return self.diff - half, self.diff + half


def welch_test(a: dict[int, float], b: dict[int, float]) -> Unpaired:
    """Welch's two-sided t-test of the values of ``a`` against those of ``b`` (not paired
    by seed): ``scipy.stats.ttest_ind(equal_var=False)``; NaN p with fewer than 2 values
    on a side or no spread on either."""
    x, y = list(a.values()), list(b.values())
    n = min(len(x), len(y))
    if not n:
        return Unpaired(0, NAN, NAN, NAN, NAN)
    diff = statistics.fmean(x) - statistics.fmean(y)
    if n < 2 or not all(map(math.isfinite, x + y)):
        return Unpaired(n, diff, NAN, NAN, NAN)
    va, vb = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    se = math.sqrt(va + vb)
    if se == 0:
        return Unpaired(n, diff, 0.0, NAN, 0.0 if diff else 1.0)
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    return Unpaired(n, diff, se, df,
                    float(stats.ttest_ind(x, y, equal_var=False).pvalue))


def adjust(pvalues: Sequence[float], correction: str = "holm") -> list[float]:
    """Adjusted p-values of one family (``statsmodels.stats.multitest.multipletests``);
    NaN entries (too few seeds) stay NaN and are not counted in the family."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got "
                         f"{correction!r}")
    out = [NAN] * len(pvalues)
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    if not idx:
        return out
    method = CORRECTIONS[correction]
    if method is None:
        for i in idx:
            out[i] = float(pvalues[i])
        return out
    adjusted = multipletests([pvalues[i] for i in idx], alpha=ALPHA, method=method)[1]
    for i, p in zip(idx, adjusted, strict=True):
        out[i] = float(p)
    return out


def planning_alpha(correction: str, comparisons: int) -> float:
    """The level :func:`seeds_needed` plans at: alpha / comparisons under Holm or BH (the
    strictest step of either; a gap may need fewer seeds), alpha without a correction."""
    return ALPHA if correction == "none" else ALPHA / max(1, comparisons)


def seeds_needed(diff: float, sd: float, alpha: float = ALPHA, power: float = POWER,
                 most: int = 1000) -> int | None:
    """Seeds a two-sided paired t-test needs to detect a mean difference ``diff`` when the
    per-seed differences spread with sample std ``sd``, at level ``alpha`` with ``power``:
    the smallest n >= 2 whose power (``statsmodels.stats.power.TTestPower().power``, the
    effect size |diff| / sd, n − 1 degrees of freedom) reaches ``power``. None when it
    cannot be said (no spread measured, no difference, or more than ``most``)."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or sd <= 0 or diff == 0:
        return None
    n = np.arange(2, most + 1)
    reached = TTestPower().power(effect_size=abs(diff) / sd, nobs=n, alpha=alpha,
                                 alternative="two-sided") >= power
    return int(n[np.argmax(reached)]) if reached.any() else None


@dataclass(frozen=True)
class TwoSample:
    """Mann-Whitney U of sample ``x`` against sample ``y`` (two-sided): the p-value and the
    effect size A = P(x > y) + P(x = y) / 2 (0.5: no shift; 1: every x above every y)."""

    p: float
    effect: float
    n_x: int
    n_y: int


def two_sample(x: Sequence[float], y: Sequence[float]) -> TwoSample:
    """``scipy.stats.mannwhitneyu(x, y, alternative="two-sided")``; A = U_x / (n_x n_y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not len(x) or not len(y):
        return TwoSample(NAN, NAN, len(x), len(y))
    res = stats.mannwhitneyu(x, y, alternative="two-sided")
    return TwoSample(float(res.pvalue), float(res.statistic) / (len(x) * len(y)), len(x),
                     len(y))


def combine(pvalues: Sequence[float]) -> float:
    """One p-value from independent tests, one per seed: Fisher's method
    (``scipy.stats.combine_pvalues``); the only p when there is one, NaN when none."""
    ps = [min(max(float(p), 1e-300), 1.0) for p in pvalues if math.isfinite(p)]
    if not ps:
        return NAN
    if len(ps) == 1:
        return ps[0]
    return float(stats.combine_pvalues(ps, method="fisher").pvalue)


def bootstrap_interval(values: Sequence[float], statistic: Callable[..., Any], seed: int = 0,
                       resamples: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``statistic(sample, axis=...)`` over the samples
    ``values`` (``scipy.stats.bootstrap``, seeded): how precise one seed's number is."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return NAN, NAN
    res = stats.bootstrap((x,), statistic, confidence_level=LEVEL, n_resamples=resamples,
                          method="percentile", random_state=np.random.default_rng(seed),
                          vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


class Stat(NamedTuple):
    """Mean, sample standard deviation (n - 1; NaN when n < 2) and count over seeds."""

    mean: float
    std: float
    n: int

    @property
    def interval(self) -> tuple[float, float]:
        """95% t-based confidence interval of the mean over seeds (NaN when n < 2)."""
        return t_interval(self.mean, self.std, self.n)


def stat(values: Any) -> Stat:
    """``Stat`` of the finite-or-inf values; NaN and None are dropped."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return Stat(NAN, NAN, 0)
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else NAN,
                len(vals))
