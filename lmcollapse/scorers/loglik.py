"""Log-likelihood of a continuation given its prompt under a model: the seed's generation-0
model, the model that wrote it (``generator``) or any local directory or hub id (an
external verifier)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmcollapse.data.blocks import Sample
from lmcollapse.errors import ConfigError
from lmcollapse.models import check_vocab, load_model
from lmcollapse.registry import SCORERS
from lmcollapse.scorers.base import ScoreContext, Scorer
from lmcollapse.scoring import score


@dataclass
class LogLikSettings:
    """``model``: ``gen0``, ``generator`` or a model directory / hub id (it must share the
    run's tokenizer); ``per_token``: divide by the number of continuation tokens."""

    model: str = "gen0"
    per_token: bool = True
    batch_size: int = 64

    def check(self, where: str) -> None:
        if not self.model:
            raise ConfigError(f"{where}.model: 'gen0', 'generator' or a model path")
        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: must be > 0, got {self.batch_size}")


def load_external(name: str, accelerator: Any, tokenizer: Any, where: str) -> torch.nn.Module:
    """A verifier model from a directory or hub id, on the run's device, refused naming
    ``where`` when it cannot be loaded or cannot read the run's tokens."""
    try:
        model = load_model(name)
    except Exception as err:  # noqa: BLE001  (any load failure means the same here)
        raise ConfigError(f"{where}: cannot load {name!r} "
                          f"({type(err).__name__}: {str(err)[:200]})") from None
    try:
        check_vocab(tokenizer, model.config)
    except ConfigError as err:
        raise ConfigError(f"{where}: {name!r} does not share the run's tokenizer ({err})"
                          ) from None
    return model.to(accelerator.device)


@SCORERS.register("loglik")
class LogLikelihood(Scorer):
    settings = LogLikSettings

    def __init__(self, settings: LogLikSettings | None = None) -> None:
        super().__init__(settings)
        self._external: torch.nn.Module | None = None

    def _model(self, ctx: ScoreContext) -> torch.nn.Module:
        name = self.config.model
        if name == "gen0":
            return ctx.reference_model()
        if name == "generator":
            return ctx.generator()
        if self._external is None:
            self._external = load_external(name, ctx.accelerator, ctx.tokenizer,
                                           "curate.scorer.model")
        return self._external

    def preflight(self, ctx: ScoreContext) -> None:
        if self.config.model not in ("gen0", "generator"):
            self._model(ctx)

    def score(self, ctx: ScoreContext, samples: list[Sample]) -> np.ndarray:
        prompts = [ctx.prompt(s) for s in samples]
        seqs = [p + [int(t) for t in s["input_ids"]] for p, s in zip(prompts, samples,
                                                                       strict=True)]
        nll, count = score(ctx.accelerator, self._model(ctx), seqs, [len(p) for p in prompts],
                           ctx.tokenizer.pad_token_id, self.config.batch_size,
                           desc="curation scoring")
        return -nll / np.maximum(count, 1) if self.config.per_token else -nll

    def describe(self) -> str:
        unit = "per token" if self.config.per_token else "summed"
        return f"log p of the continuation given its prompt under {self.config.model} ({unit})"
