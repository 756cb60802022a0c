"""Reports: leaderboards, per-generation tables, plots, lineages and early warnings from run
directories, read as JSON and parquet only (never torch, so tables are rebuilt anywhere).

The modules go one way, each importing only those of earlier phases:

1. load: :mod:`~lmcollapse.report.stats` (the statistics, no run knowledge) and
   :mod:`~lmcollapse.report.load` (run directories into results);
2. compute: :mod:`~lmcollapse.report.compute` (leaderboard, per-generation tables, paired
   tests), :mod:`~lmcollapse.report.documents` (per-sample early warnings, bootstrap
   intervals), :mod:`~lmcollapse.report.lineages` (prompts followed through the
   generations);
3. render: :mod:`~lmcollapse.report.formats` (Markdown, CSV, LaTeX, HTML),
   :mod:`~lmcollapse.report.plots`, :mod:`~lmcollapse.report.documents_formats`,
   :mod:`~lmcollapse.report.lineages_formats`;
4. write: :mod:`~lmcollapse.report.write` (``lmcollapse report``, ``write_report``) and
   :mod:`~lmcollapse.report.compare` (``lmcollapse compare``, ``plan-seeds``).
"""
