"""The metric interface. A metric measures one generation (its model and the corpus it wrote)
and, where it applies, held-out human text (the *human reference* row)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmcollapse.registry import Registry

METRICS: Registry[type[Metric]] = Registry("metric")


@dataclass
class MeasureContext:
    """Everything a metric may read. ``model`` and ``corpus`` are None for the human row."""

    cfg: Any
    accelerator: Any
    tokenizer: Any
    human: Any
    generation: int | None = None
    model: Any = None
    corpus: list[dict[str, Any]] | None = None
    source: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


class Metric:
    """Base class.

    Subclasses set ``name``, ``display_name`` and ``higher_is_better`` (for the headline value
    ``values[name]``; ``directions`` overrides it for other keys they return) and implement
    :meth:`compute`. :meth:`preflight` runs before the loop starts and raises on anything that
    would make the metric fail later.
    """

    name = ""
    display_name = ""
    higher_is_better = False
    directions: dict[str, bool] = {}

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def preflight(self, ctx: MeasureContext) -> None:
        """Check the metric can run (files, models, sizes); raise ConfigError otherwise."""

    def compute(self, ctx: MeasureContext) -> dict[str, Any]:
        """Values for generation ``ctx.generation``: scalars, and ``_details`` for the rest."""
        raise NotImplementedError

    def human_reference(self, ctx: MeasureContext) -> dict[str, Any] | None:
        """The same values on held-out human text, or None where they do not apply."""
        return None

    def meta(self, key: str) -> dict[str, Any]:
        return {"metric": self.name, "display_name": self.display_name if key == self.name
                else f"{self.display_name} ({key})",
                "higher_is_better": self.directions.get(key, self.higher_is_better)}


def metric_meta(metric: Metric, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per scalar key: which metric made it, its display name and direction."""
    return {k: metric.meta(k) for k in values if not k.startswith("_")}
