"""SIGKILL in every phase (training, generation, measurement, an artifact write): the run
resumes and ends with exactly the numbers of a run that was never killed.

The kill points are :mod:`lmcollapse.faults`' (``LMCOLLAPSE_KILL_AT=<point>:<n>``): the
process kills itself there, deterministically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICKSTART, TINY, tiny_config

from lmcollapse.loop import CollapseLoop

SMALL = ["generations=1", "policies=[replace]", "metrics.names=[perplexity,diversity,tail]"]


def values(run_dir: Path) -> dict[str, dict]:
    return {str(p.relative_to(run_dir)): json.loads(p.read_text())["values"]
            for p in sorted(run_dir.rglob("metrics.json"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    cfg = tiny_config(tmp_path_factory.mktemp("reference"), *SMALL)
    CollapseLoop(cfg).run()
    return values(cfg.run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["train_step:3", "generate_batch:1", "measure_metric:2",
                                   "atomic_write:6"])
def test_killed_anywhere_resumes_to_the_same_numbers(tmp_path, point, reference):
    args = [sys.executable, "-m", "lmcollapse.cli", "run", "--config", str(QUICKSTART), *TINY,
            *SMALL, f"output_dir={tmp_path}"]
    killed = subprocess.run(args, env={**os.environ, "LMCOLLAPSE_KILL_AT": point},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "quickstart"
    assert values(run_dir) != reference  # it really stopped before the end
    assert not list(run_dir.rglob("*.tmp")) or point == "atomic_write:6"
    CollapseLoop(tiny_config(tmp_path.parent / tmp_path.name, *SMALL,
                             f"output_dir={tmp_path}")).run()
    assert values(run_dir) == reference
