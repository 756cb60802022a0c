"""What curation kept: the share of candidates fed back, their scores against the dropped
ones', and what the extra generation cost (read from the generation's curation.json)."""

from __future__ import annotations

from lmcollapse import files
from lmcollapse.layout import CURATION
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.registry import METRICS


@METRICS.register("curation")
class Curation(Metric):
    """Per curated generation: ``kept_fraction`` (share of distinct candidates kept),
    ``score_kept_p50`` / ``score_dropped_p50`` (median scorer value of kept and dropped
    candidates), ``generated_per_kept`` (tokens generated per token fed back: the cost of
    curating) and ``repeats`` (kept samples drawn twice to fill a threshold rule's
    corpus). Cells that do not curate have no values; neither does the human row."""

    display_name = "Curation"
    higher_is_better = None
    columns = ("kept_fraction",)

    def compute(self, ctx: MeasureContext) -> Measurement | None:
        path = ctx.out_dir / CURATION
        if not path.is_file():
            return None
        c = files.read_json(path)
        values = {"kept_fraction": c["kept_fraction"],
                  "score_kept_p50": c["score_kept"]["p50"],
                  "score_dropped_p50": c["score_dropped"]["p50"],
                  "generated_per_kept": c["generated_tokens"] / max(c["kept_tokens"], 1),
                  "repeats": float(c["repeats"])}
        return Measurement(values, details={"rule": c["rule"], "scorer": c["scorer"],
                                            "score_kept": c["score_kept"],
                                            "score_dropped": c["score_dropped"]},
                           sizes={"candidates": c["candidates"], "kept": c["kept"],
                                  "generated_tokens": c["generated_tokens"]})

    def describe(self, m: Measurement) -> str:
        return f"{m.details['rule']} by {m.details['scorer']}"
