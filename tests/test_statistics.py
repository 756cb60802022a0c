"""Statistics a reviewer accepts: every number checked against scipy or statsmodels called
directly on the same values (corrected p-values, intervals, seeds needed, per-document
tests, bootstrap intervals), the onset rules, and the compare / plan-seeds commands."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from test_report import GENS, SEEDS, _at, _sig_run, make_run, value

from lmcollapse.cli import run_main
from lmcollapse.report import compute, documents
from lmcollapse.report import formats as report_formats
from lmcollapse.report import stats as lstats
from lmcollapse.report import write as report
from lmcollapse.report.load import load_runs

# --- the functions, against the libraries ---------------------------------------------------


def test_paired_test_interval_and_seeds_needed_match_the_libraries():
    a, b = {0: 10.0, 1: 13.5, 2: 11.2, 3: 12.9}, {0: 9.1, 1: 12.0, 2: 11.0, 3: 11.1}
    t = lstats.paired_test(a, b)
    d = np.array([a[s] - b[s] for s in range(4)])
    assert t.p == pytest.approx(stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    assert t.diff == pytest.approx(d.mean()) and t.sd == pytest.approx(d.std(ddof=1))
    lo, hi = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert t.interval == pytest.approx((lo, hi))
    n = lstats.seeds_needed(t.diff, t.sd, 0.01)  # the smallest n with 80% power
    power = [TTestPower().power(d.mean() / d.std(ddof=1), nobs=k, alpha=0.01) for k in (n - 1, n)]
    assert power[0] < 0.8 <= power[1]
    assert n == math.ceil(TTestPower().solve_power(d.mean() / d.std(ddof=1), alpha=0.01,
                                                   power=0.8))
    assert lstats.seeds_needed(0.0, 1.0) is None and lstats.seeds_needed(1.0, 0.0) is None
    assert lstats.seeds_needed(0.001, 10.0) is None  # more than 1000 seeds: no number


@pytest.mark.parametrize("correction, method", [("holm", "holm"), ("bh", "fdr_bh")])
def test_corrections_are_statsmodels_and_skip_missing(correction, method):
    ps = [0.01, math.nan, 0.04, 0.03, 0.2]
    got = lstats.adjust(ps, correction)
    want = multipletests([0.01, 0.04, 0.03, 0.2], method=method)[1]
    assert math.isnan(got[1])
    assert [got[i] for i in (0, 2, 3, 4)] == pytest.approx(list(want))
    assert lstats.adjust(ps, "none")[2] == 0.04
    with pytest.raises(ValueError, match="holm, bh, none"):
        lstats.adjust(ps, "bonferoni")


def test_two_sample_combine_and_bootstrap_match_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.lognormal(2.1, 0.4, 300), rng.lognormal(2.0, 0.4, 250)
    t = lstats.two_sample(x, y)
    u = stats.mannwhitneyu(x, y, alternative="two-sided")
    assert t.p == pytest.approx(u.pvalue) and t.effect == pytest.approx(u.statistic / 300 / 250)
    ps = [0.2, 0.03, 0.5]
    assert lstats.combine(ps) == pytest.approx(stats.combine_pvalues(ps, "fisher").pvalue)
    lo, hi = lstats.bootstrap_interval(x, documents.statistic("p50"), seed=4)
    ref = stats.bootstrap((x,), lambda s, axis: np.percentile(s, 50, axis=axis),
                          n_resamples=2000, method="percentile",
                          random_state=np.random.default_rng(4)).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    assert lo < np.percentile(x, 50) < hi


# --- the report's marks, intervals and notes ------------------------------------------------


@pytest.mark.slow
def test_correction_option_changes_marks_by_the_stated_rule(tmp_path):
    run = _sig_run(tmp_path)
    for correction in ("holm", "bh", "none"):
        out = tmp_path / correction
        res = report.write_report([run], out=out, plots=False, lineage_prompts=0,
                                  correction=correction)
        rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
        assert {r["correction"] for r in rows} == {correction}
        for m in ("perplexity", "mauve"):
            lines = [r for r in rows if r[f"{m}_vs_above_p"]]
            raw = [float(r[f"{m}_vs_above_p"]) for r in lines]
            want = raw if correction == "none" else multipletests(
                raw, method={"holm": "holm", "bh": "fdr_bh"}[correction])[1]
            for r, p in zip(lines, want, strict=True):
                assert float(r[f"{m}_vs_above_p_adj"]) == pytest.approx(p)
                assert r[f"{m}_within_noise"] == str(int(not p < 0.05))
        name = lstats.CORRECTION_NAMES[correction]
        assert f"corrected together ({name}; family: each column" in res["markdown"]


@pytest.mark.slow
def test_cells_carry_intervals_on_hover(tmp_path):
    run = _sig_run(tmp_path)
    res = report.write_report([run], out=tmp_path / "o", plots=False, lineage_prompts=0)
    page = (tmp_path / "o" / "leaderboard.html").read_text()
    row = next(r for r in res["leaderboard"].rows if r.policy == "mix")
    lo, hi = stats.t.interval(0.95, 2, loc=_at("perplexity", "mix").mean(),
                              scale=stats.sem(_at("perplexity", "mix")))
    assert f"95% interval of the mean over 3 seeds: [{lo:.2f}, {hi:.2f}]" in page
    c = row.versus["perplexity"]
    assert f"corrected p = {c.p_adj:.2g} (family of 2)" in page


def _per_sample_run(tmp_path, seeds=SEEDS):
    """The fake run, its reference metric declaring its per-sample column as the loop's
    does (every row's reference_scores.parquet holds 200 perplexities)."""
    run = make_run(tmp_path, seeds=seeds, name="docs")
    spec = {"file": "reference_scores.parquet", "column": "perplexity",
            "values": {"ref_ppl_p50": "p50"}}
    for path in run.glob("seed_*/**/metrics.json"):
        rec = json.loads(path.read_text())
        rec["details"]["reference_perplexity"] = {"per_sample": spec}
        path.write_text(json.dumps(rec))
    return run


@pytest.mark.slow
def test_early_warning_per_document_tests(tmp_path):
    run = _per_sample_run(tmp_path)
    exp = load_runs([run])[0]
    spec = documents.per_sample(exp)[0]
    w = documents.early_warning(exp, spec, "holm")

    def scores(policy, seed, gen):
        d = run / f"seed_{seed}" / ("human" if gen is None else "gen_00" if gen == 0
                                    else f"{policy}/gen_{gen:02d}")
        return pq.read_table(d / "reference_scores.parquet").column("perplexity").to_numpy()

    flat = []
    for against in documents.AGAINST:
        for policy in exp.policies:
            for t in w.tests[against][policy]:
                other = 0 if against == "gen 0" else None
                tests = [stats.mannwhitneyu(scores(policy, s, t.generation),
                                            scores(policy, s, other), alternative="two-sided")
                         for s in SEEDS]
                assert t.per_seed[0].p == pytest.approx(tests[0].pvalue)
                assert t.effect == pytest.approx(np.mean([u.statistic / 200 / 200
                                                          for u in tests]))
                assert t.p == pytest.approx(stats.combine_pvalues(
                    [u.pvalue for u in tests], "fisher").pvalue)
                flat.append((against, t))
    for against in documents.AGAINST:
        mine = [t for a, t in flat if a == against]
        want = multipletests([t.p for t in mine], method="holm")[1]
        assert [t.p_adj for t in mine] == pytest.approx(list(want))
        assert w.families[against] == len(mine)
    # the fake scores grow with the generation: generation 1 already moves on every seed
    assert w.first("gen 0", "replace") == 1
    res = report.write_report([run], out=tmp_path / "o", plots=False, lineage_prompts=0)
    md = (tmp_path / "o" / "leaderboard.md").read_text()
    assert "## Early warning: reference_perplexity" in md and "first beyond noise" in md
    assert "Mann-Whitney U" in md and res["warnings"]
    lines = list(csv.DictReader(io.StringIO((tmp_path / "o" / "early_warning.csv").read_text())))
    assert len(lines) == len(flat)
    assert "Early warning" in (tmp_path / "o" / "leaderboard.html").read_text()


def test_one_seed_cells_carry_a_bootstrap_interval(tmp_path):
    run = _per_sample_run(tmp_path, seeds=[0])
    res = report.write_report([run], out=tmp_path / "o", plots=False, lineage_prompts=0,
                              columns=["ref_ppl_p50"])
    row = next(r for r in res["leaderboard"].rows if r.policy == "replace")
    x = pq.read_table(run / "seed_0" / "replace" / f"gen_{GENS:02d}" /
                      "reference_scores.parquet").column("perplexity").to_numpy()
    ref = stats.bootstrap((x,), lambda s, axis: np.percentile(s, 50, axis=axis),
                          n_resamples=2000, method="percentile",
                          random_state=np.random.default_rng(0)).confidence_interval
    assert row.bootstrap["ref_ppl_p50"][0] == pytest.approx((ref.low, ref.high))
    md = (tmp_path / "o" / "leaderboard.md").read_text()
    assert f"[{ref.low:.2f}, {ref.high:.2f}]" in md


# --- onset by any metric --------------------------------------------------------------------


@pytest.mark.slow
def test_onset_by_another_metric_and_by_noise(tmp_path):
    run = make_run(tmp_path)
    exps = load_runs([run])
    # relative rule on a higher-is-better metric: worse = lower by more than the threshold
    lb = compute.leaderboard(exps, onset_metric="distinct_4", onset_threshold=0.1)
    rep = next(r for r in lb.rows if r.policy == "replace")
    for s in SEEDS:  # distinct_4 of replace: 0.9 - 0.1 k + 0.01 s
        vals = [value("distinct_4", "replace", s, k) for k in range(GENS + 1)]
        want = next(k for k in range(1, GENS + 1) if vals[k] < vals[0] * 0.9)
        assert rep.onsets[s] == want
    # noise rule: the first generation whose paired test against generation 0 (Holm over
    # the row's generations) is significant in the worse direction
    lb = compute.leaderboard(exps, onset_rule="noise")
    acc = next(r for r in lb.rows if r.policy == "accumulate")
    zero = [value("perplexity", None, s, 0) for s in SEEDS]
    raw = [stats.ttest_rel([value("perplexity", "accumulate", s, k) for s in SEEDS], zero)
           .pvalue for k in range(1, GENS + 1)]
    adj = multipletests(raw, method="holm")[1]
    want = next((k for k, p in zip(range(1, GENS + 1), adj, strict=True) if p < 0.05), None)
    assert acc.onset_test == want
    text = "\n".join(report_formats.notes(lb))
    assert "beyond noise: paired t-test over seeds of each generation against generation 0" in text
    with pytest.raises(compute.ReportError, match="onset rule"):
        compute.leaderboard(exps, onset_rule="sometimes")


# --- compare and plan-seeds -----------------------------------------------------------------


@pytest.mark.slow
def test_compare_command_is_the_reports_test(tmp_path, capsys):
    run = make_run(tmp_path, stop={("accumulate", 2): 2})
    assert run_main(["compare", str(run), "--pair", "replace", "accumulate", "--pair",
                     "replace/gen_0", "replace", "--metrics", "perplexity"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(c.strip() for c in ln.split("|")[2:4]): [c.strip() for c in ln.split("|")]
            for ln in out.splitlines() if ln.startswith("| perp")}
    rep = [value("perplexity", "replace", s, GENS) for s in (0, 1)]
    acc = [value("perplexity", "accumulate", s, GENS) for s in (0, 1)]
    zero = [value("perplexity", None, s, 0) for s in SEEDS]
    full = [value("perplexity", "replace", s, GENS) for s in SEEDS]
    raw = [stats.ttest_rel(acc, rep).pvalue, stats.ttest_rel(full, zero).pvalue]
    adj = multipletests(raw, method="holm")[1]
    row = rows[("replace", "accumulate")]
    assert row[8] == "2/2" and float(row[9]) == pytest.approx(raw[0], rel=1e-3)
    assert float(row[10]) == pytest.approx(adj[0], rel=1e-3)
    assert float(row[6].split(" [")[0]) == pytest.approx(np.mean(np.subtract(acc, rep)), rel=1e-3)
    row = rows[("replace/gen_0", "replace")]
    assert row[8] == "0/3" and float(row[10]) == pytest.approx(adj[1], rel=1e-3)
    # the relative change, per seed B / A - 1: mean [min, max], in whole percent
    rel = np.divide(full, zero) - 1
    assert row[7] == f"{rel.mean():+.0%} [{rel.min():+.0%}, {rel.max():+.0%}]"
    # changes (--change, --since K): the paired test of the per-seed difference in
    # differences; B's change over A's only where A's change is positive in every seed
    for since in (0, 1):
        args = ["--since", str(since)] if since else []
        assert run_main(["compare", str(run), "--pair", "replace", "accumulate", "--change",
                         *args, "--metrics", "perplexity"]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines()
                    if ln.startswith("| perp")).split("|")
        base = {name: [value("perplexity", name if since else None, s, since) for s in (0, 1)]
                for name in ("replace", "accumulate")}
        ch_rep, ch_acc = np.subtract(rep, base["replace"]), np.subtract(acc, base["accumulate"])
        assert float(line[6].split(" [")[0]) == pytest.approx(np.mean(ch_acc - ch_rep), rel=1e-3)
        assert float(line[9]) == pytest.approx(stats.ttest_rel(ch_acc, ch_rep).pvalue, rel=1e-3)
        ratio = ch_acc / ch_rep - 1
        assert line[7].strip() == (f"{ratio.mean():+.0%} [{ratio.min():+.0%}, {ratio.max():+.0%}]"
                                   if (ch_rep > 0).all() else "–")
    assert run_main(["compare", str(run), "--pair", "replace", "accumulate", "--since", "1",
                     "--metrics", "perplexity"]) == 2
    assert "--since: counts a change from generation K; add --change" in capsys.readouterr().err
    assert "Holm over the 2 tests of this command" in out
    # the same pair in the report's leaderboard (accumulate ranks first) gets the same p
    lb = compute.leaderboard(load_runs([run]))
    rep_row = next(r for r in lb.rows if r.policy == "replace")
    assert rep_row.versus["perplexity"].above == "accumulate"
    assert rep_row.versus["perplexity"].p == pytest.approx(raw[0], rel=1e-9)
    assert run_main(["compare", str(run), "--pair", "replace", "replce", "--metrics",
                     "perplexity"]) == 2
    assert "did you mean 'replace'" in capsys.readouterr().err


def test_plan_seeds_command(tmp_path, capsys):
    run = _sig_run(tmp_path)
    assert run_main(["plan-seeds", str(run), "--pair", "mix", "replace", "--metrics",
                     "perplexity", "--comparisons", "3"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("| perplexity"))
    d = _at("perplexity", "replace") - _at("perplexity", "mix")
    n = int(line.rstrip(" |").rsplit("|", 1)[1])
    power = [TTestPower().power(abs(d.mean()) / d.std(ddof=1), nobs=k, alpha=0.05 / 3)
             for k in (n - 1, n)]
    assert power[0] < 0.8 <= power[1]
    assert "alpha 0.0167 (0.05 / 3 comparisons)" in out


@pytest.mark.parametrize(("args", "needle"), [
    (["compare", "--pair", "replace", "accumulate", "--metrics", "perplexity,perplexity"],
     "--metrics: perplexity named twice"),
    (["compare", "--pair", "replace", "accumulate", "--metrics", ","],
     "--metrics: name at least one value key"),
    (["compare", "--pair", "replace", "replace", "--metrics", "perplexity"],
     "--pair replace replace: both sides are replace at generation"),
    (["compare", "--pair", "replace", "accumulate", "--metrics", "perplexity",
      "--generation", "-1"], "--generation: a generation in 0..3, got -1"),
    (["plan-seeds", "--pair", "replace", "accumulate", "--metrics", "perplexity",
      "--comparisons", "-3"], "--comparisons: the comparisons of the family, >= 1, got -3"),
    (["report", "--lineages", "-1"], "--lineages: a number of prompts >= 0"),
])
def test_bad_compare_and_report_arguments_are_refused(tmp_path, capsys, args, needle):
    """Each was accepted before: a doubled family, an empty table, a pair with itself, a
    negative generation, a negative number of comparisons, lineages skipped silently."""
    run = make_run(tmp_path)
    command, rest = args[0], args[1:]
    out = tmp_path / "out"
    extra = ["--out", str(out)] if command == "report" else []
    assert run_main([command, str(run), *rest, *extra]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()
