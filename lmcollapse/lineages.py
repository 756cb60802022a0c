"""Lineages: the text itself. A few prompts, each continued by generation 0, 1, ..., N of
every policy, beside the human text the prompt was cut from (Shumailov et al.'s figure of
one prompt drifting generation by generation).

Reads ``prompts.parquet`` (written by the loop at set-up), each generation's
``corpus.parquet`` and, where the reference metric ran, ``reference_scores.parquet`` (the
sample's perplexity under generation 0). JSON and parquet only, like the rest of the
report.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lmcollapse.layout import CORPUS, RunLayout
from lmcollapse.results import RunResults

#: a continuation's text, its generation-0 perplexity (None: not scored), or None: absent
Entry = tuple[str, float | None] | None


@dataclass
class Lineage:
    prompt_id: int
    prompt: str
    human: str
    #: policy -> generation -> entry
    texts: dict[str, dict[int, Entry]] = field(default_factory=dict)


def choose_prompts(n: int, count: int, seed: int) -> list[int]:
    """``count`` prompt ids out of ``n``, drawn with ``seed`` (the same on every report)."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=min(count, n), replace=False))


def _entries(d: Path, ids: set[int]) -> dict[int, Entry]:
    rows = pq.read_table(d / CORPUS, columns=["sample_id", "prompt_id", "text"]).to_pylist()
    scored = {}
    if (d / "reference_scores.parquet").is_file():
        table = pq.read_table(d / "reference_scores.parquet").to_pylist()
        scored = {r["sample_id"]: r["perplexity"] for r in table}
    out: dict[int, Entry] = {}
    for r in rows:  # a curating cell may keep a prompt's sample twice, or not at all
        if r["prompt_id"] in ids and r["prompt_id"] not in out:
            out[r["prompt_id"]] = (r["text"], scored.get(r["sample_id"]))
    return out


def lineages(exp: RunResults, count: int = 3, seed: int = 0,
             run_seed: int | None = None) -> list[Lineage]:
    """The lineages of ``count`` prompts (drawn with ``seed``) in seed ``run_seed`` (default
    the first) of every policy of ``exp``; empty when the run has no ``prompts.parquet``."""
    found = [RunLayout(d).prompts for d in exp.dirs if RunLayout(d).prompts.is_file()]
    if not found or not exp.seeds or count < 1:
        return []
    table = pq.read_table(found[0]).to_pylist()
    run_seed = exp.seeds[0] if run_seed is None else run_seed
    ids = choose_prompts(len(table), count, seed)
    out = [Lineage(i, table[i]["prompt"], table[i]["human"]) for i in ids]
    for policy in exp.policies:
        per_gen: dict[int, dict[int, Entry]] = {}
        for k in range(exp.generations + 1):
            dirs = [d for d in exp.gen_dirs(policy, run_seed, k) if (d / CORPUS).is_file()]
            per_gen[k] = _entries(dirs[0], set(ids)) if dirs else {}
        for lin in out:
            lin.texts[policy] = {k: per_gen[k].get(lin.prompt_id) for k in per_gen}
    return out


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Control characters a model wrote (byte tokens) as ``\\xNN``, so they show and do not
    break a terminal, a Markdown table or a page."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _cell(entry: Entry) -> tuple[str, str]:
    if entry is None:
        return "", "–"
    text, ppl = entry
    return (f"{ppl:.1f}" if ppl is not None else "–"), visible(text)


def _one_line(text: str) -> str:
    return " ".join(visible(text).split()).replace("|", "\\|")


def render_lineages_markdown(exp: RunResults, items: list[Lineage], run_seed: int) -> str:
    """One section per prompt: the prompt and the human text, then a table of generations
    (rows) by policies (columns), each cell the continuation with its generation-0
    perplexity."""
    out = [f"# Lineages: {exp.key}, seed {run_seed}", "",
           "Each prompt continued by every generation of every policy (the prompt itself is "
           "not repeated); `[ppl]` = the continuation's perplexity under generation 0 of the "
           "seed (– where it was not in the scored sample).", ""]
    for lin in items:
        policies = list(lin.texts)
        out += [f"## Prompt {lin.prompt_id}", "", f"**Prompt:** {_one_line(lin.prompt)}", "",
                f"**Human continuation:** {_one_line(lin.human)}", "",
                "| generation | " + " | ".join(policies) + " |",
                "|---|" + "---|" * len(policies)]
        gens = sorted({k for texts in lin.texts.values() for k in texts})
        for k in gens:
            cells = []
            for p in policies:
                ppl, text = _cell(lin.texts[p].get(k))
                cells.append(f"[{ppl}] {_one_line(text)}" if text != "–" else "–")
            out.append(f"| {k} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def render_lineages_html(items: list[Lineage], run_seed: int) -> str:
    """The same as an HTML section (texts wrap inside their cells; the table scrolls)."""
    e = html.escape
    parts = [f"<h2>Lineages (seed {run_seed})</h2>",
             "<p>Each prompt continued by every generation of every policy; the number is "
             "the continuation's perplexity under generation 0 of the seed.</p>"]
    for lin in items:
        policies = list(lin.texts)
        gens = sorted({k for texts in lin.texts.values() for k in texts})
        rows = "".join(
            f"<tr><th>gen {k}</th>" + "".join(
                "<td class=\"text\"><span class=\"ppl\">{}</span> {}</td>".format(
                    *map(e, _cell(lin.texts[p].get(k)))) for p in policies) + "</tr>"
            for k in gens)
        parts.append(
            f"<h3>Prompt {lin.prompt_id}</h3><p><b>Prompt:</b> {e(visible(lin.prompt))}<br>"
            f"<b>Human continuation:</b> {e(visible(lin.human))}</p>"
            '<div class="scroll"><table class="lineage"><thead><tr><th></th>'
            + "".join(f"<th>{e(p)}</th>" for p in policies) + f"</tr></thead><tbody>{rows}"
            "</tbody></table></div>")
    return "\n".join(parts)


@dataclass
class Extremes:
    """What the reference quantiles mean: of one generation's scored samples, the most and
    least likely under generation 0 and a random few, each ``(perplexity, text)``."""

    generation: int
    likely: list[tuple[float, str]]
    unlikely: list[tuple[float, str]]
    random: list[tuple[float, str]]


def extremes(exp: RunResults, policy: str, count: int = 2, seed: int = 0,
             run_seed: int | None = None) -> list[Extremes]:
    """Per generation of ``policy`` (seed ``run_seed``, default the first) where the
    reference metric scored the corpus: ``count`` most likely, least likely and random
    samples (drawn with ``seed``)."""
    run_seed = exp.seeds[0] if run_seed is None else run_seed
    out = []
    for k in range(exp.generations + 1):
        dirs = [d for d in exp.gen_dirs(policy, run_seed, k)
                if (d / CORPUS).is_file() and (d / "reference_scores.parquet").is_file()]
        if not dirs:
            continue
        scores = pq.read_table(dirs[0] / "reference_scores.parquet").to_pylist()
        texts = {r["sample_id"]: r["text"] for r in pq.read_table(
            dirs[0] / CORPUS, columns=["sample_id", "text"]).to_pylist()}
        scored = sorted((r["perplexity"], visible(texts[r["sample_id"]])) for r in scores
                        if r["sample_id"] in texts)
        if not scored:
            continue
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(scored), size=min(count, len(scored)), replace=False)
        out.append(Extremes(k, scored[:count], scored[::-1][:count],
                            [scored[int(i)] for i in sorted(picks)]))
    return out


def render_extremes_markdown(policy: str, items: list[Extremes]) -> str:
    out = [f"# Samples of {policy} by generation-0 perplexity", "",
           "Per generation: the samples generation 0 finds most likely, least likely, and a "
           "random few (`[ppl]` = perplexity under generation 0 of the seed).", ""]
    for ex in items:
        out += [f"## Generation {ex.generation}", ""]
        for what, rows in (("most likely", ex.likely), ("least likely", ex.unlikely),
                           ("random", ex.random)):
            out += [f"- {what}: [{p:.1f}] {_one_line(t)}" for p, t in rows]
        out.append("")
    return "\n".join(out)


def render_extremes_html(policy: str, items: list[Extremes]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><th>gen {ex.generation}</th>" + "".join(
            "<td class=\"text\">" + "<br>".join(
                f'<span class="ppl">{p:.1f}</span> {e(t)}' for p, t in rows) + "</td>"
            for rows in (ex.likely, ex.unlikely, ex.random)) + "</tr>"
        for ex in items)
    return (f"<h2>Samples of {e(policy)} by generation-0 perplexity</h2><p>What the "
            "reference quantiles mean: per generation, the samples generation 0 finds most "
            "likely, least likely, and a random few.</p>"
            '<div class="scroll"><table class="lineage"><thead><tr><th></th>'
            "<th>most likely</th><th>least likely</th><th>random</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")
