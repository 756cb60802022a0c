"""Render: the populations section of a report (Markdown and HTML), from
:mod:`lmcollapse.report.populations`."""

from __future__ import annotations

import html

from lmcollapse.report.compute import ARROWS
from lmcollapse.report.formats import fmt_stat, md_table
from lmcollapse.report.populations import VALUES, PopulationSummary

INTRO = ("Each population's row per generation: the synthetic share of the pool the "
         "generation crawled and of its crawls, by blocks and by tokens (a model-written "
         "block is a continuation, shorter than a human block); the Jensen-Shannon "
         "divergence (base 2, 0..1) of n-gram distributions between participants' corpora, "
         "beside its floor, the same number between two disjoint halves of one "
         "participant's corpus (mean over participants), and their difference "
         "(homogenization: it falls toward 0 as participants grow alike), and between two "
         "human samples, all at equal size; and each participant's divergence to human "
         "text. Mean ± sample std over seeds.")


def _table(p: PopulationSummary) -> tuple[list[str], list[list[str]]]:
    def name(v: str) -> str:
        m = p.meta.get(v, {})
        return f"{m.get('display_name', v)} {ARROWS[m.get('higher_is_better')]}".strip()

    shown = [v for v in VALUES if any(s.n for s in p.values[v].values())]
    header = ["generation", *map(name, shown),
              *(f"JSD to human: {lbl}" for lbl in p.participants if len(p.participants) > 1)]
    gens = sorted(p.values[VALUES[0]])
    rows = [[str(k), *(fmt_stat(p.values[v][k]) for v in shown),
             *(fmt_stat(p.to_human[lbl][k]) for lbl in p.participants
               if len(p.participants) > 1)] for k in gens]
    return header, rows


def _title(p: PopulationSummary, several: bool) -> str:
    where = f" ({p.experiment})" if several else ""
    return f"{p.key}{where}: participants {', '.join(p.participants)}"


def render_markdown(pops: list[PopulationSummary]) -> str:
    several = len({p.experiment for p in pops}) > 1
    out = ["## Populations", "", INTRO, ""]
    for p in pops:
        out += [f"### {_title(p, several)}", "", md_table(*_table(p), left=1), ""]
    return "\n".join(out)


def render_html(pops: list[PopulationSummary]) -> str:
    e = html.escape
    several = len({p.experiment for p in pops}) > 1
    parts = ["<section><h2>Populations</h2>", f"<p>{e(INTRO)}</p>"]
    for p in pops:
        header, rows = _table(p)
        parts.append(f"<h3>{e(_title(p, several))}</h3><div class=\"scroll\"><table><thead><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"
                     + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                               for r in rows) + "</tbody></table></div>")
    return "\n".join(parts) + "</section>"
