"""scripts/gpu_check.sh, checked on the CPU as far as it goes: with GPU_CHECK_SMALL=1 it
runs every part on a tiny OPT (bench with the parallel section, bf16 against float32)
and writes its summary; without a GPU and without it, it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
#: the script runs `python`: this interpreter's, activated or not
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_a_tiny_opt(tmp_path):
    out = tmp_path / "check"
    run = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                         env={**ENV, "GPU_CHECK_SMALL": "1"}, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    bench = summary["bench"]
    for key in ("train_tokens_per_s", "generate_sample_tokens_per_s",
                "generate_beam_tokens_per_s", "loop_wall_s", "loop_parallel_wall_s"):
        assert bench[key] > 0, key
    assert bench["loop_jobs"] == 2 and bench["loop_parallel_identical"] is True
    rows = summary["bf16_vs_fp32"]["rows"]
    assert set(rows) == {"seed_0/gen_00", "seed_0/human", "seed_0/replace/gen_01",
                         "seed_0/accumulate/gen_01"}
    # the two precisions really trained differently (bf16 moves the numbers a little)
    assert summary["bf16_vs_fp32"]["perplexity_max_relative_difference"] > 0
    assert json.loads(run.stdout[run.stdout.index("{"):])["tolerance"] == 0.05


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "check")], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert run.returncode == 2 and "no CUDA device" in run.stderr
