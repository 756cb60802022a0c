"""End to end: the run directory, determinism, resume after a failure or a kill, refusals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, TINY, tiny_config

from lmcollapse.errors import ConfigError, StepError
from lmcollapse.loop import CollapseLoop

POLICIES = ["replace", "mix-0.1", "accumulate"]


def _gen_dirs(run: Path) -> list[Path]:
    seed = run / "seed_0"
    return [seed / "gen_00"] + [seed / p / f"gen_{k:02d}" for p in POLICIES for k in (1, 2)]


def _results(run: Path) -> dict[str, object]:
    """Everything a run measured or wrote, minus timings."""
    out = {}
    for d in _gen_dirs(run):
        key = str(d.relative_to(run))
        out[key + "/values"] = json.loads((d / "metrics.json").read_text())["values"]
        out[key + "/corpus"] = pq.read_table(d / "corpus.parquet").column("input_ids").to_pylist()
        out[key + "/mix"] = pq.read_table(d / "mix.parquet").column("sample_id").to_pylist()
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ref")
    CollapseLoop(tiny_config(root)).run()
    return root / "quickstart"


@pytest.mark.slow
def test_run_directory_layout(reference_run):
    run = reference_run
    exp = json.loads((run / "experiment.json").read_text())
    assert exp["config"]["generations"] == 2 and exp["policies"] == POLICIES
    assert "torch" in exp["versions"]
    for d in _gen_dirs(run):
        for step in ("train", "generate", "measure"):
            assert (d / f"{step}.done").exists(), d
        assert (d / "model" / "config.json").exists()
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["values"]["perplexity"] > 1
        assert metrics["meta"]["perplexity"]["higher_is_better"] is False
        corpus = pq.read_table(d / "corpus.parquet").to_pylist()
        assert {"sample_id", "origin", "generation", "prompt_id", "input_ids",
                "text"} <= set(corpus[0])
        k = int(d.name.split("_")[1])
        assert {r["origin"] for r in corpus} == {f"gen_{k}"}
    # the mixes carry provenance and are what each policy claims
    mix = lambda p, k: pq.read_table(run / "seed_0" / p / f"gen_{k:02d}" / "mix.parquet")  # noqa
    assert set(mix("replace", 2).column("origin").to_pylist()) == {"gen_1"}
    origins = mix("accumulate", 2).column("origin").to_pylist()
    n_human = origins.count("human")
    assert origins.count("gen_0") == origins.count("gen_1") == n_human
    mixed = mix("mix-0.1", 1).column("origin").to_pylist()
    assert mixed.count("human") == round(0.1 * len(mixed))
    # generation 0 is trained once and shared by every policy
    assert not (run / "seed_0" / "replace" / "gen_00").exists()


@pytest.mark.slow
def test_same_seed_gives_identical_results(reference_run, tmp_path):
    CollapseLoop(tiny_config(tmp_path)).run()
    assert _results(tmp_path / "quickstart") == _results(reference_run)


def test_rerun_redoes_nothing(reference_run):
    exp = CollapseLoop(tiny_config(reference_run.parent))
    exp.run()
    assert exp.timings == []


@pytest.mark.slow
def test_failed_step_stops_then_resume_matches(reference_run, tmp_path, monkeypatch):
    real = CollapseLoop.generate

    def failing(self, gen, d):
        if gen.cell_key == "mix-0.1" and gen.k == 2:
            raise RuntimeError("injected failure")
        return real(self, gen, d)

    monkeypatch.setattr(CollapseLoop, "generate", failing)
    with pytest.raises(StepError, match=r"seed 0, policy mix-0\.1, generation 2, step "
                                        r"generate failed: RuntimeError: injected failure"):
        CollapseLoop(tiny_config(tmp_path)).run()
    failed_dir = tmp_path / "quickstart" / "seed_0" / "mix-0.1" / "gen_02"
    assert (failed_dir / "train.done").exists() and not (failed_dir / "generate.done").exists()
    assert not (tmp_path / "quickstart" / "seed_0" / "accumulate" / "gen_02").exists()
    monkeypatch.setattr(CollapseLoop, "generate", real)
    exp = CollapseLoop(tiny_config(tmp_path))
    exp.run()
    redone = {(t["where"], t["step"]) for t in exp.timings}
    assert ("seed 0, policy mix-0.1, generation 2", "generate") in redone
    assert not any("generation 1" in w for w, _ in redone)
    assert ("seed 0, policy mix-0.1, generation 2", "train") not in redone
    assert _results(tmp_path / "quickstart") == _results(reference_run)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_numbers(reference_run, tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "run_loop.py"), "--config",
           str(ROOT / "configs" / "quickstart.yaml"), *TINY, f"output_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = tmp_path / "quickstart" / "seed_0" / "replace" / "gen_01" / "train.done"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "quickstart" / "seed_0" / "accumulate" / "gen_02" /
                "measure.done").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _results(tmp_path / "quickstart") == _results(reference_run)


def test_changed_config_is_refused_and_nothing_is_touched(reference_run):
    before = {p: p.stat().st_mtime_ns for p in reference_run.rglob("*") if p.is_file()}
    old_lr = tiny_config(reference_run.parent).train.lr
    with pytest.raises(ConfigError, match=rf"train\.lr: {re.escape(repr(old_lr))} -> 0\.001"):
        CollapseLoop(tiny_config(reference_run.parent, "train.lr=1e-3")).run()
    after = {p: p.stat().st_mtime_ns for p in reference_run.rglob("*") if p.is_file()}
    assert after == before


def test_prompt_longer_than_context_is_refused_before_work(tmp_path):
    cfg = tiny_config(tmp_path, "model.scratch.max_position_embeddings=24")
    with pytest.raises(ConfigError, match="context of 24 tokens"):
        CollapseLoop(cfg).run()
    assert not (tmp_path / "quickstart").exists()


def test_cli_reports_config_errors_with_exit_code(tmp_path):
    from lmcollapse.cli import run_main

    assert run_main(["run", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                     "train.lrr=1", f"output_dir={tmp_path}"]) == 2
    assert not any(tmp_path.iterdir())


def test_cli_lists_every_subcommand_and_refuses_unknown_options(tmp_path, capsys):
    from lmcollapse.cli import run_main

    with pytest.raises(SystemExit) as done:
        run_main(["--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("run", "validate", "report", "compare",
                                           "plan-seeds"))
    with pytest.raises(SystemExit) as done:  # `report` parses its own options
        run_main(["report", "--help"])
    assert done.value.code == 0 and "--rank-by" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        run_main(["run", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--bogus",
                  f"output_dir={tmp_path}"])
    assert done.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_init_modes_start_from_the_right_weights(reference_run):
    import torch

    from lmcollapse.models import load_model, load_tokenizer, starting_model

    cfg = tiny_config(reference_run.parent)
    tok = load_tokenizer(cfg.model, saved=reference_run / "tokenizer")
    seed_dir = reference_run / "seed_0"
    gen1 = seed_dir / "replace" / "gen_01" / "model"

    def start(init: str, seed: int = 5):
        return starting_model(cfg.model, tok, init, seed, seed_dir / "base", gen1).state_dict()

    def same(a, b) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    base = load_model(seed_dir / "base").state_dict()
    assert same(start("base"), base)
    assert same(start("previous"), load_model(gen1).state_dict())
    assert not same(start("previous"), base)
    scratch = start("scratch")
    assert same(scratch, start("scratch")) and not same(scratch, start("scratch", seed=6))
    assert not same(scratch, base)


def test_lineages_show_each_generations_continuation_of_a_prompt(reference_run, tmp_path):
    from lmcollapse.data.markov import MarkovSource
    from lmcollapse.report.lineages import choose_prompts
    from lmcollapse.report.lineages_formats import visible
    from lmcollapse.report.write import write_report

    syn = tiny_config(reference_run.parent).data.synthetic
    truth = MarkovSource(syn.vocab_size, syn.branching, syn.zipf_exponent,
                         syn.mean_sentence_words, syn.seed)
    prompts = pq.read_table(reference_run / "prompts.parquet").to_pylist()
    zero = pq.read_table(reference_run / "seed_0" / "gen_00" / "corpus.parquet").to_pylist()
    assert [p["prompt_id"] for p in prompts] == list(range(len(zero)))  # one per block
    write_report([reference_run], out=tmp_path, plots=False, lineage_prompts=2,
                 lineage_seed=5)
    md = (tmp_path / "lineages.md").read_text()
    ids = choose_prompts(len(prompts), 2, 5)
    assert [int(x) for x in re.findall(r"^## Prompt (\d+)$", md, re.M)] == ids
    for pid in ids:
        section = md.split(f"## Prompt {pid}\n")[1].split("## Prompt")[0]
        assert " ".join(prompts[pid]["prompt"].split()) in section
        human = truth.continuation_log_prob(prompts[pid]["prompt"], prompts[pid]["human"])
        assert f"**Human continuation [log p {human[0]:.1f} / {human[1]} w]:**".replace(
            "-", "−") in section  # the source wrote it: every word possible
        rows = {ln.split(" | ")[0].strip("| "): ln.split(" | ")[1:]
                for ln in section.splitlines() if re.match(r"\| \d+ \|", ln)}
        assert sorted(rows) == ["0", "1", "2"]
        for k in (0, 1, 2):  # the replace column holds that generation's own sample
            d = reference_run / "seed_0" / ("gen_00" if k == 0 else f"replace/gen_{k:02d}")
            row = next(r for r in pq.read_table(d / "corpus.parquet").to_pylist()
                       if r["prompt_id"] == pid)
            ppl = {r["sample_id"]: r["perplexity"] for r in  # the scored sample, if in it
                   pq.read_table(d / "reference_scores.parquet").to_pylist()}.get(row["sample_id"])
            cell = rows[str(k)][POLICIES.index("replace")]
            # exact log p under the source, rebuilt here from the config's parameters
            log_p, words, bad = truth.continuation_parts(prompts[pid]["prompt"], row["text"])
            tag = ("log p – / 0 w" if words == 0 else  # no complete word: nothing scored
                   f"log p {log_p:.1f} / {words} w".replace("-", "−")
                   + (f" ({bad} impossible steps)" if bad else ""))
            assert cell.startswith(f"[ppl {ppl:.1f} · {tag}] " if ppl is not None
                                   else f"[ppl – · {tag}] ")
            assert " ".join(visible(row["text"]).split()).replace("|", "\\|") in cell
    page = (tmp_path / "leaderboard.html").read_text()
    assert '<h2 id="lineages-seed-0">Lineages (seed 0)</h2>' in page
    assert f"<h3>Prompt {ids[0]}</h3>" in page


def test_samples_by_reference_perplexity_are_the_extremes_of_the_scored_ones(reference_run,
                                                                           tmp_path):
    from lmcollapse.report.write import write_report

    write_report([reference_run], out=tmp_path, plots=False)
    md = (tmp_path / "samples.md").read_text()
    assert md.startswith("# Samples by generation-0 perplexity")
    assert re.findall(r"^## (.+)$", md, re.M) == POLICIES  # every policy
    for k in (0, 1, 2):
        d = reference_run / "seed_0" / ("gen_00" if k == 0 else f"replace/gen_{k:02d}")
        ppl = sorted(r["perplexity"] for r in
                     pq.read_table(d / "reference_scores.parquet").to_pylist())
        section = md.split(f"### replace, generation {k}\n")[1].split("###")[0]
        shown = {what: [float(x) for x in re.findall(rf"^- {what}: \[ppl ([\d.]+) · log p ",
                                                     section, re.M)]
                 for what in ("most likely", "least likely", "random")}
        assert shown["most likely"] == [round(p, 1) for p in ppl[:2]]
        assert shown["least likely"] == [round(p, 1) for p in ppl[::-1][:2]]
        assert len(shown["random"]) == 2 and all(ppl[0] - 0.05 <= p <= ppl[-1] + 0.05
                                                 for p in shown["random"])
    page = (tmp_path / "leaderboard.html").read_text()
    assert ">Samples by generation-0 perplexity</h2>" in page
    assert re.findall(r"<summary>(.+?)</summary>", page) == POLICIES


def test_the_report_warns_from_the_loops_per_sample_scores(reference_run, tmp_path):
    """The reference metric declares its per-sample column; the report's early warning
    tests those samples (checked against scipy on the files the loop wrote) and a one-seed
    run's ref_ppl cells carry a bootstrap interval."""
    from scipy import stats

    from lmcollapse.report.write import write_report

    res = write_report([reference_run], out=tmp_path, plots=False, lineage_prompts=0,
                       columns=["perplexity", "ref_ppl_p50"])
    (_, warning), = res["warnings"]
    seed = reference_run / "seed_0"

    def scores(d):
        return pq.read_table(d / "reference_scores.parquet").column("perplexity").to_numpy()

    for k in (1, 2):
        t = warning.tests["gen 0"]["replace"][k - 1]
        u = stats.mannwhitneyu(scores(seed / "replace" / f"gen_{k:02d}"),
                               scores(seed / "gen_00"), alternative="two-sided")
        assert t.generation == k and t.p == pytest.approx(u.pvalue)
    human = warning.tests["human"]["accumulate"][0]
    u = stats.mannwhitneyu(scores(seed / "gen_00"), scores(seed / "human"),
                           alternative="two-sided")
    assert human.generation == 0 and human.p == pytest.approx(u.pvalue)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## Early warning: reference_perplexity" in md
    row = next(r for r in res["leaderboard"].rows if r.policy == "replace")
    lo, hi = row.bootstrap["ref_ppl_p50"][0]
    assert lo <= row.cells["ref_ppl_p50"].stat.mean <= hi
