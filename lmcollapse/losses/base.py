"""The interface of a training objective: the loss of one batch, and what it counted.

A loss is a registered part (``@LOSSES.register(name)``) with its own settings dataclass
(the keys of ``train.loss`` beside ``name``). The training loop
(:func:`lmcollapse.train.train_generation`) calls it on every micro-batch and, at each
evaluation, adds its :meth:`Loss.summary` (what it counted since the last one) to the
generation's ``train_log.jsonl`` record. Validation and every metric keep plain
cross-entropy: a loss changes what a generation learns, never how it is measured.
"""

from __future__ import annotations

from typing import Any

import torch

from lmcollapse.registry import LOSSES


class Loss:
    """Base class: ``loss(model, batch)`` returns the scalar to back-propagate.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels`` (the input ids, -100
    where the row is padding), as :class:`lmcollapse.train.Collate` makes them."""

    name = ""
    settings: type | None = None

    def __init__(self, settings: Any = None) -> None:
        if settings is None and self.settings is not None:
            settings = self.settings()
        self.config = settings

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def summary(self) -> dict[str, float]:
        """What the loss counted since the last call (and forget it); empty: nothing."""
        return {}


def make_loss(spec: Any) -> Loss:
    """The loss a :class:`~lmcollapse.settings.sections.LossSpec` names, with its settings."""
    return LOSSES.get(spec.name)(spec.settings)
