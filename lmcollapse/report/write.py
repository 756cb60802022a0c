"""``lmcollapse report``: leaderboards, per-generation tables and plots from run directories.

    lmcollapse report runs/quickstart [runs/more ...] [--rank-by perplexity]
        [--metric perplexity] [--columns perplexity,mauve] [--onset-threshold 0.1]
        [--histogram-policy replace] [--out DIR] [--no-plots] [--lineages 3]
        [--tex-columns perplexity,mauve|all] [--correction holm|bh|none]
        [--onset-metric perplexity] [--onset-rule relative|noise]

One way through the package: load the run directories (:mod:`~lmcollapse.report.load`),
compute the tables and tests (:mod:`~lmcollapse.report.compute`,
:mod:`~lmcollapse.report.documents`, :mod:`~lmcollapse.report.lineages`), render them
(:mod:`~lmcollapse.report.formats`, :mod:`~lmcollapse.report.plots`,
:mod:`~lmcollapse.report.documents_formats`, :mod:`~lmcollapse.report.lineages_formats`),
then write the files (here). JSON and parquet only, never torch.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmcollapse.errors import ReportError
from lmcollapse.files import write_text
from lmcollapse.layout import ReportLayout, bounded
from lmcollapse.report import (
    documents,
    documents_formats,
    populations,
    populations_formats,
    profile,
    profile_formats,
)
from lmcollapse.report import plots as plotting
from lmcollapse.report.compute import (
    ARROWS,
    Leaderboard,
    generation_marks,
    grid_axes,
    leaderboard,
    per_generation,
    reference_scores,
    sharing_generation0,
    sweep,
)
from lmcollapse.report.formats import (
    GenerationMarks,
    GenerationTables,
    generation_notes,
    latex_columns,
    markdown_table,
    render_csv,
    render_html,
    render_latex,
    render_markdown,
)
from lmcollapse.report.lineages import extremes, lineages, source_truth
from lmcollapse.report.lineages_formats import (
    render_extremes_html,
    render_extremes_markdown,
    render_lineages_html,
    render_lineages_markdown,
)
from lmcollapse.report.load import RunResults, check_name
from lmcollapse.report.results import load_any
from lmcollapse.report.stats import Stat


def _has_generations(table: dict[str, dict[int | str, Any]]) -> bool:
    return any(isinstance(g, int) for row in table.values() for g in row)


def _slug(text: str) -> str:
    """A file name's stem from a label (a cell key may be long: layout.bounded)."""
    return bounded(re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_"))


def write_report(run_dirs: list[str | Path], out: str | Path | None = None,
                 rank_by: str | None = None, metric: str | None = None,
                 columns: list[str] | None = None, onset_threshold: float = 0.1,
                 histogram_policy: str | None = None, plots: bool = True,
                 lineage_prompts: int = 3, lineage_seed: int = 0,
                 tex_columns: list[str] | None = None, correction: str = "holm",
                 onset_metric: str = "perplexity", onset_rule: str = "relative",
                 exps: list[RunResults] | None = None) -> dict[str, Any]:
    """Write ``leaderboard.md|csv|tex|html`` and ``plots/*.png|pdf``; returns what it made.

    Args mirror the command line: ``metric`` names the per-generation table printed and
    returned (default: the ranking metric; the files hold one per leaderboard column),
    ``histogram_policy`` the one policy whose histogram and samples are shown (default:
    every policy), ``out`` the output folder (default: the first run directory),
    ``tex_columns`` the LaTeX table's metrics (default :func:`latex_columns`; ``["all"]``:
    the leaderboard's), ``correction`` how each family of comparisons is corrected
    (``holm``, ``bh``, ``none``), ``onset_metric``/``onset_rule`` how onset is read
    (:class:`lmcollapse.report.compute.Onset`).

    Returns:
        ``{"leaderboard": Leaderboard, "metric": str, "generation_table": per_generation(...),
        "generation_marks": generation_marks(...), "markdown": str, "files": [Path, ...]}``.
    """
    # --- load (run directories and results files; or results already loaded and merged)
    exps = load_any(run_dirs) if exps is None else exps
    policies = list(dict.fromkeys(p for e in exps for p in e.policies))
    if histogram_policy is not None:
        check_name("policy", histogram_policy, sorted(policies))
    shown = [histogram_policy] if histogram_policy else policies
    # --- compute
    c = _compute(exps, rank_by, metric, columns, tex_columns, correction,
                 dict(onset_threshold=onset_threshold, correction=correction,
                      onset_metric=onset_metric, onset_rule=onset_rule))
    # --- render and write (figures, then the text itself, then the leaderboard's formats)
    first = exps[0].dirs[0]
    out = Path(out) if out else first if first.is_dir() else first.with_name(
        first.stem + "-report")
    files_out = ReportLayout(out)
    made, captions = _figures(exps, c, shown, files_out) if plots else ([], {})
    images = {p.stem: p.read_bytes() for p in made if p.suffix == ".png"}
    links = [p.relative_to(out).as_posix() for p in made if p.suffix == ".png"]
    texts, sections = _texts(exps, shown, lineage_prompts, lineage_seed, files_out)
    pops = populations.summarize(exps)
    if pops:  # the pools and homogenization of the populations, before the text itself
        sections.insert(0, populations_formats.render_html(pops))
        if plots:
            made_pop, caps = _population_figures(pops, files_out)
            made += made_pop
            captions.update(caps)
            images.update({p.stem: p.read_bytes() for p in made_pop if p.suffix == ".png"})
            links += [p.relative_to(out).as_posix() for p in made_pop if p.suffix == ".png"]
    if c.warnings:
        texts.append((files_out.early_warning, documents_formats.render_csv(c.warnings)))
        sections.insert(0, documents_formats.render_html(c.warnings))
    texts.append((files_out.profile, profile_formats.render_csv(c.profiles)))
    sections.insert(0, profile_formats.render_html(c.profiles))
    md = render_markdown(c.lb)  # after every file was read: it lists those that could not be
    files = [*(files_out.leaderboard(f).name for f in ("csv", "tex", "md")),
             *([files_out.early_warning.name] if c.warnings else []),
             files_out.profile.name,
             *(path.name for path, _ in texts if path.suffix == ".md"),
             *(p.relative_to(out).as_posix() for p in made if p.suffix == ".pdf"),
             *(os.path.relpath(src, out) for e in exps for src in e.sources)]
    full_md = render_markdown(c.lb, links, c.tables)
    if pops:  # before the figures
        at = full_md.find("\nFigures:")
        at = len(full_md) if at < 0 else at
        full_md = full_md[:at] + "\n" + populations_formats.render_markdown(pops) + full_md[at:]
    at = full_md.find("\nFigures:")  # the collapse profile, before the figures
    at = len(full_md) if at < 0 else at
    full_md = full_md[:at] + "\n" + profile_formats.render_markdown(c.profiles) + full_md[at:]
    if c.warnings:  # before the figures, after the per-generation tables
        at = full_md.find("\nFigures:")
        at = len(full_md) if at < 0 else at
        full_md = full_md[:at] + "\n" + documents_formats.render_markdown(c.warnings) + full_md[at:]
    texts += [(files_out.leaderboard("md"), full_md), (files_out.leaderboard("csv"),
              render_csv(c.lb)), (files_out.leaderboard("tex"), render_latex(c.tex_lb)),
              (files_out.leaderboard("html"), render_html(c.lb, c.tables, images, files,
                                                          sections, captions))]
    for path, text in texts:
        write_text(path, text, record=False)
        made.append(path)
    return {"leaderboard": c.lb, "metric": c.metric, "generation_table": c.table,
            "generation_marks": c.marks, "markdown": md, "files": made,
            "warnings": c.warnings}


@dataclass
class _Computed:
    """What a report shows, computed from the loaded results."""

    lb: Leaderboard
    tex_lb: Leaderboard
    metric: str
    table: dict[str, dict[int | str, Stat]]
    marks: GenerationMarks
    #: (metric, per-generation table, its marks) for every key metric
    tables: GenerationTables
    #: (experiment key or "", the early warning of one per-sample metric)
    warnings: list[tuple[str, documents.EarlyWarning]]
    #: each experiment's collapse profile
    profiles: list[profile.Profile]


def _compute(exps: list[RunResults], rank_by: str | None, metric: str | None,
             columns: list[str] | None, tex_columns: list[str] | None, correction: str,
             rules: dict[str, Any]) -> _Computed:
    """The leaderboard (and the LaTeX one), every key metric's per-generation table, the
    per-sample intervals and early warnings."""
    lb = leaderboard(exps, rank_by, columns, **rules)
    metric = metric or lb.rank_by
    tex_cols = (lb.columns if tex_columns == ["all"] else tex_columns) or latex_columns(lb)
    tex_lb = lb if tex_cols == lb.columns else leaderboard(exps, lb.rank_by, tex_cols, **rules)
    table = per_generation(exps, metric)
    marks = generation_marks(exps, metric, correction)
    # every key metric's per-generation table, in the leaderboard's column order
    tables = [(m, table if m == metric else per_generation(exps, m),
               marks if m == metric else generation_marks(exps, m, correction))
              for m in dict.fromkeys([*lb.columns, metric])]
    # a value only the human row has (the perplexity metric's unigram baseline) has no
    # generations to tabulate or plot: the leaderboard's human row shows it
    tables = [t for t in tables if t[0] == metric or _has_generations(t[1])]
    # what the samples behind per-sample metrics say: intervals within a seed, early warnings
    specs = {id(e): documents.per_sample(e) for e in exps}
    for row in lb.rows:
        for m in lb.columns:
            row.bootstrap[m] = documents.intervals(
                row.experiment, m, row.policy, row.cells[m].generation, specs[id(row.experiment)])
    warnings = [(e.key if len(exps) > 1 else "", documents.early_warning(
        e, spec, correction, [p for p in e.policies if p not in sharing_generation0(e)[1:]]))
        for e in exps for spec in specs[id(e)]]
    profiles = [profile.profile(e, [p for p in e.policies if p not in sharing_generation0(e)[1:]])
                for e in exps]
    return _Computed(lb, tex_lb, metric, table, marks, tables, warnings, profiles)


def _figures(exps: list[RunResults], c: _Computed, shown: list[str],
             files_out: ReportLayout) -> tuple[list[Path], dict[str, str]]:
    """Every figure (PNG and PDF) and its caption: each key metric per generation, each
    grid axis's sweep, Shumailov et al.'s histograms for the ``shown`` policies."""
    made: list[Path] = []
    captions: dict[str, str] = {}
    by_metric = {m: t for m, t, _ in c.tables}
    for m in [m for m in c.lb.columns if m in by_metric]:
        series = {lbl: {g: s for g, s in row.items() if g != "human"}
                  for lbl, row in by_metric[m].items()}
        refs = {("human reference" if len(exps) == 1 else f"human reference ({e.key})"):
                e.human(m).mean for e in exps}
        meta = c.lb.meta[m]
        title = f"{meta['display_name']} {ARROWS[meta['higher_is_better']]}"
        made += plotting.metric_plot(series, refs, title, m, files_out.plot(_slug(m)))
        captions[_slug(m)] = f"{title} per generation"
    for axis in grid_axes(exps):
        for exp in exps:
            meta = c.lb.meta[c.metric]
            title = (f"{meta['display_name']} {ARROWS[meta['higher_is_better']]} at the "
                     "final generation")
            stem = _slug(f"sweep_{c.metric}_{axis}" if len(exps) == 1
                         else f"sweep_{c.metric}_{axis}_{exp.key}")
            made += plotting.sweep_plot(
                sweep(exp, c.metric, axis), {"human reference": exp.human(c.metric).mean},
                title, axis, c.metric, files_out.plot(stem))
            captions[stem] = f"{title}, against {axis}" + (
                f" ({exp.key})" if len(exps) > 1 else "")
    for exp in exps:  # Shumailov et al.'s histograms, one figure per policy
        for pol in (p for p in shown if p in exp.policies):
            scores = reference_scores(exp, pol)
            if not scores:
                continue
            stem = _slug(f"ref_ppl_hist_{pol}" if len(exps) == 1
                         else f"ref_ppl_hist_{exp.key}_{pol}")
            made += plotting.histogram_plot(
                scores, f"Gen-0 perplexity of corpus k: {exp.key} / {pol}",
                files_out.plot(stem))
            captions[stem] = (f"{pol}: perplexity of each generation's corpus under "
                              "generation 0, sample by sample (Shumailov et al., Fig. 1)")
    return made, captions


def _population_figures(pops: list[populations.PopulationSummary], files_out: ReportLayout
                        ) -> tuple[list[Path], dict[str, str]]:
    """Each population's pool, stacked by writer; the homogenization of every population
    per generation, the divergence between two human samples dashed."""
    made: list[Path] = []
    captions: dict[str, str] = {}
    several = len({p.experiment for p in pops}) > 1
    for p in pops:
        name = f"{p.experiment}_{p.key}" if several else p.key
        stem = _slug(f"pool_{name}")
        made += plotting.composition_plot(p.composition, f"Pool crawled: {name}",
                                          files_out.plot(stem))
        captions[stem] = (f"{name}: who wrote the pool each generation crawled (human text "
                          "grey), mean over seeds")
    # over the within-participant floor where the rows have it (older runs: the raw JSD
    # beside two human samples)
    excess = any(s.n for p in pops for s in p.values["jsd_between_excess"].values())
    value = "jsd_between_excess" if excess else "jsd_between"
    series = {(f"{p.experiment}/{p.key}" if several else p.key): {
        k: tuple(s) for k, s in p.values[value].items() if s.n}
        for p in pops if any(s.n for s in p.values[value].values())}
    if series:
        pairs = [s.mean for p in pops for s in p.values["jsd_human_pair"].values() if s.n]
        refs = {"as alike as two halves of one participant": 0.0} if excess else (
            {"two human samples": sum(pairs) / len(pairs)} if pairs else {})
        made += plotting.metric_plot(
            series, refs, "JSD between participants − within one ≈" if excess else
            "JSD between participants ≈", value, files_out.plot("homogenization"))
        captions["homogenization"] = (
            "Homogenization: Jensen-Shannon divergence between participants' corpora per "
            "generation" + (", less the same divergence between two halves of one "
                            "participant's corpus (0: as alike as one participant with "
                            "itself)" if excess else " (falls as they grow alike)"))
    return made, captions


def _texts(exps: list[RunResults], shown: list[str], prompts: int, seed: int,
           files_out: ReportLayout) -> tuple[list[tuple[Path, str]], list[str]]:
    """The text itself: ``prompts`` prompts (drawn with ``seed``) through every generation
    (lineages) and the samples behind the reference quantiles, as Markdown files to write
    and HTML sections."""
    texts: list[tuple[Path, str]] = []
    sections: list[str] = []
    for exp in (e for e in exps if e.has_texts):
        truth = source_truth(exp.config) if prompts > 0 else None
        entropy = truth.entropy_rate() if truth is not None else None
        items = lineages(exp, prompts, seed, truth=truth)
        if items:
            texts.append((files_out.lineages(_slug(exp.key) if len(exps) > 1 else None),
                          render_lineages_markdown(exp, items, exp.seeds[0], entropy)))
            sections.append(render_lineages_html(items, exp.seeds[0], entropy))
        picked = extremes(exp, [p for p in shown if p in exp.policies], seed=seed,
                          truth=truth) if prompts > 0 else {}
        if picked:
            texts.append((files_out.samples(_slug(exp.key) if len(exps) > 1 else None),
                          render_extremes_markdown(picked, entropy)))
            sections.append(render_extremes_html(picked, entropy))
    return texts, sections


def add_arguments(p: argparse.ArgumentParser, texts: bool = True,
                  inputs: str = "run directories (runs/<experiment>) or results files "
                  "(`lmcollapse export`)",
                  out: str = "output folder (default: the first run dir; a results file's: "
                  "FILE-report beside it)") -> None:
    """The options of ``lmcollapse report`` (``texts``: with those of the lineages, which
    only a run directory holds; ``inputs``, ``out``: what its positional arguments and
    ``--out`` are)."""
    p.add_argument("runs", nargs="+", help=inputs)
    p.add_argument("--rank-by", default=None, help="metric that ranks rows (default perplexity)")
    p.add_argument("--metric", default=None,
                   help="metric of the per-generation table (default: the ranking metric)")
    p.add_argument("--columns", default=None, help="comma-separated metrics of the leaderboard")
    p.add_argument("--tex-columns", default=None,
                   help="comma-separated metrics of the LaTeX table (default: the ranking "
                   "metric and one column per other metric, to fit a page; 'all': the "
                   "leaderboard's)")
    p.add_argument("--onset-threshold", type=float, default=0.1,
                   help="with --onset-rule relative: the relative change of the onset metric "
                   "over generation 0, in its worse direction, that marks collapse onset")
    p.add_argument("--onset-metric", default="perplexity",
                   help="the metric whose change marks collapse onset (default perplexity)")
    p.add_argument("--onset-rule", default="relative", choices=["relative", "noise"],
                   help="relative: worse than generation 0 by --onset-threshold, per seed; "
                   "noise: the first generation beyond noise (paired test over seeds)")
    p.add_argument("--correction", default="holm", choices=["holm", "bh", "none"],
                   help="multiple-comparison correction of the significance marks within each "
                   "family (one column of one experiment; one per-generation table)")
    p.add_argument("--histogram-policy", default=None,
                   help="only this policy's histogram figure and samples (default: every "
                   "policy)")
    p.add_argument("--out", default=None, help=out)
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    if not texts:
        return
    p.add_argument("--lineages", type=int, default=3, metavar="N",
                   help="prompts whose continuations are shown generation by generation "
                   "(lineages.md and the HTML page; 0: none)")
    p.add_argument("--lineage-seed", type=int, default=0, help="which prompts (a seed)")


def report_command(args: argparse.Namespace) -> int:
    """``lmcollapse report``: writes the files, prints the leaderboard and one
    per-generation table; returns an exit code."""
    cols = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    try:
        if args.lineages < 0:
            raise ReportError(f"--lineages: a number of prompts >= 0 (0: none), got "
                              f"{args.lineages}")
        res = write_report(args.runs, args.out, args.rank_by, args.metric, cols,
                           args.onset_threshold, args.histogram_policy, not args.no_plots,
                           args.lineages, args.lineage_seed,
                           [c.strip() for c in args.tex_columns.split(",") if c.strip()]
                           if args.tex_columns else None, args.correction, args.onset_metric,
                           args.onset_rule)
    except ReportError as err:
        print(f"lmcollapse report: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"lmcollapse report: cannot write the report ({err}); try --out DIR",
              file=sys.stderr)
        return 1
    print(res["markdown"])
    lb, metric = res["leaderboard"], res["metric"]
    print(f"## Per generation: {metric}\n\n"
          f"{markdown_table(res['generation_table'], res['generation_marks'])}\n")
    print("\n".join(f"- {n}" for n in generation_notes(lb.experiments, metric,
                                                      lb.meta[metric]["higher_is_better"],
                                                      lb.correction)))
    print()
    where = sorted({str(f.parent) for f in res["files"]})
    print(f"wrote {len(res['files'])} files into {', '.join(where)}")
    return 0
