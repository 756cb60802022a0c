"""``lmcollapse claims``: declared claims tested exactly as stated, on a fake run with known
values; every p-value against scipy and statsmodels called directly, every verdict by hand."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired
from test_report import make_run

from lmcollapse.cli import run_main
from lmcollapse.report import claims as claims_mod
from lmcollapse.report.load import load_runs
from lmcollapse.report.stats import ALPHA

SEEDS = [0, 1, 2, 3, 4, 5]
POLICIES = ["replace", "accumulate", "control"]
NOISE = np.random.default_rng(7).normal(size=(len(SEEDS), 4, len(POLICIES) + 1))


def noisy(metric: str, policy: str | None, seed: int, gen: int | None) -> float:
    """Perplexity-like values: replace rises 30% a generation, accumulate 5%, the control
    1% (within noise of generation 0); every value with its own noise."""
    if gen is None:
        return {"distinct_4": 0.95, "ref_ppl_p50": 20.0, "mauve": 1.0}[metric]
    base = 100.0 + 5 * seed
    rate = {"replace": 0.3, "accumulate": 0.05, "control": 0.01, None: 0.0}[policy]
    col = POLICIES.index(policy) if policy else len(POLICIES)
    noise = 0.0 if gen == 0 else 2.0 * NOISE[seed, gen, col]
    value = base * (1 + rate * gen) + noise
    return {"perplexity": value, "distinct_4": 1 / value, "ref_ppl_p50": value / 5,
            "mauve": 1 - 1 / value}[metric]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("claims"), seeds=SEEDS, name="study",
                    policies=POLICIES, values=noisy)


def at(policy: str | None, gen: int) -> np.ndarray:
    return np.array([noisy("perplexity", policy, s, gen) for s in SEEDS])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CLAIMS = """
claims:
  - id: replace-degrades
    family: headline
    text: replace degrades
    metric: perplexity
    a: replace/gen_0
    b: replace
    expect: higher
  - id: accumulate-below-replace
    family: headline
    text: accumulate ends below replace
    metric: perplexity
    a: replace
    b: accumulate
    expect: lower
  - id: wrong-way
    family: headline
    text: accumulate ends above replace (declared the wrong way)
    metric: perplexity
    a: replace
    b: accumulate
    expect: higher
  - id: did
    family: controls
    text: the control shows less of the change since generation 1 than replace
    metric: perplexity
    a: replace
    b: control
    since: 1
    expect: lower
  - id: control-flat
    family: controls
    text: the control ends within 5% of generation 0
    metric: perplexity
    a: control/gen_0
    b: control
    expect: equivalent
    relative_margin: 0.05
  - id: control-tight
    family: controls
    text: the control ends within 3.0 of generation 0
    metric: perplexity
    a: control/gen_0
    b: control
    expect: equivalent
    margin: 3.0
  - id: replace-not-flat
    family: controls
    text: replace ends within 5% of generation 0
    metric: perplexity
    a: replace/gen_0
    b: replace
    expect: equivalent
    relative_margin: 0.05
"""


def test_each_claim_is_the_test_it_declares(run, tmp_path) -> None:
    exp = load_runs([run])[0]
    got = {r.claim.id: r for r in claims_mod.evaluate(exp, claims_mod.load_claims(
        write(tmp_path / "c.yaml", CLAIMS)))}
    last = 3
    # directions: the two-sided paired t-test of B − A, Holm within the family
    head = [stats.ttest_rel(at("replace", last), at(None, 0)).pvalue,
            stats.ttest_rel(at("accumulate", last), at("replace", last)).pvalue,
            stats.ttest_rel(at("accumulate", last), at("replace", last)).pvalue]
    adj = multipletests(head, method="holm")[1]
    for cid, p, q in zip(["replace-degrades", "accumulate-below-replace", "wrong-way"], head,
                         adj, strict=True):
        assert got[cid].p == pytest.approx(p, rel=1e-9)
        assert got[cid].p_adj == pytest.approx(q, rel=1e-9)
    assert got["replace-degrades"].verdict == "supported"
    assert got["accumulate-below-replace"].verdict == "supported"
    assert got["wrong-way"].verdict == "contradicted"  # significant, the other way
    assert got["wrong-way"].agreeing == 0 and got["accumulate-below-replace"].agreeing == 6
    # the difference in differences: (control_3 − control_1) − (replace_3 − replace_1)
    ch_c, ch_r = at("control", last) - at("control", 1), at("replace", last) - at("replace", 1)
    did = stats.ttest_rel(ch_c, ch_r)
    assert got["did"].paired.diff == pytest.approx(np.mean(ch_c - ch_r))
    assert got["did"].p == pytest.approx(did.pvalue, rel=1e-9)
    assert got["did"].relative[0] == pytest.approx(np.mean(ch_c / ch_r - 1))
    # equivalence: TOST, the larger of two one-sided paired t-tests, against statsmodels and
    # against the one-sided tests by hand
    c3, c0 = at("control", last), at(None, 0)
    bound = 0.05 * c0.mean()
    tost_p = ttost_paired(c3, c0, -bound, bound)[0]
    by_hand = max(stats.ttest_1samp(c3 - c0 + bound, 0, alternative="greater").pvalue,
                  stats.ttest_1samp(c3 - c0 - bound, 0, alternative="less").pvalue)
    assert got["control-flat"].p == pytest.approx(tost_p, rel=1e-9)
    assert got["control-flat"].p == pytest.approx(by_hand, rel=1e-9)
    assert got["control-flat"].bound == pytest.approx(bound)
    fam = [got[c].p for c in ("did", "control-flat", "control-tight", "replace-not-flat")]
    for cid, q in zip(("did", "control-flat", "control-tight", "replace-not-flat"),
                      multipletests(fam, method="holm")[1], strict=True):
        assert got[cid].p_adj == pytest.approx(q, rel=1e-9)  # a family of its own
    assert got["control-flat"].verdict == "equivalent within the margin"
    # a margin the interval straddles: no evidence either way; a change far past the
    # margin: contradicted
    lo, hi = got["control-tight"].paired.interval
    assert lo < 3.0 < hi and got["control-tight"].p_adj >= ALPHA
    assert got["control-tight"].verdict == "inconclusive"
    lo, _ = got["replace-not-flat"].paired.interval
    assert lo > got["replace-not-flat"].bound
    assert got["replace-not-flat"].verdict == "contradicted"
    assert got["did"].verdict == ("supported" if got["did"].p_adj < ALPHA else "inconclusive")


def test_an_inconclusive_claim_says_the_seeds_it_needs(run, tmp_path) -> None:
    exp = load_runs([run])[0]
    text = """
claims:
  - {id: c, metric: perplexity, a: control/gen_0, b: control/gen_1, expect: higher}
"""
    (r,) = claims_mod.evaluate(exp, claims_mod.load_claims(write(tmp_path / "c.yaml", text)))
    if r.verdict == "inconclusive":
        from statsmodels.stats.power import TTestPower

        effect = abs(r.paired.diff) / r.paired.sd
        power = TTestPower().power(effect_size=effect, nobs=r.needed, alpha=ALPHA,
                                   alternative="two-sided")
        assert power >= 0.8
        assert TTestPower().power(effect_size=effect, nobs=r.needed - 1, alpha=ALPHA,
                                  alternative="two-sided") < 0.8
    else:
        assert r.needed is None


def test_the_command_writes_one_row_per_claim(run, tmp_path, capsys) -> None:
    path = write(tmp_path / "c.yaml", CLAIMS)
    assert run_main(["claims", str(run), "--claims", str(path), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "claims.md").read_text()
    assert md == capsys.readouterr().out.rstrip("\n") + "\n"
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    rows = list(csv.reader(io.StringIO((tmp_path / "claims.csv").read_text())))[1:]
    assert [r[0] for r in rows] == [ln.split(" | ")[0][2:] for ln in table] == [
        "replace-degrades", "accumulate-below-replace", "wrong-way", "did", "control-flat",
        "control-tight", "replace-not-flat"]
    assert {r[4] for r in rows} == {"supported", "contradicted", "inconclusive",
                                    "equivalent within the margin"}
    # the default claims file: configs/<experiment>.claims.yaml from where it is run
    assert run_main(["claims", str(run), "--out", str(tmp_path)]) == 2
    assert "configs/study.claims.yaml not found" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "needle"), [
    ("claims:\n  - {id: a, metric: perplexity, a: replace, b: control, expect: same}",
     "expect"),
    ("claims:\n  - {id: a, metric: perplexity, a: replace, b: control, expect: equivalent}",
     "claims[0]: expect: equivalent needs a margin"),
    ("claims:\n  - {id: a, metric: perplexity, a: replace, b: control, margin: 1}",
     "claims[0]: a margin only goes with expect: equivalent"),
    ("claims:\n  - {id: a, metric: perplexity, a: replace, b: control, colour: red}",
     "colour"),
    ("claims:\n  - {id: a, metric: perplexty, a: replace, b: control}",
     "did you mean 'perplexity'"),
    ("claims:\n  - {id: a, metric: perplexity, a: replce, b: control}",
     "did you mean 'replace'"),
    ("claims:\n  - {id: a, metric: perplexity, a: replace/gen_1, b: control, since: 2}",
     "since: 2 is after a side's generation"),
    ("claims:\n  - {id: a, metric: perplexity, a: replace, b: control}\n"
     "  - {id: a, metric: perplexity, a: replace, b: control}", "unique ids"),
])
def test_a_bad_claim_is_refused_naming_it(run, tmp_path, capsys, text, needle) -> None:
    path = write(tmp_path / "c.yaml", text)
    assert run_main(["claims", str(run), "--claims", str(path), "--out", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "claims.md").exists()


def test_tost_without_spread() -> None:
    """All differences equal: TOST decides by whether that difference is inside the margin."""
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    assert claims_mod.tost({s: v + 0.5 for s, v in a.items()}, a, 1.0) == 0.0
    assert claims_mod.tost({s: v + 1.5 for s, v in a.items()}, a, 1.0) == 1.0
    assert math.isfinite(claims_mod.tost({0: 1.0, 1: 2.5, 2: 3.1}, a, 1.0))


def test_the_docs_check_finds_a_quote_that_differs_from_the_run(run, tmp_path, capsys) -> None:
    """scripts/check_claims.py on a small run: a page quoting exactly what `lmcollapse
    claims --quote` prints is ok; one changed digit (or verdict) is found; --write puts the
    fresh table back; a block whose run is absent is skipped, not passed off as checked."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_claims", Path(__file__).resolve().parents[1] / "scripts" / "check_claims.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    claims_file = write(tmp_path / "c.yaml", CLAIMS)
    assert run_main(["claims", str(run), "--claims", str(claims_file), "--out",
                     str(tmp_path), "--quote"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("<!-- claims: "):].rstrip("\n") + "\n"
    rel = run.relative_to(tmp_path.parent)
    block = block.replace(f"<!-- claims: {run} -->", f"<!-- claims: {rel} c.yaml -->")
    (tmp_path.parent / "c.yaml").write_text(CLAIMS)
    page = tmp_path / "page.md"
    page.write_text(f"# A study\n\nText.\n\n{block}\nMore text.\n"
                    "<!-- claims: runs/absent -->\n| old |\n<!-- /claims -->\n")
    args = ["--root", str(tmp_path.parent), str(page)]
    assert check.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{page}: ok {rel}", f"{page}: skipped runs/absent: no run directory here"]
    # the verdicts and numbers in the block are those of the run
    assert "| replace degrades | supported |" in block
    assert "| accumulate ends above replace (declared the wrong way) | contradicted |" in block
    good = page.read_text()
    for wrong in (good.replace("| supported |", "| inconclusive |", 1),
                  good.replace("6/6", "5/6", 1)):
        assert wrong != good
        page.write_text(wrong)
        assert check.main(args) == 1
        assert f"{page}: differs {rel}" in capsys.readouterr().out
    assert check.main(["--write", *args]) == 0
    assert page.read_text() == good


def test_every_quoted_block_in_the_docs_quotes_its_declared_claims() -> None:
    """Without the runs (CI has none), each block of README.md and docs/ still names a study
    whose claims file exists, and lists exactly that file's claims, in its order, with a
    verdict the tool can give."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    blocks = [(page, m) for page in pages
              for m in claims_mod.QUOTE_BLOCK.finditer(page.read_text())]
    assert len(blocks) >= 3  # the controls, the Internet, the decoding-matched population
    verdicts = {claims_mod.SUPPORTED, claims_mod.CONTRADICTED, claims_mod.EQUIVALENT,
                claims_mod.INCONCLUSIVE}
    for page, m in blocks:
        run, claims_file = m.group(2), m.group(3)
        path = root / (claims_file or f"configs/{Path(run).name}.claims.yaml")
        declared = claims_mod.load_claims(path)
        rows = [line.split(" | ") for line in m.group(4).splitlines()[2:]]
        assert [r[0].lstrip("| ") for r in rows] == [c.text for c in declared], (page, run)
        assert all(r[1].split(" (")[0] in verdicts for r in rows), (page, run)


def test_a_corrected_p_is_never_rounded_across_alpha():
    """The quoted p keeps the side of alpha its verdict was decided on: 0.0496 is not 0.05."""
    from lmcollapse.report.claims import _p
    from lmcollapse.report.stats import ALPHA

    assert ALPHA == 0.05
    assert _p(0.04964) == "0.0496" and _p(0.0504) == "0.05"  # (0.05 is not below alpha)
    assert _p(0.0073) == "0.0073" and _p(0.71) == "0.71" and _p(0.00022) == "0.00022"
