"""The collapse profile: each of Schaeffer et al.'s eight definitions read from a run, its
verdicts against a hand computation (the paired tests recomputed with scipy, Holm with
statsmodels) on runs whose values are known."""

from __future__ import annotations

import csv
import io

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from test_report import make_run

from lmcollapse.report import profile as prof
from lmcollapse.report import profile_formats
from lmcollapse.report.load import load_runs

DIRECTIONS = {"perplexity": False, "unigram_perplexity": False, "entropy_2": None,
              "tail_type_survival": None, "invented_share": None}


def values(metric, policy, seed, gen):
    """replace: perplexity x2.5 by generation 3 (above the unigram baseline of 20), entropy
    falls, the tail survives less; accumulate: small noisy changes; invented words rise
    under replace only."""
    if gen is None:
        return {"unigram_perplexity": 20.0 + seed, "entropy_2": 5.0, "tail_type_survival": 1.0,
                "invented_share": 0.0}.get(metric, 0.0)
    rep = policy == "replace" and gen > 0
    noise = (-1) ** seed * 0.01 * gen
    return {"perplexity": (10.0 + seed) * (1 + (0.5 if rep else 0.0) * gen + noise),
            "unigram_perplexity": 0.0,
            "entropy_2": 5.0 - (0.4 * gen if rep else 0.0) + noise + 0.01 * seed * gen,
            "tail_type_survival": 0.9 - (0.1 * gen if rep else 0.0) + noise,
            "invented_share": (0.01 * gen + 0.001 * seed * gen) if rep else 0.0}[metric]


def test_the_profile_reads_each_definition_as_stated(tmp_path):
    run = make_run(tmp_path, values=values, directions=DIRECTIONS)
    exp = load_runs([run])[0]
    p = prof.profile(exp, ["replace", "accumulate"])
    verdict = {pol: {v.key: v.verdict for v in row} for pol, row in p.rows.items()}
    assert verdict["replace"]["catastrophic_risk"] == "met"  # 25+ > 20+seed in every seed
    assert verdict["accumulate"]["catastrophic_risk"] == "not met"
    assert verdict["replace"]["diverging_risk"] == "not decidable"
    assert verdict["replace"]["scaling_law"] == "not measured"
    assert verdict["replace"]["mode_entanglement"] == "not measured"
    # the tests, recomputed: one per (policy, definition of a change) the run measures
    family = []
    for pol in ("replace", "accumulate"):
        for key, metric in (("any_risk_increase", "perplexity"),
                            ("collapsing_variance", "entropy_2"),
                            ("tail_disappearance", "tail_type_survival"),
                            ("hallucinated_data", "invented_share")):
            final = [values(metric, pol, s, 3) for s in (0, 1, 2)]
            zero = [values(metric, pol, s, 0) for s in (0, 1, 2)]
            diff = [a - b for a, b in zip(final, zero, strict=True)]
            pval = (1.0 if not any(diff) else 0.0) if len(set(diff)) == 1 else \
                stats.ttest_rel(final, zero).pvalue
            family.append((pol, key, sum(diff) / 3, pval))
    adjusted = multipletests([f[3] for f in family], method="holm")[1]
    for (pol, key, mean, _), p_adj in zip(family, adjusted, strict=True):
        ev = next(v for v in p.rows[pol] if v.key == key).evidence[0]
        assert ev.p_adj == pytest.approx(p_adj, rel=1e-9)
        collapsing = ev.collapsing * mean > 0
        expected = ("met" if collapsing else "reversed") if p_adj < 0.05 else "not shown"
        assert verdict[pol][key] == expected
    assert verdict["replace"]["any_risk_increase"] == "met"
    assert verdict["replace"]["collapsing_variance"] == "met"
    assert verdict["replace"]["tail_disappearance"] == "met"
    assert verdict["accumulate"]["any_risk_increase"] == "not shown"
    # the file: a row per (policy, definition, key measured), the deciding key first
    rows = list(csv.DictReader(io.StringIO(profile_formats.render_csv([p]))))
    assert {(r["policy"], r["definition"]) for r in rows} == {
        (pol, name) for pol in ("replace", "accumulate") for _, name, _ in prof.DEFINITIONS}
    md = profile_formats.render_markdown([p])
    assert "| Collapsing variance | met: entropy_2 " in md


def test_the_report_writes_the_profile(tmp_path):
    from lmcollapse.report.write import write_report

    run = make_run(tmp_path, values=values, directions=DIRECTIONS)
    out = write_report([run], out=tmp_path / "report", plots=False, lineage_prompts=0)
    names = {p.name for p in out["files"]}
    assert "collapse_profile.csv" in names
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "## Collapse profile" in md
    assert 'id="collapse-profile"' in (tmp_path / "report" / "leaderboard.html").read_text()
