"""Benchmark the three steps for a config (the same as ``lmcollapse bench``)::

    python scripts/bench.py --config configs/quickstart.yaml
    accelerate launch scripts/bench.py --config configs/shumailov2023.yaml --steps 50
"""

import sys

from lmcollapse.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(["bench", *sys.argv[1:]]))
