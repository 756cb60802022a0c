"""``--jobs``: worker processes over the (seed, cell) units of one run on one machine.

The results are bit-identical to one process (every metric, every model's and corpus's
bytes); a unit that fails stops the run with its message while the other worker finishes
its unit; Ctrl-C stops every worker and the same command resumes; a killed worker is
reported with its unit. The plan divides threads and GPUs as documented."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICKSTART, TINY, tiny_config

from lmcollapse.cli import run_main
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.parallel import cpu_cores, make_plan

#: four units: two seeds x two policies, one generation after generation 0
UNITS = ["seeds=[0,1]", "generations=1", "policies=[replace,accumulate]"]


def _values(run: Path) -> dict[str, dict]:
    return {str(p.relative_to(run)): json.loads(p.read_text())["values"]
            for p in sorted(run.rglob("metrics.json"))}


def _bytes(run: Path) -> dict[str, str]:
    """The checksum of every model and corpus file the run wrote (its .checksums.jsonl)."""
    out = {}
    for sums in sorted(run.rglob(".checksums.jsonl")):
        for line in sums.read_text().splitlines():
            rec = json.loads(line)
            if rec["name"].endswith((".safetensors", "corpus.parquet", "mix.parquet")):
                out[f"{sums.parent.relative_to(run)}/{rec['name']}"] = rec["sha256"]
    return out


def _command(out: Path, *extra: str) -> list[str]:
    return ["run", "--config", str(QUICKSTART), *TINY, *UNITS, f"output_dir={out}", *extra]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    cfg = tiny_config(tmp_path_factory.mktemp("one"), *UNITS)
    CollapseLoop(cfg).run()
    return cfg.run_dir


@pytest.mark.slow
def test_two_workers_give_the_bits_of_one_process(tmp_path, one_process, capsys):
    assert run_main(_command(tmp_path, "--jobs", "2")) == 0
    run = tmp_path / "quickstart"
    assert _values(run) == _values(one_process)
    hashes = _bytes(run)
    assert len(hashes) >= 12 and hashes == _bytes(one_process)
    for seed in (0, 1):  # each seed's generation 0 was built once, by one worker
        sums = (run / f"seed_{seed}" / "gen_00" / ".checksums.jsonl").read_text()
        assert sums.count('"model/model.safetensors"') == 1
    record = json.loads((run / "experiment.json").read_text())["invocations"][-1]
    assert record["jobs"] == 2 and record["threads_per_job"] >= 1
    threads = {json.loads(p.read_text())["threads"] for p in run.rglob("*.done")}
    assert threads == {record["threads_per_job"]} == {max(1, cpu_cores() // 2)}


@pytest.mark.slow
def test_a_failing_unit_stops_the_run_with_its_message(tmp_path, one_process, capsys):
    """Seed 0's generation-0 model is cut short after a first run of seed 0's replace
    cell: the units of seed 0 fail when they check it; seed 1's are not affected."""
    assert run_main(_command(tmp_path, "--seeds", "0", "--policies", "replace")) == 0
    model = tmp_path / "quickstart" / "seed_0" / "gen_00" / "model" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-8])
    capsys.readouterr()
    code = run_main(_command(tmp_path, "--jobs", "2"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "seed 0, cell" in err and "model.safetensors" in err and "worker" in err
    assert "no new unit starts" in err  # logged when the failure arrived


def _children(pid: int) -> list[int]:
    """Live descendants of ``pid`` (from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_every_worker_and_the_command_resumes(tmp_path, one_process, sig):
    """Ctrl-C, or SIGTERM (a cluster's time limit), stops the workers with the parent.

    The command starts with SIGINT at its default, as a terminal's foreground process has
    it: a test runner started in the background by a shell without job control inherits
    SIGINT ignored, and so would the command (Python keeps an ignored SIGINT ignored)."""
    args = [sys.executable, "-m", "lmcollapse.cli", *_command(tmp_path, "--jobs", "2")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = tmp_path / "quickstart"
    deadline = time.monotonic() + 300
    while not list(run.rglob("train.done")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until the workers have finished a step
    workers = _children(proc.pid)
    assert len(workers) == 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "resume" in err
    assert not [w for w in workers if Path(f"/proc/{w}").exists()
                and "Z" not in Path(f"/proc/{w}/stat").read_text().split(")")[1][:3]]
    assert _values(run) != _values(one_process)  # it stopped before the end
    assert run_main(_command(tmp_path, "--jobs", "2")) == 0
    assert _values(run) == _values(one_process)


@pytest.mark.slow
def test_a_killed_worker_is_reported_and_the_rerun_finishes(tmp_path, one_process):
    """Worker 1 is SIGKILLed at its third training step (lmcollapse.faults)."""
    args = [sys.executable, "-m", "lmcollapse.cli", *_command(tmp_path, "--jobs", "2")]
    killed = subprocess.run(args, env={**os.environ, "LMCOLLAPSE_KILL_AT": "train_step:3@1"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 1, killed.stderr[-3000:]
    assert "worker 1 ended (exit code -9) while running seed" in killed.stderr
    assert run_main(_command(tmp_path, "--jobs", "2")) == 0
    assert _values(tmp_path / "quickstart") == _values(one_process)


def test_the_plan_divides_cores_and_gpus():
    assert make_plan("auto", units=9, cores=2, gpus=[]) == make_plan(2, 9, 2, [])
    plan = make_plan("auto", units=9, cores=16, gpus=[])
    assert (plan.jobs, plan.threads, set(plan.devices)) == (9, 1, {None})  # <= units
    plan = make_plan(3, units=9, cores=16, gpus=[])
    assert (plan.jobs, plan.threads) == (3, 5)
    plan = make_plan("auto", units=12, cores=32, gpus=["0", "1", "2", "3"])
    assert (plan.jobs, plan.threads, plan.devices) == (4, 8, ("0", "1", "2", "3"))
    plan = make_plan(8, units=12, cores=32, gpus=["2", "3"])  # several cells per GPU
    assert plan.devices == ("2", "3") * 4 and plan.threads == 4
    assert "2 GPU(s), 4 per GPU" in plan.describe()
    assert make_plan(4, units=1, cores=8, gpus=[]).jobs == 1  # one unit: one process
    assert make_plan(2, units=9, cores=16, gpus=[], cpu_threads=3).threads == 3  # fixed
    assert not make_plan(3, units=9, cores=16, gpus=[]).capped


def test_more_workers_than_cores_are_capped_and_said():
    """``--jobs 999`` on 2 cores: two workers, and a line saying why (not 9 processes sharing
    2 cores)."""
    plan = make_plan(999, units=9, cores=2, gpus=[])
    assert (plan.jobs, plan.threads) == (2, 1)
    assert plan.capped == ("jobs: 999 asked, 2 started: 2 CPU core(s) here (a worker past "
                           "them would only wait)")
    plan = make_plan(8, units=3, cores=16, gpus=["0"])
    assert plan.jobs == 3 and "3 unit(s) of (seed, cell) to run" in plan.capped
    assert make_plan(4, units=9, cores=2, gpus=["0", "1"]).jobs == 4  # GPUs compute


@pytest.mark.parametrize(("value", "message"), [
    ("0", "jobs: must be auto or a number of worker processes in 1..1024, got 0"),
    ("many", "jobs"),
])
def test_a_bad_jobs_value_is_refused_naming_the_key(tmp_path, capsys, value, message):
    assert run_main(_command(tmp_path, "--jobs", value)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "quickstart").exists()
    with pytest.raises(ConfigError, match="jobs"):
        tiny_config(tmp_path, f"jobs={value}")


def test_inside_a_slurm_task_the_allocation_is_the_core_budget(monkeypatch):
    """A 1-CPU Slurm task on a node without task affinity sees every core; `jobs: auto`
    must count the allocation (issue 36: it started 2 workers per 1-CPU task)."""
    from lmcollapse.parallel import cpu_budget

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert cpu_budget() == (4, "CPU affinity")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cpu_budget() == (1, "SLURM_CPUS_PER_TASK") and cpu_cores() == 1
    assert make_plan("auto", units=6, cores=cpu_cores(), gpus=[]).jobs == 1
    for junk in ("", "x", "0", "8"):  # unset, unreadable, or more than the affinity gives
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", junk)
        assert cpu_budget() == (4, "CPU affinity")
