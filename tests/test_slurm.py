"""A real Slurm (one node, `scripts/slurm_local.sh start`; `.ci/run` starts and stops it):
`lmcollapse submit` and `scripts/slurm_array.sh` run a tiny experiment as job arrays, and
every metrics.json equals a local one-process run; a cancelled task, resubmitted, recomputes
only what was missing; a request the partition cannot meet is one line. Skipped where no
Slurm answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICKSTART, TINY, tiny_config

from lmcollapse.cli import run_main
from lmcollapse.layout import RunLayout
from lmcollapse.loop import CollapseLoop

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["seeds=[0,1]", "generations=1", "policies=[replace,accumulate]",
         "train.budget_steps=6", "metrics.names=[perplexity,diversity]"]


def _slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(state.strip() in ("idle", "mixed", "allocated") for state in out.split())


pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.skipif(
    not _slurm_answers(), reason="no Slurm answers here (bash scripts/slurm_local.sh start, "
    "as root on Debian with slurm-wlm and munge; .ci/run does it)")]


def _values(run: Path) -> dict[str, dict]:
    return {str(p.relative_to(run)): json.loads(p.read_text())["values"]
            for p in RunLayout(run).metrics_files()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    cfg = tiny_config(tmp_path_factory.mktemp("one"), *SMALL)
    CollapseLoop(cfg).run()
    return _values(cfg.run_dir)


def test_the_default_request_on_a_cpu_partition_is_one_line(tmp_path, capsys):
    code = run_main(["submit", "--config", str(QUICKSTART), *TINY, *SMALL,
                     f"output_dir={tmp_path}", "--shards", "2", "--partition", "debug",
                     "--cluster", "slurm"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--gpus-per-job 1: partition 'debug' has no GPUs (sinfo)" in err.splitlines()[-1]
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_submit_runs_the_array_on_slurm_as_one_process_would(tmp_path, reference):
    code = run_main(["submit", "--config", str(QUICKSTART), *TINY, *SMALL,
                     f"output_dir={tmp_path}", "--shards", "2", "--partition", "debug",
                     "--cluster", "slurm", "--gpus-per-job", "0", "--cpus-per-job", "1",
                     "--mem-gb", "2", "--timeout-min", "20", "--wait"])
    run = tmp_path / "quickstart"
    logs = "\n".join(p.read_text() for p in (run / "jobs").rglob("*.err"))
    assert code == 0, logs[-3000:]
    assert _values(run) == reference


def _sbatch(out: Path, *extra: str, wait: bool = True) -> str:
    env = {**os.environ, "LMCOLLAPSE_VENV": sys.prefix}
    cmd = ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "--mem=2G",
           f"--output={out}/slurm-%A_%a.out", *(["--wait"] if wait else []),
           "scripts/slurm_array.sh", str(QUICKSTART), "2", *TINY, *SMALL, *extra]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    logs = "\n".join(p.read_text()[-1500:] for p in out.glob("slurm-*.out"))
    assert done.returncode == 0, done.stderr + logs
    return done.stdout.strip().split(";")[0]


def _queued(job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True,
                         text=True, timeout=30).stdout
    return out.split("\n") if out.strip() else []


def test_the_sbatch_script_cancelled_and_resubmitted_recomputes_only_what_is_missing(
        tmp_path, reference):
    runs = tmp_path / "runs"
    job = _sbatch(tmp_path, f"output_dir={runs}", wait=False)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # cancel task 1 once it runs
        if any(line.startswith(f"{job}_1 RUNNING") for line in _queued(job)):
            time.sleep(3)
            subprocess.run(["scancel", f"{job}_1"], check=True, timeout=30)
            break
        time.sleep(0.5)
    while _queued(job) and time.monotonic() < deadline:
        time.sleep(1)
    run = runs / "quickstart"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*.done")}
    assert len(_values(run)) < len(reference)  # the cancelled task left its part undone
    _sbatch(tmp_path, f"output_dir={runs}")
    assert _values(run) == reference
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*.done")}
    assert {p: after[p] for p in before} == before  # nothing finished was redone
