"""The metric interface. A metric measures one generation (its model and the corpus it wrote)
and, where it applies, held-out human text (the *human reference* row).

A metric is one module in this package::

    @dataclass
    class MySettings:                        # YAML section metrics.<section>
        sample_size: int | None = None
        def check(self, where: str) -> None: ...

    @METRICS.register("my_metric")
    class MyMetric(Metric):
        settings = MySettings
        display_name, higher_is_better, columns = "My metric", False, ("my_metric",)
        def compute(self, ctx: MeasureContext) -> Measurement: ...

It receives only its own settings (``self.config``) and a :class:`MeasureContext`; it
returns a :class:`Measurement`. The loop writes ``values`` (scalars), ``details`` and
``sizes`` to metrics.json with each value's display name and direction, and the report
reads them from there (it never imports a metric).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from lmcollapse import files
from lmcollapse.data.base import ExactDistribution
from lmcollapse.data.blocks import HumanData, Sample
from lmcollapse.errors import ConfigError
from lmcollapse.faults import kill_point
from lmcollapse.sampling import derive_seed, fixed_sample


@dataclass
class Measurement:
    """What one metric measured on one row.

    Attributes:
        values: scalar results by key (the metric's ``name`` is its headline value).
        details: settings as applied and anything a reader needs to interpret the values.
        sizes: what was drawn (samples, tokens, draws): the "equal sizes" rule, stated.
    """

    values: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int | float] = field(default_factory=dict)


@dataclass
class MeasureContext:
    """Everything a metric may read. ``model`` and ``corpus`` are None for the human row."""

    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    human: HumanData
    #: the longest sequence the scored models were trained on (a scratch model:
    #: ``data.block_tokens``; a pretrained one: its own context); no window may exceed it
    trained_length: int
    #: length of one corpus sample as written (new tokens, plus the prompt if kept), and
    #: the config keys that set it (for messages)
    sample_tokens: int
    sample_tokens_from: str
    #: returns the seed's generation-0 model (loaded once)
    reference_model: Callable[[], torch.nn.Module]
    #: the seed's directory; ``out_dir`` is this row's (metrics may cache files there)
    seed_dir: Path
    out_dir: Path
    #: the exact distribution of human text, where the data source knows it
    truth: ExactDistribution | None = None
    #: a corpus sample's prompt: the first ``prompt_tokens`` tokens of human training block
    #: ``prompt_id``, kept at the start of the sample when ``keep_prompt``
    prompt_tokens: int = 0
    keep_prompt: bool = False
    #: the run's seed (``seed_<s>``): every draw from human text depends on it
    #: (:meth:`human_seed`), so the human row varies over seeds as a corpus row does
    seed: int = 0
    #: which generation-0 model ``reference_model`` returns ("" unless a grid changes
    #: training): files computed with it (MAUVE features) are cached per founder
    reference_founder: str = ""
    generation: int | None = None
    model: torch.nn.Module | None = None
    corpus: list[Sample] | None = None
    #: what metrics of one row share instead of computing twice (e.g. each test document's
    #: NLL under one window setting, read by ground_truth and modes)
    shared: dict[Any, Any] = field(default_factory=dict, repr=False)
    #: what the run's metrics declare they need of shared work (each metric's ``needs``):
    #: e.g. the held-out pass keeps per-token statistics only when a metric asks for them
    needs: frozenset[str] = frozenset()

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def corpus_seqs(self) -> list[Any]:
        return [r["input_ids"] for r in self.corpus]

    def prompt_and_text(self, sample: Sample) -> tuple[str, str]:
        """A corpus sample as text: its prompt, and the prompt followed by what the model
        wrote (decoded together, so a word the continuation completes is whole)."""
        prompt = [int(t) for t in self.human.train[sample["prompt_id"]]["input_ids"]
                  [: self.prompt_tokens]]
        ids = [int(t) for t in sample["input_ids"]]
        full = ids if self.keep_prompt else prompt + ids
        return self.tokenizer.decode(prompt), self.tokenizer.decode(full)

    @cached_property
    def human_stream(self) -> np.ndarray:
        """The held-out test tokens without special tokens, the text human samples are cut
        from: a corpus sample never holds BOS/EOS, so a human sample of the same length
        holds as many words."""
        return self.content([self.human.test_stream])[0]

    def human_seed(self, seed: int) -> int:
        """The seed of a draw from human text: a metric's ``seed`` combined with the run's.
        Every seed of a run then draws its own human samples, as it writes its own corpora,
        so the human row's spread over seeds is measured, not zero by construction (a
        corpus is already a new draw per run seed; samples of it use the metric's seed)."""
        return derive_seed("human", self.seed, seed)

    def human_chunks(self, count: int | None, seed: int) -> list[np.ndarray]:
        """Up to ``count`` held-out human samples shaped like corpus samples: disjoint
        ``sample_tokens``-token chunks of the test text (special tokens left out), drawn
        with :meth:`human_seed` of ``seed``, in order; all of them (in order, no draw) when
        ``count`` is None."""
        length, stream = self.sample_tokens, self.human_stream
        chunks = [stream[i * length:(i + 1) * length] for i in range(len(stream) // length)]
        return fixed_sample(chunks, count, self.human_seed(seed))

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
        and every corpus row (docs/design.md, "equal sizes").

        Corpus k holds one sample per human training block; the human row draws disjoint
        chunks of the test split of the same length. ``None`` takes the largest size both
        allow; a larger configured size is refused, naming ``where`` and the maximum.
        """
        corpus = len(self.human.train)
        human = len(self.human_stream) // self.sample_tokens
        most = min(corpus, human)
        if most < 2:
            raise ConfigError(
                f"{where}: the human test split gives {human} samples of {self.sample_tokens} "
                f"tokens; size-dependent metrics need at least 2. Use more test text.")
        if configured is None:
            return most
        if configured > most:
            raise ConfigError(
                f"{where}: {configured} samples requested, but the human test split gives "
                f"{human} samples of {self.sample_tokens} tokens ({self.sample_tokens_from}) "
                f"and a corpus holds {corpus}; allowed: 2..{most}, or null for {most}")
        return configured


    def disjoint_size(self, configured: int | None, where: str, metric: str) -> int:
        """:meth:`equal_size` for a metric whose human row compares two disjoint samples of
        held-out text (one in the place of a corpus, one as the reference): at most half
        the held-out samples; ``None`` takes the largest size every row allows."""
        size = self.equal_size(configured, where)
        chunks = len(self.human_stream) // self.sample_tokens
        half = chunks // 2
        if half < 2:
            raise ConfigError(f"{where}: the human test split gives {chunks} samples of "
                              f"{self.sample_tokens} tokens; the {metric} metric's human row "
                              "needs two disjoint samples of at least 2. Use more test text.")
        if configured is None:
            return min(size, half)
        if size > half:
            raise ConfigError(
                f"{where}: {size} samples requested, but the human row compares two disjoint "
                f"samples of held-out text and the test split gives {chunks} samples of "
                f"{self.sample_tokens} tokens ({self.sample_tokens_from}), so at most {half} "
                f"each (two overlapping samples would pull the human row toward the corpus "
                f"side's value); allowed: 2..{half}, or null for {half}")
        return size

    def disjoint_human_pairs(self, size: int, seed: int, draws: int
                             ) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
        """Per draw, two disjoint samples of ``size`` held-out chunks (a sample and its
        reference), drawn with :meth:`human_seed`: the human row of a metric that compares
        a sample with an equal-size human reference."""
        test = self.human_chunks(None, 0)
        pairs = []
        for i in range(draws):
            order = np.random.default_rng(self.human_seed(seed + i)).permutation(len(test))
            pairs.append(([test[j] for j in sorted(order[:size])],
                          [test[j] for j in sorted(order[size:2 * size])]))
        return pairs


class Metric:
    """Base class.

    Subclasses set ``display_name`` and ``higher_is_better`` (for the headline value
    ``values[headline]``, by default ``values[name]``; ``directions`` overrides it for other
    keys they return), ``columns`` (the keys the leaderboard shows by default) and
    ``settings`` (their settings dataclass,
    the YAML section ``metrics.<section>``; ``section`` defaults to the registered name),
    and implement :meth:`compute`. :meth:`preflight` runs before the loop starts and raises
    on anything that would make the metric fail later.
    """

    name = ""
    section = ""
    #: the key of the headline value (default: the metric's name)
    headline = ""
    settings: type | None = None
    display_name = ""
    #: True / False; None where neither direction is better (compare with the human row)
    higher_is_better: bool | None = False
    directions: dict[str, bool | None] = {}
    #: value keys the leaderboard shows unless the user picks columns
    columns: tuple[str, ...] = ()
    #: a display name of its own for a value key (default: ``display_name (key)``)
    display_names: dict[str, str] = {}
    #: shared work this metric needs done (:attr:`MeasureContext.needs`)
    needs: frozenset[str] = frozenset()

    def __init__(self, settings: Any = None) -> None:
        self.config = settings

    def preflight(self, ctx: MeasureContext) -> None:
        """Check the metric can run (files, models, sizes); raise ConfigError otherwise."""

    def compute(self, ctx: MeasureContext) -> Measurement:
        """Values for generation ``ctx.generation``."""
        raise NotImplementedError

    def human_reference(self, ctx: MeasureContext) -> Measurement | None:
        """The same values on held-out human text, or None where they do not apply."""
        return None

    def describe(self, m: Measurement) -> str:
        """One line for the report: how the values were measured (windows, sizes)."""
        return ", ".join(f"{k} {v}" for k, v in {**m.sizes, **m.details}.items()
                         if isinstance(v, int | float | str))

    def meta(self, key: str) -> dict[str, Any]:
        """Which metric made value ``key``, its display name, direction and whether the
        leaderboard shows it by default."""
        return {"metric": self.name, "display_name": self.display_names.get(key) or (
                    self.display_name if key == (self.headline or self.name)
                    else f"{self.display_name} ({key})"),
                "higher_is_better": self.directions.get(key, self.higher_is_better),
                "column": key in self.columns}


def collect(metrics: list[Metric], fn: Callable[[Metric], Measurement | None]
            ) -> dict[str, Any]:
    """A row's measurements: ``fn`` of each metric, as metrics.json holds them (values, their
    meta, details, sizes, conditions, seconds)."""
    out: dict[str, dict[str, Any]] = {"values": {}, "meta": {}, "details": {}, "sizes": {},
                                      "conditions": {}, "elapsed_s": {}}
    for metric in metrics:
        start = time.time()
        m = fn(metric)
        out["elapsed_s"][metric.name] = time.time() - start
        kill_point("measure_metric")
        if m is None:
            continue
        out["values"].update(m.values)
        out["meta"].update({k: metric.meta(k) for k in m.values})
        out["details"][metric.name] = m.details
        out["sizes"][metric.name] = m.sizes
        out["conditions"][metric.name] = metric.describe(m)
    return out


def write_row(path: Path, seed: int, key: str | None, k: int | None,
              result: dict[str, Any], **flags: Any) -> None:
    """One row's metrics.json: who it is (seed, the cell key or ``human``, generation), any
    ``flags`` (a population's ``population: true``), then :func:`collect`'s result."""
    files.write_json(path, {"seed": seed, "policy": key, "generation": k, **flags, **result})


def scoring_precision(precision: str,
                      device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``metrics.precision``: bf16 autocast around every forward pass of a measurement
    (weights stay float32), or nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
