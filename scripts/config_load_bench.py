"""How long a population's config takes to load and to become cells, by participants.

    python scripts/config_load_bench.py [--participants 10,50,200] [--repeats 3]

Prints one line per size: the median seconds of ``load_config`` (which checks every cell)
and of ``Grid.of`` (which builds them again for the run), after one warm-up load (imports
and the metric registry are paid once, not per size). Issue 34 measured 25 s for 200
participants before each participant's config stopped resolving type hints anew.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from lmcollapse.config import load_config
from lmcollapse.grid import Grid

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def population(k: int) -> str:
    entry = {"name": "internet", "synthetic_share": 0.5, "human_source": "source",
             "participants": [{"label": f"p{i}", "weight": 1.0 + i % 3} for i in range(k)]}
    return "policies=[" + json.dumps(entry) + "]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--participants", default="10,50,200")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    load_config(QUICKSTART, [population(2)])  # warm-up: imports, registries
    for k in map(int, args.participants.split(",")):
        loads, grids = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            cfg = load_config(QUICKSTART, [population(k)])
            t1 = time.perf_counter()
            grid = Grid.of(cfg)
            grids.append(time.perf_counter() - t1)
            loads.append(t1 - t0)
        print(f"{k} participants: load_config {statistics.median(loads):.2f} s, Grid.of "
              f"{statistics.median(grids):.2f} s (median of {args.repeats}; "
              f"{len(grid.lineages)} cells)")


if __name__ == "__main__":
    main()
