"""The interface of a unit kind, and what a unit may use of the run that holds it.

A policy runs as a *unit* of the plan (a seed's cell), and declares the kind (its class's
``unit``; none: the default, one lineage of generations). A kind says, in one module:

- how its cell expands: the cells that train in its place (:meth:`UnitKind.participants`;
  a lineage has none, a population has one per participant);
- what the config layer must refuse for it (:meth:`UnitKind.check`) and what set-up checks
  once the data is known (:meth:`UnitKind.preflight`);
- the steps of its generation k, in order (:meth:`UnitKind.steps`, its part of the plan);
- the work of the steps of its own (:meth:`UnitKind.take`: ``step.target`` is its name), and
  the shared pool its participants crawl (:meth:`UnitKind.pool`).

The loop, the plan, the config layer and the report ask the registry
(:data:`lmcollapse.registry.UNIT_KINDS`) by the name the policy declares; none of them names
a kind or a policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmcollapse.cells import Cell
from lmcollapse.data.blocks import PROVENANCE, Sample
from lmcollapse.grid import Grid
from lmcollapse.layout import RunLayout
from lmcollapse.plan import Step
from lmcollapse.prepared import Setup
from lmcollapse.settings import ExperimentConfig, PolicySpec


@dataclass(frozen=True)
class Host:
    """What a unit kind may use of the run that holds it, and nothing else (the loop makes
    it): the grid, the file layout, the set-up's data and tokenizer, whether this is the
    main process, a step runner (marker, timing, progress), the corpora by folder and the
    metrics' context."""

    grid: Grid
    layout: RunLayout
    setup: Setup
    is_main: bool
    #: (folder, step kind, where, work): the work once, unless the step's marker exists
    run_step: Callable[[Path, str, str, Callable[[], None]], None]
    #: a generation folder -> its corpus (read once)
    corpus: Callable[[Path], list[Sample]]
    #: (seed, folder, founder, **row) -> a MeasureContext
    context: Callable[..., Any]

    @property
    def cfg(self) -> ExperimentConfig:
        return self.grid.cfg


class UnitKind:
    """A kind of unit (register a subclass with ``@UNIT_KINDS.register(name)``). The class
    methods serve the config layer, set-up and the plan; an instance (made by the loop with
    its :class:`Host`) takes the kind's own steps."""

    name = ""
    #: the columns a generation's ``mix.parquet`` holds (each block's provenance)
    mix_columns: tuple[str, ...] | list[str] = PROVENANCE

    def __init__(self, host: Host) -> None:
        self.host = host

    @classmethod
    def check(cls, spec: PolicySpec, where: str) -> None:
        """Refuse a policy entry this kind cannot run (ConfigError naming ``where``)."""

    @classmethod
    def participants(cls, cell: Cell, data: dict[str, Any], i: int, suffix: str,
                     where: str) -> list[Cell]:
        """The cells that train in this unit in place of ``cell`` (policy entry ``i`` at one
        grid point, whose plain config is ``data``; ``suffix``: the grid values of its key;
        ``where``: the grid point, for errors). None: the cell is itself one lineage."""
        return []

    @classmethod
    def preflight(cls, cell: Cell, ctx: Any, where: str) -> None:
        """Set-up checks once the data is known (``ctx``: the metrics' context), before any
        work; ``where`` names the policy entry."""

    @classmethod
    def steps(cls, grid: Grid, seed: int, cell: Cell, k: int) -> list[Step]:
        """The steps of generation ``k`` of the unit ``cell``, in the order they run."""
        raise NotImplementedError

    def take(self, step: Step, cell: Cell, d: Path) -> None:
        """A step of this kind's own (``step.target == name``) in folder ``d``."""
        raise NotImplementedError(f"the {self.name} unit kind has no steps of its own")

    def pool(self, seed: int, cell: Cell, k: int) -> list[Sample] | None:
        """The shared pool generation ``k`` of the unit's participants crawls; None: the
        unit has none (a lineage's mix is built from its own corpora)."""
        return None
