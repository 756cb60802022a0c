"""Render a leaderboard (:mod:`lmcollapse.report.compute`): Markdown, CSV, LaTeX (a
paper-ready table) and one self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from pathlib import Path
from typing import Any

from lmcollapse.report.compute import (
    ARROWS,
    MARK,
    Comparison,
    Leaderboard,
    LeaderboardRow,
    median_onset,
    sharing_generation0,
)
from lmcollapse.report.load import RunResults
from lmcollapse.report.stats import ALPHA, CORRECTION_NAMES, Stat

# --- text rendering -------------------------------------------------------------------------

def _decimals(x: float) -> int:
    if not math.isfinite(x) or x == 0:
        return 2
    return min(4, max(0, 3 - math.floor(math.log10(abs(x)))))


def fmt_stat(s: Stat, delta: Stat | None = None) -> str:
    """``15.46 ± 0.12 (+3.21)``: four significant digits, std only when n > 1."""
    if s.n == 0:
        return "–"
    d = _decimals(s.mean)
    text = f"{s.mean:.{d}f}" + (f" ± {s.std:.{d}f}" if s.n > 1 else "")
    return text + (f" ({delta.mean:+.{d}f})" if delta is not None and delta.n else "")


def _onset_text(row: LeaderboardRow, rule: str = "relative") -> str:
    if row.policy == "human":
        return "–"
    if rule == "noise":
        return "none" if row.onset_test is None else f"{row.onset_test} (test)"
    if not row.onsets:
        return "n/a"
    crossed = sum(o is not None for o in row.onsets.values())
    if not crossed:
        return "none"
    med = median_onset(list(row.onsets.values()))
    return f"{'none' if med is None else f'{med:g}'} ({crossed}/{len(row.onsets)})"


def _gens_text(row: LeaderboardRow) -> str:
    if row.policy == "human":
        return "–"
    done = [-1 if g is None else g for g in row.finished.values()] or [-1]
    lo, hi = (str(g) if g >= 0 else "–" for g in (min(done), max(done)))
    span = lo if lo == hi else f"{lo}–{hi}"
    return f"{span}/{row.experiment.generations}"


def _marked(text: str, comparison: Comparison | None) -> str:
    """``text`` with `` ~`` appended when its gap to the row above is within the seed noise."""
    return f"{text} {MARK}" if comparison is not None and comparison.within_noise else text


def _interval_text(lo: float, hi: float, like: float) -> str:
    d = _decimals(like)
    return f"[{lo:.{d}f}, {hi:.{d}f}]"


def _cell_text(row: LeaderboardRow, m: str) -> str:
    cell = row.cells[m]
    text = fmt_stat(cell.stat, None if row.policy == "human" else cell.delta)
    boot = row.bootstrap.get(m, {})
    if cell.stat.n == 1 and len(boot) == 1:  # one seed: how precise its number is
        text += " " + _interval_text(*next(iter(boot.values())), cell.stat.mean)
    if cell.stat.n:
        text = _marked(text, row.versus.get(m))
    tags = []
    if cell.generation not in (None, row.experiment.generations):
        tags.append(f"gen {cell.generation}")
    if cell.stat.n and cell.stat.n != row.n_final:
        tags.append(f"n={cell.stat.n}")
    return text + (f" [{', '.join(tags)}]" if tags else "")


def leaderboard_table(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and rows of display strings, shared by the Markdown, LaTeX and HTML writers."""
    who = "experiment / policy" if len(lb.experiments) > 1 else "policy"
    header = ["#", who, "n", "gens", "onset",
              *(f"{c} {ARROWS[lb.meta[c]['higher_is_better']]}" for c in lb.columns)]
    rows = []
    for r in lb.rows:
        n = str(r.n_final) if r.policy == "human" else f"{r.n_final}/{len(r.experiment.seeds)}"
        rank = "ref" if r.rank is None else str(r.rank)
        rows.append([rank, r.label + (" †" if r.partial else ""), n, _gens_text(r),
                     _onset_text(r, lb.onset.rule), *(_cell_text(r, c) for c in lb.columns)])
    return header, rows


_HOW = {True: "highest first", False: "lowest first",
        None: "closest to the human reference first: smallest mean over seeds of "
              "|value − human value of the same seed|"}
_DIRECTIONS = ("↑ higher is better, ↓ lower is better, ≈ closer to the human reference is "
               "better (ranked and compared by each seed's distance |value − human value of "
               "that seed|; its (+x) is the change of the value itself).")


def _seed_notes(exps: list[RunResults], correction: str, per_generation: bool = False,
                families: dict[str, int] | None = None) -> list[str]:
    """The significance rule (test, correction, family and its size) where an experiment has
    >= 2 seeds, the one-seed caveat where one has fewer. ``families``: comparisons per
    family, by what the family is (for the header)."""
    multi = [e for e in exps if len(e.seeds) > 1]
    single = [e.key for e in exps if len(e.seeds) <= 1]
    out = []
    rule = CORRECTION_NAMES[correction]
    if multi:
        family = ("each per-generation table of each experiment (every row against the row "
                  "above, at every generation)" if per_generation else
                  "each column of each experiment (every row against the row above)")
        sizes = ""
        if families:
            sizes = " Comparisons per family: " + "; ".join(f"{k}: {v}"
                                                          for k, v in families.items()) + "."
        out.append(
            f"{MARK} = gap to the row directly above (same experiment) not significant: the two "
            f"policies' values of that metric, at the generation both cells show, are paired by "
            f"seed (generation 0 is trained once per seed and shared), a two-sided paired "
            f"t-test of the per-seed differences (scipy.stats.ttest_rel) gives a p-value, and "
            f"the p-values of one family are corrected together ({rule}; family: {family}); "
            f"a gap is marked when its corrected p ≥ {ALPHA:g} or fewer than 2 seeds have both "
            f"values. For ≈ metrics the paired values are each seed's distance |value − human "
            f"value of that seed|. Top rows are never marked." + sizes)
        if not per_generation:
            out.append("Intervals (CSV, and on hover in the HTML): 95% t-interval of each "
                       "cell's mean over seeds and of each paired difference; where a metric "
                       "keeps per-sample values, also a 95% bootstrap interval over the "
                       "samples of each seed.")
    if single:
        out.append("1 seed: no spread, no significance marks"
                   + (f" ({', '.join(single)})" if multi else "")
                   + "; where a metric keeps per-sample values its cells carry a 95% "
                   "bootstrap interval over the samples, [low, high].")
    return out


def open_gaps(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the gaps within noise, each with the seeds a paired test would
    need to call it (80% power, at the family's strictest level): what would settle them."""
    rows = []
    for r in lb.rows:
        for m, c in r.versus.items():
            if c.n < 2 or not c.within_noise or not r.cells[m].stat.n:
                continue
            need = "–" if c.seeds_needed is None else f"about {c.seeds_needed}"
            rows.append([r.label, c.above, m, f"{c.diff:+.3g}", f"{c.p:.2g}", f"{c.p_adj:.2g}",
                         str(c.n), need])
    return (["row", "vs the row above", "metric", "mean difference", "p", "p corrected",
             "seeds", "seeds needed"], rows)


def seeds_needed_notes(lb: Leaderboard) -> list[str]:
    """The rule of :func:`open_gaps`, for the notes (nothing when no gap is open)."""
    if not open_gaps(lb)[1]:
        return []
    level = ("α = 0.05 / comparisons of the family (the correction's strictest step; a gap "
             "may need fewer)" if lb.correction != "none" else "α = 0.05")
    return [f"Open gaps (the table below the notes): for each gap within noise, the seeds a "
            f"two-sided paired t-test needs to call it at 80% power, {level}, for the observed "
            "mean difference and spread of the per-seed differences (statsmodels TTestPower; "
            "– : no spread measured, or over 1000); `lmcollapse plan-seeds` answers it for "
            "any pair."]


def _families(lb: Leaderboard) -> dict[str, int]:
    """Comparisons per family of the leaderboard (one column of one experiment)."""
    out = {}
    for exp in lb.experiments:
        rows = [r for r in lb.rows if r.experiment is exp and r.versus]
        if rows and len(exp.seeds) > 1:
            size = max(r.versus[lb.columns[0]].family for r in rows)
            name = "each column" + (f" of {exp.key}" if len(lb.experiments) > 1 else "")
            out[name] = size
    return out


def _unpaired(lb: Leaderboard) -> list[str]:
    """The leaderboard's gaps tested unpaired (``cell vs cell above``): merged results
    files whose generation 0 differ."""
    return sorted({f"{r.policy} vs {c.above}" for r in lb.rows for c in r.versus.values()
                   if c.unpaired is not None})


def notes(lb: Leaderboard) -> list[str]:
    """The footnotes every format carries: statistics, arrows, ranking, significance, onset,
    partial rows."""
    d = lb.meta[lb.rank_by]["higher_is_better"]
    spread = any(len(e.seeds) > 1 for e in lb.experiments)
    out = [
        ("Cells: mean ± sample std over seeds (statistics.stdev, n − 1) at the final generation, "
         "(+x) = mean over seeds of the change from generation 0" if spread else
         "Cells: the value at the final generation, (+x) = the change from generation 0")
        + "; n = seeds that finished the final generation / seeds of the experiment; gens = "
        "latest finished generation.",
        _DIRECTIONS,
        f"Ranked by {lb.rank_by} ({_HOW[d]}); the human reference rows ('ref') are unranked.",
        *_seed_notes(lb.experiments, lb.correction, families=_families(lb)),
        lb.onset.describe(lb.meta[lb.onset.metric]["higher_is_better"], lb.correction),
        *seeds_needed_notes(lb),
    ]
    for exp in lb.experiments:
        if sharing_generation0(exp):
            out.append(f"generations: 0{f' ({exp.key})' if len(lb.experiments) > 1 else ''}: "
                       "no policy has acted yet (a policy builds the training mix from "
                       f"generation 1 on), so {', '.join(sharing_generation0(exp))} are one "
                       "generation-0 model and corpus, trained on human text alone: one row.")
    unpaired = _unpaired(lb)
    if unpaired:
        out.append("Not paired (" + ", ".join(unpaired) + "): these cells came from results "
                   "files whose generation 0 differ (run on other machines), so their seeds "
                   "do not pair; their gap is Welch's two-sided t-test of the values "
                   "(scipy.stats.ttest_ind, equal_var=False), corrected in its family as the "
                   "others, with a Welch interval and no seeds-needed estimate.")
    if any(r.partial for r in lb.rows):
        out.append("† partial: not every seed finished the final generation; a cell uses the "
                   "seeds that did, or the latest generation any seed finished [gen k].")
        out += [note for r in lb.rows for note in r.notes]
    return out


def _join(*parts: Any, sep: str = ", ") -> str:
    return sep.join(str(p) for p in parts if p not in (None, "", [], False))


def _kv(template: str, *values: Any) -> str:
    """``template.format(*values)``, or "" when any value is missing."""
    return "" if any(v in (None, "") for v in values) else template.format(*values)


def conditions(exp: RunResults) -> dict[str, str]:
    """``{metric: how it was measured}``, as each metric described itself in metrics.json
    (generation 0 first, where corpus sizes are stated; the human row where only it has a
    metric)."""
    out: dict[str, str] = {}
    for rec in sorted(exp.records.values(), key=lambda r: r.get("generation") is None):
        for metric, text in rec.get("conditions", {}).items():
            out.setdefault(metric, text)
    return out


def setup_items(exp: RunResults) -> list[tuple[str, str]]:
    """(label, text) lines stating the conditions of one experiment's numbers: the run's
    model, data, training and decoding from experiment.json, then one line per metric."""
    c, info = exp.config, exp.info
    m, d, t, g = (c.get(k, {}) for k in ("model", "data", "train", "generate"))
    sc = m.get("scratch", {})
    model = (_kv("from scratch: {} (hidden {}, {} layers, {} heads)", sc.get("arch"),
                 sc.get("hidden_size"), sc.get("num_layers"), sc.get("num_heads"))
             if m.get("source") == "scratch"
             else _join(m.get("name_or_path"), m.get("gguf_file"), m.get("revision")))
    dec = {"sample": _join("sampling", _kv("temperature {}", g.get("temperature")),
                           _kv("top-p {}", g.get("top_p")), _kv("top-k {}", g.get("top_k"))),
           "beam": _kv("beam search ({} beams)", g.get("num_beams"))}.get(g.get("strategy"),
                                                                       g.get("strategy"))
    lora = t.get("lora", {})
    return [
        ("experiment", _join(exp.name, _kv("git {:.10}", info.get("git_sha")), info.get("created"),
                             "dirs: " + ", ".join(exp.shown or map(str, exp.dirs)))),
        ("model", _join(model, _kv("init={}", m.get("init")),
                        lora.get("enabled") and _kv("LoRA r={}", lora.get("r")), sep="; ")),
        ("data", _join(info.get("data") or d.get("source"),
                       _kv("blocks of {} tokens", d.get("block_tokens")), sep="; ")),
        ("policies", ", ".join(exp.policies)),
        ("training", _join(_kv("{} epoch(s)", t.get("epochs")), _kv("lr {}", t.get("lr")),
                           _kv("batch {} × accum {}", t.get("batch_size"), t.get("grad_accum", 1)),
                           _kv("budget {} steps", t.get("budget_steps")),
                           _kv("budget {} tokens", t.get("budget_tokens")))),
        ("decoding", _join(dec, _kv("repetition penalty {}", g.get("repetition_penalty")),
                           _kv("prompt {} + {} new tokens", g.get("prompt_tokens"),
                               g.get("new_tokens")),
                           f"prompt {'kept' if g.get('keep_prompt') else 'dropped'} in the next "
                           "training text")),
        ("generations", str(exp.generations)),
        ("seeds", ", ".join(map(str, exp.seeds))),
        *conditions(exp).items(),
        ("hardware", _join(info.get("device"), _kv("{} process(es)", info.get("num_processes")),
                           *(f"{k} {v}" for k, v in info.get("versions", {}).items()))),
        *(("merged", note) for note in exp.merged),
    ]


def md_table(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * left + "---:|" * (len(header) - left)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])


GenerationMarks = dict[str, dict[int, Comparison]]


def generation_table(table: dict[str, dict[int | str, Stat]], marks: GenerationMarks | None = None
                     ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of :func:`per_generation`: ``…`` = not finished, n shown when short,
    `` ~`` where :func:`~lmcollapse.report.generation_marks` finds the gap within noise."""
    gens = sorted({g for row in table.values() for g in row if g != "human"})
    rows = []
    for label, row in table.items():
        full = max(s.n for s in row.values())
        cells = [_marked(fmt_stat(row[g]), (marks or {}).get(label, {}).get(g))
                 + (f" (n={row[g].n})" if row[g].n < full else "")
                 if g in row else "…" for g in gens]
        rows.append([label, *cells, fmt_stat(row["human"])])
    return ["policy", *(f"gen {g}" for g in gens), "human"], rows


def markdown_table(table: dict[str, dict[int | str, Stat]],
                   marks: GenerationMarks | None = None) -> str:
    """Policies as rows, generations as columns, the human reference last."""
    return md_table(*generation_table(table, marks), left=1)


def _rank_note(metric: str, direction: bool | None) -> str:
    return (f"Rows ranked by {metric} {ARROWS[direction]} at the latest measured generation "
            f"({_HOW[direction]}), within each experiment.")


def generation_notes(exps: list[RunResults], metric: str | None, direction: bool | None,
                     correction: str = "holm") -> list[str]:
    """The footnotes of a per-generation table (``metric`` None: those every table shares,
    without the ranking line)."""
    spread = any(len(e.seeds) > 1 for e in exps)
    return [
        ("Cells: mean ± sample std over seeds (statistics.stdev, n − 1)" if spread else
         "Cells: the value of the one seed")
        + "; (n=k): fewer seeds than the row's most; … = not measured yet; generation 0 is "
        "one model per seed, shared by every policy.",
        *([_rank_note(metric, direction)] if metric else []),
        *_seed_notes(exps, correction, per_generation=True),
    ]


#: ``(metric, per_generation(...), generation_marks(...))``, one per shown metric
GenerationTables = list[tuple[str, dict[str, dict[int | str, Stat]], GenerationMarks]]


def _title(lb: Leaderboard, metric: str) -> str:
    meta = lb.meta.get(metric, {})
    return f"{meta.get('display_name') or metric} {ARROWS[meta.get('higher_is_better')]}"


def one_seed_notice(lb: Leaderboard) -> str | None:
    """What a reader must know when no experiment has two seeds (None otherwise)."""
    if any(len(e.seeds) > 1 for e in lb.experiments):
        return None
    return ("One seed: every number is a single run, so there is no spread (no ± and no "
            "bands in the plots) and no significance test; a difference between policies "
            "may be noise. Run more seeds (seeds: [0, 1, 2]) to compare them.")


def render_markdown(lb: Leaderboard, figures: list[str] | None = None,
                    tables: GenerationTables | None = None) -> str:
    """The leaderboard as a Markdown document: setup, table, footnotes, the per-generation
    table of each metric in ``tables``, figure links."""
    out = [f"# lmcollapse leaderboard: {', '.join(e.key for e in lb.experiments)}", ""]
    notice = one_seed_notice(lb)
    if notice:
        out += [f"> {notice}", ""]
    for exp in lb.experiments:
        out += [f"Setup of {exp.key}:", ""] + [f"- **{k}**: {v}" for k, v in setup_items(exp)]
        out.append("")
    out += [md_table(*leaderboard_table(lb)), ""] + [f"- {n}" for n in notes(lb)]
    gaps = open_gaps(lb)
    if gaps[1]:
        out += ["", "Open gaps (within noise) and the seeds that would settle them:", "",
                md_table(*gaps, left=3)]
    skipped = [p for e in lb.experiments for p in e.problems]
    if skipped:
        out += ["", "Skipped (could not be read; everything else is shown):", ""]
        out += [f"- {p}" for p in skipped]
    for metric, table, marks in tables or []:
        direction = lb.meta.get(metric, {}).get("higher_is_better")
        name = _title(lb, metric)
        out += ["", f"## Per generation: {name}" + ("" if f"({metric})" in name
                                                     else f" ({metric})"), "",
                markdown_table(table, marks), "", _rank_note(metric, direction)]
    if tables:
        out += ["", "Per-generation tables:", ""]
        out += [f"- {n}" for n in generation_notes(lb.experiments, None, None, lb.correction)]
    if figures:
        out += ["", "Figures:", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(out) + "\n"


def render_csv(lb: Leaderboard) -> str:
    """One line per row, full-precision numbers, empty = missing, the setup in the last
    column. Per metric: the cell (mean, std, n, its 95% t-interval), the change from
    generation 0, the comparison with the row above (paired mean difference, its std and
    95% t-interval, raw and corrected p, family size, whether it is marked, seeds needed),
    and the per-seed bootstrap intervals (``seed:low:high`` joined by ``;``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    per = ("generation", "mean", "std", "n", "ci_low", "ci_high", "delta_mean", "delta_std",
           "vs_above_n", "vs_above_diff", "vs_above_diff_sd", "vs_above_diff_low",
           "vs_above_diff_high", "vs_above_p", "vs_above_p_adj", "vs_above_family",
           "within_noise", "seeds_needed", "bootstrap")
    w.writerow(["experiment", "policy", "rank", "above", "partial", "n_final", "n_seeds",
                "finished_generations", "final_generation", "onset_median", "onset_per_seed",
                "onset_metric", "onset_rule", "onset_threshold", "correction",
                *(f"{c}_{p}" for c in lb.columns for p in per), "setup"])

    def num(x: Any) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(x)

    def versus(r: LeaderboardRow, c: str) -> list[str]:
        v = r.versus.get(c)
        if v is None or not r.cells[c].stat.n:
            return [""] * 10
        return [str(v.n), num(v.diff), num(v.sd), *map(num, v.interval), num(v.p),
                num(v.p_adj), str(v.family), str(int(v.within_noise)), num(v.seeds_needed)]

    def cell(r: LeaderboardRow, c: str) -> list[str]:
        x = r.cells[c]
        boot = ";".join(f"{s}:{lo!r}:{hi!r}" for s, (lo, hi) in r.bootstrap.get(c, {}).items())
        return [*(num(v) for v in (x.generation, *x.stat, *x.stat.interval, *x.delta[:2])),
                *versus(r, c), boot]

    for r in lb.rows:
        human = r.policy == "human"
        if lb.onset.rule == "noise":
            med, per_seed = (None if human else r.onset_test), ""
        else:
            med = None if human else median_onset(list(r.onsets.values()))
            per_seed = ";".join("none" if o is None else str(o) for o in r.onsets.values())
        above = next(iter(r.versus.values())).above if r.versus else ""
        w.writerow([r.experiment.key, r.policy, num(r.rank), above, int(r.partial), r.n_final,
                    len(r.experiment.seeds), ";".join("-" if g is None else str(g)
                                                      for g in r.finished.values()),
                    r.experiment.generations, "" if human else ("none" if med is None else med),
                    per_seed, lb.onset.metric, lb.onset.rule, lb.onset_threshold,
                    lb.correction, *(x for c in lb.columns for x in cell(r, c)),
                    "; ".join(f"{k}: {v}" for k, v in setup_items(r.experiment))])
    return buf.getvalue()


_TEX = {**{c: "\\" + c for c in "_%&#${}"}, "\\": r"\textbackslash{}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
        "≈": r"$\approx$", "†": r"$^\dagger$", "–": "--", "−": "-", "≥": r"$\geq$",
        "×": r"$\times$", "…": r"\dots{}"}


_ASCII = {"±": "+/-", "↑": "up", "↓": "down", "≈": "(near human)", "†": "(dagger)", "–": "-",
          "−": "-", "≥": ">=", "×": "x", "…": "...", "√": "sqrt ", "α": "alpha", "‖": "||",
          "✱": "*"}


def _tex_comment(text: str) -> str:
    """A ``%`` line in plain ASCII, so any TeX engine reads it."""
    text = "".join(_ASCII.get(ch, ch) for ch in str(text))
    return "% " + text.encode("ascii", "replace").decode()


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and turn the table's symbols into math."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_cell(text: str) -> str:
    """A value cell, its within-noise mark raised: ``12.3$^{\\sim}$``."""
    return tex_escape(text).replace(" " + tex_escape(MARK), r"$^{\sim}$", 1)


def _tex_value(text: str) -> str:
    """A value cell: escaped, negative numbers with a math minus (``$-$0.12``), the
    within-noise mark raised (``12.3$^{\\sim}$``)."""
    text = re.sub(r"(?<![\w.])[-\u2212](?=\d)", "\x00", str(text))  # a sign, not a hyphen
    return _tex_cell(text).replace("\x00", "$-$")


_CHANGE = re.compile(r"^(?P<value>.*?) \((?P<change>[+\-\u2212][^)]*)\)(?P<rest>.*)$")


def _tex_value_cell(text: str) -> str:
    """A value cell on two lines, so the column is as wide as the value alone: the value
    (± std, the noise mark, tags) over its change from generation 0 in small type."""
    m = _CHANGE.match(str(text))
    if not m:
        return _tex_value(text)
    return (r"\begin{tabular}[t]{@{}r@{}}" + _tex_value(m["value"] + m["rest"])
            + r" \\ {\scriptsize (" + _tex_value(m["change"]) + r")}\end{tabular}")


def _tex_stacked(text: str, width: int = 16) -> str:
    """A header cell on several short lines (a nested tabular: no package needed), so a
    long display name does not widen its column."""
    lines: list[str] = []
    for word in str(text).split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) == 1:
        return tex_escape(lines[0])
    return (r"\begin{tabular}[b]{@{}r@{}}" + r" \\ ".join(tex_escape(x) for x in lines)
            + r"\end{tabular}")


def latex_columns(lb: Leaderboard) -> list[str]:
    """The LaTeX table's default columns, fewer than the leaderboard's so that it stays
    legible on a paper page: the ranking metric and the first column of every other metric
    (one per family: held-out perplexity, excess loss, gen-0 perplexity p50, distinct-4,
    tail survival, MAUVE). ``lmcollapse report --tex-columns`` chooses others."""
    seen = {lb.meta[lb.rank_by].get("metric", lb.rank_by)}
    out = [lb.rank_by]
    for c in lb.columns:
        family = lb.meta[c].get("metric", c)
        if family not in seen:
            seen.add(family)
            out.append(c)
    return out


def _onset_rule_short(lb: Leaderboard) -> str:
    o = lb.onset
    if o.rule == "noise":
        return f"first generation whose {o.metric} is worse than generation 0's beyond noise"
    return (f"first generation whose {o.metric} is worse than generation 0's by more than "
            f"{o.threshold * 100:g}% (median over seeds)")


def render_latex(lb: Leaderboard) -> str:
    """A paper-ready ``table*``: booktabs rules, caption and label, display names, math
    minus signs; scaled down to the text width when still wider (the caption says so).
    The n and gens columns appear only where a row is partial (the caption gives the
    seeds). Needs ``\\usepackage{booktabs,graphicx}``; setup and notes come first as ``%``
    comments. Pass a leaderboard of :func:`latex_columns` (the report does) for a table that
    fits a page."""
    header, rows = leaderboard_table(lb)
    partial = any(r.partial for r in lb.rows)
    keep = [0, 1, *([2, 3] if partial else []), 4, *range(5, len(header))]
    names = [_tex_stacked(_title(lb, c)) for c in lb.columns]
    header = [tex_escape(h) for h in header[:5]] + names
    keys = ", ".join(e.key for e in lb.experiments)
    seeds = sorted({len(e.seeds) for e in lb.experiments})
    spread = (f"mean $\\pm$ sample standard deviation over {'/'.join(map(str, seeds))} seeds"
              if max(seeds) > 1 else "one seed (no spread)")
    gens = sorted({e.generations for e in lb.experiments})
    caption = (f"Model collapse, {tex_escape(keys)}: each policy after "
               f"{'/'.join(map(str, gens))} generations, {spread}, change from generation 0 "
               "below in parentheses; $\\uparrow$ higher, $\\downarrow$ lower, $\\approx$ closer "
               "to the human reference is better"
               + ("; $^{\\sim}$ gap to the row above within noise (paired t-test over seeds"
                  + ("; Welch's t-test where the two cells' generation 0 differ"
                     if _unpaired(lb) else "") + ", "
                  + (f"{CORRECTION_NAMES[lb.correction]}-corrected within each column)"
                     if lb.correction != "none" else "uncorrected)")
                  if max(seeds) > 1 else "")
               + "; onset: " + tex_escape(_onset_rule_short(lb))
               + ("; $^\\dagger$ not every seed finished" if partial else "")
               + ". Scaled down to the text width where wider.")
    label = re.sub(r"[^A-Za-z0-9]+", "-", keys).strip("-").lower()
    out = [_tex_comment(f"lmcollapse leaderboard: {keys}"),
           _tex_comment("needs \\usepackage{booktabs,graphicx}"),
           _tex_comment(f"columns: {', '.join(lb.columns)} (choose with lmcollapse report "
                        "--tex-columns)")]
    out += [_tex_comment(f"{k}: {v}") for e in lb.experiments for k, v in setup_items(e)]
    out += [_tex_comment(n) for n in notes(lb)]
    out += [r"\begin{table*}[t]", r"\centering", r"\setlength{\tabcolsep}{4pt}",
            f"\\caption{{{caption}}}",
            f"\\label{{tab:lmcollapse-{label}}}",
            r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%",
            r"\begin{tabular}{@{}ll" + "r" * (len(keep) - 2) + "@{}}", r"\toprule"]
    out += [" & ".join(header[j] for j in keep) + r" \\", r"\midrule"]
    for i, r in enumerate(rows):
        out.append(" & ".join(_tex_value_cell(r[j]) if j >= 5 else tex_escape(r[j])
                              for j in keep) + r" \\")
        if i == len(lb.experiments) - 1 and i < len(rows) - 1:
            out.append(r"\midrule")
    return "\n".join(out + [r"\bottomrule", r"\end{tabular}}", r"\end{table*}"]) + "\n"


def _html_table(header: list[str], rows: list[list[str]], first_value: int,
                titles: list[str] | None = None, text_columns: tuple[int, ...] = (0,),
                keys: list[list[str | None]] | None = None,
                hovers: list[list[str]] | None = None) -> str:
    """Marked value cells (columns from ``first_value`` on) are greyed, the mark raised;
    ``titles`` are the headers' hover texts. Clicking a header sorts by its column: the
    label columns ``text_columns`` alphabetically, the others by ``keys[i][j]`` where given
    (a number, "" for none: last) or else by the first number in the cell; ``hovers[i][j]``
    is a cell's hover text (its intervals and tests)."""
    e = html.escape

    def td(i: int, j: int, c: str) -> str:
        key = keys[i][j] if keys and j < len(keys[i]) else None
        attr = f' data-sort="{e(key)}"' if key is not None else ""
        hover = hovers[i][j] if hovers and j < len(hovers[i]) else ""
        attr += f' title="{e(hover)}"' if hover else ""
        if j >= first_value and f" {MARK}" in c:
            sup = f'<sup title="within the seed noise of the row above">{MARK}</sup>'
            return f'<td class="noise"{attr}>{e(c).replace(f" {MARK}", sup, 1)}</td>'
        return f"<td{attr}>{e(c)}</td>"

    titles = titles or [""] * len(header)
    head = "".join(
        "<th" + (f' title="{e(t)}"' if t else "") + (' data-sort="text"' if j in text_columns
                                                      else "") + f">{e(h)}</th>"
        for j, (h, t) in enumerate(zip(header, titles, strict=True)))
    body = "".join("<tr>" + "".join(td(i, j, c) for j, c in enumerate(r)) + "</tr>\n"
                   for i, r in enumerate(rows))
    # a wide table scrolls inside its own box instead of widening the page
    return (f'<div class="scroll"><table class="sortable">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}</tbody>\n</table></div>")


def _fmt(x: float, like: float | None = None) -> str:
    """``x`` with the decimals the cell's own number (``like``, default ``x``) is shown with."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{_decimals(x if like is None else like)}f}"


def cell_hover(row: LeaderboardRow, m: str) -> str:
    """What a leaderboard cell's number rests on: its 95% interval over seeds, the paired
    comparison with the row above (difference, interval, raw and corrected p, seeds needed)
    and the per-seed bootstrap intervals."""
    cell, parts = row.cells[m], []
    if cell.stat.n > 1:
        lo, hi = cell.stat.interval
        parts.append(f"95% interval of the mean over {cell.stat.n} seeds: "
                     f"[{_fmt(lo, cell.stat.mean)}, {_fmt(hi, cell.stat.mean)}]")
    c = row.versus.get(m)
    if c is not None and c.n >= 2 and cell.stat.n:
        lo, hi = c.interval
        kind = ("difference of means (Welch t-test, not paired: the two cells' generation 0 "
                "differ)" if c.unpaired is not None else "paired difference")
        parts.append(f"vs {c.above}: {kind} {_fmt(c.diff, cell.stat.mean)}, 95% "
                     f"interval [{_fmt(lo, cell.stat.mean)}, {_fmt(hi, cell.stat.mean)}], "
                     f"p = {c.p:.2g}, corrected p = {c.p_adj:.2g} "
                     f"(family of {c.family})" + ("" if c.seeds_needed is None or not
                                                   c.within_noise else
                                                   f"; about {c.seeds_needed} seeds would "
                                                   "call it"))
    boot = row.bootstrap.get(m, {})
    if boot:
        parts.append("bootstrap 95% over samples: " + ", ".join(
            f"seed {s} [{_fmt(lo, cell.stat.mean)}, {_fmt(hi, cell.stat.mean)}]"
            for s, (lo, hi) in boot.items()))
    return "; ".join(parts)


def _sort_keys(lb: Leaderboard) -> list[list[str | None]]:
    """Sort keys of the leaderboard's bookkeeping columns (rank, n, gens, onset), row by
    row: what the cell means, not its first digit ("none (1/3)" is a median onset of never,
    "–/3" no generation finished). "" = no key (sorted last); None: the cell's number."""
    out = []
    for r in lb.rows:
        human = r.policy == "human"
        done = [-1 if g is None else g for g in r.finished.values()] or [-1]
        if lb.onset.rule == "noise":
            onset = "" if human else ("Infinity" if r.onset_test is None else str(r.onset_test))
        else:
            med = None if human or not r.onsets else median_onset(list(r.onsets.values()))
            onset = ("" if human or not r.onsets else "Infinity" if med is None else repr(med))
        out.append(["" if r.rank is None else str(r.rank), None, str(r.n_final),
                    "" if human or min(done) < 0 else str(min(done)), onset])
    return out


def _definitions(lb: Leaderboard) -> list[str]:
    """Hover text of each leaderboard header: what the column is and how it was measured
    (the metric's own description of its conditions)."""
    measured: dict[str, str] = {}
    for exp in lb.experiments:
        for metric, text in conditions(exp).items():
            measured.setdefault(metric, str(text))
    fixed = ["rank at the final generation (ref: the human reference, unranked)",
             "policy (a cell of the grid)", "seeds measured at the final generation / seeds",
             "generations measured / planned",
             lb.onset.describe(lb.meta[lb.onset.metric]["higher_is_better"], lb.correction)]
    words = {True: "higher is better", False: "lower is better",
             None: "closer to the human reference is better"}
    cells = ("mean ± sample std over seeds" if any(len(e.seeds) > 1 for e in lb.experiments)
             else "the one seed's value")
    return fixed + [f"{lb.meta[c].get('display_name') or c} [{c}], "
                    f"{words[lb.meta[c]['higher_is_better']]}. Measured: "
                    f"{measured.get(lb.meta[c].get('metric', c), 'see the setup')}. Cells: "
                    f"final generation, {cells} (change from generation 0)"
                    for c in lb.columns]


#: click a header to sort its table by that column, again to reverse: label columns
#: (``data-sort="text"``) alphabetically, the others by each cell's ``data-sort`` key or
#: else the first number in it, cells without one ("–", "ref", "n/a") last either way; a
#: stable sort, no library
_SORT_JS = r"""
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('thead th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var body = t.tBodies[0], rows = Array.from(body.rows), up = th.dataset.dir !== 'up';
      var byText = th.dataset.sort === 'text';
      th.dataset.dir = up ? 'up' : 'down';
      function text(r) { return r.cells[i].textContent; }
      function num(r) {
        var c = r.cells[i];
        if (c.dataset.sort !== undefined) {
          return c.dataset.sort === '' ? null : parseFloat(c.dataset.sort);
        }
        var m = text(r).replace(/\u2212/g, '-').match(/-?\d+(\.\d+)?(e[-+]?\d+)?/i);
        return m ? parseFloat(m[0]) : null;
      }
      rows.sort(function (a, b) {
        if (byText) { return (up ? 1 : -1) * text(a).localeCompare(text(b)); }
        var x = num(a), y = num(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        return x === y ? 0 : (x < y) === up ? -1 : 1;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _with_contents(parts: list[str]) -> list[str]:
    """Give every ``<h2>`` a unique id and put a line of links to them after the title
    (and the notice, if any): the page is long."""
    seen: dict[str, int] = {}
    links = []

    def anchor(m: re.Match[str]) -> str:
        text = html.unescape(re.sub(r"<.*?>", "", m.group(1)))
        slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
        seen[slug] = seen.get(slug, 0) + 1
        slug += f"-{seen[slug]}" if seen[slug] > 1 else ""
        links.append(f'<a href="#{slug}">{html.escape(text)}</a>')
        return f'<h2 id="{slug}">{m.group(1)}</h2>'

    out = [re.sub(r"<h2>(.*?)</h2>", anchor, p, flags=re.S) for p in parts]
    at = 2 if len(out) > 1 and out[1].startswith('<p class="notice">') else 1
    return [*out[:at], '<nav class="contents">' + " · ".join(links) + "</nav>", *out[at:]]


#: the style of every page the report writes
PAGE_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:95em}"
              "table{border-collapse:collapse}"
              "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}"
              "td{white-space:nowrap}th{cursor:pointer;vertical-align:bottom;min-width:3em}"
              "th[title]{text-decoration:underline dotted}"
              ".grid{display:grid;gap:1em;grid-template-columns:"
              "repeat(auto-fill,minmax(min(30em,100%),1fr))}.grid figure{margin:0}"
              "td:nth-child(2),th:nth-child(2){text-align:left}dt{font-weight:bold;float:left;"
              "clear:left;width:11em;overflow-wrap:anywhere}dd{margin-left:12em;"
              "overflow-wrap:anywhere}li{overflow-wrap:anywhere}"
              "img{width:100%;height:auto}figure{max-width:100%;margin:1em 0}"
              ".scroll{overflow-x:auto;max-width:100%}"
              "td.noise{color:#777}td.noise sup{color:#c60;font-weight:bold}"
              "table.lineage td.text{white-space:normal;text-align:left;min-width:14em;"
              "max-width:28em;vertical-align:top}table.lineage th{text-align:left;"
              "vertical-align:top;white-space:nowrap}.ppl{color:#777;font-size:.85em}"
              ".notice{background:#fff4d6;border-left:4px solid #e0a000;padding:.5em .8em}"
              "h3 small,.small{color:#555;font-weight:normal;font-size:.9em}"
              "details{margin:.5em 0}summary{cursor:pointer;font-weight:bold}"
              "nav.contents{margin:1em 0;line-height:1.8}figcaption{color:#444;font-size:.9em}"
              # last, so that it overrides the rules above on a phone
              "@media(max-width:40em){body{margin:.6em}dt{float:none;width:auto}"
              "dd{margin-left:1em}}")


def render_html(lb: Leaderboard, tables: GenerationTables | None = None,
                images: dict[str, bytes] | None = None,
                links: list[str] | None = None, sections: list[str] | None = None,
                captions: dict[str, str] | None = None) -> str:
    """One self-contained page: setup, leaderboard (sortable, definitions on hover), the
    per-generation table of each metric in ``tables``, ``sections`` (ready-made HTML: the
    lineages), embedded PNGs in a grid, links to the other files (paths relative to the
    page: the CSV, LaTeX, PDFs, experiment.json)."""

    e = html.escape
    title = f"lmcollapse leaderboard: {', '.join(x.key for x in lb.experiments)}"
    parts = [f"<h1>{e(title)}</h1>"]
    notice = one_seed_notice(lb)
    if notice:
        parts.append(f'<p class="notice">{e(notice)}</p>')
    for exp in lb.experiments:
        parts.append(f"<h2>Setup of {e(exp.key)}</h2>\n<dl>" + "".join(
            f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in setup_items(exp)) + "</dl>")
    header, rows = leaderboard_table(lb)
    header = header[:5] + [_title(lb, c) for c in lb.columns]
    defs = _definitions(lb)
    hovers = [["", "", "", "", "", *(cell_hover(r, c) for c in lb.columns)] for r in lb.rows]
    parts += ["<h2>Leaderboard</h2>", "<p>Click a header to sort; hover it for its "
              "definition, a cell for its intervals and tests.</p>",
              _html_table(header, rows, 5, defs, text_columns=(1,), keys=_sort_keys(lb),
                          hovers=hovers),
              "<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes(lb)) + "</ul>"]
    gaps = open_gaps(lb)
    if gaps[1]:
        parts += ["<h3>Open gaps (within noise) and the seeds that would settle them</h3>",
                  _html_table(*gaps, first_value=3, text_columns=(0, 1, 2))]
    skipped = [p for x in lb.experiments for p in x.problems]
    if skipped:
        parts += ["<h2>Skipped</h2><p>Could not be read; everything else is shown.</p>",
                  "<ul>" + "".join(f"<li>{e(p)}</li>" for p in skipped) + "</ul>"]
    if tables:
        parts += ["<h2>Per generation</h2>", "<ul>" + "".join(
            f"<li>{e(n)}</li>" for n in generation_notes(lb.experiments, None, None, lb.correction))
            + "</ul>"]
        for metric, table, marks in tables:
            direction = lb.meta.get(metric, {}).get("higher_is_better")
            parts += [f'<h3 title="{e(defs[5 + lb.columns.index(metric)])}">'
                      if metric in lb.columns else "<h3>",
                      e(_title(lb, metric)) + ("" if f"({metric})" in _title(lb, metric)
                                               else f" <small>({e(metric)})</small>") + "</h3>",
                      _html_table(*generation_table(table, marks), first_value=1),
                      f'<p class="small">{e(_rank_note(metric, direction))}</p>']
    parts += sections or []  # ready-made HTML (the lineages)
    captions = captions or {}
    figures = [f'<figure><img alt="{e(name)}" src="data:image/png;base64,'
               f'{base64.b64encode(png).decode()}"><figcaption>'
               f"{e(captions.get(name, name))}</figcaption></figure>"
               for name, png in (images or {}).items()]
    if figures:
        parts += ["<h2>Plots</h2>", '<div class="grid">' + "\n".join(figures) + "</div>"]
    if links:
        parts += ["<h2>Files</h2>", "<ul>" + "".join(
            f'<li><a href="{e(link)}">{e(link)}</a></li>' for link in links) + "</ul>"]
    return page(title, _with_contents(parts))


def page(title: str, parts: list[str]) -> str:
    """A self-contained HTML page of ready-made ``parts`` (the report's style and sorting
    script; works offline and on a phone)."""
    viewport = '<meta name="viewport" content="width=device-width, initial-scale=1">'
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">{viewport}'
            f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>\n<body>\n"
            + "\n".join(parts)
            + f"\n<script>{_SORT_JS}</script>\n</body>\n</html>\n")


