"""Cells as separate jobs: selecting units, shards that cover the grid once, generation 0
built once while another job waits, and shards whose merged report equals one job's."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICKSTART, TINY, tiny_config

from lmcollapse import steps as steps_module
from lmcollapse import submit as submit_module
from lmcollapse.cells import cells
from lmcollapse.cli import run_main
from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError
from lmcollapse.files import recorded
from lmcollapse.layout import RunLayout
from lmcollapse.loop import CollapseLoop
from lmcollapse.report.write import write_report
from lmcollapse.shards import Selection, select_units

#: two seeds x two policies, one generation after 0: four units
SMALL = ["seeds=[0,1]", "generations=1", "policies=[replace,accumulate]",
         "train.budget_steps=6", "metrics.names=[perplexity,diversity]"]


def _units(selection: Selection, *extra: str):
    cfg = load_config(QUICKSTART, list(extra))
    return select_units(cfg, {c.key: c for c in cells(cfg)}, selection)


def test_shards_cover_every_unit_exactly_once():
    everything = _units(Selection())
    assert len(everything) == 9  # 3 seeds x 3 policies
    for n in range(1, 10):
        parts = [_units(Selection(shard=(i, n))) for i in range(n)]
        assert sorted(u for p in parts for u in p) == sorted(everything)
        assert sum(map(len, parts)) == len(everything)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced


def test_filters_combine():
    assert _units(Selection(policies=("replace",), seeds=(1, 2))) == [(1, "replace"),
                                                                     (2, "replace")]
    grid = ["grid=[{key: generate.temperature, values: [0.7, 1.0]}]"]
    picked = _units(Selection(cells=("*@temperature=0.7",)), *grid)
    assert {k for _, k in picked} == {"replace@temperature=0.7", "mix-0.1@temperature=0.7",
                                      "accumulate@temperature=0.7"}
    assert _units(Selection(cells=("mix-0.1@*",), seeds=(0,)), *grid) == [
        (0, "mix-0.1@temperature=0.7"), (0, "mix-0.1@temperature=1.0")]


@pytest.mark.parametrize(("selection", "message"), [
    (Selection(policies=("mix",)), "no policy labelled 'mix'; the config has replace, "
                                   "mix-0.1, accumulate"),
    (Selection(seeds=(7,)), r"seed 7 is not in the config's seeds \[0, 1, 2\]"),
    (Selection(cells=("replace@*",)), "matches no cell; the cells are replace, mix-0.1"),
    (Selection(shard=(0, 10)), "the selection has 9 units .* use at most 9 shards"),
    (Selection(policies=("replace",), shard=(3, 4)), "has 3 units"),
])
def test_a_selection_that_picks_nothing_is_refused(selection, message):
    with pytest.raises(ConfigError, match=message):
        _units(selection)


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "2/2"], "--shard: '2/2' must be i/n with 0 <= i < n"),
    (["--shard", "one/2"], "must be i/n"),
    (["--seeds", "0,x"], "--seeds: 'x' is not a seed"),
    (["--policies", "replace", "--new-run"], "--new-run starts a fresh directory per job"),
])
def test_bad_selections_exit_2_before_any_work(tmp_path, capsys, args, message):
    code = run_main(["run", "--config", str(QUICKSTART), *TINY, f"output_dir={tmp_path}",
                     *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cells_command_lists_what_a_shard_runs(capsys):
    assert run_main(["cells", "--config", str(QUICKSTART), "--shard", "1/4"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["seed 0\tmix-0.1", "seed 1\taccumulate"]


def _values(run: Path) -> dict[str, dict]:
    return {str(p.relative_to(run)): json.loads(p.read_text())["values"]
            for p in RunLayout(run).metrics_files()}


def _markdown(runs: list[Path], out: Path) -> str:
    """The report minus its provenance line (directories, creation time): every number."""
    text = write_report(runs, out=out, plots=False)["markdown"]
    return "\n".join(line for line in text.split("\n")
                     if not line.startswith("- **experiment**"))


@pytest.mark.slow
def test_shards_as_concurrent_jobs_equal_one_job(tmp_path):
    """Two submitit jobs (local processes, started together) share one run directory: each
    seed's generation 0 is trained once, every row equals the single job's, and so does the
    report; shards run into separate directories merge to the same report."""
    one = tiny_config(tmp_path / "one", *SMALL)
    CollapseLoop(one).run()

    shared = tmp_path / "shared"
    code = run_main(["submit", "--config", str(QUICKSTART), *TINY, *SMALL,
                     f"output_dir={shared}", "--shards", "2", "--cluster", "local", "--wait"])
    logs = "\n".join(p.read_text() for p in (shared / "quickstart" / "jobs").rglob("*.err"))
    assert code == 0, logs
    run = shared / "quickstart"
    for seed in (0, 1):  # the shared part was built once, whichever job got there first
        for folder in ("gen_00", "human"):
            lines = (run / f"seed_{seed}" / folder / ".checksums.jsonl").read_text()
            assert lines.count('"metrics.json"') == 1, (seed, folder)
        assert (run / f"seed_{seed}" / "gen_00" / ".checksums.jsonl").read_text().count(
            '"model/model.safetensors"') == 1
    invocations = json.loads((run / "experiment.json").read_text())["invocations"]
    assert sorted(i["cells"] for i in invocations) == ["shard 0/2", "shard 1/2"]
    assert _values(run) == _values(one.run_dir)
    assert _markdown([run], tmp_path / "r1") == _markdown([one.run_dir], tmp_path / "r0")

    apart = []
    for i in (0, 1):  # shards on machines that do not share a file system
        cfg = tiny_config(tmp_path / f"apart{i}", *SMALL)
        CollapseLoop(cfg, selection=Selection(shard=(i, 2))).run()
        apart.append(cfg.run_dir)
    assert _markdown(apart, tmp_path / "r2") == _markdown([one.run_dir], tmp_path / "r0")


@pytest.mark.slow
def test_a_job_waits_for_generation_0_another_job_is_building(tmp_path, monkeypatch, caplog):
    cfg = tiny_config(tmp_path, "generations=0", "metrics.names=[perplexity]")
    lock = str(RunLayout(cfg.run_dir).seed_lock(0))
    code = ("import pathlib, time; from lmcollapse.files import RunLock; "
            f"RunLock(pathlib.Path({lock!r})).acquire(); print('locked', flush=True); "
            "time.sleep(3)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    monkeypatch.setattr(steps_module, "LOCK_POLL_S", 0.2)
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="lmcollapse"):
        CollapseLoop(cfg).run()
    child.wait()
    assert f"being built by another job (pid {child.pid}" in caplog.text
    assert "the other job is done with it; going on" in caplog.text
    assert time.monotonic() - start > 2  # it did wait for the other job's lock
    assert "metrics.json" in recorded(cfg.run_dir / "seed_0" / "gen_00")


def test_submit_without_submitit_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(submit_module, "submitit", None)
    code = run_main(["submit", "--config", str(QUICKSTART), f"output_dir={tmp_path}",
                     "--shards", "2"])
    assert code == 2
    assert ("lmcollapse submit needs the 'submitit' package: pip install 'lmcollapse[slurm]'"
            in capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


def test_submit_refuses_more_shards_than_units(tmp_path, capsys):
    code = run_main(["submit", "--config", str(QUICKSTART), f"output_dir={tmp_path}",
                     "--shards", "10", "--cluster", "local"])
    assert code == 2 and "--shards: between 1 and the experiment's 9 units" in \
        capsys.readouterr().err


def test_partition_limits_are_read_from_sinfo():
    """What sinfo says a partition offers: the largest node's CPUs, memory and GPUs (the
    default partition is the one marked *); no sinfo: nothing known, nothing refused."""
    out = ("debug*|2|23000|(null)\n"
           "gpu|64|515000|gpu:a100:4(S:0-1),shard:8\n"
           "gpu|128+|1030000|gpu:h100:8\n")
    calls = []

    def sinfo(cmd):
        calls.append(cmd)
        rows = out.splitlines()
        if "-p" in cmd:
            rows = [r for r in rows if r.split("|")[0].rstrip("*") == cmd[-1]]
        return "\n".join(rows)

    assert submit_module.partition_limits(None, sinfo) == ("debug", 2, 23000, 0)
    assert submit_module.partition_limits("gpu", sinfo) == ("gpu", 128, 1030000, 8)
    assert calls[-1] == ["sinfo", "-h", "-o", "%P|%c|%m|%G", "-p", "gpu"]
    assert submit_module.partition_limits("none", sinfo) is None

    def missing(cmd):
        raise FileNotFoundError("sinfo")

    assert submit_module.partition_limits("gpu", missing) is None


@pytest.mark.parametrize(("request_", "limits", "message"), [
    ({"gpus_per_job": 1}, ("debug", 2, 23000, 0),
     "--gpus-per-job 1: partition 'debug' has no GPUs (sinfo); use --gpus-per-job 0"),
    ({"gpus_per_job": 0, "cpus_per_job": 8}, ("debug", 2, 23000, 0),
     "--cpus-per-job 8: partition 'debug' has at most 2 CPUs per node (sinfo); use at most 2"),
    ({"gpus_per_job": 0, "cpus_per_job": 2, "mem_gb": 64}, ("debug", 2, 23000, 0),
     "--mem-gb 64: partition 'debug' has at most 22 GB per node (sinfo: 23000 MB)"),
    ({"gpus_per_job": 8}, ("gpu", 64, 515000, 4),
     "--gpus-per-job 8: partition 'gpu' has at most 4 GPU(s) per node"),
    ({"gpus_per_job": 0, "cpus_per_job": 2, "mem_gb": 16}, ("debug", 2, 23000, 0), None),
])
def test_a_request_no_node_can_meet_is_refused_before_submitting(request_, limits, message):
    """Slurm keeps such an array pending forever (PartitionConfig) or refuses GPUs with a
    traceback: one line naming the option and the partition's limit instead."""
    import argparse

    args = argparse.Namespace(**{"gpus_per_job": 1, "cpus_per_job": 8, "mem_gb": 64,
                                 **request_})
    if message is None:
        submit_module.check_request(args, limits)
        return
    with pytest.raises(ConfigError) as err:
        submit_module.check_request(args, limits)
    assert str(err.value).startswith(message)


def test_without_accounting_the_sacct_warning_is_said_once(caplog):
    log = logging.getLogger("submitit")
    log.addFilter(submit_module.SacctOnce())
    with caplog.at_level(logging.WARNING, logger="submitit"):
        for i in range(5):
            log.warning(f"Call #{i} - Bypassing sacct error boom, status may be inaccurate.")
        log.warning("something else")
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "sacct (Slurm accounting) answers nothing", "something else"]


class _FakeExecutor:
    """submitit.AutoExecutor's surface that submit uses, recording the array it is given
    (or, with ``refuse``, failing as sbatch does after creating the job folder)."""

    refuse = False
    kind = "local"
    calls: list = []
    params: dict = {}

    def __init__(self, folder, cluster=None):
        self.folder = Path(str(folder).replace("%j", "4242"))
        self.cluster = self.kind

    def update_parameters(self, **kw):
        _FakeExecutor.params = kw

    def map_array(self, fn, *args):
        _FakeExecutor.calls.append(args)
        self.folder.mkdir(parents=True)
        if self.refuse:
            raise submit_module.submitit.core.utils.FailedJobError(
                "sbatch: error: Invalid generic resource (gres) specification\n")
        return []


def test_output_dir_reaches_a_task_once_and_a_refused_array_leaves_no_folder(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(submit_module.submitit, "AutoExecutor", _FakeExecutor)
    _FakeExecutor.calls = []
    assert run_main(["submit", "--config", str(QUICKSTART), f"output_dir={tmp_path}",
                     "--shards", "2"]) == 0
    overrides = _FakeExecutor.calls[0][1][0]
    assert [o for o in overrides if o.startswith("output_dir=")] == [
        f"output_dir={tmp_path.resolve()}"]
    monkeypatch.setattr(_FakeExecutor, "refuse", True)
    out = tmp_path / "second"
    assert run_main(["submit", "--config", str(QUICKSTART), f"output_dir={out}",
                     "--shards", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmcollapse: config error: sbatch refused the array: sbatch: "
                              "error: Invalid generic resource (gres) specification (see "
                              "--partition")
    assert not (out / "quickstart" / "jobs" / "4242").exists()


@pytest.mark.parametrize(("gpus", "tasks", "cpus"), [(1, 1, 8), (4, 4, 2)])
def test_the_gpu_partition_example_asks_slurm_for_what_it_says(tmp_path, monkeypatch, gpus,
                                                                 tasks, cpus):
    """docs/scaling-out.md's GPU example, against a partition sinfo describes with 4 GPUs
    per node: the array's request (no GPU is lent to CI to run it)."""
    monkeypatch.setattr(submit_module.submitit, "AutoExecutor", _FakeExecutor)
    monkeypatch.setattr(_FakeExecutor, "kind", "slurm")
    sinfo = "gpu|64|515000|gpu:a100:4(S:0-1)\n"
    real = submit_module.partition_limits
    monkeypatch.setattr(submit_module, "partition_limits",
                        lambda partition: real(partition, lambda cmd: sinfo))
    assert run_main(["submit", "--config", str(QUICKSTART), f"output_dir={tmp_path}",
                     "--shards", "6", "--partition", "gpu", "--gpus-per-job", str(gpus),
                     "--timeout-min", "720", "--slurm", "account=myproject"]) == 0
    assert _FakeExecutor.params == {
        "name": "lmcollapse-quickstart", "timeout_min": 720, "gpus_per_node": gpus,
        "tasks_per_node": tasks, "cpus_per_task": cpus, "mem_gb": 64,
        "slurm_partition": "gpu", "slurm_additional_parameters": {"account": "myproject"}}
