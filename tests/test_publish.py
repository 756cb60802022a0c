"""Publishing: a run exported as one results file, read back into the same report, merged
with another team's results of the same protocol into one leaderboard, and every bad file
refused in one line naming the file and the field (exit 2)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import tiny_config

from lmcollapse.cli import run_main
from lmcollapse.loop import CollapseLoop
from lmcollapse.publish.export import export
from lmcollapse.report.results import (
    NOT_PROTOCOL,
    digest,
    protocol_hash,
    read_document,
    seal,
)

pytestmark = pytest.mark.slow

#: a cell's numbers in leaderboard.csv: what must be equal wherever the cell is shown
NUMBERS = ("mean", "std", "n", "delta_mean", "delta_std", "generation", "bootstrap")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two teams under one protocol: A runs replace and mix-0.1, B only its own accumulate
    (separate run directories, same config otherwise), each exported."""
    root = tmp_path_factory.mktemp("publish")
    out = {}
    for name, policies in (("a", "[replace, {name: mix, fraction: 0.1, label: mix-0.1}]"),
                           ("b", "[accumulate]")):
        cfg = tiny_config(root / name, f"policies={policies}", "generations=1")
        CollapseLoop(cfg).run()
        out[name] = (cfg.run_dir, export(cfg.run_dir))
    return out


def _csv(path: Path) -> dict[str, dict[str, str]]:
    return {r["policy"]: r for r in csv.DictReader(io.StringIO(path.read_text()))}


def _cells(row: dict[str, str]) -> dict[str, str]:
    """A row's own numbers (not its comparison with the row above, which depends on the
    other rows)."""
    return {k: v for k, v in row.items() if k.endswith(NUMBERS) and "vs_above" not in k}


def _without_source(text: str, *sources: str) -> str:
    for s in sources:
        text = text.replace(s, "SOURCE")
    return text


def test_a_report_from_the_export_equals_the_report_from_the_run(runs, tmp_path):
    """Every file the report writes is the same from the run directory and from its results
    file, but for where it says it read them from (the text of the corpora is not in a
    results file, so both are asked for no lineages)."""
    run, results = runs["a"]
    assert results == run / "results.json"
    assert run_main(["report", str(run), "--out", str(tmp_path / "run"), "--lineages", "0"]) == 0
    assert run_main(["report", str(results), "--out", str(tmp_path / "file"),
                     "--lineages", "0"]) == 0
    made = sorted(p.relative_to(tmp_path / "run") for p in (tmp_path / "run").rglob("*")
                  if p.is_file())
    assert made == sorted(p.relative_to(tmp_path / "file")
                          for p in (tmp_path / "file").rglob("*") if p.is_file())
    assert {"leaderboard.csv", "early_warning.csv", "collapse_profile.csv"} <= {
        p.name for p in made}
    for rel in made:
        a, b = (tmp_path / "run" / rel).read_bytes(), (tmp_path / "file" / rel).read_bytes()
        if rel.suffix in (".md", ".csv", ".tex", ".html"):  # "dirs:" and the source link
            a = _without_source(a.decode(), os.path.relpath(run / "experiment.json",
                                                            tmp_path / "run"), str(run))
            b = _without_source(b.decode(), os.path.relpath(results, tmp_path / "file"),
                                str(results))
        assert a == b, rel


def test_the_results_file_holds_protocol_rows_digests_and_provenance(runs):
    run, results = runs["a"]
    doc = read_document(results)
    config = json.loads((run / "experiment.json").read_text())["config"]
    assert set(doc["protocol"]) == set(config) - set(NOT_PROTOCOL)
    assert doc["protocol"]["seeds"] == config["seeds"] and doc["protocol"]["train"] == config[
        "train"]
    assert doc["protocol_sha256"] == protocol_hash(doc["protocol"])
    assert doc["cells"] == ["replace", "mix-0.1"] and doc["seeds"] == [0]
    # every metrics.json of the run, as written, with the digests its folder recorded
    files = sorted(run.glob("seed_*/**/metrics.json"))
    assert len(doc["rows"]) == len(files)
    for row, path in zip(sorted(doc["rows"], key=lambda r: r["dir"]), files, strict=True):
        assert row["dir"] == path.parent.relative_to(run).as_posix()
        assert row["metrics"] == json.loads(path.read_text())
        manifest = [json.loads(line) for line in (path.parent / ".checksums.jsonl").open()]
        assert row["files"] == {e["name"]: e["sha256"] for e in manifest}
        for name, cols in row["samples"].items():  # the per-sample values the report reads
            import pyarrow.parquet as pq

            table = pq.read_table(path.parent / name).to_pydict()
            assert all(cols[c] == pytest.approx(table[c]) for c in cols)
            assert row["sample_sha256"][name] == row["files"][name]
    assert any(r["samples"] for r in doc["rows"])
    assert doc["versions"]["torch"] and doc["lmcollapse"]["version"]
    assert doc["hardware"]["device"] == "cpu" and doc["wall"]["steps"] > 0
    assert doc["hardware"]["cpu_count"] == os.cpu_count() and doc["hardware"]["platform"]
    assert doc["hardware"]["gpus"] == []  # this machine has none
    assert doc["content_sha256"] == digest({k: v for k, v in doc.items()
                                            if k != "content_sha256"})


def test_a_policy_author_runs_one_cell_and_merges(runs, tmp_path):
    """B ran only its own cell under A's protocol; the leaderboard from both files has all
    three cells, and the cells A published show exactly the numbers A's own report shows."""
    (run_a, file_a), (_, file_b) = runs["a"], runs["b"]
    assert read_document(file_a)["protocol_sha256"] == read_document(file_b)["protocol_sha256"]
    assert run_main(["report", str(run_a), "--out", str(tmp_path / "a"), "--no-plots"]) == 0
    assert run_main(["leaderboard", str(file_a), str(file_b), "--out", str(tmp_path / "lb"),
                     "--no-plots"]) == 0
    own, merged = _csv(tmp_path / "a" / "leaderboard.csv"), _csv(
        tmp_path / "lb" / "leaderboard.csv")
    assert set(merged) == {"human", "replace", "mix-0.1", "accumulate"}
    for cell in ("human", "replace", "mix-0.1"):
        assert _cells(merged[cell]) == _cells(own[cell]), cell
    # generation 0 is shared: B's is A's (same seed, same data, same machine), no note
    assert "differs" not in (tmp_path / "lb" / "leaderboard.md").read_text()
    # B's own report shows its cell as the leaderboard does
    run_b = runs["b"][0]
    assert run_main(["report", str(run_b), "--out", str(tmp_path / "b"), "--no-plots"]) == 0
    assert _cells(_csv(tmp_path / "b" / "leaderboard.csv")["accumulate"]) == _cells(
        merged["accumulate"])
    assert any(v for k, v in _cells(merged["accumulate"]).items() if k.endswith("delta_mean"))

    def other_machine(doc):  # B's generation 0 measured elsewhere: other last digits
        for r in doc["rows"]:
            if r["metrics"]["policy"] is None and r["metrics"]["generation"] == 0:
                r["metrics"]["values"]["perplexity"] *= 1.01

    moved = _rewrite(file_b, tmp_path / "b_elsewhere.json", other_machine)
    assert run_main(["leaderboard", str(file_a), str(moved), "--out", str(tmp_path / "lb2"),
                     "--no-plots"]) == 0
    assert run_main(["report", str(moved), "--out", str(tmp_path / "b2"), "--no-plots"]) == 0
    again = _csv(tmp_path / "lb2" / "leaderboard.csv")
    for cell in ("human", "replace", "mix-0.1"):  # A's cells: A's generation 0
        assert _cells(again[cell]) == _cells(own[cell]), cell
    # B's cell is measured from its own generation 0, as B's own report measures it
    assert _cells(again["accumulate"]) == _cells(
        _csv(tmp_path / "b2" / "leaderboard.csv")["accumulate"])
    assert again["accumulate"]["perplexity_delta_mean"] != merged["accumulate"][
        "perplexity_delta_mean"]
    merged_md = (tmp_path / "lb2" / "leaderboard.md").read_text()
    assert "- **merged**: seed 0: the generation 0 of" in merged_md
    assert "Skipped" not in merged_md


def _rewrite(src: Path, dst: Path, change, reseal: bool = True) -> Path:
    doc = json.loads(src.read_text())
    change(doc)
    dst.write_text(json.dumps(seal(doc) if reseal else doc))
    return dst


def _refused(capsys, argv: list[str], *words: str) -> str:
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_bad_results_files_are_refused_naming_file_and_field(runs, tmp_path, capsys):
    _, good = runs["a"]

    def tamper(doc):
        doc["rows"][-1]["metrics"]["values"]["perplexity"] = 1.0

    bad = _rewrite(good, tmp_path / "tampered.json", tamper, reseal=False)
    _refused(capsys, ["leaderboard", str(bad)], str(bad), "content_sha256")
    _refused(capsys, ["report", str(bad)], str(bad), "content_sha256")

    newer = _rewrite(good, tmp_path / "newer.json", lambda d: d.update(schema=2))
    _refused(capsys, ["leaderboard", str(newer)], str(newer), "schema", "newer")

    def drop_cell(doc):
        doc["rows"] = [r for r in doc["rows"] if r["metrics"]["policy"] != "mix-0.1"]

    missing = _rewrite(good, tmp_path / "missing.json", drop_cell)
    _refused(capsys, ["leaderboard", str(missing)], str(missing), "rows", "'mix-0.1'")

    def other_lr(doc):
        doc["protocol"]["train"]["lr"] = 0.5

    forged = _rewrite(good, tmp_path / "forged.json", other_lr)
    _refused(capsys, ["leaderboard", str(forged)], str(forged), "protocol_sha256")

    def other_protocol(doc):
        other_lr(doc)
        doc["protocol_sha256"] = protocol_hash(doc["protocol"])

    other = _rewrite(good, tmp_path / "other.json", other_protocol)
    _refused(capsys, ["leaderboard", str(good), str(other)], str(other), "protocol.train.lr")
    # asked for, each protocol gets its own leaderboard
    assert run_main(["leaderboard", str(good), str(other), "--by-protocol", "--no-plots",
                     "--out", str(tmp_path / "both")]) == 0
    assert len(list((tmp_path / "both").glob("*/leaderboard.csv"))) == 2

    def conflicting(doc):  # the same cell name with other numbers: two results, one name
        for r in doc["rows"]:
            if r["metrics"]["policy"] == "replace":
                r["metrics"]["values"]["perplexity"] += 1.0

    clash = _rewrite(good, tmp_path / "clash.json", conflicting)
    _refused(capsys, ["leaderboard", str(good), str(clash)], str(clash), "cells",
             "'replace'")
    (tmp_path / "notjson.json").write_text("{")
    _refused(capsys, ["leaderboard", str(tmp_path / "notjson.json")], "notjson.json", "file")


def test_an_unfinished_or_changed_run_is_not_exported(runs, tmp_path, capsys):
    run, _ = runs["a"]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    gen1 = next(copy.glob("seed_0/replace/gen_01"))
    (gen1 / "metrics.json").unlink()
    _refused(capsys, ["export", str(copy), "-o", str(tmp_path / "r.json")], "rows",
             "'replace'", "generation 1")
    assert not (tmp_path / "r.json").exists()
    shutil.rmtree(copy)
    shutil.copytree(run, copy)
    corpus = next(copy.glob("seed_0/replace/gen_01/corpus.parquet"))
    corpus.write_bytes(corpus.read_bytes()[:-8] + b"12345678")
    _refused(capsys, ["export", str(copy), "-o", str(tmp_path / "r.json")], "corpus.parquet",
             "changed")
    assert not (tmp_path / "r.json").exists()


def test_a_static_site_and_a_datasets_folder_from_the_results(runs, tmp_path):
    """The site: an index and one folder per protocol with its leaderboard (the merged
    one), its protocol and copies of its results files. The datasets folder: what
    datasets.load_dataset reads locally is every value of every results file."""
    from datasets import load_dataset

    from lmcollapse.publish.dataset import write_dataset
    from lmcollapse.report.site import write_site

    (_, file_a), (_, file_b) = runs["a"], runs["b"]
    pages = write_site([file_a, file_b], tmp_path / "site", plots=False)
    doc = read_document(file_a)
    folder = tmp_path / "site" / doc["protocol_sha256"][:12]
    assert pages == [tmp_path / "site" / "index.html", folder / "leaderboard.html"]
    index = pages[0].read_text()
    assert f'href="{folder.name}/leaderboard.html"' in index and "accumulate" in index
    assert str(tmp_path) not in index and str(tmp_path) not in pages[1].read_text()
    assert sorted(p.read_bytes() for p in (folder / "results").iterdir()) == sorted(
        p.read_bytes() for p in (file_a, file_b))
    protocol = json.loads((folder / "protocol.json").read_text())
    assert protocol["protocol_sha256"] == protocol_hash(protocol["protocol"]) == doc[
        "protocol_sha256"]
    assert set(_csv(folder / "leaderboard.csv")) == {"human", "replace", "mix-0.1",
                                                     "accumulate"}

    out = write_dataset([file_a, file_b], tmp_path / "hf")
    cache = tmp_path / "cache"  # datasets caches by folder name: a fresh cache per test
    values = load_dataset(str(out), split="train", cache_dir=str(cache))
    docs = [read_document(f) for f in (file_a, file_b)]
    expected = {(d["content_sha256"], r["metrics"]["policy"] or "generation 0 (shared)",
                 r["metrics"]["seed"], r["metrics"]["generation"], m): v
                for d in docs for r in d["rows"] for m, v in r["metrics"]["values"].items()}
    got = {(r["results_sha256"], r["cell"], r["seed"], r["generation"], r["metric"]):
           r["value"] for r in values}
    assert len(values) == len(got) == len(expected) and got == pytest.approx(expected)
    protocols = load_dataset(str(out), "protocols", split="train", cache_dir=str(cache))
    assert protocols["protocol_sha256"] == [doc["protocol_sha256"]]
    assert json.loads(protocols[0]["protocol"]) == doc["protocol"]
    assert sorted(protocols[0]["cells"]) == ["accumulate", "mix-0.1", "replace"]
    assert (out / "README.md").read_text().startswith("---\npretty_name:")


def test_a_compressed_results_file_reads_as_the_plain_one(runs, tmp_path):
    """``-o FILE.json.gz`` writes the same document gzip-compressed; every command reads it
    as the plain file."""
    run, plain = runs["a"]
    gz = tmp_path / "a.json.gz"
    assert run_main(["export", str(run), "-o", str(gz)]) == 0
    assert gz.read_bytes()[:2] == b"\x1f\x8b" and gz.stat().st_size < plain.stat().st_size / 2
    a, b = read_document(plain), read_document(gz)
    assert {k: v for k, v in a.items() if k not in ("exported", "content_sha256")} == {
        k: v for k, v in b.items() if k not in ("exported", "content_sha256")}
    assert run_main(["leaderboard", str(gz), str(runs["b"][1]), "--no-plots",
                     "--out", str(tmp_path / "lb")]) == 0
    assert run_main(["report", str(plain), "--no-plots", "--out", str(tmp_path / "p")]) == 0
    assert run_main(["report", str(gz), "--no-plots", "--out", str(tmp_path / "g")]) == 0
    assert _cells(_csv(tmp_path / "p" / "leaderboard.csv")["replace"]) == _cells(
        _csv(tmp_path / "g" / "leaderboard.csv")["replace"])
