"""``cross_entropy``: the model's own next-token cross-entropy, the mean over every target
token of the micro-batch (padding excluded): the default objective."""

from __future__ import annotations

import torch

from lmcollapse.losses.base import Loss
from lmcollapse.registry import LOSSES


@LOSSES.register("cross_entropy", default=True)
class CrossEntropy(Loss):
    """What ``model(**batch).loss`` computes (transformers' causal-LM loss)."""

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss
