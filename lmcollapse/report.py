"""Tables from run directories. Reads JSON only: never imports torch or loads a model.

    lmcollapse report runs/quickstart --metric perplexity
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


class ReportError(ValueError):
    """A directory that is not a run, or a metric that no run measured."""


def load_records(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Every ``metrics.json`` below the given run directories (each must hold experiment.json)."""
    records = []
    for run in map(Path, run_dirs):
        if not (run / "experiment.json").is_file():
            raise ReportError(f"{run} is not a run directory (no experiment.json)")
        for path in sorted(run.glob("seed_*/**/metrics.json")):
            rec = json.loads(path.read_text())
            rec["run"] = str(run)
            records.append(rec)
    return records


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def per_generation(records: list[dict[str, Any]], metric: str) -> dict[str, dict[int, tuple]]:
    """``{policy: {generation: (mean, std, n_seeds)}}``; generation 0 is shared by all."""
    known = sorted({k for r in records for k in r["values"]})
    if metric not in known:
        raise ReportError(f"no run measured {metric!r}; measured: {', '.join(known)}")
    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    policies = sorted({r["policy"] for r in records if r["policy"] not in (None, "human")})
    for r in records:
        if metric not in r["values"] or r["policy"] == "human":
            continue
        for policy in policies if r["policy"] is None else [r["policy"]]:
            cells[policy][r["generation"]].append(r["values"][metric])
    return {p: {g: _mean_std(v) for g, v in sorted(gens.items())} for p, gens in cells.items()}


def markdown_table(table: dict[str, dict[int, tuple]], digits: int = 2) -> str:
    """Policies as rows, generations as columns, ``mean ± std`` where there are several seeds."""
    gens = sorted({g for row in table.values() for g in row})
    lines = ["| policy | " + " | ".join(f"gen {g}" for g in gens) + " |",
             "|---|" + "---:|" * len(gens)]
    for policy, row in sorted(table.items()):
        cells = []
        for g in gens:
            if g not in row:
                cells.append("…")
                continue
            mean, std, n = row[g]
            cells.append(f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else ""))
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="lmcollapse report")
    p.add_argument("runs", nargs="+", help="run directories (runs/<experiment>)")
    p.add_argument("--metric", default="perplexity")
    args = p.parse_args(argv)
    try:
        table = per_generation(load_records(args.runs), args.metric)
    except ReportError as err:
        print(f"lmcollapse report: {err}")
        return 2
    print(markdown_table(table))
    return 0
