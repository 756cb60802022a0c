"""Metrics: each registered with a display name and ``higher_is_better``."""

from lmcollapse.metrics import (  # noqa: F401  (importing registers them)
    diversity,
    ground_truth,
    mauve_features,
    perplexity,
    reference,
    tail,
)
from lmcollapse.metrics.base import METRICS, MeasureContext, Metric, metric_meta

__all__ = ["METRICS", "MeasureContext", "Metric", "metric_meta"]
