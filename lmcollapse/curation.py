"""Curation: which generated samples are fed back (Feng et al. 2024; Drayson et al. 2025).

A curated cell generates several candidates per prompt and keeps a corpus of the size the
policy expects (one sample per human training block, N), chosen by a scorer
(:mod:`lmcollapse.scorers`) and a rule:

- ``best`` / ``worst``: the N highest / lowest scores of ``m * N`` candidates, with
  ``m = round(1 / fraction)`` continuations per prompt (the kept share is exactly 1/m);
- ``tails``: the N // 2 lowest and the N - N // 2 highest of ``m * N`` candidates (a
  perplexity filter that keeps rare, high-surprise samples as well as the likely ones);
- ``threshold``: the candidates scoring at least ``threshold`` (``candidates`` per prompt);
  more than N are thinned by a seeded draw, fewer are topped up by drawing kept ones again
  (with replacement; the number of repeats is recorded), none is an error;
- ``best_of: n`` (people choosing the best of several samples): n continuations per
  prompt, the best-scoring one of each prompt is kept, so the corpus keeps the prompts.

So the mix a policy builds keeps the size it promises; the price is the extra generation,
which is counted (``generated_tokens``). Ties go to the earlier candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmcollapse.sampling import draw_indices
from lmcollapse.settings import CurationConfig


def candidates_per_prompt(rule: str, fraction: float, candidates: int, best_of: int) -> int:
    """How many continuations each prompt gets under a curation setting."""
    if best_of > 1:
        return best_of
    if rule in ("best", "worst", "tails"):
        return max(1, round(1 / fraction))
    if rule == "threshold":
        return candidates
    return 1


def select(scores: np.ndarray, rule: str, keep: int, threshold: float | None = None,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Indices of the kept candidates (in candidate order) and how many are repeats.

    Args:
        scores: one score per candidate (higher = better; ``-inf`` allowed).
        rule: ``best``, ``worst``, ``tails`` or ``threshold`` (see the module docstring).
        keep: how many samples the corpus needs (N).
        threshold: the ``threshold`` rule's bound.
        rng: the draw that thins or tops up the ``threshold`` rule.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if keep > len(scores) and rule != "threshold":
        raise ValueError(f"cannot keep {keep} of {len(scores)} candidates")
    high_first = np.argsort(-scores, kind="stable")  # ties: earlier candidate first
    if rule == "best":
        return np.sort(high_first[:keep]), 0
    if rule == "worst":
        low_first = np.argsort(scores, kind="stable")
        return np.sort(low_first[:keep]), 0
    if rule == "tails":
        low_first = np.argsort(scores, kind="stable")
        low = low_first[: keep // 2]
        taken = set(low.tolist())
        high = [i for i in high_first.tolist() if i not in taken][: keep - keep // 2]
        return np.sort(np.concatenate([low, np.asarray(high, dtype=np.int64)])), 0
    if rule == "threshold":
        passed = np.flatnonzero(scores >= threshold)
        if passed.size == 0:
            raise ValueError(f"no candidate scores >= {threshold} (best: {scores.max():.4g})")
        if passed.size >= keep:
            return passed[draw_indices(passed.size, keep, rng)], 0
        extra = rng.choice(passed, size=keep - passed.size, replace=True)
        return np.sort(np.concatenate([passed, extra])), keep - passed.size
    raise ValueError(f"unknown curation rule {rule!r}")


def best_of_groups(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each group (a prompt), the index of its highest-scoring candidate (the first
    of equals), in group order."""
    scores, groups = np.asarray(scores, dtype=np.float64), np.asarray(groups)
    out = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        out.append(members[int(np.argmax(scores[members]))])
    return np.asarray(out, dtype=np.int64)


def quantiles(values: np.ndarray) -> dict[str, float]:
    """p5 / p50 / p95 and mean of finite scores (NaN when none; -inf scores are counted
    apart, as ``n_minus_inf``)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    out = {f"p{q}": float(np.percentile(finite, q)) if finite.size else math.nan
           for q in (5, 50, 95)}
    out["mean"] = float(finite.mean()) if finite.size else math.nan
    out["n"] = int(values.size)
    out["n_minus_inf"] = int(np.isneginf(values).sum())
    return out


@dataclass
class Curated:
    """What curating ``candidates`` gave: the corpus fed back, one record per candidate
    (``candidates.parquet``) and the summary (``curation.json``)."""

    corpus: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    summary: dict[str, Any]


def curate(settings: CurationConfig, candidates: list[dict[str, Any]], scores: np.ndarray,
           keep: int, per_prompt: int, scorer: str, rng: np.random.Generator) -> Curated:
    """Keep a corpus of ``keep`` samples of ``candidates`` (``per_prompt`` continuations of
    every prompt) by their ``scores`` under ``settings``' rule; ``rng`` thins or tops up a
    ``threshold`` rule's pick."""
    if settings.best_of > 1:
        kept, repeats = best_of_groups(scores, [r["prompt_id"] for r in candidates]), 0
    else:
        kept, repeats = select(scores, settings.rule, keep, settings.threshold, rng)
    times = np.bincount(kept, minlength=len(candidates))
    rule = f"best of {settings.best_of}" if settings.best_of > 1 else settings.rule
    records = [{"sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "score": float(s),
                "kept": int(t), "rule": rule}
               for r, s, t in zip(candidates, scores, times, strict=True)]
    summary = {"rule": rule, "scorer": scorer, "candidates": len(candidates),
               "per_prompt": per_prompt, "kept": int(len(kept)), "repeats": int(repeats),
               "kept_fraction": float((times > 0).mean()),
               "generated_tokens": int(sum(len(r["input_ids"]) for r in candidates)),
               "kept_tokens": int(sum(len(candidates[i]["input_ids"]) for i in kept)),
               "score_kept": quantiles(scores[times > 0]),
               "score_dropped": quantiles(scores[times == 0])}
    return Curated([candidates[i] for i in kept], records, summary)
