"""The data-source interface: a registered source loads the three human splits.

A source is one module in this package: a settings dataclass (its YAML section,
``data.<name>``, checked by ``check(where)``) and a class registered in
:data:`~lmcollapse.registry.SOURCES` whose :meth:`Source.load` returns
``{"train": [...], "validation": [...], "test": [...]}``, lists of text records in their
original order. A source that knows the exact probability of its text (the synthetic
Markov language) returns it from :meth:`Source.truth`, which ground-truth metrics use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from lmcollapse.errors import ConfigError
from lmcollapse.registry import SOURCES

SPLITS = ("train", "validation", "test")
#: share of the train records held out for validation when a source names no validation
#: split (at least one record)
HELD_OUT_VALIDATION = 0.05


def hold_out(train: list[str], where: str, what: str) -> tuple[list[str], list[str]]:
    """``(train, validation)``: the last :data:`HELD_OUT_VALIDATION` of ``train``'s records
    (at least one) held out for validation, the same rule for every source, so a local file
    and the hub's split give the same two lists. ``where`` names the unset validation
    setting, ``what`` the train records (for the message when fewer than 2 remain)."""
    if len(train) < 2:
        raise ConfigError(
            f"{where}: not set, so the last {HELD_OUT_VALIDATION:.0%} of the records of {what} "
            f"(at least one) would be held out for validation, but it holds {len(train)} "
            f"record(s), so nothing would be left to train on; name a validation split in "
            f"{where}, or give the train data several records")
    cut = len(train) - max(1, int(len(train) * HELD_OUT_VALIDATION))
    return train[:cut], train[cut:]


def hold_back(train: list[str], share: float) -> tuple[list[str], list[str]]:
    """``(train, reserve)``: the last ``share`` of ``train``'s records (at least one when
    ``share > 0``) held back as the reserve of never-seen human text
    (``data.fresh_reserve``). Taken after the validation hold-out, by record order, so a
    local file and the hub's split give the same reserve; contiguous records, so no article
    is split between what generation 0 saw and the reserve (beyond the one at the cut)."""
    if not share:
        return train, []
    if len(train) < 2:
        raise ConfigError(f"data.fresh_reserve: the training pool has {len(train)} record(s); "
                          "holding some back would leave nothing to train on")
    cut = len(train) - max(1, int(len(train) * share))
    return train[:cut], train[cut:]


class ExactDistribution(Protocol):
    """What a source that knows the probability of its text offers the metrics."""

    def log_prob(self, text: str) -> float:
        """The exact natural-log probability of one document."""

    def n_words(self, text: str) -> int:
        """The number of words of ``text`` (the unit of per-word losses)."""

    def entropy_rate(self) -> float:
        """Nats per word of the source."""

    def describe(self) -> dict[str, Any]:
        """Parameters, for experiment.json."""


@runtime_checkable
class ExactContinuations(ExactDistribution, Protocol):
    """An exact distribution that also scores a continuation of a prompt cut from its text
    (the synthetic source): what the curation oracle and the lineages' exact log p need.
    The words scored are those the continuation adds after the context's last complete
    word (a word it completes included)."""

    def continuation_log_prob(self, context: str, continuation: str,
                              floor: float = 0.0) -> tuple[float, int]:
        """``(log p, words)`` of the words ``continuation`` adds to ``context``; a step of
        probability 0 counts ``log floor`` (``floor`` 0: -inf)."""

    def continuation_parts(self, context: str, continuation: str) -> tuple[float, int, int]:
        """``(log p of the possible steps, words, impossible steps)``: the limit of
        :meth:`continuation_log_prob` as ``floor`` goes to 0, split."""


class Source:
    """Base class of a human-data source; ``settings`` is its settings dataclass."""

    name = ""
    settings: type | None = None

    def __init__(self, settings: Any) -> None:
        self.config = settings

    def load(self) -> dict[str, list[str]]:
        """The three splits as lists of text records."""
        raise NotImplementedError

    def truth(self) -> ExactDistribution | None:
        """The exact distribution of the text (``log_prob``, ``n_words``, ``entropy_rate``,
        ``describe``), or None when the source does not know it."""
        return None

    def describe(self) -> str:
        """One line for the report's setup (what text, how much)."""
        return self.name

    #: ``(documents, seed) -> new documents`` where the source can write more human text
    #: (``fresh`` with ``human_source: source``); None where it cannot
    fresh_documents: Callable[[int, int], list[str]] | None = None


def make_source(data: Any) -> Source:
    """The source ``data.source`` names, built with its section of the config."""
    return SOURCES.get(data.source)(data.selected)


def load_human_text(data: Any) -> dict[str, list[str]]:
    """Load the three human splits of the configured source; refuse an empty split."""
    splits = make_source(data).load()
    for split in SPLITS:
        if not any(r.strip() for r in splits[split]):
            raise ConfigError(f"data ({data.source}): the {split} split is empty")
    return splits
