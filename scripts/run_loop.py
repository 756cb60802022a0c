"""Run (or resume) a model-collapse experiment.

Exact commands::

    # one process (CPU or one GPU)
    python scripts/run_loop.py --config configs/quickstart.yaml
    # several GPUs / processes
    accelerate launch scripts/run_loop.py --config configs/shumailov2023.yaml
    # override any config value with a dotted key
    python scripts/run_loop.py --config configs/quickstart.yaml seeds=[0,1] train.lr=1e-3

Re-running the same command resumes at the first unfinished step.
"""

import sys

from lmcollapse.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(["run", *sys.argv[1:]]))
