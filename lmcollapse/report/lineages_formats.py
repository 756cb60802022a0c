"""Render lineages and the samples behind the reference quantiles
(:mod:`lmcollapse.report.lineages`) as Markdown and HTML: each continuation with its
generation-0 perplexity and, where the source knows it, its exact log p."""

from __future__ import annotations

import html
import re

from lmcollapse.report.lineages import Continuation, Entry, Extremes, Lineage
from lmcollapse.report.load import RunResults

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Control characters a model wrote (byte tokens) as ``\\xNN``, so they show and do not
    break a terminal, a Markdown table or a page."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _num(x: float) -> str:
    """``−32.1`` (a true minus)."""
    return f"{x:.1f}".replace("-", "−")


def _log_p_text(log_p: float | None, words: int, impossible: int = 0) -> str:
    if log_p is None:
        return ""
    if words == 0:
        return "log p – / 0 w"
    return f"log p {_num(log_p)} / {words} w" + (f" ({impossible} impossible steps)"
                                                  if impossible else "")


def _tags(c: Continuation) -> list[str]:
    """``["ppl 12.3", "log p −32.1 / 11 w"]`` (ppl "–" where not scored)."""
    ppl = "ppl –" if c.ppl is None else f"ppl {c.ppl:.1f}"
    return [ppl] + ([_log_p_text(c.log_p, c.words, c.impossible)]
                    if c.log_p is not None else [])


def _one_line(text: str) -> str:
    return " ".join(visible(text).split()).replace("|", "\\|")


def _md(c: Entry) -> str:
    return "–" if c is None else f"[{' · '.join(_tags(c))}] {_one_line(c.text)}"


def _legend(entropy: float | None) -> str:
    text = ("`ppl` = the text's perplexity under generation 0 of the seed (– where it was "
            "not in the scored sample)")
    if entropy is not None:
        text += (f"; `log p` = its exact log-probability (nats) under the data source, of "
                 f"the `w` words it completes after the prompt; `(i impossible steps)`: i "
                 f"word-to-word steps have probability 0 under the source (a word it cannot "
                 f"write after the one before; an unknown word is two steps, into and out "
                 f"of it), so the text's exact log p is −∞ and the log p shown is that of "
                 f"the other steps. The source's entropy rate is {entropy:.3f} nats per "
                 f"word: text as likely as the source's own has log p ≈ −{entropy:.2f} × w")
    return text + "."


def _legend_html(entropy: float | None) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(_legend(entropy)))


def render_lineages_markdown(exp: RunResults, items: list[Lineage], run_seed: int,
                             entropy: float | None = None) -> str:
    """One section per prompt: the prompt and the human text, then a table of generations
    (rows) by policies (columns), each cell the continuation with its generation-0
    perplexity (and exact log p where ``entropy``, the source's entropy rate, is known)."""
    out = [f"# Lineages: {exp.key}, seed {run_seed}", "",
           "Each prompt continued by every generation of every policy (the prompt itself is "
           "not repeated). " + _legend(entropy), ""]
    for lin in items:
        policies = list(lin.texts)
        human = f" [{_log_p_text(*lin.human_log_p)}]" if lin.human_log_p else ""
        out += [f"## Prompt {lin.prompt_id}", "", f"**Prompt:** {_one_line(lin.prompt)}", "",
                f"**Human continuation{human}:** {_one_line(lin.human)}", "",
                "| generation | " + " | ".join(policies) + " |",
                "|---|" + "---|" * len(policies)]
        gens = sorted({k for texts in lin.texts.values() for k in texts})
        for k in gens:
            out.append(f"| {k} | " + " | ".join(_md(lin.texts[p].get(k)) for p in policies)
                       + " |")
        out.append("")
    return "\n".join(out)


def _html(c: Entry) -> str:
    if c is None:
        return "–"
    e = html.escape
    return " ".join(f'<span class="ppl">{e(t)}</span>' for t in _tags(c)) + \
        f" {e(visible(c.text))}"


def render_lineages_html(items: list[Lineage], run_seed: int,
                         entropy: float | None = None) -> str:
    """The same as an HTML section (texts wrap inside their cells; the table scrolls)."""
    e = html.escape
    legend = _legend_html(entropy)
    parts = [f"<h2>Lineages (seed {run_seed})</h2>",
             f"<p>Each prompt continued by every generation of every policy. {legend}</p>"]
    for lin in items:
        policies = list(lin.texts)
        gens = sorted({k for texts in lin.texts.values() for k in texts})
        rows = "".join(
            f"<tr><th>gen {k}</th>" + "".join(
                f'<td class="text">{_html(lin.texts[p].get(k))}</td>' for p in policies)
            + "</tr>" for k in gens)
        human = (f' <span class="ppl">{e(_log_p_text(*lin.human_log_p))}</span>'
                 if lin.human_log_p else "")
        parts.append(
            f"<h3>Prompt {lin.prompt_id}</h3><p><b>Prompt:</b> {e(visible(lin.prompt))}<br>"
            f"<b>Human continuation:</b>{human} {e(visible(lin.human))}</p>"
            '<div class="scroll"><table class="lineage"><thead><tr><th></th>'
            + "".join(f"<th>{e(p)}</th>" for p in policies) + f"</tr></thead><tbody>{rows}"
            "</tbody></table></div>")
    return "\n".join(parts)


_KINDS = ("most likely", "least likely", "random")


def render_extremes_markdown(picked: dict[str, list[Extremes]],
                             entropy: float | None = None) -> str:
    """``picked``: ``{policy: extremes(...)}``; a section per policy and generation."""
    out = ["# Samples by generation-0 perplexity", "",
           "Per policy and generation: the samples generation 0 finds most likely, least "
           "likely, and a random few. " + _legend(entropy), ""]
    for policy, items in picked.items():
        out += [f"## {policy}", ""]
        for ex in items:
            out += [f"### {policy}, generation {ex.generation}", ""]
            for what, rows in zip(_KINDS, (ex.likely, ex.unlikely, ex.random), strict=True):
                out += [f"- {what}: {_md(c)}" for c in rows]
            out.append("")
    return "\n".join(out)


def render_extremes_html(picked: dict[str, list[Extremes]],
                         entropy: float | None = None) -> str:
    """The same as an HTML section: one folding table per policy (the first unfolded)."""
    e = html.escape
    legend = _legend_html(entropy)
    parts = ["<h2>Samples by generation-0 perplexity</h2><p>What the reference quantiles "
             "mean: per policy and generation, the samples generation 0 finds most likely, "
             f"least likely, and a random few. {legend}</p>"]
    for i, (policy, items) in enumerate(picked.items()):
        rows = "".join(
            f"<tr><th>gen {ex.generation}</th>" + "".join(
                '<td class="text">' + "<br>".join(_html(c) for c in cs) + "</td>"
                for cs in (ex.likely, ex.unlikely, ex.random)) + "</tr>"
            for ex in items)
        parts.append(
            f"<details{' open' if i == 0 else ''}><summary>{e(policy)}</summary>"
            '<div class="scroll"><table class="lineage"><thead><tr><th></th>'
            + "".join(f"<th>{k}</th>" for k in _KINDS)
            + f"</tr></thead><tbody>{rows}</tbody></table></div></details>")
    return "\n".join(parts)
