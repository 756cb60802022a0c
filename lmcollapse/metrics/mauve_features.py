"""Feature extraction for MAUVE and a multi-seed wrapper around ``mauve.compute_mauve``."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mauve
import numpy as np
import torch
from transformers import AutoTokenizer

from lmcollapse.config import positive, sample_size
from lmcollapse.errors import ConfigError
from lmcollapse.files import write_npy
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.models import load_model
from lmcollapse.registry import METRICS
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


def mauve_score(
    p_features: np.ndarray,
    q_features: np.ndarray,
    num_buckets: int | str,
    seeds: Sequence[int],
    **kwargs: Any,
) -> dict[str, Any]:
    """Runs ``mauve.compute_mauve`` on precomputed features once per k-means seed.

    Note that ``compute_mauve`` L2-normalises features before PCA and k-means, so only
    feature directions matter. ``num_buckets='auto'`` resolves to
    ``max(2, round(min(n_p, n_q) / 10))``.

    Args:
        p_features: Array ``[n_p, d]`` (e.g. human text features).
        q_features: Array ``[n_q, d]`` (e.g. model text features).
        num_buckets: k-means cluster count, or ``'auto'``. NumPy integers are accepted
            (converted to ``int``; ``compute_mauve`` itself rejects them).
        seeds: k-means seeds; one MAUVE run per seed.
        **kwargs: Further ``compute_mauve`` keyword arguments (e.g. ``kmeans_num_redo``,
            ``mauve_scaling_factor``). Must not repeat the ones set here.

    Returns:
        Dict with ``mauve`` (mean over seeds), ``mauve_std`` (population std, ddof=0),
        ``mauve_runs`` (list of floats, one per seed), ``num_buckets`` (the resolved
        integer actually used), ``n_p`` and ``n_q``.

    Raises:
        ValueError: If ``seeds`` is empty or ``num_buckets`` is neither int nor ``'auto'``.
    """
    if len(seeds) == 0:
        raise ValueError("seeds must be non-empty")
    if isinstance(num_buckets, numbers.Integral) and not isinstance(num_buckets, bool):
        num_buckets = int(num_buckets)
    elif num_buckets != "auto":
        raise ValueError(f"num_buckets must be an int or 'auto', got {num_buckets!r}")
    p = np.asarray(p_features)
    q = np.asarray(q_features)
    outs = [
        mauve.compute_mauve(
            p_features=p,
            q_features=q,
            num_buckets=num_buckets,
            seed=int(s),
            verbose=False,
            **kwargs,
        )
        for s in seeds
    ]
    runs = [float(o.mauve) for o in outs]
    return {
        "mauve": float(np.mean(runs)),
        "mauve_std": float(np.std(runs, ddof=0)),
        "mauve_runs": runs,
        "num_buckets": int(outs[0].num_buckets),
        "n_p": int(p.shape[0]),
        "n_q": int(q.shape[0]),
    }


@dataclass
class MauveSettings:
    """``metrics.mauve``. ``featurizer``: ``gen0`` (the seed's generation-0 model), a hub id
    or a local dir; ``num_samples`` human and corpus samples (None: the largest size both
    allow)."""

    featurizer: str = "gen0"
    num_samples: int | None = None
    num_buckets: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    batch_size: int = 32
    seed: int = 0

    def check(self, where: str) -> None:
        sample_size(self.num_samples, f"{where}.num_samples")
        positive(self.batch_size, f"{where}.batch_size")
        if self.num_buckets != "auto" and not self.num_buckets.isdigit():
            raise ConfigError(f"{where}.num_buckets: 'auto' or a positive integer, got "
                              f"{self.num_buckets!r}")
        if not self.seeds:
            raise ConfigError(f"{where}.seeds: give at least one k-means seed")


@METRICS.register("mauve")
class Mauve(Metric):
    """MAUVE between held-out human text and corpus k on the harness's own features.

    Features are the featurizer's final hidden state at each sample's last token: the seed's
    generation-0 model (``featurizer: gen0``, the offline default), or any hub id or local
    model directory (e.g. ``gpt2-large``, the paper's choice), which re-tokenises the decoded
    text. Features are cached per generation and featurizer (``features_<name>.npy``).
    Scores compare only within one featurizer setting; it is written beside the score.
    """

    settings = MauveSettings
    display_name = "MAUVE"
    higher_is_better = True
    directions = {"mauve_std": None}
    columns = ("mauve",)

    def __init__(self, settings: MauveSettings) -> None:
        super().__init__(settings)
        self._external: tuple[Any, Any] | None = None

    def _size(self, ctx: MeasureContext) -> int:
        return ctx.equal_size(self.config.num_samples, "metrics.mauve.num_samples")

    def preflight(self, ctx: MeasureContext) -> None:
        self._size(ctx)
        if self.config.featurizer != "gen0":
            self._load_external()

    def _load_external(self) -> tuple[Any, Any]:
        if self._external is None:
            name = self.config.featurizer
            try:
                tok = AutoTokenizer.from_pretrained(name)
                model = load_model(name)
            except Exception as err:  # noqa: BLE001  (any load failure means the same here)
                raise ConfigError(
                    f"metrics.mauve.featurizer: cannot load {name!r} ({type(err).__name__}: "
                    f"{str(err)[:200]}). Offline, use 'gen0' or a local model directory."
                ) from None
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            self._external = (model, tok)
        return self._external

    def _features(self, ctx: MeasureContext, seqs: list, cache: Path) -> np.ndarray:
        m = self.config
        if cache.exists():
            return np.load(cache)
        if m.featurizer == "gen0":
            model, pad, feats_in = ctx.reference_model(), ctx.tokenizer.pad_token_id, seqs
        else:
            model, tok = self._load_external()
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

    def _cache_name(self, ctx: MeasureContext) -> str:
        name = self.config.featurizer
        if name == "gen0" and ctx.reference_group:  # another training setting's gen 0
            name += "@" + ctx.reference_group
        slug = re.sub(r"[^A-Za-z0-9_.=@-]+", "_", name).strip("_")
        return f"features_{slug}.npy"

    def _score(self, p_feats: np.ndarray, q_feats: np.ndarray) -> Measurement:
        m = self.config
        buckets = m.num_buckets if m.num_buckets == "auto" else int(m.num_buckets)
        out = mauve_score(p_feats, q_feats, buckets, m.seeds)
        return Measurement({"mauve": out["mauve"], "mauve_std": out["mauve_std"]},
                           details={"mauve_runs": out["mauve_runs"],
                                    "num_buckets": out["num_buckets"],
                                    "featurizer": m.featurizer, "kmeans_seeds": list(m.seeds)},
                           sizes={"n_p": out["n_p"], "n_q": out["n_q"]})

    def _human(self, ctx: MeasureContext) -> np.ndarray:
        m = self.config
        chunks = ctx.human_chunks(self._size(ctx), m.seed)
        return self._features(ctx, chunks, ctx.seed_dir / "human" / self._cache_name(ctx))

    def compute(self, ctx: MeasureContext) -> Measurement:
        m = self.config
        q = self._features(ctx, fixed_sample(ctx.corpus_seqs(), self._size(ctx), m.seed),
                           ctx.out_dir / self._cache_name(ctx))
        return self._score(self._human(ctx), q)

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        """MAUVE of held-out human text against human training text: the ceiling."""
        m = self.config
        length = ctx.sample_tokens
        train = [r["input_ids"][:length] for r in ctx.human.train]
        q = self._features(ctx, fixed_sample(train, self._size(ctx), m.seed),
                           ctx.out_dir / ("train_" + self._cache_name(ctx)))
        return self._score(self._human(ctx), q)

    def describe(self, m: Measurement) -> str:
        return (f"{m.sizes['n_p']} vs {m.sizes['n_q']} samples, {m.details['num_buckets']} "
                f"buckets, {m.details['featurizer']} features (scores compare only within one "
                "featurizer)")

