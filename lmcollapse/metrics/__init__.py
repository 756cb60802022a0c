"""Metrics: each registered with a display name and ``higher_is_better``."""

from lmcollapse.metrics import perplexity  # noqa: F401  (registers)
from lmcollapse.metrics.base import METRICS, MeasureContext, Metric, metric_meta

__all__ = ["METRICS", "MeasureContext", "Metric", "metric_meta"]
