"""Precision, recall, density, coverage and Fréchet distance between held-out human text and
corpus k, on the harness's text features (:mod:`lmcollapse.metrics.features`).

The image studies of model collapse report that a collapsing generator keeps its
*precision* (its samples look real) while it loses *recall* (it covers less of the real
distribution). On ``num_samples`` human samples X and as many corpus samples Y:

- precision = share of Y inside some X's k-NN ball, recall = share of X inside some Y's k-NN
  ball (Kynkäänniemi et al. 2019); density = mean number of X balls holding a Y, over k;
  coverage = share of X whose ball holds a Y (Naeem et al. 2020). All four are computed by
  ``prdc.compute_prdc``, the reference code of Naeem et al. (a point's ball has the radius
  of its ``nearest_k``-th neighbour in its own set; strict ``<``).
- Fréchet distance between Gaussians fitted to X and Y:
  ``|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2))`` (the FID formula on text
  features). It needs more samples than feature dimensions for full-rank covariances.

The human row compares held-out human text with human training text (the ceiling).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from prdc import compute_prdc

from lmcollapse.checks import positive
from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.metrics.features import Features, FeatureSettings
from lmcollapse.registry import METRICS

WHERE = "metrics.prdc"


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    vals, vecs = np.linalg.eigh(matrix)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to the rows of ``x`` and ``y``.

    ``tr((S_x S_y)^(1/2))`` is computed as the sum of the square roots of the eigenvalues of
    the symmetric ``S_x^(1/2) S_y S_x^(1/2)`` (same spectrum, real and stable), so no complex
    ``sqrtm`` is needed. Covariances are unbiased (``ddof=1``), in float64.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError("need two sets of at least 2 points of the same dimension")
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    s_x, s_y = np.cov(x, rowvar=False, ddof=1), np.cov(y, rowvar=False, ddof=1)
    root = _psd_sqrt(np.atleast_2d(s_x))
    cross = np.linalg.eigvalsh(root @ np.atleast_2d(s_y) @ root)
    trace = np.trace(np.atleast_2d(s_x)) + np.trace(np.atleast_2d(s_y))
    value = float(((mu_x - mu_y) ** 2).sum() + trace - 2.0 * np.sqrt(np.clip(cross, 0, None)).sum())
    return max(value, 0.0)


def prdc(real: np.ndarray, fake: np.ndarray, nearest_k: int) -> dict[str, float]:
    """``prdc.compute_prdc`` (its progress print silenced) as plain floats."""
    with contextlib.redirect_stdout(io.StringIO()):
        out = compute_prdc(real_features=np.asarray(real), fake_features=np.asarray(fake),
                           nearest_k=nearest_k)
    return {k: float(v) for k, v in out.items()}


@dataclass
class PrdcSettings(FeatureSettings):
    """``metrics.prdc``: the samples and featurizer (:class:`FeatureSettings`, as MAUVE's:
    the same settings reuse MAUVE's cached features) and the k of the k-NN balls."""

    nearest_k: int = 5

    def check(self, where: str) -> None:
        super().check(where)
        positive(self.nearest_k, f"{where}.nearest_k")


@METRICS.register("prdc")
class Prdc(Metric):
    headline = "recall"
    settings = PrdcSettings
    display_name = "k-NN recall"
    higher_is_better = True
    directions = {"precision": True, "density": True, "coverage": True,
                  "frechet_distance": False}
    columns = ("precision", "recall", "frechet_distance")

    def __init__(self, settings: PrdcSettings) -> None:
        super().__init__(settings)
        self.features = Features(settings, WHERE)

    def preflight(self, ctx: MeasureContext) -> None:
        self.features.preflight(ctx)
        size = self.features.size(ctx)
        if self.config.nearest_k >= size:
            raise ConfigError(f"{WHERE}.nearest_k: {self.config.nearest_k} needs more than "
                              f"{self.config.nearest_k} samples per side; the samples are "
                              f"{size}. Allowed: 1..{size - 1}")

    def _measure(self, human: np.ndarray, other: np.ndarray) -> Measurement:
        values = prdc(human, other, self.config.nearest_k)
        values["frechet_distance"] = frechet_distance(human, other)
        return Measurement(values, details={"nearest_k": self.config.nearest_k,
                                            "featurizer": self.config.featurizer,
                                            "dimensions": int(human.shape[1])},
                           sizes={"human": len(human), "corpus": len(other)})

    def compute(self, ctx: MeasureContext) -> Measurement:
        return self._measure(self.features.human(ctx), self.features.corpus(ctx))

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        return self._measure(self.features.human(ctx), self.features.train(ctx))

    def describe(self, m: Measurement) -> str:
        return (f"{m.sizes['human']} human vs {m.sizes['corpus']} samples, k = "
                f"{m.details['nearest_k']}, {m.details['dimensions']}-d "
                f"{m.details['featurizer']} features")
