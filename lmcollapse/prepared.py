"""What a run works with once it is set up: :class:`Setup`, made by
:func:`lmcollapse.preflight.prepare` after every check has passed, and read by the loop and
by :mod:`lmcollapse.weights` (which need its type, not the set-up's work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PretrainedConfig, PreTrainedTokenizerBase

from lmcollapse import files
from lmcollapse.data.base import ExactDistribution
from lmcollapse.data.blocks import HumanData
from lmcollapse.metrics.base import Metric


@dataclass
class Setup:
    """What the loop works with, fixed before the first step."""

    tokenizer: PreTrainedTokenizerBase
    human: HumanData
    model_config: PretrainedConfig
    #: the longest sequence any model of the run is trained on (see :func:`trained_length`)
    trained_length: int
    #: the data source's exact distribution, where it knows one (else None)
    truth: ExactDistribution | None
    metrics: list[Metric]
    #: (documents, seed) -> new human documents, where the source can write more
    fresh: Callable[[int, int], list[str]] | None = None
    #: the locks of this job's cells, held by the main process until the run ends
    locks: list[files.RunLock] = field(default_factory=list)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []
