"""MAUVE between held-out human text and corpus k, on the harness's text features
(:mod:`lmcollapse.metrics.features`), with a multi-seed wrapper around
``mauve.compute_mauve``."""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import mauve
import numpy as np

from lmcollapse.errors import ConfigError
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.metrics.features import Features, FeatureSettings
from lmcollapse.registry import METRICS

log = logging.getLogger(__name__)


#: what faiss prints when k-means has fewer than 39 points per centroid
FAISS_WARNING = re.compile(r"WARNING clustering (\d+) points to (\d+) centroids: please "
                           r"provide at least (\d+) training points\n?")
_explained = False


@contextlib.contextmanager
def _stderr_of_c_code(into: list[str]) -> Iterator[None]:
    """Capture what is written to file descriptor 2 (C++ code bypasses ``sys.stderr``)
    into ``into[0]``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            into.append(tmp.read().decode(errors="replace"))


def _explain_faiss(printed: str) -> None:
    """Say once per process, in the log, what faiss's k-means warning means for MAUVE;
    pass anything else that was printed on to stderr."""
    global _explained
    found = FAISS_WARNING.search(printed)
    rest = FAISS_WARNING.sub("", printed)
    if rest:
        sys.stderr.write(rest)
    if found and not _explained:
        _explained = True
        n, k, want = found.groups()
        log.warning(
            "MAUVE: k-means quantizes %s feature vectors into %s buckets; faiss asks for %s "
            "(39 per bucket) to place centroids reliably. With fewer, the bucket histograms "
            "carry more k-means noise: it shows in mauve_std (over k-means seeds) and the seed "
            "spread, so compare MAUVE gaps with those. Fewer buckets "
            "(metrics.mauve.num_buckets) or more samples (num_samples) avoid it. "
            "(Said once; faiss repeats it for every k-means run.)", n, k, want)


def mauve_score(
    p_features: np.ndarray,
    q_features: np.ndarray,
    num_buckets: int | str,
    seeds: Sequence[int],
    **kwargs: Any,
) -> dict[str, Any]:
    """Runs ``mauve.compute_mauve`` on precomputed features once per k-means seed.

    Note that ``compute_mauve`` L2-normalises features before PCA and k-means, so only
    feature directions matter. ``num_buckets='auto'`` resolves to
    ``max(2, round(min(n_p, n_q) / 10))``.

    Args:
        p_features: Array ``[n_p, d]`` (e.g. human text features).
        q_features: Array ``[n_q, d]`` (e.g. model text features).
        num_buckets: k-means cluster count, or ``'auto'``. NumPy integers are accepted
            (converted to ``int``; ``compute_mauve`` itself rejects them).
        seeds: k-means seeds; one MAUVE run per seed.
        **kwargs: Further ``compute_mauve`` keyword arguments (e.g. ``kmeans_num_redo``,
            ``mauve_scaling_factor``). Must not repeat the ones set here.

    Returns:
        Dict with ``mauve`` (mean over seeds), ``mauve_std`` (population std, ddof=0),
        ``mauve_runs`` (list of floats, one per seed), ``num_buckets`` (the resolved
        integer actually used), ``n_p`` and ``n_q``.

    Raises:
        ValueError: If ``seeds`` is empty or ``num_buckets`` is neither int nor ``'auto'``.
    """
    if len(seeds) == 0:
        raise ValueError("seeds must be non-empty")
    if isinstance(num_buckets, numbers.Integral) and not isinstance(num_buckets, bool):
        num_buckets = int(num_buckets)
    elif num_buckets != "auto":
        raise ValueError(f"num_buckets must be an int or 'auto', got {num_buckets!r}")
    p = np.asarray(p_features)
    q = np.asarray(q_features)
    printed: list[str] = []
    with _stderr_of_c_code(printed):  # faiss warns from C++, once per k-means run
        outs = [
            mauve.compute_mauve(
                p_features=p,
                q_features=q,
                num_buckets=num_buckets,
                seed=int(s),
                verbose=False,
                **kwargs,
            )
            for s in seeds
        ]
    _explain_faiss(printed[0])
    runs = [float(o.mauve) for o in outs]
    return {
        "mauve": float(np.mean(runs)),
        "mauve_std": float(np.std(runs, ddof=0)),
        "mauve_runs": runs,
        "num_buckets": int(outs[0].num_buckets),
        "n_p": int(p.shape[0]),
        "n_q": int(q.shape[0]),
    }


@dataclass
class MauveSettings(FeatureSettings):
    """``metrics.mauve``: the samples and featurizer (:class:`FeatureSettings`), the k-means
    ``num_buckets`` (``auto``: a tenth of the samples) and one MAUVE run per k-means seed."""

    num_buckets: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])

    def check(self, where: str) -> None:
        super().check(where)
        if self.num_buckets != "auto" and not (self.num_buckets.isdigit()
                                               and int(self.num_buckets) >= 2):
            raise ConfigError(f"{where}.num_buckets: 'auto' or an integer >= 2 (k-means "
                              f"clusters), got {self.num_buckets!r}")
        if not self.seeds:
            raise ConfigError(f"{where}.seeds: give at least one k-means seed")


@METRICS.register("mauve")
class Mauve(Metric):
    """MAUVE between held-out human text and corpus k on the harness's own features
    (:class:`~lmcollapse.metrics.features.Features`: cached per row, featurizer and sample).
    Scores compare only within one featurizer setting; it is written beside the score.
    The human row scores held-out human text against human training text: the ceiling."""

    settings = MauveSettings
    display_name = "MAUVE"
    higher_is_better = True
    directions = {"mauve_std": None}
    columns = ("mauve",)

    def __init__(self, settings: MauveSettings) -> None:
        super().__init__(settings)
        self.features = Features(settings, "metrics.mauve")

    def preflight(self, ctx: MeasureContext) -> None:
        self.features.preflight(ctx)

    def _score(self, p_feats: np.ndarray, q_feats: np.ndarray) -> Measurement:
        m = self.config
        buckets = m.num_buckets if m.num_buckets == "auto" else int(m.num_buckets)
        out = mauve_score(p_feats, q_feats, buckets, m.seeds)
        return Measurement({"mauve": out["mauve"], "mauve_std": out["mauve_std"]},
                           details={"mauve_runs": out["mauve_runs"],
                                    "num_buckets": out["num_buckets"],
                                    "featurizer": m.featurizer, "kmeans_seeds": list(m.seeds)},
                           sizes={"n_p": out["n_p"], "n_q": out["n_q"]})

    def compute(self, ctx: MeasureContext) -> Measurement:
        return self._score(self.features.human(ctx), self.features.corpus(ctx))

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        return self._score(self.features.human(ctx), self.features.train(ctx))

    def describe(self, m: Measurement) -> str:
        return (f"{m.sizes['n_p']} vs {m.sizes['n_q']} samples, {m.details['num_buckets']} "
                f"buckets, {m.details['featurizer']} features (scores compare only within one "
                "featurizer)")
