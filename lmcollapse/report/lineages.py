"""Lineages: the text itself. A few prompts, each continued by generation 0, 1, ..., N of
every policy, beside the human text the prompt was cut from (Shumailov et al.'s figure of
one prompt drifting generation by generation).

Reads ``prompts.parquet`` (written by the loop at set-up), each generation's
``corpus.parquet`` and, where the reference metric ran, ``reference_scores.parquet`` (the
sample's perplexity under generation 0). Where the data source knows the exact
distribution of its text (``data.source: synthetic``), each continuation also gets its
exact log p under the source, rebuilt from ``experiment.json`` (numpy only). JSON and
parquet only, like the rest of the report: no model, no torch.

Rendered by :mod:`lmcollapse.report.lineages_formats`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmcollapse.data.base import ExactContinuations
from lmcollapse.errors import ConfigError
from lmcollapse.layout import CORPUS, REFERENCE_SCORES, RunLayout
from lmcollapse.registry import SOURCES, settings_of
from lmcollapse.report.load import RunResults
from lmcollapse.settings import build

log = logging.getLogger("lmcollapse.report")


@dataclass
class Continuation:
    """One generated continuation: its text, its perplexity under generation 0 (None: not
    in the scored sample) and, where the source knows it, the exact log p (nats) of the
    ``words`` it completes, ``impossible`` of which the source cannot write where they
    stand (then ``log_p`` is that of the other steps: ``continuation_parts`` of the
    source)."""

    text: str
    ppl: float | None = None
    log_p: float | None = None
    words: int = 0
    impossible: int = 0


#: a continuation, or None where that generation wrote none for the prompt
Entry = Continuation | None


@dataclass
class Lineage:
    prompt_id: int
    prompt: str
    human: str
    #: ``continuation_parts`` of the human continuation (None: source unknown)
    human_log_p: tuple[float, int, int] | None = None
    #: policy -> generation -> entry
    texts: dict[str, dict[int, Entry]] = field(default_factory=dict)


def source_truth(config: dict[str, Any]) -> Any | None:
    """The exact distribution of a run's human text, rebuilt from its resolved config,
    where the source knows one (:class:`~lmcollapse.data.base.ExactContinuations`); else None.

    A built-in source is imported alone (the synthetic one needs numpy only); a plug-in
    source goes through discovery.
    """
    data = config.get("data") or {}
    name = data.get("source")
    if not isinstance(name, str) or not name.isidentifier():
        return None
    if SOURCES.find(name) is None:
        try:
            importlib.import_module(f"lmcollapse.data.{name}")
        except ImportError:
            pass
    try:
        cls = SOURCES.find(name) or SOURCES.get(name)
    except KeyError:
        return None
    section = getattr(cls, "section", "") or name
    try:
        truth = cls(build(settings_of(cls), data.get(section) or {}, f"data.{section}")).truth()
    except (ConfigError, TypeError, ValueError) as err:  # a config an older version wrote
        log.warning("lineages: cannot rebuild data source %r for exact log p (%s)", name, err)
        return None
    return truth if isinstance(truth, ExactContinuations) else None


def _exact(truth: Any, prompt: str | None, text: str) -> tuple[float | None, int, int]:
    """``truth.continuation_parts``: (exact log p of the possible steps, words, impossible
    steps), the words scored as by the curation oracle; ``(None, 0, 0)`` without a source
    or a prompt."""
    if truth is None or prompt is None:
        return None, 0, 0
    return truth.continuation_parts(prompt, text)


def choose_prompts(n: int, count: int, seed: int) -> list[int]:
    """``count`` prompt ids out of ``n``, drawn with ``seed`` (the same on every report)."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=min(count, n), replace=False))


#: the columns of a corpus the report reads
_CORPUS_COLUMNS = ["sample_id", "prompt_id", "text"]


def _entries(exp: RunResults, d: Path, ids: set[int], prompts: list[str],
             truth: Any) -> dict[int, Entry]:
    """The continuations of the prompts ``ids`` in the corpus of ``d`` (none where the
    corpus cannot be read: :meth:`RunResults.table` names it)."""
    rows = exp.table(d / CORPUS, _CORPUS_COLUMNS) or []
    scored = {}
    if (d / REFERENCE_SCORES).is_file():
        scored = {r["sample_id"]: r["perplexity"]
                  for r in exp.table(d / REFERENCE_SCORES) or []}
    out: dict[int, Entry] = {}
    for r in rows:  # a curating cell may keep a prompt's sample twice, or not at all
        if r["prompt_id"] in ids and r["prompt_id"] not in out:
            out[r["prompt_id"]] = Continuation(r["text"], scored.get(r["sample_id"]),
                                               *_exact(truth, prompts[r["prompt_id"]],
                                                       r["text"]))
    return out


def _prompts(exp: RunResults) -> list[dict[str, Any]] | None:
    found = [RunLayout(d).prompts for d in exp.dirs if RunLayout(d).prompts.is_file()]
    return exp.table(found[0]) if found else None


def lineages(exp: RunResults, count: int = 3, seed: int = 0,
             run_seed: int | None = None, truth: Any = None) -> list[Lineage]:
    """The lineages of ``count`` prompts (drawn with ``seed``) in seed ``run_seed`` (default
    the first) of every policy of ``exp``; empty when the run has no ``prompts.parquet``.
    ``truth`` (:func:`source_truth`) adds each text's exact log p."""
    table = _prompts(exp)
    if not table or not exp.seeds or count < 1:
        return []
    run_seed = exp.seeds[0] if run_seed is None else run_seed
    ids = choose_prompts(len(table), count, seed)
    prompts = [r["prompt"] for r in table]
    out = [Lineage(i, table[i]["prompt"], table[i]["human"],
                   None if truth is None else _exact(truth, table[i]["prompt"],
                                                     table[i]["human"]))
           for i in ids]
    read: dict[Path, dict[int, Entry]] = {}  # generation 0 is one directory for every policy
    for policy in exp.policies:
        per_gen: dict[int, dict[int, Entry]] = {}
        for k in range(exp.generations + 1):
            dirs = [d for d in exp.gen_dirs(policy, run_seed, k) if (d / CORPUS).is_file()]
            if dirs and dirs[0] not in read:
                read[dirs[0]] = _entries(exp, dirs[0], set(ids), prompts, truth)
            per_gen[k] = read[dirs[0]] if dirs else {}
        for lin in out:
            lin.texts[policy] = {k: per_gen[k].get(lin.prompt_id) for k in per_gen}
    return out


@dataclass
class Extremes:
    """What the reference quantiles mean: of one generation's scored samples, the most and
    least likely under generation 0 and a random few."""

    generation: int
    likely: list[Continuation]
    unlikely: list[Continuation]
    random: list[Continuation]


def extremes(exp: RunResults, policies: list[str], count: int = 2, seed: int = 0,
             run_seed: int | None = None, truth: Any = None) -> dict[str, list[Extremes]]:
    """``{policy: [Extremes per generation]}`` for the ``policies`` of ``exp`` (seed
    ``run_seed``, default the first) where the reference metric scored the corpus:
    ``count`` most likely, least likely and random samples (drawn with ``seed``); ``truth``
    adds each one's exact log p. A policy with nothing scored is left out."""
    run_seed = exp.seeds[0] if run_seed is None else run_seed
    prompts = [r["prompt"] for r in _prompts(exp) or []]
    read: dict[Path, Extremes | None] = {}  # generation 0 is one directory for every policy
    out: dict[str, list[Extremes]] = {}
    for policy in policies:
        for k in range(exp.generations + 1):
            dirs = [d for d in exp.gen_dirs(policy, run_seed, k)
                    if (d / CORPUS).is_file() and (d / REFERENCE_SCORES).is_file()]
            if dirs and dirs[0] not in read:
                read[dirs[0]] = _extremes_of(exp, dirs[0], k, count, seed, prompts, truth)
            if dirs and read[dirs[0]] is not None:
                out.setdefault(policy, []).append(read[dirs[0]])
    return out


def _extremes_of(exp: RunResults, d: Path, k: int, count: int, seed: int,
                 prompts: list[str], truth: Any) -> Extremes | None:
    scores = exp.table(d / REFERENCE_SCORES) or []
    rows = {r["sample_id"]: r for r in exp.table(d / CORPUS, _CORPUS_COLUMNS) or []}
    scored = sorted((r["perplexity"], r["sample_id"]) for r in scores if r["sample_id"] in rows)
    if not scored:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(scored), size=min(count, len(scored)), replace=False)
    pick = [scored[:count], scored[::-1][:count], [scored[int(i)] for i in sorted(picks)]]
    return Extremes(k, *([_sample(rows[sid], ppl, prompts, truth) for ppl, sid in part]
                         for part in pick))


def _sample(row: dict[str, Any], ppl: float, prompts: list[str], truth: Any) -> Continuation:
    """A corpus row as a :class:`Continuation` (no log p for a row without its prompt)."""
    pid = row["prompt_id"]
    prompt = prompts[pid] if pid is not None and 0 <= pid < len(prompts) else None
    return Continuation(row["text"], ppl, *_exact(truth, prompt, row["text"]))
