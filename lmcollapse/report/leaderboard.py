"""``lmcollapse leaderboard FILES...``: results files of one protocol, from different runs,
machines and people, merged into one ranked table (the report's tables, statistics and
marks; plots and early warnings included).

Merging (:func:`merge`): the files of one protocol (the same ``protocol_sha256``) become
one set of results. Each cell's rows come from the one file that holds it; a cell held by
two files with different values is refused (it would be two results under one name). The
shared rows (each seed's generation 0 and human row) come from the first file; a later
file whose generation 0 differs (run on another machine, whose numbers differ in the last
digits) keeps its own, so each of its cells is measured against the generation 0 it was
trained from, and the difference is listed under the table. Seeds pair across files as
they pair within one run (the same seed draws the same data and the same generation-0
initialisation); a comparison uses the seeds both sides have and says how many.

Files of different protocols are refused, naming the keys that differ, unless
``--by-protocol`` asks for one leaderboard per protocol (each in a folder named by its
hash).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmcollapse.errors import ReportError
from lmcollapse.report.results import (
    ExportedResults,
    guarded,
    protocol_differences,
    read_results,
)
from lmcollapse.report.write import add_arguments as add_report_arguments
from lmcollapse.report.write import write_report


def _name(exp: ExportedResults) -> str:
    return exp.shown[0] if exp.shown else str(exp.path)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("values") == b.get("values")


def merge(group: list[ExportedResults]) -> ExportedResults:
    """One protocol's results files as one set of results (see the module's rules)."""
    first = group[0]
    names = {e.name for e in group}
    out = ExportedResults(
        names.pop() if len(names) == 1 else f"protocol {first.protocol_sha256[:12]}", [],
        dict(first.info), path=first.path, protocol=first.protocol,
        protocol_sha256=first.protocol_sha256)
    out.info["cells"] = {}
    owner: dict[str, Path] = {}
    shared_from: dict[tuple[Any, ...], Path] = {}
    notes: list[str] = []
    for exp in group:
        out.dirs.append(exp.path)
        out.shown = [*(out.shown or []), _name(exp)]
        out.info["cells"].update(exp.info.get("cells", {}))
        out.populations.update(exp.populations)
        out.samples.update(exp.samples)
        for seed in exp.seeds:
            if seed not in out.seeds:
                out.seeds.append(seed)
        own_zero = set()
        for key, rec in exp.records.items():
            policy, seed, gen = key
            if policy in (None, "human"):
                held = out.records.get(key)
                if held is None:
                    out.records[key], out.row_dirs[key] = rec, exp.row_dirs[key]
                    shared_from[key] = _name(exp)
                elif not _same(held, rec):
                    if policy is None:  # this file's cells keep the generation 0 they had
                        own_zero.add(seed)
                    what = "generation 0" if policy is None else "human row"
                    notes.append(f"seed {seed}: the {what} of {_name(exp)} differs from "
                                 f"{shared_from[key]}'s; " + (
                                     "its cells are measured from their own generation 0"
                                     if policy is None else "the first is shown"))
                continue
            if policy in owner and owner[policy] != exp.path:
                held = out.records.get(key)
                if held is not None and not _same(held, rec):
                    raise ReportError(
                        f"{exp.path}: cells: {policy!r} is also in {owner[policy]} with "
                        "different values; a cell is one result: rename one (its `label`) "
                        "or leave one file out")
                continue
            owner[policy] = exp.path
            out.records[key], out.row_dirs[key] = rec, exp.row_dirs[key]
            if policy not in out.policies:
                out.policies.append(policy)
        for seed in own_zero:
            for policy in exp.policies:
                zero = (None, seed, 0)
                if owner.get(policy) == exp.path:
                    out.zero_from[policy] = exp.path
                    if (policy, seed, 0) not in exp.records:
                        out.records[(policy, seed, 0)] = exp.records[zero]
                        out.row_dirs[(policy, seed, 0)] = exp.row_dirs[zero]
        out.population_records.update(exp.population_records)
    out.seeds.sort()
    out.info["policies"] = list(out.policies)
    out.merged = [f"{len(group)} results file(s) of protocol {first.protocol_sha256[:12]}; "
                  + "; ".join(f"{', '.join(cells)} from {path}" for path, cells in (
                      (_name(e), [p for p in out.policies if owner.get(p) == e.path])
                      for e in group) if cells), *dict.fromkeys(notes)]
    out.key = out.name
    return out


def group_by_protocol(paths: list[str | Path], by_protocol: bool = False
                      ) -> list[list[ExportedResults]]:
    """The results files, read and checked, grouped by protocol in the order first seen;
    several protocols without ``by_protocol`` are refused naming the keys that differ."""
    if not paths:
        raise ReportError("no results file given")
    groups: dict[str, list[ExportedResults]] = {}
    seen: set[Path] = set()
    for p in paths:
        if Path(p).resolve() in seen:
            continue
        seen.add(Path(p).resolve())
        exp = read_results(p)
        groups.setdefault(exp.protocol_sha256, []).append(exp)
    if len(groups) > 1 and not by_protocol:
        (a, *_), (b, *_) = list(groups.values())[:2]
        diffs = protocol_differences(a.protocol, b.protocol)
        raise ReportError(
            f"{b.path}: protocol_sha256: its protocol differs from {a.path}'s in "
            f"{len(diffs)} key(s): {'; '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}"
            " (results of one protocol make one leaderboard; --by-protocol writes one per "
            "protocol)")
    return list(groups.values())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``lmcollapse leaderboard``: the report's options, results files in place of runs."""
    add_report_arguments(p, texts=False,
                         inputs="results files (`lmcollapse export RUN`) of one protocol",
                         out="output folder (default: ./leaderboard)")
    p.add_argument("--by-protocol", action="store_true",
                   help="one leaderboard per protocol (each in OUT/<protocol hash>) instead "
                   "of refusing files of different protocols")


def command(args: argparse.Namespace) -> int:
    """Merge, then write each protocol's leaderboard as ``lmcollapse report`` writes one."""
    def work() -> str:
        groups = group_by_protocol(args.runs, args.by_protocol)
        out = Path(args.out or "leaderboard")
        cols = [c.strip() for c in args.columns.split(",") if c.strip()] \
            if args.columns else None
        tex = [c.strip() for c in args.tex_columns.split(",") if c.strip()] \
            if args.tex_columns else None
        lines = []
        for group in groups:
            merged = merge(group)
            where = out / merged.protocol_sha256[:12] if len(groups) > 1 else out
            res = write_report([], where, args.rank_by, args.metric, cols,
                               args.onset_threshold, args.histogram_policy,
                               not args.no_plots, 0, 0, tex, args.correction,
                               args.onset_metric, args.onset_rule, exps=[merged])
            lines += [res["markdown"], f"wrote {len(res['files'])} files into {where} "
                      f"(protocol {merged.protocol_sha256[:12]}, {len(group)} results "
                      "file(s))"]
        return "\n".join(lines)
    return guarded("leaderboard", work)
