"""Human data: sources (hf, text, synthetic), tokenising into blocks with provenance."""

from lmcollapse.data.blocks import HumanData, human_rows, prepare_human_data
from lmcollapse.data.sources import load_human_text, make_synthetic_source

__all__ = ["HumanData", "human_rows", "load_human_text", "make_synthetic_source",
           "prepare_human_data"]
