"""Render: the collapse profile (:mod:`lmcollapse.report.profile`) as Markdown, HTML and
CSV."""

from __future__ import annotations

import csv
import html
import io
import math

from lmcollapse.report.profile import DEFINITIONS, Evidence, Profile

INTRO = ("Which of the eight definitions of model collapse collected by Schaeffer et al. "
         "(arXiv 2503.03150) each policy meets at the final generation. A change is met "
         "when it goes the collapsing way beyond noise (paired t-test over seeds of the "
         "final generation against generation 0, Holm-corrected over the profile, "
         "p < 0.05); the metric that decides is the first the run measured of those "
         "listed in docs/reports.md, 'Collapse profile'.")


#: a verdict and its evidence read as text: left, top, wrapping (the page's tables are of
#: right-aligned numbers that never wrap)
TD = ' style="text-align:left;vertical-align:top;white-space:normal;min-width:11em"'
TH = ' style="text-align:left;vertical-align:top;min-width:8em"'


def _evidence(e: Evidence) -> str:
    rel = f"{e.relative:+.0%}" if math.isfinite(e.relative) else "n/a"
    p = e.p_adj if math.isfinite(e.p_adj) else e.test.p
    ptxt = f"p = {p:.2g}" if math.isfinite(p) else "no test"
    return f"{e.key} {rel} (gen {e.before}→{e.after}, {ptxt}, n = {e.test.n})"


def render_markdown(profiles: list[Profile]) -> str:
    out = ["## Collapse profile", "", INTRO, ""]
    for prof in profiles:
        if len(profiles) > 1:
            out += [f"### {prof.experiment}", ""]
        policies = list(prof.rows)
        out += ["| definition | " + " | ".join(policies) + " |",
                "|---|" + "---|" * len(policies)]
        for i, (_, name, _) in enumerate(DEFINITIONS):
            cells = []
            for p in policies:
                v = prof.rows[p][i]
                cells.append(v.verdict + (f": {_evidence(v.evidence[0])}" if v.evidence else ""))
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def render_html(profiles: list[Profile]) -> str:
    e = html.escape
    parts = ["<h2>Collapse profile</h2>", f"<p>{e(INTRO)}</p>"]
    for prof in profiles:
        if len(profiles) > 1:
            parts.append(f"<h3>{e(prof.experiment)}</h3>")
        policies = list(prof.rows)
        head = "".join(f"<th{TH}>{e(p)}</th>" for p in policies)
        rows = []
        for i, (_, name, _) in enumerate(DEFINITIONS):
            cells = "".join(
                f"<td{TD}><b>{e(v.verdict)}</b>" + (
                    f"<br><small>{e(_evidence(v.evidence[0]))}</small>" if v.evidence else "")
                + "</td>" for v in (prof.rows[p][i] for p in policies))
            rows.append(f"<tr><th{TH}>{e(name)}</th>{cells}</tr>")
        parts.append(f'<div class="scroll"><table><tr><th{TH}>definition</th>{head}</tr>'
                     + "".join(rows) + "</table></div>")
    return "\n".join(parts)


def render_csv(profiles: list[Profile]) -> str:
    """One row per (experiment, policy, definition, value key): every key measured, the
    deciding one first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "policy", "definition", "verdict", "rule", "key", "collapsing",
                "from_generation", "to_generation", "n", "mean_change", "relative_change",
                "p", "p_adj", "decides"])
    for prof in profiles:
        for policy, row in prof.rows.items():
            for v in row:
                if not v.evidence:
                    w.writerow([prof.experiment, policy, v.name, v.verdict, v.rule,
                                *[""] * 10])
                for i, ev in enumerate(v.evidence):
                    w.writerow([prof.experiment, policy, v.name, v.verdict, v.rule, ev.key,
                                "increase" if ev.collapsing > 0 else "decrease", ev.before,
                                ev.after, ev.test.n, ev.test.diff, ev.relative, ev.test.p,
                                ev.p_adj, i == 0])
    return buf.getvalue()
