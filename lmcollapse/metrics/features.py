"""Text features for distribution metrics (MAUVE, precision/recall, Fréchet distance).

A sample is embedded by a causal LM's final hidden state at its last token
(:func:`terminal_hidden_states`): the seed's generation-0 model (``featurizer: gen0``, the
offline default), or any hub id or local model directory (e.g. ``gpt2-large``, MAUVE's
choice), which re-tokenises the decoded text. :class:`Features` draws the equal-size human
and corpus samples and caches their features per row, featurizer, sample size and draw seed
(``features_<featurizer>_n<size>_s<seed>.npy``), so metrics with the same featurizer and
sample share one forward pass."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from lmcollapse import files
from lmcollapse.checks import positive, sample_size
from lmcollapse.errors import ConfigError
from lmcollapse.files import write_npy
from lmcollapse.layout import features_file
from lmcollapse.metrics.base import MeasureContext
from lmcollapse.models import load_model
from lmcollapse.sampling import fixed_sample
from lmcollapse.scoring import pad_batch

TokenSeqs = Sequence[Sequence[int]]


def _model_device(model: torch.nn.Module) -> torch.device:
    """Returns the device of the model's first parameter (CPU if it has none)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _last_token_states(
    model: torch.nn.Module, batch: list[list[int]], pad_id: int, device: torch.device
) -> torch.Tensor:
    """Final-layer hidden state at each sequence's last real token, shape [b, hidden]."""
    ids, mask = pad_batch(batch, pad_id)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        output_hidden_states=True,
        use_cache=False,
    )
    last = out.hidden_states[-1]
    pos = torch.tensor([len(s) - 1 for s in batch], device=last.device)
    return last[torch.arange(len(batch), device=last.device), pos]


def terminal_hidden_states(
    model: torch.nn.Module,
    seqs: TokenSeqs,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    pad_id: int = 0,
) -> np.ndarray:
    """Embeds sequences by the causal LM's final hidden state at their last real token.

    Sequences are batched in length order (less padding), right-padded with ``pad_id``
    and masked; results are returned in input order. The model is put in eval mode for
    the call and its previous train/eval mode is restored afterwards.

    Args:
        model: A Hugging Face causal LM accepting ``output_hidden_states=True``.
        seqs: Non-empty token-id sequences.
        batch_size: Sequences per forward pass.
        device: Device for the inputs; defaults to the device of the model's parameters.
        pad_id: Id used for padding (masked out, so its value does not matter).

    Returns:
        float32 array of shape ``[len(seqs), hidden_size]``.

    Raises:
        ValueError: If any sequence is empty or ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    toks = [np.asarray(s, dtype=np.int64).reshape(-1).tolist() for s in seqs]
    if any(len(t) == 0 for t in toks):
        raise ValueError("terminal_hidden_states needs non-empty sequences")
    if not toks:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    device = torch.device(device) if device is not None else _model_device(model)
    order = sorted(range(len(toks)), key=lambda i: len(toks[i]))
    result: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                states = _last_token_states(model, [toks[i] for i in idx], pad_id, device)
                states = states.float().cpu().numpy()
                if result is None:
                    result = np.empty((len(toks), states.shape[1]), dtype=np.float32)
                result[idx] = states
    finally:
        model.train(was_training)
    return result


@dataclass
class FeatureSettings:
    """The samples a feature metric compares: ``featurizer`` (``gen0``, a hub id or a local
    model directory), ``num_samples`` human and corpus samples (None: the largest size both
    allow), their draw ``seed`` and the featurizer's ``batch_size``."""

    featurizer: str = "gen0"
    num_samples: int | None = None
    batch_size: int = 32
    seed: int = 0

    def check(self, where: str) -> None:
        sample_size(self.num_samples, f"{where}.num_samples")
        positive(self.batch_size, f"{where}.batch_size")
        if not self.featurizer.strip():
            raise ConfigError(f"{where}.featurizer: 'gen0', a hub id or a local model "
                              "directory; got an empty string")


#: external featurizers loaded in this process, by name (metrics that share one load it once)
_LOADED: dict[str, tuple[Any, Any]] = {}


def load_featurizer(name: str, where: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of an external featurizer (a hub id or a local directory),
    loaded once per process; ConfigError naming ``where`` when it cannot be loaded."""
    if name not in _LOADED:
        try:
            tok = AutoTokenizer.from_pretrained(name)
            model = load_model(name)
        except Exception as err:  # noqa: BLE001  (any load failure means the same here)
            raise ConfigError(
                f"{where}: cannot load {name!r} ({type(err).__name__}: {str(err)[:200]}). "
                "Offline, use 'gen0' or a local model directory.") from None
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        _LOADED[name] = (model, tok)
    return _LOADED[name]


class Features:
    """The featurised samples of one metric's settings (see the module docstring).

    ``human`` are held-out human chunks shaped like corpus samples, ``corpus`` a sample of
    corpus k, ``train`` the start of as many human training blocks (the human row's other
    side); all of :meth:`size` samples, drawn with the settings' seed.
    """

    def __init__(self, settings: FeatureSettings, where: str) -> None:
        self.config = settings
        self.where = where

    def size(self, ctx: MeasureContext) -> int:
        return ctx.equal_size(self.config.num_samples, f"{self.where}.num_samples")

    def preflight(self, ctx: MeasureContext) -> None:
        self.size(ctx)
        if self.config.featurizer != "gen0":
            load_featurizer(self.config.featurizer, f"{self.where}.featurizer")

    def _cache_name(self, ctx: MeasureContext) -> str:
        name = self.config.featurizer
        if name == "gen0" and ctx.reference_founder:  # another training setting's gen 0
            name += "@" + ctx.reference_founder
        slug = re.sub(r"[^A-Za-z0-9_.=@-]+", "_", name).strip("_")
        return features_file(slug, self.size(ctx), self.config.seed)

    def _embed(self, ctx: MeasureContext, seqs: list, cache: Path) -> np.ndarray:
        m = self.config
        if cache.exists():
            files.verify(cache)
            return np.load(cache)
        if m.featurizer == "gen0":
            model, pad, feats_in = ctx.reference_model(), ctx.tokenizer.pad_token_id, seqs
        else:
            model, tok = load_featurizer(m.featurizer, f"{self.where}.featurizer")
            model.to(ctx.accelerator.device)
            texts = ctx.tokenizer.batch_decode([list(map(int, s)) for s in seqs])
            feats_in = [tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
                        for t in texts]
            pad = tok.pad_token_id
        feats = terminal_hidden_states(model, feats_in, batch_size=m.batch_size,
                                       device=ctx.accelerator.device, pad_id=pad)
        if ctx.is_main_process:
            write_npy(cache, feats)  # atomic: a killed run never leaves a truncated cache
        return feats

    def human(self, ctx: MeasureContext) -> np.ndarray:
        chunks = ctx.human_chunks(self.size(ctx), self.config.seed)
        return self._embed(ctx, chunks, ctx.seed_dir / "human" / self._cache_name(ctx))

    def corpus(self, ctx: MeasureContext) -> np.ndarray:
        sample = fixed_sample(ctx.corpus_seqs(), self.size(ctx), self.config.seed)
        return self._embed(ctx, sample, ctx.out_dir / self._cache_name(ctx))

    def train(self, ctx: MeasureContext) -> np.ndarray:
        length = ctx.sample_tokens
        blocks = [r["input_ids"][:length] for r in ctx.human.train]
        return self._embed(ctx, fixed_sample(blocks, self.size(ctx),
                                             ctx.human_seed(self.config.seed)),
                           ctx.out_dir / ("train_" + self._cache_name(ctx)))
