"""Paired comparisons of chosen policies of one run, the numbers behind a README claim.

    python scripts/compare_policies.py runs/curation \
        --pairs replace:replace-gen0-bestof4,accumulate:accumulate-oracle-best50 \
        --metrics perplexity,tail_mass_ratio [--generation 3]

For each pair ``A:B`` and metric: the mean of A and of B over seeds at the generation
(default: the final one; ``A@0`` names A at generation 0, e.g. ``replace@0:replace``),
the mean per-seed difference B - A, on how many seeds B is below A, and the two-sided
paired t-test p over seeds (:func:`lmcollapse.results.paired_test`, the leaderboard's
test; seeds pair because generation 0 is shared). Reads metrics.json only, like the
report.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from lmcollapse.errors import ReportError
from lmcollapse.results import check_name, load_runs, paired_test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory (runs/<experiment>)")
    p.add_argument("--pairs", required=True, help="comma-separated A:B policy labels")
    p.add_argument("--metrics", required=True, help="comma-separated value keys")
    p.add_argument("--generation", type=int, default=None, help="default: the final one")
    args = p.parse_args(argv)
    try:
        exp = load_runs([args.run])[0]
        gen = exp.generations if args.generation is None else args.generation
        pairs = []
        for text in (x for x in args.pairs.split(",") if x):
            sides = text.split(":")
            if len(sides) != 2:
                raise ReportError(f"--pairs: {text!r} is not A:B")
            pair = []
            for side in sides:
                label, _, at = side.partition("@")
                check_name("policy", label, exp.policies)
                if at and not at.isdigit():
                    raise ReportError(f"--pairs: {side!r}: a generation after @ is a number")
                pair.append((side, label, int(at) if at else gen))
            pairs.append(pair)
        print(f"{exp.key}, generation {gen} unless @k: paired over seeds {exp.seeds}\n")
        print("| metric | A | B | mean A | mean B | mean(B − A) | seeds B < A | p |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for metric in (m for m in args.metrics.split(",") if m):
            for (name_a, a, ga), (name_b, b, gb) in pairs:
                va, vb = exp.values(a, metric, ga), exp.values(b, metric, gb)
                if not va or not vb:
                    raise ReportError(f"no {metric!r} for {name_a} or {name_b}")
                n, diff, pval = paired_test(vb, va)
                below = sum(vb[s] < va[s] for s in va.keys() & vb.keys())
                print(f"| {metric} | {name_a} | {name_b} | {statistics.fmean(va.values()):.4g} "
                      f"| {statistics.fmean(vb.values()):.4g} | {diff:+.4g} | {below}/{n} | "
                      f"{pval:.3g} |")
    except ReportError as err:
        print(f"compare_policies: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
