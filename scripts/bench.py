"""Benchmark a config on this machine (the same as ``lmcollapse bench``): generation and
training throughput against a per-prompt ``model.generate`` loop and ``transformers.Trainer``,
and where the time of the config's own loop goes. Prints one JSON record on stdout::

    python scripts/bench.py --config configs/quickstart.yaml                 # several minutes
    python scripts/bench.py --config configs/quickstart.yaml --small         # about a minute
    python scripts/bench.py --config configs/quickstart.yaml --out bench.json
    accelerate launch scripts/bench.py --config configs/shumailov2023.yaml --steps 50

See :mod:`lmcollapse.bench` for the figures and their keys.
"""

import sys

from lmcollapse.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(["bench", *sys.argv[1:]]))
