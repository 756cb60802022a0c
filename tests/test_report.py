"""Report on fake run directories with known metrics: ranking, statistics, onset, formats."""

from __future__ import annotations

import csv
import io
import json
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

from lmcollapse import report, report_formats
from lmcollapse.report import ReportError, load_runs, onset

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


def _write_cell(d: Path, seed: int, policy: str | None, gen: int | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    metrics = [m for m in DIRECTION if not (gen is None and m == "perplexity")]
    rec = {"seed": seed, "policy": policy, "generation": gen,
           "values": {m: value(m, policy, seed, gen) for m in metrics},
           "meta": {m: {"metric": m, "display_name": m.title(), "higher_is_better": DIRECTION[m]}
                    for m in metrics},
           "details": {"perplexity": {"max_length": 64, "stride": 32, "test_tokens": 999},
                       "mauve": {"featurizer": "gen0", "n_p": 50, "n_q": 50}},
           "elapsed_s": {}}
    (d / "metrics.json").write_text(json.dumps(rec))
    for step in ("train", "generate", "measure"):
        (d / f"{step}.done").touch()
    rng = np.random.default_rng(seed * 10 + (gen or 9))
    scores = rng.lognormal(np.log(10 + 3 * (gen or 0)), 0.4, 200)
    pq.write_table(pa.table({"sample_id": [str(i) for i in range(200)], "perplexity": scores}),
                   d / "reference_scores.parquet")


def make_run(root: Path, seeds=SEEDS, name: str = "fake", stop: dict | None = None,
             lr: float = 1e-4) -> Path:
    """A run directory; ``stop[(policy, seed)] = k`` ends that cell after generation k,
    with generation k + 1 trained but not generated or measured."""
    run = root / name
    config = {"experiment": name, "seeds": list(seeds), "generations": GENS,
              "policies": [{"name": p, "label": None} for p in POLICIES],
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
        {"experiment": name, "config": config, "seeds": list(seeds), "policies": POLICIES,
         "git_sha": "abc123", "device": "cpu", "versions": {"torch": "x"}}))
    for s in seeds:
        _write_cell(run / f"seed_{s}" / "human", s, "human", None)
        _write_cell(run / f"seed_{s}" / "gen_00", s, None, 0)
        for p in POLICIES:
            last = (stop or {}).get((p, s), GENS)
            for k in range(1, last + 1):
                _write_cell(run / f"seed_{s}" / p / f"gen_{k:02d}", s, p, k)
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


def test_ranking_follows_direction(run):
    exps = load_runs([run])
    order = {m: [r.policy for r in report.leaderboard(exps, rank_by=m).rows] for m in DIRECTION}
    assert order["perplexity"] == ["human", "accumulate", "replace"]  # lower is better
    assert order["mauve"] == ["human", "replace", "accumulate"]  # higher is better
    # null: closest to human (about 20), though replace's value is the lowest
    assert order["ref_ppl_p50"] == ["human", "accumulate", "replace"]
    lb = report.leaderboard(exps, rank_by="mauve", columns=["perplexity"])
    assert lb.columns == ["mauve", "perplexity"]  # the ranking metric is always shown
    assert [r.rank for r in lb.rows] == [None, 1, 2]


def test_mean_std_n_and_change_from_gen0(run):
    lb = report.leaderboard(load_runs([run]))
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
    assert report.median_onset([1, 2, None]) == 2
    assert report.median_onset([1, None, None]) is None  # most seeds never cross
    assert report.median_onset([]) is None


def test_onset_in_the_leaderboard(run):
    lb = report.leaderboard(load_runs([run]), onset_threshold=0.1)
    assert _row(lb, "replace").onsets == {0: 1, 1: 1, 2: 1}  # 1.2 x gen 0 at gen 1
    assert _row(lb, "accumulate").onsets == {0: None, 1: None, 2: None}  # at most 1.06 x
    header, rows = report_formats.leaderboard_table(lb)
    onset_col = {r[1].split()[0]: r[header.index("onset")] for r in rows}
    assert onset_col == {"human": "–", "replace": "1 (3/3)", "accumulate": "none"}
    lb = report.leaderboard(load_runs([run]), onset_threshold=0.4)  # gen 2 = 1.4 x exactly
    assert _row(lb, "replace").onsets == {0: 3, 1: 3, 2: 3}


def test_partial_rows_are_marked(run, tmp_path):
    lb = report.leaderboard(load_runs([run]))
    acc = _row(lb, "accumulate")
    assert acc.partial and not _row(lb, "replace").partial
    assert acc.n_final == 2 and acc.finished == {0: 3, 1: 3, 2: 2}
    md = report_formats.render_markdown(lb)
    assert "accumulate †" in md and "| 2/3 | 2–3/3 |" in md
    assert "seed 2: finished gen 2; gen 3: train done, generate and measure pending" in md
    # no seed finished the final generation: the latest one is shown and marked
    early = make_run(tmp_path / "early", stop={("replace", s): 1 for s in SEEDS})
    lb = report.leaderboard(load_runs([early]))
    cell = _row(lb, "replace").cells["mauve"]
    assert cell.generation == 1 and cell.stat.n == 3
    assert "[gen 1, n=3]" in report_formats.render_markdown(lb)
    table = report.per_generation(load_runs([early]), "mauve")
    assert set(table["replace"]) == {0, 1, "human"}
    assert "…" in report_formats.markdown_table(table)


def test_runs_split_over_machines_merge_seeds(tmp_path, run):
    a = make_run(tmp_path / "machine_a", seeds=[0, 1])
    b = make_run(tmp_path / "machine_b", seeds=[2])
    exps = load_runs([a, b])
    assert len(exps) == 1 and exps[0].seeds == [0, 1, 2]
    merged = report.leaderboard(exps)
    whole = report.leaderboard(load_runs([make_run(tmp_path / "whole")]))
    for m in DIRECTION:
        assert _row(merged, "replace").cells[m] == _row(whole, "replace").cells[m]
    # another experiment (different config) gets its own rows and human reference
    other = make_run(tmp_path / "other", name="fake-lr", lr=1e-3)
    lb = report.leaderboard(load_runs([run, other]))
    assert [r.label for r in lb.rows if r.policy == "human"] == ["fake / human",
                                                                "fake-lr / human"]
    assert len(lb.rows) == 6
    # the same name with another config is another setting, not more seeds
    twin = make_run(tmp_path / "twin", lr=1e-3)
    assert [e.key for e in load_runs([run, twin])] == [f"fake ({run})", f"fake ({twin})"]


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
    assert page.count("<table>") == 2 and 'src="data:image/png;base64,' in page
    assert "http" not in page.replace('lang="en"', "")

    class Cells(HTMLParser):
        tds = 0

        def handle_starttag(self, tag, attrs):
            self.tds += tag == "td"

    parser = Cells()
    parser.feed(page)
    assert parser.tds > 0

    # LaTeX: a tabular fragment whose rows all have the column count
    tex = (out / "leaderboard.tex").read_text()
    body = [ln for ln in tex.splitlines() if not ln.startswith("%")]
    assert body[0].startswith(r"\begin{tabular}{") and body[-1] == r"\end{tabular}"
    ncols = len(body[0][len(r"\begin{tabular}{"):-1])
    rows_tex = [ln for ln in body if ln.endswith(r"\\")]
    assert len(rows_tex) == 1 + 3
    for ln in rows_tex:
        assert ln.count("&") - ln.count(r"\&") == ncols - 1
    assert r"$\downarrow$" in tex and r"ref\_ppl\_p50" in tex and "$\\pm$" in tex
    assert all(ord(ch) < 128 for ch in tex)
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass{article}\\begin{document}\\input{"
                       f"{(out / 'leaderboard.tex').as_posix()}}}\\end{{document}}\n")
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name],
                              cwd=tmp_path, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout[-2000:]

    md = (out / "leaderboard.md").read_text()
    for fact in ("facebook/opt-125m", "wikitext", "beam search (5 beams)", "stride 32",
                 "seeds**: 0, 1, 2", "gen0 features", "statistics.stdev", "![perplexity]"):
        assert fact in md


def test_cli(run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert report.main([str(run), "--out", str(out), "--no-plots", "--rank-by", "mauve",
                        "--columns", "perplexity,distinct_4", "--metric", "distinct_4"]) == 0
    text = capsys.readouterr().out
    assert "| 1 | replace |" in text and "## Per generation: distinct_4" in text
    assert f"into {out}" in text and not (out / "plots").exists()
    assert {p.name for p in out.iterdir()} == {f"leaderboard.{x}" for x in
                                               ("md", "csv", "tex", "html")}


def test_bad_input_messages(run, tmp_path, capsys):
    with pytest.raises(ReportError, match=r"not a run directory.*found under .*: .*fake"):
        load_runs([tmp_path])
    with pytest.raises(ReportError, match="does not exist"):
        load_runs([tmp_path / "nope"])
    exps = load_runs([run])
    with pytest.raises(ReportError, match=r"did you mean 'perplexity'\?.*distinct_4"):
        report.leaderboard(exps, rank_by="perplexty")
    with pytest.raises(ReportError, match="unknown metric 'bleu'"):
        report.per_generation(exps, "bleu")
    with pytest.raises(ReportError, match=r"unknown policy 'replce'; did you mean 'replace'"):
        report.write_report([run], out=tmp_path / "x", histogram_policy="replce", plots=False)
    assert report.main([str(run), "--columns", "mauve,perplexty", "--no-plots"]) == 2
    assert "did you mean 'perplexity'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "experiment.json").write_text(json.dumps({"experiment": "empty", "config": {}}))
    with pytest.raises(ReportError, match="nothing measured yet"):
        report.write_report([empty], plots=False)


def test_report_does_not_import_torch():
    code = ("import sys, lmcollapse.report, lmcollapse.plots; "
            "assert not {'torch', 'transformers'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
