"""Calibration and the model's own concentration on held-out human text, from the held-out
pass that perplexity reads (one forward pass; :func:`lmcollapse.metrics.perplexity.heldout_pass`).

Each scored token of the test text gives the next-token distribution p, its target y, the
top-1 probability c = max_v p_v and whether the top-1 token is y (a = 1[argmax p = y]):

- ``ece``: expected calibration error of top-1 confidence (Guo et al. 2017): the tokens
  binned by c into ``bins`` equal-width bins of [0, 1] (a c of exactly 1 in the last one),
  ECE = sum_b (n_b / n) |mean a in b - mean c in b|;
- ``brier``: the multi-class Brier score, sum_v (p_v - 1[v = y])^2 = 1 - 2 p_y + sum_v p_v^2,
  averaged over tokens (0 is perfect, 2 the worst);
- ``top1_confidence``, ``top1_accuracy`` and ``overconfidence`` (their difference: > 0 is
  overconfident);
- ``entropy`` (nats) and ``top_k_mass`` (the mass of the 10 most likely tokens) of the
  next-token distribution: mass concentrating on few tokens (Gambetta et al. 2024);
- ``test_nll_per_token``: the same pass's NLL (equal to perplexity's, so calibration and
  perplexity can be set side by side per window).

Per window of the pass, ``calibration.parquet`` holds the means of those token values: the
report's early warning tests each window's NLL and Brier score against generation 0's, so a
reader sees which one moves first (Du et al. 2025: calibration before accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmcollapse import files
from lmcollapse.checks import positive
from lmcollapse.layout import CALIBRATION
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.metrics.perplexity import (
    HELDOUT_STATS,
    TOP_K,
    PerplexitySettings,
    heldout_pass,
)
from lmcollapse.registry import METRICS


@dataclass
class CalibrationSettings(PerplexitySettings):
    """The held-out windows (the defaults are metrics.perplexity's: set both alike and one
    pass serves both) and the number of equal-width confidence bins of the ECE."""

    bins: int = 15

    def check(self, where: str) -> None:
        super().check(where)
        positive(self.bins, f"{where}.bins")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE of top-1 confidences in ``bins`` equal-width bins of [0, 1]."""
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    n = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, correct, minlength=bins)
                 - np.bincount(index, confidence, minlength=bins))
    return float(gap.sum() / n.sum())


@METRICS.register("calibration")
class Calibration(Metric):
    settings = CalibrationSettings
    display_name = "Calibration"
    headline = "ece"
    higher_is_better = False
    directions = {"brier": False, "top1_accuracy": True, "top1_confidence": None,
                  "overconfidence": None, "entropy": None, "top_k_mass": None,
                  "test_nll_per_token": False}
    display_names = {"ece": "ECE (top-1)", "brier": "Brier score",
                     "entropy": "Next-token entropy", "top_k_mass": f"Top-{TOP_K} mass"}
    columns = ("ece", "brier")
    needs = frozenset({HELDOUT_STATS})

    def preflight(self, ctx: MeasureContext) -> None:
        self.config.windows(ctx.trained_length, "metrics.calibration")

    def compute(self, ctx: MeasureContext) -> Measurement:
        h = heldout_pass(ctx, self.config, "metrics.calibration")
        token = {k: np.concatenate([s[k] for s in h.stats]) for k in h.stats[0]}
        brier = 1.0 - 2.0 * token["p_target"] + token["sum_sq"]
        confidence, correct = token["confidence"], token["correct"]
        windows = [{"window": i, "scored_tokens": int(c), "nll": n / c,
                    "brier": float(np.mean(1.0 - 2.0 * s["p_target"] + s["sum_sq"])),
                    "confidence": float(s["confidence"].mean()),
                    "accuracy": float(s["correct"].mean()), "entropy": float(s["entropy"].mean()),
                    "top_k_mass": float(s["top_k_mass"].mean())}
                   for i, (n, c, s) in enumerate(zip(h.nll, h.count, h.stats, strict=True)) if c]
        if ctx.is_main_process:
            files.write_rows(ctx.out_dir / CALIBRATION, windows)
        values = {"ece": expected_calibration_error(confidence, correct, self.config.bins),
                  "brier": float(brier.mean()), "top1_confidence": float(confidence.mean()),
                  "top1_accuracy": float(correct.mean()),
                  "overconfidence": float(confidence.mean() - correct.mean()),
                  "entropy": float(token["entropy"].mean()),
                  "top_k_mass": float(token["top_k_mass"].mean()),
                  "test_nll_per_token": float(h.nll.sum() / h.count.sum())}
        per_sample = [{"file": CALIBRATION, "column": column, "values": {}}
                      for column in ("nll", "brier")]
        return Measurement(values, details={"bins": self.config.bins, "top_k": TOP_K,
                                            "binning": "equal-width, top-1 confidence",
                                            "file": CALIBRATION, "per_sample": per_sample},
                           sizes={"scored_tokens": int(h.count.sum()),
                                  "windows": len(windows), "test_tokens": h.test_tokens})

    def describe(self, m: Measurement) -> str:
        return (f"ECE in {m.details['bins']} equal-width bins of top-1 confidence, Brier, "
                f"entropy, top-{m.details['top_k']} mass over {m.sizes['scored_tokens']} "
                "held-out tokens")
