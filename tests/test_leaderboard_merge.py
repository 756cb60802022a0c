"""Merging results files of one protocol: cells that descend from one generation 0 pair by
seed; cells from a file whose generation 0 differs (another machine) do not, and are
compared by Welch's test, named as such (fake runs with known values: fast)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from test_report import GENS, make_run, value

from lmcollapse.publish.export import export
from lmcollapse.report import compute
from lmcollapse.report.formats import cell_hover, notes, render_latex
from lmcollapse.report.leaderboard import merge
from lmcollapse.report.results import read_results
from lmcollapse.report.stats import welch_test


def _b_values(shift_gen0: float):
    """Team B's numbers: its cell ``accumulate-b`` between A's two cells, and its
    generation 0 moved by ``shift_gen0`` (0: the same machine as A)."""
    def values(metric, policy, seed, gen):
        if gen == 0:
            return value(metric, policy, seed, gen) + shift_gen0 * (1 + seed)
        if policy == "accumulate-b":
            a, r = value(metric, "accumulate", seed, gen), value(metric, "replace", seed, gen)
            return (a + r) / 2 + 0.05 * (seed - 1) ** 2
        return value(metric, policy, seed, gen)
    return values


def _board(tmp_path, shift_gen0: float):
    a = export(make_run(tmp_path, name="a", policies=["replace", "accumulate"]))
    b = export(make_run(tmp_path, name="b", policies=["accumulate-b"],
                        values=_b_values(shift_gen0)))
    merged = merge([read_results(a), read_results(b)])
    return merged, compute.leaderboard([merged], rank_by="perplexity",
                                       columns=["perplexity"])


def test_cells_of_one_generation_0_pair_by_seed(tmp_path):
    merged, lb = _board(tmp_path, 0.0)
    assert merged.pairable("accumulate", "accumulate-b")
    rows = {r.policy: r for r in lb.rows}
    c = rows["accumulate-b"].versus["perplexity"]
    a = merged.values("accumulate-b", "perplexity", GENS)
    b = merged.values(c.above, "perplexity", GENS)
    assert c.unpaired is None and c.n == 3
    assert c.p == pytest.approx(stats.ttest_rel([a[s] for s in (0, 1, 2)],
                                                [b[s] for s in (0, 1, 2)]).pvalue)
    assert not any("Not paired" in n for n in notes(lb))
    assert "Welch" not in render_latex(lb)


def test_cells_of_different_generation_0_are_compared_unpaired(tmp_path):
    merged, lb = _board(tmp_path, 0.01)
    assert not merged.pairable("accumulate", "accumulate-b")
    assert merged.pairable("accumulate", "replace")
    rows = {r.policy: r for r in lb.rows}
    assert [r.policy for r in lb.rows if r.rank] == ["accumulate", "accumulate-b", "replace"]
    for cell, above in (("accumulate-b", "accumulate"), ("replace", "accumulate-b")):
        c = rows[cell].versus["perplexity"]
        assert c.above == above and c.unpaired is not None
        x = list(merged.values(cell, "perplexity", GENS).values())
        y = list(merged.values(above, "perplexity", GENS).values())
        welch = stats.ttest_ind(x, y, equal_var=False)
        assert c.p == pytest.approx(welch.pvalue)
        assert c.interval == pytest.approx(tuple(welch.confidence_interval(0.95)))
        assert c.diff == pytest.approx(np.mean(x) - np.mean(y))
        assert "Welch t-test, not paired" in cell_hover(rows[cell], "perplexity")
    # B's cell is measured from its own generation 0: its change is against that one
    own0 = {s: v for s, v in merged.values("accumulate-b", "perplexity", 0).items()}
    assert own0 == {s: value("perplexity", None, s, 0) + 0.01 * (1 + s) for s in (0, 1, 2)}
    assert any(n.startswith("Not paired (accumulate-b vs accumulate, replace vs "
                            "accumulate-b)") for n in notes(lb))
    assert "Welch's t-test where the two cells' generation 0 differ" in render_latex(lb)


def test_welch_test_by_hand():
    a, b = {0: 1.0, 1: 2.0, 2: 4.0}, {0: 2.5, 1: 3.0, 2: 3.5, 5: 6.0}
    u = welch_test(a, b)
    x, y = np.array(list(a.values())), np.array(list(b.values()))
    va, vb = x.var(ddof=1) / 3, y.var(ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    t = (x.mean() - y.mean()) / np.sqrt(va + vb)
    assert u.n == 3 and u.df == pytest.approx(df)
    assert u.p == pytest.approx(2 * stats.t.sf(abs(t), df))
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert u.interval == pytest.approx((x.mean() - y.mean() - half, x.mean() - y.mean() + half))
