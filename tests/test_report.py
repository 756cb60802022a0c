"""Report on fake run directories with known metrics: ranking, statistics, onset, formats."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from lmcollapse.cli import run_main
from lmcollapse.errors import ReportError
from lmcollapse.report import compute
from lmcollapse.report import formats as report_formats
from lmcollapse.report import write as report
from lmcollapse.report.compute import onset
from lmcollapse.report.load import load_runs

SEEDS = [0, 1, 2]
GENS = 3
POLICIES = ["replace", "accumulate"]
#: metric -> higher_is_better
DIRECTION = {"perplexity": False, "distinct_4": True, "ref_ppl_p50": None, "mauve": True}


def value(metric: str, policy: str | None, seed: int, gen: int | None) -> float:
    """The known value of every (metric, policy, seed, generation); gen None = human."""
    if gen is None:
        return {"distinct_4": 0.95, "ref_ppl_p50": 20.0 + 0.1 * seed, "mauve": 1.0}[metric]
    k, acc = gen, policy == "accumulate"
    return {
        "perplexity": (10.0 + seed) * (1 + (0.02 if acc else 0.2) * k),
        "distinct_4": 0.9 - (0.02 if acc else 0.1) * k + 0.01 * seed,
        "ref_ppl_p50": 20.0 + (2.0 if acc else -4.0) * k + 0.3 * seed * k,  # replace lowest
        "mauve": 0.5 + (0.05 if acc else 0.1) * k + 0.02 * seed,  # replace highest
    }[metric]


def _write_cell(d: Path, seed: int, policy: str | None, gen: int | None, values=value,
                directions=DIRECTION) -> None:
    d.mkdir(parents=True, exist_ok=True)
    metrics = [m for m in directions if not (gen is None and m == "perplexity")]
    rec = {"seed": seed, "policy": policy, "generation": gen,
           "values": {m: values(m, policy, seed, gen) for m in metrics},
           "meta": {m: {"metric": m, "display_name": m.title(), "higher_is_better": directions[m],
                        "column": True} for m in metrics},
           "details": {"perplexity": {"max_length": 64, "stride": 32},
                       "mauve": {"featurizer": "gen0"}},
           "sizes": {"perplexity": {"test_tokens": 999}, "mauve": {"n_p": 50, "n_q": 50}},
           "conditions": {"perplexity": "sliding window 64, stride 32 over 999 test tokens",
                          "mauve": "50 vs 50 samples, gen0 features"},
           "elapsed_s": {}}
    (d / "metrics.json").write_text(json.dumps(rec))
    for step in ("train", "generate", "measure"):
        (d / f"{step}.done").touch()
    rng = np.random.default_rng(seed * 10 + (gen or 9))
    scores = rng.lognormal(np.log(10 + 3 * (gen or 0)), 0.4, 200)
    pq.write_table(pa.table({"sample_id": [str(i) for i in range(200)], "perplexity": scores}),
                   d / "reference_scores.parquet")


def make_run(root: Path, seeds=SEEDS, name: str = "fake", stop: dict | None = None,
             lr: float = 1e-4, policies=POLICIES, values=value, directions=DIRECTION) -> Path:
    """A run directory; ``stop[(policy, seed)] = k`` ends that cell after generation k,
    with generation k + 1 trained but not generated or measured; ``values`` and
    ``directions`` as :func:`value` and :data:`DIRECTION`."""
    run = root / name
    config = {"experiment": name, "seeds": list(seeds), "generations": GENS,
              "policies": [{"name": p, "label": None} for p in policies],
              "data": {"source": "hf", "hf": {"path": "wikitext", "name": "wikitext-2-raw-v1"},
                       "block_tokens": 128},
              "model": {"source": "pretrained", "name_or_path": "facebook/opt-125m",
                        "init": "base"},
              "train": {"epochs": 1, "lr": lr, "batch_size": 8},
              "generate": {"strategy": "beam", "num_beams": 5, "prompt_tokens": 64,
                           "new_tokens": 64, "keep_prompt": False},
              "metrics": {"perplexity": {"max_length": 64, "stride": 32}}}
    run.mkdir(parents=True)
    (run / "experiment.json").write_text(json.dumps(
        {"experiment": name, "config": config, "seeds": list(seeds), "policies": list(policies),
         "git_sha": "abc123", "device": "cpu", "versions": {"torch": "x"},
         "data": "hf wikitext/wikitext-2-raw-v1"}))
    kw = {"values": values, "directions": directions}
    for s in seeds:
        _write_cell(run / f"seed_{s}" / "human", s, "human", None, **kw)
        _write_cell(run / f"seed_{s}" / "gen_00", s, None, 0, **kw)
        for p in policies:
            last = (stop or {}).get((p, s), GENS)
            for k in range(1, last + 1):
                _write_cell(run / f"seed_{s}" / p / f"gen_{k:02d}", s, p, k, **kw)
            if last < GENS:
                nxt = run / f"seed_{s}" / p / f"gen_{last + 1:02d}"
                nxt.mkdir(parents=True)
                (nxt / "train.done").touch()
    return run


@pytest.fixture()
def run(tmp_path):
    """Accumulate seed 2 stopped after generation 2 (partial row)."""
    return make_run(tmp_path, stop={("accumulate", 2): 2})


def _row(lb, policy):
    return next(r for r in lb.rows if r.policy == policy)


@pytest.mark.slow
def test_ranking_follows_direction(run):
    exps = load_runs([run])
    order = {m: [r.policy for r in compute.leaderboard(exps, rank_by=m).rows] for m in DIRECTION}
    assert order["perplexity"] == ["human", "accumulate", "replace"]  # lower is better
    assert order["mauve"] == ["human", "replace", "accumulate"]  # higher is better
    # null: closest to human (about 20), though replace's value is the lowest
    assert order["ref_ppl_p50"] == ["human", "accumulate", "replace"]
    lb = compute.leaderboard(exps, rank_by="mauve", columns=["perplexity"])
    assert lb.columns == ["mauve", "perplexity"]  # the ranking metric is always shown
    assert [r.rank for r in lb.rows] == [None, 1, 2]


@pytest.mark.slow
def test_mean_std_n_and_change_from_gen0(run):
    lb = compute.leaderboard(load_runs([run]))
    for policy, seeds in [("replace", SEEDS), ("accumulate", [0, 1])]:
        for m in DIRECTION:
            cell = _row(lb, policy).cells[m]
            final = [value(m, policy, s, GENS) for s in seeds]
            change = [value(m, policy, s, GENS) - value(m, None, s, 0) for s in seeds]
            assert cell.generation == GENS and cell.stat.n == len(seeds)
            assert cell.stat.mean == pytest.approx(np.mean(final))
            assert cell.stat.std == pytest.approx(np.std(final, ddof=1))
            assert cell.stat.std == pytest.approx(statistics.stdev(final))
            assert cell.delta.mean == pytest.approx(np.mean(change))
    human = _row(lb, "human").cells["ref_ppl_p50"].stat
    assert human.mean == pytest.approx(np.mean([20.0, 20.1, 20.2])) and human.n == 3
    assert np.isnan(_row(lb, "human").cells["perplexity"].stat.mean)  # not measured on human


def test_onset_rule_at_the_boundary():
    ppl = {0: 8.0, 1: 10.0, 2: 10.5, 3: 12.0}
    assert onset(ppl, 0.25) == 2  # gen 1 equals 8 * 1.25 exactly: not onset
    assert onset(ppl, 0.5) is None  # gen 3 equals 8 * 1.5: not onset
    assert onset(ppl, 0.49) == 3
    assert onset({1: 50.0}, 0.1) is None  # no generation 0
    assert compute.median_onset([1, 2, None]) == 2
    assert compute.median_onset([1, None, None]) is None  # most seeds never cross
    assert compute.median_onset([]) is None


@pytest.mark.slow
def test_onset_in_the_leaderboard(run):
    lb = compute.leaderboard(load_runs([run]), onset_threshold=0.1)
    assert _row(lb, "replace").onsets == {0: 1, 1: 1, 2: 1}  # 1.2 x gen 0 at gen 1
    assert _row(lb, "accumulate").onsets == {0: None, 1: None, 2: None}  # at most 1.06 x
    header, rows = report_formats.leaderboard_table(lb)
    onset_col = {r[1].split()[0]: r[header.index("onset")] for r in rows}
    assert onset_col == {"human": "–", "replace": "1 (3/3)", "accumulate": "none"}
    lb = compute.leaderboard(load_runs([run]), onset_threshold=0.4)  # gen 2 = 1.4 x exactly
    assert _row(lb, "replace").onsets == {0: 3, 1: 3, 2: 3}


@pytest.mark.slow
def test_partial_rows_are_marked(run, tmp_path):
    lb = compute.leaderboard(load_runs([run]))
    acc = _row(lb, "accumulate")
    assert acc.partial and not _row(lb, "replace").partial
    assert acc.n_final == 2 and acc.finished == {0: 3, 1: 3, 2: 2}
    # replace (3 seeds) against accumulate (2 finished) pairs the 2 seeds both have
    assert _row(lb, "replace").versus["perplexity"].n == 2
    md = report_formats.render_markdown(lb)
    assert "accumulate †" in md and "| 2/3 | 2–3/3 |" in md
    assert "seed 2: finished gen 2; gen 3: train done, generate and measure pending" in md
    # no seed finished the final generation: the latest one is shown and marked
    early = make_run(tmp_path / "early", stop={("replace", s): 1 for s in SEEDS})
    lb = compute.leaderboard(load_runs([early]))
    cell = _row(lb, "replace").cells["mauve"]
    assert cell.generation == 1 and cell.stat.n == 3
    assert "[gen 1, n=3]" in report_formats.render_markdown(lb)
    table = compute.per_generation(load_runs([early]), "mauve")
    assert set(table["replace"]) == {0, 1, "human"}
    assert "…" in report_formats.markdown_table(table)


@pytest.mark.slow
def test_runs_split_over_machines_merge_seeds(tmp_path, run):
    a = make_run(tmp_path / "machine_a", seeds=[0, 1])
    b = make_run(tmp_path / "machine_b", seeds=[2])
    exps = load_runs([a, b])
    assert len(exps) == 1 and exps[0].seeds == [0, 1, 2]
    merged = compute.leaderboard(exps)
    whole = compute.leaderboard(load_runs([make_run(tmp_path / "whole")]))
    for m in DIRECTION:
        assert _row(merged, "replace").cells[m] == _row(whole, "replace").cells[m]
    # another experiment (different config) gets its own rows and human reference
    other = make_run(tmp_path / "other", name="fake-lr", lr=1e-3)
    lb = compute.leaderboard(load_runs([run, other]))
    assert [r.label for r in lb.rows if r.policy == "human"] == ["fake / human",
                                                                "fake-lr / human"]
    assert len(lb.rows) == 6
    # the same name with another config is another setting, not more seeds
    twin = make_run(tmp_path / "twin", lr=1e-3)
    assert [e.key for e in load_runs([run, twin])] == [f"fake ({run})", f"fake ({twin})"]


@pytest.mark.slow
def test_every_format(run, tmp_path):
    out = tmp_path / "out"
    res = report.write_report([run], out=out, histogram_policy="replace")
    names = {p.relative_to(out).as_posix() for p in res["files"]}
    for stem in [*DIRECTION, "ref_ppl_hist_replace"]:
        assert {f"plots/{stem}.png", f"plots/{stem}.pdf"} <= names
    for p in res["files"]:
        assert p.stat().st_size > 0
    assert (out / "plots/perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots/perplexity.pdf").read_bytes()[:5] == b"%PDF-"

    # CSV reads back into the same numbers
    rows = {r["policy"]: r for r in csv.DictReader(io.StringIO((out / "leaderboard.csv")
                                                              .read_text()))}
    assert list(rows) == ["human", "accumulate", "replace"]
    lb = res["leaderboard"]
    for policy in POLICIES:
        for m in DIRECTION:
            cell = _row(lb, policy).cells[m]
            assert float(rows[policy][f"{m}_mean"]) == cell.stat.mean
            assert float(rows[policy][f"{m}_std"]) == cell.stat.std
            assert int(rows[policy][f"{m}_n"]) == cell.stat.n
            assert float(rows[policy][f"{m}_delta_mean"]) == cell.delta.mean
    assert rows["accumulate"]["partial"] == "1" and rows["replace"]["onset_per_seed"] == "1;1;1"
    assert "stride 32" in rows["replace"]["setup"]

    # HTML: the tables, embedded PNGs, no external assets, escaped text
    page = (out / "leaderboard.html").read_text()
    # the leaderboard, its open gaps, then one per-generation table per leaderboard column
    gaps = report_formats.open_gaps(lb)[1]
    assert gaps and page.count('<table class="sortable">') == 2 + len(lb.columns)
    assert re.findall(r"<small>\((\w+)\)</small></h3>", page) == lb.columns
    assert 'src="data:image/png;base64,' in page
    # a line of contents links every section, each to a unique id
    ids = re.findall(r'<h2 id="([^"]+)"', page)
    nav = re.search(r'<nav class="contents">(.*?)</nav>', page).group(1)
    assert re.findall(r'href="#([^"]+)"', nav) == ids and len(set(ids)) == len(ids)
    assert {"leaderboard", "per-generation", "plots", "files"} <= set(ids)
    assert "<figcaption>Perplexity ↓ per generation</figcaption>" in page
    assert "http" not in page.replace('lang="en"', "")
    assert "<script>" in page and "src=\"http" not in page  # sorting, inline, no library
    # headers are display names with their definition on hover, measured how
    assert re.search(r'<th title="[^"]+ \[perplexity\], lower is better\. Measured: ', page)
    # the other files, linked relative to the page (the CSV, LaTeX, PDFs, experiment.json)
    hrefs = re.findall(r'<a href="([^"#][^"]*)">', page)
    assert {"leaderboard.csv", "leaderboard.tex"} <= set(hrefs)
    assert any(h.endswith(".pdf") for h in hrefs) and any(
        h.endswith("experiment.json") for h in hrefs)
    assert all((out / h).exists() for h in hrefs)

    class Cells(HTMLParser):
        tds = 0

        def handle_starttag(self, tag, attrs):
            self.tds += tag == "td"

    parser = Cells()
    parser.feed(page)
    assert parser.tds > 0

    # LaTeX: a booktabs table* (caption, label), rows with the column count, math minus
    tex = (out / "leaderboard.tex").read_text()
    body = [ln for ln in tex.splitlines() if not ln.startswith("%")]
    assert body[0] == r"\begin{table*}[t]" and body[-1] == r"\end{table*}"
    assert any(ln.startswith(r"\caption{Model collapse") and "3 seeds" in ln for ln in body)
    assert r"\label{tab:lmcollapse-" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    tabular = next(ln for ln in body if ln.startswith(r"\begin{tabular}{@{}"))
    ncols = len(tabular[len(r"\begin{tabular}{@{}"):-len("@{}}")])
    rows_tex = [ln for ln in body if ln.endswith(r"\\") and not ln.startswith(r"\caption")]
    assert len(rows_tex) == 1 + 3
    for ln in rows_tex:  # nested header tabulars hold their own line breaks, not columns
        ln = re.sub(r"\\begin\{tabular\}\[b\].*?\\end\{tabular\}", "H", ln)
        assert ln.count("&") - ln.count(r"\&") == ncols - 1, ln
    # display names in the header, direction arrows as math, a math minus in the values
    assert r"Ref\_Ppl\_P50 $\approx$" in tex and r"$\downarrow$" in tex and "$\\pm$" in tex
    assert "($-$" in tex and "(-" not in tex.split(r"\midrule", 1)[1]
    assert all(ord(ch) < 128 for ch in tex)
    if shutil.which("pdflatex"):  # a two-column paper: compiles, nothing sticks out
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass[twocolumn]{article}\\usepackage{booktabs,graphicx}"
                       "\\begin{document}\\input{"
                       f"{(out / 'leaderboard.tex').as_posix()}}}\\end{{document}}\n")
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name],
                              cwd=tmp_path, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout[-2000:]
        assert "Overfull" not in (tmp_path / "doc.log").read_text(errors="replace")

    md = (out / "leaderboard.md").read_text()
    # every key metric's per-generation table, in the leaderboard's column order
    assert re.findall(r"^## Per generation: .* \((\w+)\)$", md, re.M) == lb.columns
    exps = load_runs([run])
    for m in lb.columns:
        assert report_formats.markdown_table(compute.per_generation(exps, m),
                                             compute.generation_marks(exps, m)) in md
    assert "1 seed" not in md and "One seed" not in md
    for fact in ("facebook/opt-125m", "wikitext", "beam search (5 beams)", "stride 32",
                 "seeds**: 0, 1, 2", "gen0 features", "statistics.stdev", "![perplexity]"):
        assert fact in md


@pytest.mark.slow
def test_histograms_for_every_policy_or_the_one_asked(run, tmp_path):
    made = report.write_report([run], out=tmp_path / "all", lineage_prompts=0)["files"]
    hists = sorted(p.name for p in made if p.name.startswith("ref_ppl_hist_"))
    assert hists == sorted(f"ref_ppl_hist_{p}.{x}" for p in POLICIES for x in ("pdf", "png"))
    page = (tmp_path / "all" / "leaderboard.html").read_text()
    assert all(f'alt="ref_ppl_hist_{p}"' in page for p in POLICIES)
    made = report.write_report([run], out=tmp_path / "one", histogram_policy="accumulate",
                               lineage_prompts=0)["files"]
    assert sorted(p.name for p in made if p.name.startswith("ref_ppl_hist_")) == [
        "ref_ppl_hist_accumulate.pdf", "ref_ppl_hist_accumulate.png"]


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs headless Chromium (Debian's chromium package)")
def test_sorting_in_a_browser(tmp_path):
    """The page's own script, run by Chromium: clicking a header sorts by what each cell
    means (values by their number, onset by the median onset with never after every
    generation, gens by the least finished generation), again reverses, cells without a
    value last either way, labels alphabetically (a digit in a name is text)."""
    # accumulate's seed 2 stopped after generation 2; accumulate never crosses the onset
    run = make_run(tmp_path, policies=["top-5", "accumulate", "replace"],
                   stop={("accumulate", 2): 2})
    out = tmp_path / "out"
    lb = report.write_report([run], out=out, plots=False, lineage_prompts=0)["leaderboard"]
    page = (out / "leaderboard.html").read_text()
    header = report_formats.leaderboard_table(lb)[0]
    col = {name: header.index(name) for name in ("#", "gens", "onset")}
    col["policy"], col["mauve"] = 1, 5 + lb.columns.index("mauve")

    def order(*clicks: str) -> list[str]:
        script = "".join(f"document.querySelector('table.sortable thead tr')"
                         f".children[{col[c]}].click();" for c in clicks)
        path = tmp_path / f"sorted_{'_'.join(clicks)}.html"
        path.write_text(page.replace("</body>", f"<script>{script}</script></body>"))
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                              "--dump-dom", path.as_uri()], capture_output=True, text=True,
                             timeout=120).stdout
        table = re.search(r'<table class="sortable">.*?</table>', dom, re.S).group()
        return [re.sub(r"<.*?>", "", cells[1]).split(" †")[0]
                for cells in (re.findall(r"<td[^>]*>(.*?)</td>", tr)
                              for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)) if cells]

    ranked = [r.policy for r in lb.rows]
    onsets = {r.policy: report_formats._onset_text(r) for r in lb.rows}
    assert onsets["accumulate"] == "none" and onsets["replace"].startswith("1 (")
    assert order() == ranked  # as ranked, before any click
    mauve = {r.policy: r.cells["mauve"].stat.mean for r in lb.rows}
    ascending = sorted(mauve, key=mauve.get)
    assert len(set(mauve.values())) == len(mauve) - 1  # top-5 and replace tie: stable
    assert order("mauve") == ascending
    down = order("mauve", "mauve")  # ties keep their order: a stable sort
    assert down == [ascending[-1], *ascending[1:-1], ascending[0]]
    assert order("policy") == sorted(mauve) == ["accumulate", "human", "replace", "top-5"]
    assert order("policy", "policy") == sorted(mauve)[::-1]
    # onset: 1, 1, then never; the human row has none: last both ways
    assert order("onset")[2:] == ["accumulate", "human"]
    assert order("onset", "onset")[0] == "accumulate" and order("onset", "onset")[-1] == "human"
    assert order("gens")[0] == "accumulate" and order("gens")[-1] == "human"  # 2–3/3 first
    assert order("#")[-1] == "human" and order("#", "#")[-1] == "human"


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs headless Chromium (Debian's chromium package)")
def test_page_reflows_on_a_phone(run, tmp_path):
    """In Chromium at a phone and a laptop width: the page never scrolls sideways (wide
    tables scroll in their own box) and the setup list puts labels over values on a phone."""
    report.write_report([run], out=tmp_path, lineage_prompts=0)
    probe = ("<script>var d = document.documentElement; document.body.setAttribute("
             "'data-probe', [getComputedStyle(document.querySelector('dt')).cssFloat, "
             "window.innerWidth, d.scrollWidth].join(','));</script></body>")
    page = tmp_path / "probe.html"
    page.write_text((tmp_path / "leaderboard.html").read_text().replace("</body>", probe))
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    seen = {}
    for width in (390, 1280):
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                              f"--window-size={width},800", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
        dt, inner, scroll = re.search(r'data-probe="([^"]+)"', dom).group(1).split(",")
        assert int(scroll) <= int(inner), (width, inner, scroll)
        seen[width] = dt
    assert seen == {390: "none", 1280: "left"}


@pytest.mark.slow
def test_latex_columns_fewer_by_default_or_chosen(run, tmp_path):
    from types import SimpleNamespace

    fam = {"perplexity": "perplexity", "excess": "ground_truth", "p50": "reference",
           "p99": "reference", "distinct_4": "diversity", "self_bleu": "diversity",
           "mauve": "mauve"}
    lb = SimpleNamespace(columns=list(fam), rank_by="self_bleu",
                         meta={c: {"metric": f} for c, f in fam.items()})
    # the ranking metric first, then the first column of every other metric
    assert report_formats.latex_columns(lb) == ["self_bleu", "perplexity", "excess", "p50",
                                                "mauve"]
    report.write_report([run], out=tmp_path / "a", plots=False, lineage_prompts=0,
                        tex_columns=["mauve"])
    tex = (tmp_path / "a" / "leaderboard.tex").read_text()
    head = next(ln for ln in tex.splitlines() if ln.startswith(r"\#"))
    assert "Perplexity" in head and "Mauve" in head and "Distinct" not in head
    assert run_main(["report", str(run), "--out", str(tmp_path / "b"), "--no-plots",
                     "--tex-columns", "all", "--lineages", "0"]) == 0
    head = next(ln for ln in (tmp_path / "b" / "leaderboard.tex").read_text().splitlines()
                if ln.startswith(r"\#"))
    assert all(f"{m.title().replace('_', chr(92) + '_')} $" in head for m in DIRECTION)


@pytest.mark.slow
def test_cli(run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert run_main(["report", str(run), "--out", str(out), "--no-plots", "--rank-by", "mauve",
                        "--columns", "perplexity,distinct_4", "--metric", "distinct_4"]) == 0
    text = capsys.readouterr().out
    assert "| 1 | replace |" in text and "## Per generation: distinct_4" in text
    assert f"into {out}" in text and not (out / "plots").exists()
    assert {p.name for p in out.iterdir()} == {f"leaderboard.{x}" for x in
                                               ("md", "csv", "tex", "html")} | {
        "collapse_profile.csv"}


def test_bad_input_messages(run, tmp_path, capsys):
    with pytest.raises(ReportError, match=r"not a run directory.*found under .*: .*fake"):
        load_runs([tmp_path])
    with pytest.raises(ReportError, match="does not exist"):
        load_runs([tmp_path / "nope"])
    exps = load_runs([run])
    with pytest.raises(ReportError, match=r"did you mean 'perplexity'\?.*distinct_4"):
        compute.leaderboard(exps, rank_by="perplexty")
    with pytest.raises(ReportError, match="unknown metric 'bleu'"):
        compute.per_generation(exps, "bleu")
    with pytest.raises(ReportError, match=r"unknown policy 'replce'; did you mean 'replace'"):
        report.write_report([run], out=tmp_path / "x", histogram_policy="replce", plots=False)
    assert run_main(["report", str(run), "--columns", "mauve,perplexty", "--no-plots"]) == 2
    assert "did you mean 'perplexity'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "experiment.json").write_text(json.dumps({"experiment": "empty", "config": {}}))
    with pytest.raises(ReportError, match="nothing measured yet"):
        report.write_report([empty], plots=False)


@pytest.mark.slow
def test_report_does_not_import_torch(run, tmp_path):
    code = ("import sys, lmcollapse.report.write, lmcollapse.report.plots; "
            "assert not {'torch', 'transformers'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    # nor does the command line's report command, run to the end
    code = ("import sys; from lmcollapse.cli import run_main; "
            f"assert run_main(['report', {str(run)!r}, '--out', {str(tmp_path / 'o')!r}]) == 0; "
            "assert not {'torch', 'transformers', 'accelerate'} & set(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "o" / "leaderboard.html").is_file()


# --- claims that survive the seed spread ----------------------------------------------------

#: metric -> higher_is_better, as the metric classes declare them (None: closer to human)
SIG_DIRECTION = {"perplexity": False, "ref_ppl_p50": None, "distinct_4": None, "mauve": True}
SIG_POLICIES = ["replace", "mix", "accumulate"]
_E = np.array([0.0, 3.0, -3.0])  # seed effect shared by every policy (pairs the seeds)
_H = 20.0 + np.arange(3.0)  # human ref_ppl_p50 per seed
_RNG = np.random.default_rng(7)
#: metric -> (human per seed, gen 0 per seed, {policy: final generation per seed})
SIG = {
    # mix - accumulate = 2 +- 0.1 on every seed, though both rows spread by 3: a real gap;
    # replace - mix = (1.4, -0.9, 0.15): within the seed noise
    "perplexity": (None, 10 + _E, {"accumulate": 12 + _E,
                                   "mix": 14 + _E + [0.1, -0.1, 0.05],
                                   "replace": 14 + _E + [1.5, -1.0, 0.2]}),
    # distances to human: accumulate 2, 2, 2; mix 2.5, 1.5, 2.1; replace 4, 4, 4.1 (straddles)
    "ref_ppl_p50": (_H, _H + 0.5, {"accumulate": _H + 2.0, "mix": _H - [2.5, 1.5, 2.1],
                                   "replace": _H + [4.0, -4.0, 4.1]}),
    "distinct_4": (0.95 + _RNG.normal(0, 0.01, 3), np.full(3, 0.9),
                   {p: 0.9 + _RNG.normal(0.03 * i, 0.02, 3) for i, p in enumerate(SIG_POLICIES)}),
    "mauve": (np.ones(3), np.full(3, 0.6),
              {p: 0.6 + _RNG.normal(0.1 * i, 0.05, 3) for i, p in enumerate(SIG_POLICIES)}),
}


def sig_value(metric: str, policy: str | None, seed: int, gen: int | None) -> float:
    """Linear from generation 0 to the final value of :data:`SIG`; gen None = human."""
    human, gen0, final = SIG[metric]
    if gen is None:
        return float(human[seed])
    return float(gen0[seed] + (final[policy][seed] - gen0[seed]) * gen / GENS if gen else
                 gen0[seed])


def _sig_run(root: Path, seeds=SEEDS, name: str = "sig") -> Path:
    return make_run(root, seeds=seeds, name=name, policies=SIG_POLICIES, values=sig_value,
                    directions=SIG_DIRECTION)


def _at(metric: str, policy: str, gen: int = GENS) -> np.ndarray:
    return np.array([sig_value(metric, policy, s, gen) for s in SEEDS])


def expected_ranks(metric: str, gen: int = GENS) -> list[tuple[str, float | None]]:
    """Computed here: ``[(policy, p-value against the row above)]``, best first, by the mean of
    the values or, direction None, of |value - human of the same seed|; scipy's ttest_rel."""
    direction = SIG_DIRECTION[metric]
    human = SIG[metric][0]
    score = {p: np.abs(_at(metric, p, gen) - human) if direction is None else _at(metric, p, gen)
             for p in SIG_POLICIES}
    order = sorted(score, key=lambda p: -score[p].mean() if direction else score[p].mean())
    return [(order[0], None)] + [(p, float(stats.ttest_rel(score[p], score[up]).pvalue))
                                 for up, p in zip(order, order[1:], strict=False)]


def _md_rows(md: str) -> dict[str, dict[str, str]]:
    """The first Markdown table: ``{policy: {column (arrow dropped): cell}}``."""
    rows = ("\n" + md).split("\n| ", 1)[1].split("\n\n", 1)[0]  # to the first blank line
    lines = [ln for ln in ("| " + rows).splitlines() if ln.startswith("| ")]
    split = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]
    cols = [c.rsplit(" ", 1)[0] if c[-1] in "↑↓≈" else c for c in split[0]]
    key = cols.index("policy")
    return {r[key]: dict(zip(cols, r, strict=True)) for r in split[1:]}


def _is_marked(cell: str) -> bool:
    return cell.endswith(f" {compute.MARK}")


@pytest.mark.slow
def test_marks_follow_a_paired_test_over_seeds(tmp_path):
    run = _sig_run(tmp_path)
    out = tmp_path / "out"
    res = report.write_report([run], out=out, plots=False)
    md = _md_rows((out / "leaderboard.md").read_text())
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    by_policy = {r["policy"]: r for r in rows}
    # rows follow the ranking metric, computed here
    assert [r["policy"] for r in rows] == ["human"] + [p for p, _ in expected_ranks("perplexity")]
    assert list(md) == ["human"] + [p for p, _ in expected_ranks("perplexity")]
    order = [p for p, _ in expected_ranks("perplexity")]
    for m in SIG_DIRECTION:
        score = {p: (np.abs(_at(m, p) - SIG[m][0]) if SIG_DIRECTION[m] is None else _at(m, p))
                 for p in order}
        # one column is one family: Holm over its comparisons (statsmodels, on scipy's p)
        raw = [stats.ttest_rel(score[p], score[up]).pvalue
               for up, p in zip(order, order[1:], strict=False)]
        adjusted = dict(zip(order[1:], multipletests(raw, method="holm")[1], strict=True))
        for up, p in zip([None, *order], order, strict=False):
            cell, line = md[p][m], by_policy[p]
            if up is None:  # the top row is never compared
                assert not _is_marked(cell) and line[f"{m}_within_noise"] == ""
                continue
            pval, padj = stats.ttest_rel(score[p], score[up]).pvalue, adjusted[p]
            assert float(line[f"{m}_vs_above_p"]) == pytest.approx(pval, rel=1e-9)
            assert float(line[f"{m}_vs_above_p_adj"]) == pytest.approx(padj, rel=1e-9)
            assert int(line[f"{m}_vs_above_family"]) == len(order) - 1
            assert int(line[f"{m}_vs_above_n"]) == 3 and line["above"] == up
            diff = score[p] - score[up]
            assert float(line[f"{m}_vs_above_diff"]) == pytest.approx(np.mean(diff))
            lo, hi = stats.t.interval(0.95, 2, loc=np.mean(diff), scale=stats.sem(diff))
            assert float(line[f"{m}_vs_above_diff_low"]) == pytest.approx(lo)
            assert float(line[f"{m}_vs_above_diff_high"]) == pytest.approx(hi)
            assert _is_marked(cell) == (not padj < 0.05), (m, p, cell, padj)
            assert line[f"{m}_within_noise"] == str(int(not padj < 0.05))
            if not padj < 0.05:  # seeds a paired test needs at 80% power, alpha / family
                effect = abs(np.mean(diff)) / np.std(diff, ddof=1)
                power = TTestPower().power(effect, nobs=np.arange(2, 1001),
                                           alpha=0.05 / (len(order) - 1))
                need = 2 + int(np.argmax(power >= 0.8)) if (power >= 0.8).any() else None
                assert line[f"{m}_seeds_needed"] == ("" if need is None else str(need))
            lo, hi = stats.t.interval(0.95, 2, loc=np.mean(score[p] if SIG_DIRECTION[m]
                                                           is not None else _at(m, p)),
                                      scale=stats.sem(_at(m, p)))
            assert float(line[f"{m}_ci_low"]) == pytest.approx(lo)
            assert float(line[f"{m}_ci_high"]) == pytest.approx(hi)
    # the designed pairs: a consistent gap smaller than the spread over seeds is real ...
    acc, mix, rep = (_at("perplexity", p) for p in ("accumulate", "mix", "replace"))
    assert float(by_policy["mix"]["perplexity_vs_above_p_adj"]) < 0.05
    assert np.mean(mix - acc) < min(np.std(mix, ddof=1), np.std(acc, ddof=1))
    assert not _is_marked(md["mix"]["perplexity"])
    assert by_policy["mix"]["perplexity_within_noise"] == "0"
    # ... and a gap below the seed noise is marked
    assert _is_marked(md["replace"]["perplexity"])
    assert by_policy["replace"]["perplexity_within_noise"] == "1"
    assert np.mean(rep - mix) > 0 and np.std(rep - mix, ddof=1) > np.mean(rep - mix)
    # LaTeX raises the mark, HTML greys the cell: the same cells in every format
    n_marks = sum(_is_marked(c) for r in md.values() for c in r.values())
    tex_rows = (out / "leaderboard.tex").read_text().split("\\midrule", 1)[1]  # not the caption
    assert n_marks >= 2 and tex_rows.count("$^{\\sim}$") == n_marks
    page = (out / "leaderboard.html").read_text().split('<h2 id="per-generation">')[0]
    assert page.count('<td class="noise"') == n_marks
    # the rule is stated under the table
    text = res["markdown"]
    assert f"{compute.MARK} = gap to the row directly above" in text
    assert "corrected together (Holm; family: each column of each experiment" in text
    assert "corrected p ≥ 0.05" in text and "Comparisons per family: each column: 2." in text
    # each open gap names the seeds that would settle it
    opened = [p for p in order[1:] if by_policy[p]["perplexity_within_noise"] == "1"]
    for p in opened:
        assert (f"| {p} | {by_policy[p]['above']} | perplexity | "
                f"{float(by_policy[p]['perplexity_vs_above_diff']):+.3g} |") in text
        assert f"| about {by_policy[p]['perplexity_seeds_needed']} |" in text


@pytest.mark.slow
def test_closer_to_human_ranks_and_marks_by_distance(tmp_path):
    lb = compute.leaderboard(load_runs([_sig_run(tmp_path)]), rank_by="ref_ppl_p50")
    expected = expected_ranks("ref_ppl_p50")
    assert [r.policy for r in lb.rows[1:]] == [p for p, _ in expected]
    assert [p for p, _ in expected] == ["accumulate", "mix", "replace"]
    # the distance of the mean would have put replace (straddling human) first
    raw = {p: abs(_at("ref_ppl_p50", p).mean() - _H.mean()) for p in SIG_POLICIES}
    assert min(raw, key=raw.get) == "replace"
    md = _md_rows(report_formats.render_markdown(lb))
    for p, pval in expected[1:]:
        assert _row(lb, p).versus["ref_ppl_p50"].p == pytest.approx(pval, rel=1e-9)
        assert _is_marked(md[p]["ref_ppl_p50"]) == (not pval < 0.05)
    # and the raw values would have given the opposite marks
    assert _is_marked(md["mix"]["ref_ppl_p50"]) and not _is_marked(md["replace"]["ref_ppl_p50"])
    raw_p = {p: stats.ttest_rel(_at("ref_ppl_p50", p), _at("ref_ppl_p50", up)).pvalue
             for up, p in [("accumulate", "mix"), ("mix", "replace")]}
    assert raw_p["mix"] < 0.05 <= raw_p["replace"]
    # a None-direction column beside another ranking metric is compared by distance too
    lb = compute.leaderboard(load_runs([tmp_path / "sig"]), rank_by="perplexity")
    dist = {p: np.abs(_at("ref_ppl_p50", p) - _H) for p in SIG_POLICIES}
    v = _row(lb, "replace").versus["ref_ppl_p50"]
    assert v.above == "mix" and v.diff == pytest.approx(np.mean(dist["replace"] - dist["mix"]))
    assert v.p == pytest.approx(stats.ttest_rel(dist["replace"], dist["mix"]).pvalue)
    header = report_formats.leaderboard_table(lb)[0]
    assert {"ref_ppl_p50 ≈", "distinct_4 ≈", "perplexity ↓", "mauve ↑"} <= set(header)


@pytest.mark.slow
def test_per_generation_table_marks_each_generation(tmp_path, capsys):
    run = _sig_run(tmp_path)
    exps = load_runs([run])
    for m in SIG_DIRECTION:
        table = compute.per_generation(exps, m)
        marks = compute.generation_marks(exps, m)
        assert list(table) == [p for p, _ in expected_ranks(m)]
        order = list(table)
        md = _md_rows(report_formats.markdown_table(table, marks))
        found = []  # the table is one family: every row against the one above, every gen
        for g in range(1, GENS + 1):
            human = SIG[m][0]
            score = {p: np.abs(_at(m, p, g) - human) if SIG_DIRECTION[m] is None else _at(m, p, g)
                     for p in order}
            for up, p in zip(order, order[1:], strict=False):
                pval = stats.ttest_rel(score[p], score[up]).pvalue
                assert marks[p][g].p == pytest.approx(pval, rel=1e-9, nan_ok=True)
                found.append((p, g, pval))
        ok = [f for f in found if np.isfinite(f[2])]
        adjusted = multipletests([f[2] for f in ok], method="holm")[1]
        for (p, g, _), padj in zip(ok, adjusted, strict=True):
            assert marks[p][g].p_adj == pytest.approx(padj, rel=1e-9)
            assert _is_marked(md[p][f"gen {g}"].split(" (n=")[0]) == (not padj < 0.05)
        assert not any(_is_marked(c) for c in md[order[0]].values())  # the top row
        assert not any(_is_marked(md[p]["gen 0"]) for p in order)  # generation 0 is shared
        for p in order:
            cells = [table[p][g] for g in range(GENS + 1)]
            assert [c.n for c in cells] == [3] * (GENS + 1)
            assert cells[-1].std == pytest.approx(np.std(_at(m, p), ddof=1))
    assert run_main(["report", str(run), "--no-plots", "--out", str(tmp_path / "o"),
                        "--metric", "perplexity"]) == 0
    text = capsys.readouterr().out
    gen_part = text.split("## Per generation: perplexity")[1]
    assert "± " in gen_part and "every row against the row above, at every generation" in gen_part
    gen_rows = _md_rows(gen_part)  # shared generation 0, no human perplexity
    assert gen_rows["replace"]["gen 0"] == "10.00 ± 3.00" and gen_rows["replace"]["human"] == "–"
    assert _is_marked(gen_rows["replace"][f"gen {GENS}"])
    assert not _is_marked(gen_rows["mix"][f"gen {GENS}"])


def test_one_seed_says_so(tmp_path):
    out = tmp_path / "out"
    res = report.write_report([_sig_run(tmp_path, seeds=[0])], out=out, plots=False)
    md = (out / "leaderboard.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert "1 seed: no spread, no significance marks;" in md
    assert "±" not in "\n".join(table) and "mean ± sample std" not in md
    assert not any(_is_marked(c) for r in _md_rows(md).values() for c in r.values())
    assert "ttest" not in md
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert all(r[f"{m}_within_noise"] == "" for r in rows for m in SIG_DIRECTION)
    gen = report_formats.markdown_table(res["generation_table"], res["generation_marks"])
    assert "±" not in gen and res["generation_marks"] == {}
    html_page = (out / "leaderboard.html").read_text()
    assert html_page.count("1 seed: no spread, no significance marks;") == 2
    # said up front, in both documents, instead of promising ± and bands
    notice = report_formats.one_seed_notice(res["leaderboard"])
    assert notice.startswith("One seed:") and md.startswith(
        f"# lmcollapse leaderboard: sig\n\n> {notice}\n")
    assert f'<p class="notice">{notice}</p>' in html_page
    tables = re.findall(r"<table.*?</table>", html_page, re.S)
    # the leaderboard, a per-generation table per column, the collapse profile
    assert len(tables) == 1 + len(res["leaderboard"].columns) + 1
    assert not any("±" in t for t in tables)
    # one experiment with one seed beside one with three: the caveat names it
    many = tmp_path / "many"
    lb = compute.leaderboard(load_runs([_sig_run(many, seeds=[0], name="single"),
                                       _sig_run(many, name="triple")]))
    text = "\n".join(report_formats.notes(lb))
    assert "1 seed: no spread, no significance marks (single);" in text
    assert "gap to the row directly above" in text
    assert not any(r.versus for r in lb.rows if r.experiment.name == "single")
    # rows of the two experiments interleave; each compares with its own experiment's row above
    triple = [r for r in lb.rows if r.experiment.name == "triple" and r.rank]
    assert [r.rank for r in triple] != [1, 2, 3] and not triple[0].versus
    assert [r.versus["perplexity"].above for r in triple[1:]] == [r.label for r in triple[:-1]]


def test_plot_band_over_seeds(tmp_path, monkeypatch):
    from matplotlib.collections import PolyCollection

    from lmcollapse.report import plots

    seen = {}

    def save(fig, stem):
        ax = fig.axes[0]
        seen[stem.name] = {
            "xlabel": ax.get_xlabel(),
            "bands": [c.get_paths()[0].vertices for c in ax.collections
                      if isinstance(c, PolyCollection)],
            "dashed": [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--"]}
        return []

    monkeypatch.setattr(plots, "_save", save)
    for seeds, name in [(SEEDS, "three"), ([0], "one")]:
        exps = load_runs([_sig_run(tmp_path / name, seeds=seeds)])
        series = {p: {g: s for g, s in row.items() if g != "human"}
                  for p, row in compute.per_generation(exps, "ref_ppl_p50").items()}
        plots.metric_plot(series, {"human": exps[0].human("ref_ppl_p50").mean}, "t", "y",
                          tmp_path / name)
    three, one = seen["three"], seen["one"]
    assert "band: mean ± sample std over 3 seeds" in three["xlabel"]
    assert len(three["bands"]) == 3 and not one["bands"]
    assert one["xlabel"] == "generation (1 seed: no spread, no band)"
    assert three["dashed"] == [pytest.approx(_H.mean())] and one["dashed"] == [20.0]
    # the band of the first line (best first) spans mean - std .. mean + std per generation
    first = list(compute.per_generation(load_runs([tmp_path / "three" / "sig"]), "ref_ppl_p50"))[0]
    ys = np.array([[sig_value("ref_ppl_p50", first, s, g) for s in SEEDS] for g in range(GENS + 1)])
    band = three["bands"][0]
    for lo_hi in (ys.mean(1) - ys.std(1, ddof=1), ys.mean(1) + ys.std(1, ddof=1)):
        assert all(np.isclose(band[:, 1], y).any() for y in lo_hi)


@pytest.mark.parametrize("damage", ["delete", "empty", "malformed"])
def test_a_lost_record_is_named_and_left_out_of_every_pair(tmp_path, capsys, damage):
    """A metrics.json deleted, emptied or malformed: the report and compare say which seed
    each value leaves out and why, and pair (and average) only the seeds present."""
    run = make_run(tmp_path)
    for d in (run / "seed_2" / "gen_00", run / "seed_1" / "replace" / "gen_03"):
        path = d / "metrics.json"
        {"delete": path.unlink, "empty": lambda p=path: p.write_text(""),
         "malformed": lambda p=path: p.write_text('{"seed": 1, "values": ')}[damage]()
    lb = compute.leaderboard(load_runs([run]))
    acc, rep = _row(lb, "accumulate"), _row(lb, "replace")
    # accumulate: seed 2's value stands, its change (no generation 0) is over seeds 0 and 1
    ppl = acc.cells["perplexity"]
    assert ppl.stat.n == 3 and ppl.delta.n == 2
    assert ppl.delta.mean == pytest.approx(statistics.fmean(
        value("perplexity", "accumulate", s, GENS) - value("perplexity", None, s, 0)
        for s in (0, 1)))
    why = "is missing (measured: measure.done is there)" if damage == "delete" else \
        "not readable JSON"
    note = next(n for n in acc.notes if n.startswith("accumulate seed 2: left out of the change"))
    assert "(every column)" in note and "generation 0: " in note and why in note
    # replace: seed 1's final generation is gone: the row is partial and says why
    assert rep.n_final == 2 and rep.partial
    note = next(n for n in rep.notes if n.startswith("replace seed 1:"))
    assert "finished gen 2; generation 3: " in note and why in note
    md = report_formats.render_markdown(lb)
    assert "accumulate seed 2: left out of the change" in md and "replace seed 1:" in md
    # compare: each test pairs the seeds both sides have, and names the others
    assert run_main(["compare", str(run), "--pair", "replace", "accumulate", "--metrics",
                     "perplexity", "--change"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| perplexity"))
    both = [0]  # replace lacks seed 1 (final), both sides lack seed 2 (generation 0)
    mean_a = statistics.fmean(value("perplexity", "replace", s, GENS)
                              - value("perplexity", None, s, 0) for s in both)
    assert f"| {mean_a:.4g} |" in row and "| 1/1 |" in row  # B < A on 1 of 1 pair
    assert f"perplexity, replace vs accumulate: seed 1 left out; replace generation 3: " \
           f"{run}/seed_1/replace/gen_03/metrics.json" in out
    assert "seed 2 left out; replace's base generation 0: " in out and \
        "accumulate's base generation 0: " in out
