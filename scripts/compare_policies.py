"""Paired comparisons of chosen policies of one run, the numbers behind a README claim.

    python scripts/compare_policies.py runs/curation \
        --pair replace replace-gen0-bestof4 --pair replace/gen_0 replace \
        --metrics perplexity,tail_mass_ratio [--generation 3] [--change]

For each ``--pair A B`` and metric: the mean of A and of B over seeds at the generation
(default: the final one; ``A/gen_0`` is A at generation 0), the mean per-seed difference
B - A, on how many seeds B is below A, and the two-sided paired t-test p over seeds
(:func:`lmcollapse.results.paired_test`, the leaderboard's test; seeds pair because
generation 0 is shared). ``--change`` compares each side's change since generation 0
(value at its generation - value at generation 0, per seed). Reads metrics.json only,
like the report.
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
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A", "B"),
                   help="two policy labels (cell keys); repeat for more pairs")
    p.add_argument("--metrics", required=True, help="comma-separated value keys")
    p.add_argument("--generation", type=int, default=None, help="default: the final one")
    p.add_argument("--change", action="store_true",
                   help="compare the change since generation 0 instead of the values")
    args = p.parse_args(argv)
    try:
        exp = load_runs([args.run])[0]
        gen = exp.generations if args.generation is None else args.generation
        pairs = []
        for pair in args.pair:
            sides = []
            for side in pair:
                label = side.removesuffix("/gen_0")
                check_name("policy", label, exp.policies)
                sides.append((side, label, 0 if side != label else gen))
            pairs.append(sides)
        what = "change since generation 0" if args.change else "values"
        print(f"{exp.key}, {what} at generation {gen} (/gen_0: at 0), paired over seeds "
              f"{exp.seeds}\n")
        print("| metric | A | B | mean A | mean B | mean(B − A) | seeds B < A | p |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for metric in (m for m in args.metrics.split(",") if m):
            for (name_a, a, ga), (name_b, b, gb) in pairs:
                va, vb = exp.values(a, metric, ga), exp.values(b, metric, gb)
                if args.change:
                    za, zb = exp.values(a, metric, 0), exp.values(b, metric, 0)
                    va = {k: v - za[k] for k, v in va.items() if k in za}
                    vb = {k: v - zb[k] for k, v in vb.items() if k in zb}
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
