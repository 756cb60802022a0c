"""``truncated``: truncated cross-entropy (TCE; Shabgahi, Aghazadeh, Mirhoseini and
Koushanfar, "ForTIFAI", arXiv 2509.08972). A target token the model already predicts with
probability p_t above ``threshold`` is dropped from the loss::

    TCE = sum_t chi(p_t) * CE_t / D,   chi(p_t) = 0 if p_t > threshold else 1

with p_t the probability of the target (not of the most likely) token, the mask carrying
no gradient. The denominator D (``normalize``) is every target token (``all``: the
authors' code, ``clipped_loss`` in their ``src/losses.py``: a masked token still counts,
so the loss shrinks as more tokens are confident) or only the kept ones (``kept``: the
mean cross-entropy of what is left). Padding is never a target here (the authors' code
counts it; their rows are not padded). The threshold of the paper's runs is 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lmcollapse.errors import ConfigError
from lmcollapse.losses.base import Loss
from lmcollapse.registry import LOSSES


@dataclass
class TruncatedSettings:
    #: drop a target token whose probability under the model is above this
    threshold: float = 0.99
    #: the denominator: every target token (``all``, the authors' code) or the kept ones
    normalize: Literal["all", "kept"] = "all"

    def check(self, where: str) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"{where}.threshold: a probability in (0, 1] (1: nothing is "
                              f"dropped), got {self.threshold}")


def truncated_terms(logits: torch.Tensor, labels: torch.Tensor,
                    threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per target token (the labels shifted by one; -100: no target): its cross-entropy,
    whether it is a target, and whether it is kept (a target with p_t <= threshold)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != -100
    ce = F.cross_entropy(logits.transpose(1, 2), targets.masked_fill(~valid, 0),
                         reduction="none") * valid
    keep = valid & (torch.exp(-ce.detach()) <= threshold)
    return ce, valid, keep


@LOSSES.register("truncated")
class TruncatedCrossEntropy(Loss):
    """Cross-entropy without the tokens the model is already sure of."""

    settings = TruncatedSettings

    def __init__(self, settings: TruncatedSettings | None = None) -> None:
        super().__init__(settings)
        self._dropped = self._targets = 0

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce, valid, keep = truncated_terms(logits, batch["labels"], self.config.threshold)
        # summed on the device: no host sync per micro-batch
        self._targets = self._targets + valid.sum()
        self._dropped = self._dropped + (valid & ~keep).sum()
        denominator = (keep if self.config.normalize == "kept" else valid).sum().clamp(min=1)
        return (ce * keep).sum() / denominator

    def summary(self) -> dict[str, float]:
        """``dropped_share``: the share of target tokens dropped since the last call (on
        this process's micro-batches)."""
        targets, dropped = int(self._targets), int(self._dropped)
        self._dropped = self._targets = 0
        return {"dropped_share": dropped / targets} if targets else {}
