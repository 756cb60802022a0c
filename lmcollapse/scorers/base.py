"""The scorer interface: one number per corpus sample, higher = kept first by ``best``.

A scorer is one module in this package: a settings dataclass (the keys of
``curate.scorer`` beside ``name``) and a class registered in
:data:`~lmcollapse.registry.SCORERS` whose :meth:`Scorer.score` returns an array with one
score per sample. It receives a :class:`ScoreContext` (what it may read) and only its own
settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from lmcollapse.data.base import ExactDistribution
from lmcollapse.data.blocks import Sample
from lmcollapse.registry import SCORERS


@dataclass
class ScoreContext:
    """What a scorer may read when it scores the candidates of one generation."""

    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    #: the human training blocks; a sample's prompt is ``prompts[prompt_id]``
    prompts: list[Sample]
    prompt_tokens: int
    #: the model that wrote the candidates, and the seed's generation-0 model
    generator: Callable[[], torch.nn.Module]
    reference_model: Callable[[], torch.nn.Module]
    #: the data source's exact distribution, where it knows one
    truth: ExactDistribution | None = None

    def prompt(self, sample: Sample) -> list[int]:
        """The prompt a sample continues (its first ``prompt_tokens`` tokens)."""
        return list(self.prompts[sample["prompt_id"]]["input_ids"][: self.prompt_tokens])


class Scorer:
    """Base class; subclasses set ``settings`` and implement :meth:`score`."""

    name = ""
    settings: type | None = None
    #: what the score means, for the report (e.g. "log p under generation 0 per token")
    description = ""

    def __init__(self, settings: Any = None) -> None:
        if settings is None and self.settings is not None:
            settings = self.settings()
        self.config = settings

    def preflight(self, ctx: ScoreContext) -> None:
        """Raise ConfigError for anything that would make :meth:`score` fail later."""

    def score(self, ctx: ScoreContext, samples: list[Sample]) -> np.ndarray:
        """One float per sample (float64), higher = more likely / better."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.description or self.name


def make_scorer(spec: Any) -> Scorer:
    """The scorer a :class:`~lmcollapse.settings.ScorerSpec` names, with its settings."""
    return SCORERS.get(spec.name)(spec.settings)
