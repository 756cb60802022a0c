"""Typed settings of an experiment: the dataclasses a config file fills, their conversion
from YAML and plain data, and their validation.

- :mod:`~lmcollapse.settings.sections`: the core sections (data, model, train, generate,
  metrics); a part's own settings live next to its code and are held by name.
- :mod:`~lmcollapse.settings.experiment`: policies, curation, the grid's axes, the root
  :class:`ExperimentConfig`, and :func:`plain` (settings back to plain data).
- :mod:`~lmcollapse.settings.convert`: YAML and :func:`build` (plain data to settings).
- :mod:`~lmcollapse.settings.validate`: :func:`validate` (the rules that span sections).

Loading a file with overrides is :mod:`lmcollapse.config`; the small range checks every
section uses are :mod:`lmcollapse.checks`.
"""

from lmcollapse.settings.convert import build, parse_yaml
from lmcollapse.settings.experiment import (
    CONFIG_VERSION,
    NOT_SWEEPABLE,
    RUN_WIDE,
    SWEEPABLE,
    CurationConfig,
    ExperimentConfig,
    GridAxis,
    NamedPart,
    PolicySpec,
    ScorerSpec,
    plain,
)
from lmcollapse.settings.sections import (
    MIN_SCRATCH_VOCAB,
    MIN_TEMPERATURE,
    DataConfig,
    GenerateConfig,
    LoraConfig,
    MetricsConfig,
    ModelConfig,
    ScratchModelConfig,
    Sections,
    TrainConfig,
)
from lmcollapse.settings.validate import uses_reserve, validate

__all__ = [
    "CONFIG_VERSION", "MIN_SCRATCH_VOCAB", "MIN_TEMPERATURE", "NOT_SWEEPABLE", "RUN_WIDE",
    "SWEEPABLE", "CurationConfig", "DataConfig", "ExperimentConfig", "GenerateConfig",
    "GridAxis", "LoraConfig", "MetricsConfig", "ModelConfig", "NamedPart", "PolicySpec",
    "ScorerSpec", "ScratchModelConfig", "Sections", "TrainConfig", "build", "parse_yaml",
    "plain", "uses_reserve", "validate",
]
