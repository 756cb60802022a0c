"""Bad input and faults: every bad config is one clear error (exit 2, no traceback, nothing
written), names stay inside the run directory, a diverging loss stops the cell, two runs
cannot share a directory, files follow the umask, a moved run directory resumes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICKSTART, TINY, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmcollapse.cli import run_main
from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError, ReportError, StepError
from lmcollapse.files import ArtifactError, RunLock, recorded, write_json
from lmcollapse.layout import RunLayout
from lmcollapse.loop import CollapseLoop
from lmcollapse.report.write import write_report

#: a field of every section and type, and values no field of that kind accepts
INT_FIELDS = ["generations", "data.block_tokens", "data.synthetic.vocab_size",
              "data.synthetic.train_docs", "model.scratch.hidden_size", "train.batch_size",
              "train.budget_steps", "generate.new_tokens", "generate.top_k",
              "metrics.diversity.sample_size", "metrics.mauve.seed", "metrics.tail.draws"]
FLOAT_FIELDS = ["train.lr", "train.weight_decay", "train.max_grad_norm", "generate.temperature",
                "generate.top_p", "data.synthetic.zipf_exponent", "metrics.tail.head_mass"]
#: string fields with a closed set of values (a hub id or a featurizer may be any string)
STR_FIELDS = ["experiment", "log_level", "data.source", "train.scheduler", "generate.strategy",
              "model.scratch.arch", "policies"]
BAD_INT = ["abc", "[1, 2]", "{a: 1}", "1.5", ".nan", ".inf", "-.inf", "1e400", "1:30",
           "99999999999999999999", "!!float abc", "true", "'1.5e'"]
BAD_FLOAT = ["abc", "[1]", "{a: 1}", ".nan", ".inf", "-.inf", "1e400", "true", "!!int x"]
LIST_FIELDS = ["seeds", "metrics.names", "metrics.mauve.seeds"]
BAD_LIST = ["{a: 1}", "[{a: 1}]", "[.nan]", "!!float abc", "[[1]]"]
BAD_STR = ["[1]", "{a: 1}", "''", "'../x'", "'a/b'", "..", "!!binary x"]
#: values in range of their type that the issue found accepted; each must now be refused
OUT_OF_RANGE = [
    "train.max_grad_norm=-1", "train.weight_decay=-10", "train.lr=1e6", "train.lr=0",
    "model.scratch.vocab_size=1", "generations=-1", "generations=1:30", "seeds=[-1]",
    "seeds=[]", "seeds=[1,1]", "data.synthetic.vocab_size=1", "data.synthetic.branching=1000",
    "data.synthetic.zipf_exponent=-1", "data.synthetic.mean_sentence_words=1",
    "data.synthetic.sentences_per_doc=0", "data.synthetic.train_docs=0",
    "data.synthetic.seed=-3", "metrics.mauve.num_buckets=0", "metrics.mauve.num_buckets=1",
    "metrics.mauve.featurizer=''", "metrics.names=[]", "metrics.names=[perplexity,perplexity]",
    "metrics.perplexity.batch_size=0", "metrics.perplexity.max_tokens=1", "log_level=LOUD",
    "data.block_tokens=1", "experiment=..", "experiment=a/b", "experiment=human",
    "policies[0].label=..", "train.warmup_ratio=1", "generate.top_p=0",
    "generate.temperature=0", "metrics.diversity.sample_size=1", "metrics.tail.seed=-1",
    "data=null", "train=null", "metrics.mauve=null", "policies=[{fraction: 0.1}]",
    "train.mixed_precision=fp16", "output_dir=''", "metrics.prdc.nearest_k=0",
    "data.synthetic.modes.shares=[0.5]", "metrics.modes.contexts=0",
]


def run_cli(tmp_path: Path, *overrides: str, config: Path = QUICKSTART) -> tuple[int, str]:
    """``lmcollapse run`` in this process on the tiny config; (exit code, stderr + log)."""
    args = ["run", "--config", str(config), *TINY, f"output_dir={tmp_path / 'runs'}",
            *overrides]
    return run_main(args), ""


def _policy_override(item: str) -> list[str]:
    """``policies[0].label=..`` as a whole policies list (overrides set whole lists)."""
    if item.startswith("policies[0].label="):
        return [f"policies=[{{name: replace, label: '{item.split('=', 1)[1]}'}}]"]
    return [item]


def assert_refused(tmp_path: Path, overrides: list[str], capsys) -> str:
    code, _ = run_cli(tmp_path, *overrides)
    err = capsys.readouterr().err
    assert code == 2, (overrides, err)
    assert "Traceback" not in err and "config error" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*")), \
        "a refused config wrote files"
    return err


@pytest.mark.parametrize("item", OUT_OF_RANGE)
def test_out_of_range_values_are_refused_before_any_work(tmp_path, item, capsys):
    err = assert_refused(tmp_path, _policy_override(item), capsys)
    key = item.split("=", 1)[0].split("[")[0]
    if item not in ("data=null", "train=null", "output_dir=''"):
        assert key.split(".")[-1] in err or key in err, (item, err)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=st.one_of(
    st.tuples(st.sampled_from(LIST_FIELDS), st.sampled_from(BAD_LIST)),
    st.tuples(st.sampled_from(INT_FIELDS), st.sampled_from(BAD_INT)),
    st.tuples(st.sampled_from(FLOAT_FIELDS), st.sampled_from(BAD_FLOAT)),
    st.tuples(st.sampled_from(STR_FIELDS), st.sampled_from(BAD_STR)),
    st.tuples(st.sampled_from(INT_FIELDS + FLOAT_FIELDS + STR_FIELDS),
              st.text(min_size=1, max_size=12).map(lambda t: t + "}x")),
    st.tuples(st.sampled_from(["train.lrr", "data.synthetic.vocab", "metrics.maueve",
                               "generate.temperture", "model.scratch.layers"]),
              st.integers(-5, 5).map(str)),
))
def test_generated_bad_values_give_one_clear_error(tmp_path_factory, pair, capsys):
    key, value = pair
    tmp = tmp_path_factory.mktemp("bad")
    assert_refused(tmp, [f"{key}={value}"], capsys)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(min_size=1, max_size=200) | st.text(min_size=1, max_size=200))
def test_garbage_config_files_give_one_clear_error(tmp_path_factory, content, capsys):
    tmp = tmp_path_factory.mktemp("garbage")
    path = tmp / "config.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    code = run_main(["run", "--config", str(path), f"output_dir={tmp / 'runs'}"])
    err = capsys.readouterr().err
    # a garbage file is either not a mapping, not YAML, or a mapping of unknown keys
    assert code == 2 and "Traceback" not in err and "config error" in err, (content, err)
    assert not (tmp / "runs").exists()


def test_special_config_files(tmp_path, capsys):
    cases = {"latin1.yaml": "experiment: caf\xe9\n".encode("latin-1"),
             "deep.yaml": ("a: " + "[" * 5000 + "]" * 5000).encode(),
             "digits.yaml": ("generations: " + "9" * 5000).encode(),
             "tag.yaml": b"train:\n  lr: !!float abc\n",
             "python.yaml": b"experiment: !!python/object/apply:os.system ['true']\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        code = run_main(["run", "--config", str(tmp_path / name), f"output_dir={tmp_path}/r"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "config error" in err, (name, err)
    assert not (tmp_path / "r").exists()


def test_yaml_reads_numbers_as_yaml_1_2():
    cfg = load_config(QUICKSTART, ["generations=3", "train.lr=5e-4", "seeds=[0, 1]"])
    assert (cfg.generations, cfg.train.lr, cfg.seeds) == (3, 5e-4, [0, 1])
    with pytest.raises(ConfigError, match="generations: expected int, got '1:30'"):
        load_config(QUICKSTART, ["generations=1:30"])
    assert load_config(QUICKSTART, ["log_level=debug"]).log_level == "DEBUG"


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    code, _ = run_cli(tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "runs").read_text() == "not a folder"


@pytest.mark.slow
def test_a_diverging_loss_stops_the_cell_and_keeps_what_was_done(tmp_path, capsys):
    """A grid over the learning rate: the sound setting trains its generation 0 and measures
    the human row; lr = 1 diverges at its own generation 0, which stops the run (exit 1)
    with the seed, cell, generation and optimizer step named; what was finished stays and
    the report reads it."""
    code, _ = run_cli(tmp_path, "grid=[{key: train.lr, values: [0.005, 1.0]}]",
                      "train.max_grad_norm=1000", "generations=1", "train.lr=0.005")
    err = capsys.readouterr().err
    assert code == 1, err
    assert "generation 0" in err and "lr=1" in err and "step train failed" in err
    assert "TrainingDiverged" in err and "optimizer step" in err
    seed = tmp_path / "runs" / "quickstart" / "seed_0"
    assert (seed / "gen_00" / "measure.done").exists()
    result = write_report([tmp_path / "runs" / "quickstart"], out=tmp_path / "report",
                          plots=False)
    gen0 = json.loads((seed / "gen_00" / "metrics.json").read_text())["values"]["perplexity"]
    # generation 0's perplexity is shown in the per-generation table, as the report rounds it
    full = (tmp_path / "report" / "leaderboard.md").read_text()
    assert result["files"] and f"| {gen0:.2f} |" in full


@pytest.mark.slow
def test_a_second_run_of_the_same_cells_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, "generations=0")
    lock = RunLock(RunLayout(cfg.run_dir).cell_lock(0, "replace"))
    lock.acquire()
    try:
        with pytest.raises(ConfigError, match="seed 0, cell replace is in use by another "
                                              "run .pid"):
            CollapseLoop(cfg).run()
    finally:
        lock.release()
    assert not (cfg.run_dir / "experiment.json").exists()
    CollapseLoop(cfg).run()  # released: the run goes ahead
    assert (cfg.run_dir / "experiment.json").exists()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    cfg = tiny_config(tmp_path, "generations=0")
    lock_path = str(RunLayout(cfg.run_dir).cell_lock(0, "accumulate"))
    code = ("import pathlib, time; from lmcollapse.files import RunLock; "
            f"RunLock(pathlib.Path({lock_path!r})).acquire(); print('locked', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"pid {child.pid}"):
        CollapseLoop(cfg).run()
    child.send_signal(signal.SIGKILL)
    child.wait()
    with caplog.at_level("INFO", logger="lmcollapse"):
        CollapseLoop(cfg).run()
    assert (f"seed 0, cell accumulate: took over the lock of an earlier run that is gone "
            f"(pid {child.pid}") in caplog.text


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    os.umask(old)
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~old


@pytest.mark.slow
def test_a_moved_run_directory_resumes(tmp_path):
    cfg = tiny_config(tmp_path / "a", "generations=1", "policies=[replace]",
                      "metrics.names=[perplexity]")
    CollapseLoop(cfg).run()
    before = json.loads((cfg.run_dir / "seed_0" / "replace" / "gen_01" / "metrics.json")
                        .read_text())["values"]
    shutil.move(tmp_path / "a" / "quickstart", tmp_path / "moved")
    moved = tiny_config(tmp_path, "generations=1", "policies=[replace]",
                        "metrics.names=[perplexity]", "experiment=moved")
    CollapseLoop(moved).run()  # nothing to redo; no "different config" refusal
    after = json.loads((tmp_path / "moved" / "seed_0" / "replace" / "gen_01" / "metrics.json")
                       .read_text())["values"]
    assert after == before


# --- checksums: what was written is what is used -------------------------------------------


@pytest.fixture()
def finished(tmp_path):
    """A finished one-generation run (replace) and the config that grows it (accumulate)."""
    extra = ["generations=1", "metrics.names=[perplexity]"]
    cfg = tiny_config(tmp_path, "policies=[replace]", *extra)
    CollapseLoop(cfg).run()
    return cfg, tiny_config(tmp_path, "policies=[replace,accumulate]", *extra)


@pytest.mark.slow
def test_every_written_file_is_recorded_with_its_checksum(finished):
    cfg, _ = finished
    gen = cfg.run_dir / "seed_0" / "replace" / "gen_01"
    entries = recorded(gen)
    assert {"corpus.parquet", "metrics.json", "model/model.safetensors"} <= set(entries)
    for name, entry in entries.items():
        assert entry["bytes"] == (gen / name).stat().st_size
        assert entry["sha256"] == hashlib.sha256((gen / name).read_bytes()).hexdigest()
    assert "tokenizer/tokenizer.json" in recorded(cfg.run_dir)


@pytest.mark.slow
def test_a_cut_corpus_stops_the_resume_naming_it(finished):
    cfg, grown = finished
    corpus = cfg.run_dir / "seed_0" / "gen_00" / "corpus.parquet"
    data = corpus.read_bytes()
    corpus.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"corpus.parquet has \d+ bytes, \d+ were written"):
        CollapseLoop(grown).run()
    assert not (cfg.run_dir / "seed_0" / "accumulate").exists()  # nothing built on it


@pytest.mark.slow
def test_an_edited_corpus_is_caught_before_a_new_cell_uses_it(finished):
    cfg, grown = finished
    corpus = cfg.run_dir / "seed_0" / "gen_00" / "corpus.parquet"
    data = bytearray(corpus.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    corpus.write_bytes(bytes(data))
    with pytest.raises(StepError, match=r"corpus.parquet was changed"):
        CollapseLoop(grown).run()
    assert not (cfg.run_dir / "seed_0" / "accumulate" / "gen_01" / "train.done").exists()


@pytest.mark.slow
def test_deleted_weights_stop_the_resume(finished):
    cfg, _ = finished
    (cfg.run_dir / "seed_0" / "replace" / "gen_01" / "model" / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"model.safetensors is missing"):
        CollapseLoop(cfg).run()


@pytest.mark.slow
def test_a_cut_tokenizer_is_named(finished, capsys):
    cfg, _ = finished
    tok = cfg.run_dir / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text()[:100])
    with pytest.raises(ArtifactError, match=r"tokenizer.json has 100 bytes"):
        CollapseLoop(cfg).run()


@pytest.mark.slow
def test_the_report_skips_a_broken_metrics_file_and_shows_the_rest(finished, tmp_path):
    cfg, _ = finished
    broken = cfg.run_dir / "seed_0" / "replace" / "gen_01" / "metrics.json"
    broken.write_text('{"values": {"perplexity": ')
    result = write_report([cfg.run_dir], out=tmp_path / "report", plots=False)
    md = result["markdown"]
    assert "Skipped (could not be read" in md and str(broken) in md
    html = (tmp_path / "report" / "leaderboard.html").read_text()
    assert '<h2 id="skipped">Skipped</h2>' in html and str(broken) in html
    assert "| ref | human |" in md and "replace" in md  # generation 0 and the human row


def test_the_report_names_a_foreign_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "experiment.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="not an lmcollapse experiment record"):
        write_report([tmp_path / "x"], plots=False)


@pytest.mark.slow
def test_the_report_says_when_weights_are_gone(finished, tmp_path):
    cfg, _ = finished
    weights = cfg.run_dir / "seed_0" / "replace" / "gen_01" / "model" / "model.safetensors"
    weights.unlink()
    md = write_report([cfg.run_dir], out=tmp_path / "report", plots=False)["markdown"]
    assert f"{weights} is missing" in md and "| 1 | replace |" in md


@pytest.mark.parametrize("kind", ["utf8", "parquet"])
def test_unreadable_text_data_is_one_clear_error(tmp_path, kind, capsys):
    if kind == "utf8":
        (tmp_path / "train.txt").write_bytes(b"caf\xe9 au lait\n" * 200)
        train = tmp_path / "train.txt"
    else:
        train = tmp_path / "train.parquet"
        train.write_bytes(b"PAR1 this is not a parquet file")
    (tmp_path / "test.txt").write_text("a test line\n" * 50)
    code, _ = run_cli(tmp_path, "data.source=text", f"data.text.train={train}",
                      f"data.text.test={tmp_path / 'test.txt'}")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "config error" in err, err
    assert f"data.text.train: {train} " in err
    assert not (tmp_path / "runs").exists()


def test_the_hf_source_offline_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code, _ = run_cli(tmp_path, "data.source=hf", "data.hf.path=no-such/dataset-xyz")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "config error" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_report_reads_an_older_config_version_with_a_warning(finished, tmp_path, caplog):
    cfg, _ = finished
    info = json.loads((cfg.run_dir / "experiment.json").read_text())
    info["config"]["version"] = 0
    (cfg.run_dir / "experiment.json").write_text(json.dumps(info))
    with caplog.at_level("WARNING"):
        md = write_report([cfg.run_dir], out=tmp_path / "report", plots=False)["markdown"]
    assert "written with config version 0" in caplog.text and "| 1 | replace |" in md
