"""``lmcollapse site FILES... --out DIR``: a static site of results files, to put on any
static host (or open from disk: no server, no network, every link relative).

One folder: ``index.html`` lists the protocols (what each fixes, its cells, seeds and
files, its leading cell), and each protocol has a folder named by the first 12 hex digits
of its hash with its leaderboard (``leaderboard.html`` and the report's other files, from
the results files merged as ``lmcollapse leaderboard`` merges them), ``protocol.json``
(the protocol and its hash: what a new cell must be run under) and ``results/`` (the
results files themselves, to download and merge with).
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
from pathlib import Path
from typing import Any

from lmcollapse.report.formats import page
from lmcollapse.report.leaderboard import group_by_protocol, merge
from lmcollapse.report.results import ExportedResults, guarded, read_results
from lmcollapse.report.write import write_report


def _describe(exp: ExportedResults) -> dict[str, str]:
    """What a protocol fixes, in a few words for the index."""
    p = exp.protocol
    data, model, train, gen = (p.get(k, {}) for k in ("data", "model", "train", "generate"))
    scratch = model.get("scratch", {})
    model_text = (f"scratch {scratch.get('arch')} (hidden {scratch.get('hidden_size')}, "
                  f"{scratch.get('num_layers')} layers)" if model.get("source") == "scratch"
                  else str(model.get("name_or_path")))
    return {
        "data": f"{data.get('source')}, blocks of {data.get('block_tokens')} tokens",
        "model": f"{model_text}, init {model.get('init')}",
        "training": f"lr {train.get('lr')}, batch {train.get('batch_size')}, budget "
                    f"{train.get('budget_steps') or train.get('budget_tokens') or '-'}",
        "decoding": f"{gen.get('strategy')}, temperature {gen.get('temperature')}, "
                    f"{gen.get('prompt_tokens')} + {gen.get('new_tokens')} tokens",
        "metrics": ", ".join(p.get("metrics", {}).get("names", [])),
    }


def _leader(lb: Any) -> str:
    row = next((r for r in lb.rows if r.rank == 1), None)
    if row is None:
        return "-"
    cell = row.cells.get(lb.rank_by)
    value = f" ({lb.rank_by} {cell.stat.mean:.4g})" if cell is not None and cell.stat.n else ""
    return f"{row.policy}{value}"


def write_site(paths: list[str | Path], out: str | Path, plots: bool = True) -> list[Path]:
    """Write the site; returns the pages written (index first)."""
    out = Path(out)
    groups = group_by_protocol(paths, by_protocol=True)
    rows, pages = [], []
    for group in groups:
        folder = out / group[0].protocol_sha256[:12]
        (folder / "results").mkdir(parents=True, exist_ok=True)
        copies = []
        for i, exp in enumerate(group):  # the page links its own copies: the site is whole
            copy = folder / "results" / f"{i}-{exp.path.name}"
            shutil.copyfile(exp.path, copy)
            copies.append(copy)
        group = [read_results(c) for c in copies]
        for exp, copy in zip(group, copies, strict=True):  # named as the page links them
            exp.shown = [copy.relative_to(folder).as_posix()]
        merged = merge(group)
        res = write_report([], folder, plots=plots, lineage_prompts=0, exps=[merged])
        copies = [c.relative_to(out).as_posix() for c in copies]
        (folder / "protocol.json").write_text(json.dumps(
            {"protocol_sha256": merged.protocol_sha256, "protocol": merged.protocol},
            indent=1) + "\n")
        pages.append(folder / "leaderboard.html")
        rows.append((merged, group, _describe(merged), _leader(res["leaderboard"]), copies))
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.write_text(render_index(rows))
    return [index, *pages]


def render_index(rows: list[tuple[ExportedResults, list[ExportedResults], dict[str, str],
                                  str, list[str]]]) -> str:
    """The index: one entry per protocol (a definition list: readable at any width)."""
    e = html.escape
    entries = []
    for merged, group, what, leader, copies in rows:
        h = merged.protocol_sha256[:12]
        files = " ".join(f'<a href="{e(c)}">{e(c.rsplit("/", 1)[1])}</a>' for c in copies)
        items = [("leaderboard", f'<a href="{h}/leaderboard.html">{h}/leaderboard.html</a>'),
                 ("cells", f"{len(merged.policies)}: {e(', '.join(merged.policies))}"),
                 ("leader", e(leader)),
                 ("seeds", e(", ".join(map(str, merged.seeds)))),
                 ("generations", e(str(merged.generations))),
                 *((k, e(v)) for k, v in what.items()),
                 ("results files", files),
                 ("protocol", f'<a href="{h}/protocol.json">protocol.json</a> '
                              f"<small>sha256 {e(merged.protocol_sha256)}</small>")]
        names = ", ".join(sorted({x.name for x in group}))
        entries.append(f'<h3><a href="{h}/leaderboard.html">{e(names)}</a> '
                       f"<small>protocol {h}</small></h3><dl>"
                       + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>")
    intro = (
        "<p>Each entry is a <b>protocol</b>: the data, model, training, decoding, metrics, "
        "generations and seeds every cell under it was run with, named by its sha256. Its "
        "leaderboard ranks the cells of every results file published under it, paired by "
        "seed. To add a cell, run it under the protocol (its config with your policy added "
        "to <code>policies</code>, <code>lmcollapse run --policies &lt;label&gt;</code>), "
        "export it (<code>lmcollapse export</code>) and merge it with the protocol's "
        "results files (<code>lmcollapse leaderboard</code>).</p>")
    return page("lmcollapse results", [
        "<h1>lmcollapse results</h1>", intro, f"<h2>Protocols ({len(rows)})</h2>",
        *entries])


def command(args: argparse.Namespace) -> int:
    def work() -> str:
        made = write_site(args.files, args.out, plots=not args.no_plots)
        return (f"wrote {made[0]} and {len(made) - 1} protocol page(s); open {made[0]} or put "
                f"{args.out} on any static host")
    return guarded("site", work)
