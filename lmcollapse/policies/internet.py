"""``internet``: a population of participants writing one shared pool (Martinez et al.,
"Towards Understanding the Interplay of Generative Artificial Intelligence and the
Internet").

One policy entry names K participants; the grid makes each a cell of its own (a *member*,
``<label>.<participant>``) that trains, writes and is measured like any cell, and the
population runs as one unit. The pool starts as the human training pool (batch 0). Before
generation k >= 1 it receives batch k: ``new_content * N`` blocks, of which the share
``synthetic_share[k-1]`` is drawn from the participants' corpora k-1 (split by their
``weight``) and the rest is new human text (the reserve, or new documents of the source).
Each participant's generation k trains on a crawl of ``crawl_size * N`` blocks drawn from
the pool: every batch (``crawl: all``) or the last ``window`` batches (``crawl: window``).
:mod:`lmcollapse.units.population` builds the batches and measures the population.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lmcollapse.checks import positive, safe_name
from lmcollapse.data.blocks import Sample
from lmcollapse.errors import ConfigError
from lmcollapse.policies.base import MixContext, Policy
from lmcollapse.registry import POLICIES, unknown_name_message
from lmcollapse.settings import NOT_SWEEPABLE, RUN_WIDE, ScratchModelConfig

#: what a participant may set for itself; everything else is shared by the population
PARTICIPANT_SECTIONS = ("generate", "train", "model")
#: model keys a participant may set: how generation k starts, and the size of a model
#: built from scratch (the source, the tokenizer and the trained length stay shared)
PARTICIPANT_MODEL_KEYS = ("init", "scratch.hidden_size", "scratch.num_layers",
                          "scratch.num_heads", "scratch.intermediate_size")


@dataclass
class ParticipantSpec:
    """One participant: its ``label`` and what it sets for itself.

    ``generate``, ``train`` and ``model`` hold overrides of those sections (decoding, training,
    ``model.init`` and the size of a model built from scratch); ``curate`` filters what it
    feeds back (as a policy's ``curate``); ``weight`` is its share of the synthetic part of
    each new batch (relative to the others'); ``seed_offset`` != 0 gives it a generation-0
    model of its own, trained with other draws."""

    label: str = ""
    weight: float = 1.0
    seed_offset: int = 0
    generate: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    curate: dict[str, Any] = field(default_factory=dict)
    #: never a participant's own (refused with the reason): the population's human data
    #: and its measurements
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """The dotted config keys this participant sets (``generate.temperature``)."""
        out: dict[str, Any] = {}
        for section in PARTICIPANT_SECTIONS:
            out.update(_dotted(getattr(self, section), section))
        return out


def _dotted(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_dotted(value, f"{prefix}.{key}"))
    return out


@dataclass
class InternetSettings:
    """The population's settings (see the module docstring)."""

    participants: list[ParticipantSpec] = field(default_factory=lambda: [
        ParticipantSpec("a"), ParticipantSpec("b"), ParticipantSpec("c")])
    #: the share of each new batch that models wrote: one per generation 1..N, or one
    #: number for all
    synthetic_share: list[float] = field(default_factory=lambda: [0.5])
    #: blocks added to the pool before each generation, as a share of N
    new_content: float = 0.5
    #: where the human part of a new batch comes from: ``reserve`` (disjoint shards of
    #: ``data.fresh_reserve``) or ``source`` (new documents the data source writes)
    human_source: Literal["reserve", "source"] = "reserve"
    #: what a participant crawls: every batch of the pool, or the last ``window`` batches
    crawl: Literal["all", "window"] = "all"
    window: int = 2
    #: the crawl each participant trains on, as a share of N
    crawl_size: float = 1.0
    #: n of the n-gram distributions whose Jensen-Shannon divergence measures the
    #: population (homogenization, distance to human text)
    ngram: int = 2
    #: samples of each corpus (and of held-out human text) those distributions are built
    #: from; null: the most every row allows
    sample_size: int | None = None

    def check(self, where: str) -> None:
        if not self.participants:
            raise ConfigError(f"{where}.participants: name at least one participant")
        labels = [p.label for p in self.participants]
        for i, p in enumerate(self.participants):
            at = f"{where}.participants[{i}]"
            safe_name(p.label, f"{at}.label")
            for section in (*PARTICIPANT_SECTIONS, "curate"):  # (data, metrics: refused below)
                value = getattr(p, section)
                if not isinstance(value, dict):
                    raise ConfigError(
                        f"{at}.{section}: a mapping of the participant's own {section} "
                        f"settings (e.g. {EXAMPLES[section]}), or leave it out; got {value!r}")
            if not p.weight > 0 or not math.isfinite(p.weight):
                raise ConfigError(f"{at}.weight: must be a finite number > 0 (its share of "
                                  f"the synthetic part, relative to the others'), got "
                                  f"{p.weight}")
            for section in ("data", "metrics"):
                if getattr(p, section):
                    _check_override(section, at)
            for key in p.overrides():
                _check_override(key, at)
        if not math.isfinite(sum(p.weight for p in self.participants)):
            raise ConfigError(f"{where}.participants: the weights sum past the largest number "
                              f"({[p.weight for p in self.participants]}); they are relative "
                              "shares: use small ones such as 1, 2, 3")
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError(f"{where}.participants: labels must be unique, got {labels} "
                              f"({', '.join(dup)} twice)")
        for i, s in enumerate(self.synthetic_share):
            if not 0.0 <= s <= 1.0:
                raise ConfigError(f"{where}.synthetic_share[{i}]: a share in [0, 1], got {s}")
        if not 0.0 < self.new_content <= 10.0:
            raise ConfigError(f"{where}.new_content: blocks added per generation as a share "
                              f"of N, in (0, 10], got {self.new_content}")
        if self.crawl == "window":  # (crawl: all reads no window)
            positive(self.window, f"{where}.window")
        if not 0.0 < self.crawl_size <= 10.0:
            raise ConfigError(f"{where}.crawl_size: the crawl as a share of N, in (0, 10], "
                              f"got {self.crawl_size}")
        if not 1 <= self.ngram <= 4:
            raise ConfigError(f"{where}.ngram: 1..4, got {self.ngram}")
        positive(self.sample_size, f"{where}.sample_size", allow_none=True)

    def shares(self, generations: int) -> list[float]:
        """The synthetic share of batch k, for k = 1..generations."""
        s = self.synthetic_share
        return list(s) * generations if len(s) == 1 else list(s)

    def batch_sizes(self, n: int, generations: int) -> list[tuple[int, int]]:
        """(synthetic, human) blocks of batch k = 1..generations, for a human pool of N."""
        total = round(self.new_content * n)
        return [(round(s * total), total - round(s * total)) for s in self.shares(generations)]

    def crawl_blocks(self, n: int) -> int:
        return round(self.crawl_size * n)

    def crawled_batches(self, k: int) -> range:
        """The batches generation k crawls."""
        return range(0 if self.crawl == "all" else max(0, k - self.window + 1), k + 1)

    def synthetic_split(self, count: int) -> list[int]:
        """``count`` synthetic blocks split among the participants by ``weight``: largest
        remainders, ties to the earlier participant."""
        w = np.array([p.weight for p in self.participants], dtype=float)
        exact = count * w / w.sum()
        out = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - out), kind="stable")[:count - int(out.sum())]:
            out[i] += 1
        return out.tolist()


#: what each of a participant's sections may hold, for the message that refuses another type
EXAMPLES = {"generate": "{temperature: 0.7}", "train": "{lr: 0.001}",
            "model": "{init: previous}", "curate": "{rule: best, fraction: 0.5}"}


def _check_override(key: str, where: str) -> None:
    """A participant may set decoding, training, ``model.init`` and the size of a scratch
    model; data, the tokenizer and the trained length are the population's."""
    section, _, rest = key.partition(".")
    if key in RUN_WIDE:
        raise ConfigError(f"{where}.{key}: the run's one Accelerator applies it to every "
                          "participant; set it for the run, not for one participant")
    if section == "model" and rest.startswith("scratch."):
        known = [f"scratch.{f.name}" for f in dataclasses.fields(ScratchModelConfig)]
        if rest not in known:
            raise ConfigError(f"{where}.model.{rest}: " + unknown_name_message(
                "model key", rest, known))
    bad = (key in NOT_SWEEPABLE or section == "model" and rest not in PARTICIPANT_MODEL_KEYS
           or section not in PARTICIPANT_SECTIONS or not rest)
    if bad:
        raise ConfigError(
            f"{where}.{key}: must be shared by every participant (data, metrics, the "
            "model's source, architecture and tokenizer, the trained length and what a sample is: "
            f"{', '.join(NOT_SWEEPABLE)}); a "
            "participant may set generate.*, train.*, "
            + ", ".join(f"model.{m}" for m in PARTICIPANT_MODEL_KEYS)
            + ", curate, weight, seed_offset")


@POLICIES.register("internet")
class Internet(Policy):
    """A crawl of ``crawl_size * N`` blocks drawn from the shared pool's batches in reach
    (every batch, or the last ``window``); the policy runs as a population (its unit kind,
    :mod:`lmcollapse.units.population`), which builds the pool and hands it over as
    ``ctx.pool``."""

    settings = InternetSettings
    unit = "population"

    @classmethod
    def check(cls, settings: Any, where: str, generations: int) -> None:
        super().check(settings, where, generations)
        s = settings.synthetic_share
        if len(s) not in (1, generations):
            raise ConfigError(
                f"{where}.synthetic_share: one share per generation 1..{generations} "
                f"({generations} numbers) or one number for all, got {len(s)}: {s}")
        least = min(_pool_size(settings, k) for k in range(1, generations + 1)) \
            if generations else None
        if least is not None and settings.crawl_size > least + 1e-9:
            raise ConfigError(
                f"{where}.crawl_size: the crawl ({settings.crawl_size} N) is larger than the "
                f"pool it is drawn from ({least:g} N at the smallest: "
                + ("the whole pool" if settings.crawl == "all" else
                   f"the last {settings.window} batches, new_content {settings.new_content} N "
                   "each, the human pool N counting as batch 0")
                + "); lower crawl_size or widen the window")

    @classmethod
    def rehearsal(cls, entry: dict[str, Any], generations: int) -> None:
        """The schedule's first ``generations`` shares."""
        share = entry.get("synthetic_share")
        if isinstance(share, list) and len(share) > 1:
            entry["synthetic_share"] = share[:max(generations, 1)]

    @classmethod
    def check_blocks(cls, settings: Any, where: str, n: int, generations: int,
                     least: int = 2) -> None:
        """The crawl against the pool in blocks (rounding may leave it a block short, or
        at nothing), and the new batches against their schedule: a batch of no blocks, or a
        scheduled synthetic share that rounds to no block, is refused, not run as
        something else."""
        crawl = settings.crawl_blocks(n)
        if crawl < least:
            raise ConfigError(
                f"{where}.crawl_size: a crawl of {crawl} blocks (crawl_size "
                f"{settings.crawl_size} x N = {n}) is smaller than the least a training mix "
                f"may be ({least} blocks: a batch, as for the human pool); raise crawl_size "
                f"to at least {least / n:.3g}")
        batches = settings.batch_sizes(n, generations)
        if sum(batches[0]) == 0:
            raise ConfigError(
                f"{where}.new_content: round({settings.new_content} x N = {n}) = 0 blocks "
                f"would be added before each generation, so nothing new ever enters the pool; "
                f"raise new_content to at least {0.5 / n:.3g}")
        for k, ((synthetic, _), share) in enumerate(
                zip(batches, settings.shares(generations), strict=True), start=1):
            if share > 0 and synthetic == 0:
                raise ConfigError(
                    f"{where}.synthetic_share: generation {k}'s share {share} of a batch of "
                    f"{sum(batches[k - 1])} blocks rounds to no model-written block; raise "
                    "the share or new_content, or schedule 0")
        sizes = [n] + [sum(b) for b in batches]
        for k in range(1, generations + 1):
            pool = sum(sizes[j] for j in settings.crawled_batches(k))
            if crawl > pool:
                raise ConfigError(
                    f"{where}.crawl_size: a crawl of {crawl} blocks (crawl_size "
                    f"{settings.crawl_size} x N = {n}) is larger than the pool generation {k} "
                    f"crawls ({pool} blocks); lower crawl_size or widen the window")

    @classmethod
    def reserve_needed(cls, settings: Any, n: int, generations: int) -> int:
        """``human_source: reserve`` draws the human part of every new batch."""
        if settings.human_source != "reserve":
            return 0
        return sum(h for _, h in settings.batch_sizes(n, generations))

    def build(self, ctx: MixContext) -> list[Sample]:
        if ctx.pool is None:
            raise ValueError("internet: a participant's mix is a crawl of the population's "
                             "pool, which the loop hands over (lmcollapse.units.population)")
        reach = set(self.config.crawled_batches(ctx.k))
        crawlable = [r for r in ctx.pool if r["batch"] in reach]
        count = self.config.crawl_blocks(ctx.n)
        if count > len(crawlable):
            raise ValueError(f"internet: a crawl of {count} blocks from {len(crawlable)}")
        return ctx.draw(crawlable, count)


def _pool_size(settings: InternetSettings, k: int) -> float:
    """The blocks generation k can crawl, in units of N."""
    return sum(1.0 if j == 0 else settings.new_content for j in settings.crawled_batches(k))
