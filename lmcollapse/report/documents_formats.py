"""Render the per-document early warnings (:mod:`lmcollapse.report.documents`): Markdown
sections, an HTML section with every test's numbers on hover, and CSV rows."""

from __future__ import annotations

import csv
import html
import io

from lmcollapse.report.documents import AGAINST, DocumentTest, EarlyWarning
from lmcollapse.report.formats import md_table
from lmcollapse.report.stats import ALPHA, CORRECTION_NAMES


def describe(w: EarlyWarning) -> str:
    """The rule of an early-warning table, for its notes."""
    if any(w.tests["human"].values()):
        against = "generation 0's or the human row's"
        family = f"{w.families.get('gen 0', 0)} and {w.families.get('human', 0)} tests"
    else:  # no human samples (a metric that needs a model): one comparison
        against, family = "generation 0's", f"{w.families.get('gen 0', 0)} tests"
    return (f"Per-document tests of {w.spec.label} ({w.spec.column} of each sample, "
            f"{w.spec.file}): Mann-Whitney U (two-sided) of generation k's samples against "
            f"{against}, per seed; the seeds' p-values combined by Fisher's method; each "
            f"comparison's tests one family ({CORRECTION_NAMES[w.correction]}, {family}); "
            f"A = P(a sample of k > one of the other), mean over seeds (0.5 = no shift); "
            f"✱ = beyond noise (corrected p < {ALPHA:g}).")


def as_rows(w: EarlyWarning, against: str) -> tuple[list[str], list[list[str]]]:
    """Header and display rows of one comparison: one row per policy, one column per
    generation (``A 0.61 ✱``), then the first generation beyond noise."""
    gens = sorted({t.generation for row in w.tests[against].values() for t in row})
    header = ["policy", *(f"gen {g}" for g in gens), "first beyond noise"]
    rows = []
    for policy, row in w.tests[against].items():
        by_gen = {t.generation: t for t in row}
        cells = [_cell(by_gen.get(g)) for g in gens]
        first = w.first(against, policy)
        rows.append([policy, *cells, "none" if first is None else str(first)])
    return header, rows


def _compared(w: EarlyWarning) -> list[tuple[str, str]]:
    """The comparisons that have tests: against generation 0, and against human text where
    the human row has samples (a metric that needs a model has none)."""
    return [(against, what) for against, what in (
        ("gen 0", "against generation 0 of the same seed"),
        ("human", "against held-out human text of the same seed"))
        if any(w.tests[against].values())]


def _cell(t: DocumentTest | None) -> str:
    if t is None:
        return "–"
    return f"A {t.effect:.2f}" + (" ✱" if t.beyond_noise else "")


def render_markdown(warnings: list[tuple[str, EarlyWarning]]) -> str:
    """``## Early warning`` sections, one per (experiment, metric): against generation 0,
    then against human text, then the rule."""
    out = []
    for key, w in warnings:
        out += [f"## Early warning: {w.spec.label}" + (f" ({key})" if key else ""), ""]
        for against, what in _compared(w):
            out += [f"Each generation's samples {what}:", "",
                    md_table(*as_rows(w, against), left=1), ""]
        out += [f"- {describe(w)}", ""]
    return "\n".join(out)


def render_html(warnings: list[tuple[str, EarlyWarning]]) -> str:
    """The same sections as HTML, each cell's hover giving p, corrected p and per seed."""
    e = html.escape
    parts = []
    for key, w in warnings:
        parts.append(f"<h2>Early warning: {e(w.spec.label)}"
                     + (f" <small>({e(key)})</small>" if key else "") + "</h2>")
        for against, what in _compared(w):
            header, rows = as_rows(w, against)
            by_policy = {p: {t.generation: t for t in row}
                         for p, row in w.tests[against].items()}
            gens = [int(h.split()[1]) for h in header[1:-1]]
            body = ""
            for r in rows:
                cells = [f"<td>{e(r[0])}</td>"]
                for g, text in zip(gens, r[1:-1], strict=True):
                    t = by_policy[r[0]].get(g)
                    hover = "" if t is None else _hover(t)
                    cls = ' class="warn"' if t is not None and t.beyond_noise else ""
                    cells.append(f'<td{cls} title="{e(hover)}">{e(text)}</td>')
                cells.append(f"<td>{e(r[-1])}</td>")
                body += "<tr>" + "".join(cells) + "</tr>\n"
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            parts.append(f"<p>Each generation's samples {e(what)}:</p>"
                         f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                         f"<tbody>{body}</tbody></table></div>")
        parts.append(f'<p class="small">{e(describe(w))}</p>')
    return "\n".join(parts)


def _hover(t: DocumentTest) -> str:
    seeds = ", ".join(f"seed {s}: A {x.effect:.3f}, p {x.p:.2g} ({x.n_x} vs {x.n_y} samples)"
                      for s, x in t.per_seed.items())
    return f"combined p = {t.p:.2g}, corrected p = {t.p_adj:.2g}; {seeds}"


def render_csv(warnings: list[tuple[str, EarlyWarning]]) -> str:
    """One line per (experiment, metric, comparison, policy, generation)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "metric", "against", "policy", "generation", "effect_A", "p",
                "p_adj", "correction", "family", "beyond_noise", "per_seed"])
    for key, warn in warnings:
        for against in AGAINST:
            for policy, row in warn.tests[against].items():
                for t in row:
                    w.writerow([key, warn.spec.label, against, policy, t.generation,
                                repr(t.effect), repr(t.p), repr(t.p_adj), warn.correction,
                                warn.families[against], int(t.beyond_noise),
                                ";".join(f"{s}:{x.effect!r}:{x.p!r}"
                                         for s, x in t.per_seed.items())])
    return buf.getvalue()
