"""The metric interface. A metric measures one generation (its model and the corpus it wrote)
and, where it applies, held-out human text (the *human reference* row)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lmcollapse.errors import ConfigError
from lmcollapse.registry import Registry

METRICS: Registry[type[Metric]] = Registry("metric")


@dataclass
class MeasureContext:
    """Everything a metric may read. ``model`` and ``corpus`` are None for the human row."""

    cfg: Any
    accelerator: Any
    tokenizer: Any
    human: Any
    generation: int | None = None
    model: Any = None
    corpus: list[dict[str, Any]] | None = None
    source: Any = None
    seed: int | None = None
    #: where this generation's (or the human row's) files live; metrics may cache there
    out_dir: Path | None = None
    seed_dir: Path | None = None
    #: returns the seed's generation-0 model (loaded once)
    reference_model: Callable[[], Any] | None = None
    #: the longest sequence the scored models were trained on (a scratch model:
    #: ``data.block_tokens``; a pretrained one: its own context); no window may exceed it
    trained_length: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def corpus_seqs(self) -> list[Any]:
        return [r["input_ids"] for r in self.corpus]

    def sample_tokens(self) -> int:
        """Length of one corpus sample as written (new tokens, plus the prompt if kept)."""
        g = self.cfg.generate
        return g.new_tokens + (g.prompt_tokens if g.keep_prompt else 0)

    @cached_property
    def human_stream(self) -> np.ndarray:
        """The held-out test tokens without special tokens, the text human samples are cut
        from: a corpus sample never holds BOS/EOS, so a human sample of the same length
        holds as many words."""
        return self.content([self.human.test_stream])[0]

    def human_chunks(self, count: int | None, seed: int) -> list[np.ndarray]:
        """Up to ``count`` held-out human samples shaped like corpus samples: disjoint
        ``sample_tokens()``-token chunks of the test text (special tokens left out), drawn
        with ``seed``, in order."""
        length = self.sample_tokens()
        stream = self.human_stream
        n = len(stream) // length
        pick = np.arange(n)
        if count is not None and count < n:
            pick = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
        return [stream[i * length:(i + 1) * length] for i in pick]

    def content(self, seqs: list) -> list[np.ndarray]:
        """``seqs`` without the tokenizer's special tokens. A pretrained tokenizer may put
        BOS/EOS into human text (OPT starts every record with ``</s>``), while a corpus
        never holds them (continuations run to a fixed length): unigram, n-gram and tail
        counts compare the words only."""
        special = np.asarray(sorted(set(self.tokenizer.all_special_ids)), dtype=np.int64)
        out = [np.asarray(s, dtype=np.int64) for s in seqs]
        return out if special.size == 0 else [s[~np.isin(s, special)] for s in out]

    def equal_size(self, configured: int | None, where: str) -> int:
        """The number of samples a size-dependent metric draws, the same for the human row
        and every corpus row (DESIGN.md, "equal sizes").

        Corpus k holds one sample per human training block; the human row draws disjoint
        chunks of the test split of the same length. ``None`` takes the largest size both
        allow; a larger configured size is refused, naming ``where`` and the maximum.
        """
        corpus = len(self.human.train)
        human = len(self.human_stream) // self.sample_tokens()
        most = min(corpus, human)
        if most < 2:
            raise ConfigError(
                f"{where}: the human test split gives {human} samples of {self.sample_tokens()} "
                f"tokens; size-dependent metrics need at least 2. Use more test text.")
        if configured is None:
            return most
        if configured > most:
            raise ConfigError(
                f"{where}: {configured} samples requested, but the human test split gives "
                f"{human} samples of {self.sample_tokens()} tokens (generate.new_tokens"
                f"{' + prompt_tokens' if self.cfg.generate.keep_prompt else ''}) and a corpus "
                f"holds {corpus}; allowed: 2..{most}, or null for {most}")
        return configured


class Metric:
    """Base class.

    Subclasses set ``name``, ``display_name`` and ``higher_is_better`` (for the headline value
    ``values[name]``; ``directions`` overrides it for other keys they return) and implement
    :meth:`compute`. :meth:`preflight` runs before the loop starts and raises on anything that
    would make the metric fail later.
    """

    name = ""
    display_name = ""
    #: True / False; None where neither direction is better (compare with the human row)
    higher_is_better: bool | None = False
    directions: dict[str, bool | None] = {}

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def preflight(self, ctx: MeasureContext) -> None:
        """Check the metric can run (files, models, sizes); raise ConfigError otherwise."""

    def compute(self, ctx: MeasureContext) -> dict[str, Any]:
        """Values for generation ``ctx.generation``: scalars, and ``_details`` for the rest."""
        raise NotImplementedError

    def human_reference(self, ctx: MeasureContext) -> dict[str, Any] | None:
        """The same values on held-out human text, or None where they do not apply."""
        return None

    def meta(self, key: str) -> dict[str, Any]:
        return {"metric": self.name, "display_name": self.display_name if key == self.name
                else f"{self.display_name} ({key})",
                "higher_is_better": self.directions.get(key, self.higher_is_better)}


def metric_meta(metric: Metric, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per scalar key: which metric made it, its display name and direction."""
    return {k: metric.meta(k) for k in values if not k.startswith("_")}
