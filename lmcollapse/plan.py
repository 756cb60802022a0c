"""A run's plan: every step it takes, in the order the loop takes them, built once from the
grid and the units a job runs.

The order is written here and nowhere else: a job's loop builds its plan once
(``CollapseLoop.plan``) and executes it (:meth:`lmcollapse.loop.CollapseLoop.execute`), the
progress bars and the disk estimate count it (each ``--jobs`` worker's bar: its unit's
plan), and ``lmcollapse plan --config ...`` prints it without running anything. Per seed:

1. the seed's **shared part** (under the seed's lock: every job that needs it waits for the
   one that builds it): generation 0 of the seed (``train``, ``generate``, ``measure``),
   the generation-0 model of every other training setting the job's cells (or their
   participants) use (``train`` only), and the human reference row (``measure``);
2. then generations outermost (k = 0..N), and within a generation each unit of the job in
   job order, its generation k as its kind lists it (:meth:`UnitKind.steps
   <lmcollapse.units.base.UnitKind.steps>`, found by the name the cell's policy declares):

   - a **lineage** (:mod:`lmcollapse.units.lineage`): its generation k (``train`` for
     k >= 1, ``generate``, ``measure``; :func:`lineage_steps`); at k = 0 only when the cell
     writes a corpus 0 of its own;
   - a **population** (:mod:`lmcollapse.units.population`): its ``pool`` (k >= 1), each
     participant's generation k as a lineage's, then the population's row (``measure``).

A step's marker (``<kind>.done``) lives in its directory: the generation's, the seed's
``human`` folder, or the unit's own ``gen_k`` (a population's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmcollapse.cells import Cell
from lmcollapse.grid import Grid
from lmcollapse.layout import STEPS, Generation, RunLayout
from lmcollapse.registry import UNIT_KINDS
from lmcollapse.shards import Unit

#: what a step acts on: a generation of a lineage (or of the shared part) or the seed's
#: human reference row; any other target is the name of the unit kind whose own step it is
GENERATION, HUMAN = "generation", "human"


@dataclass(frozen=True)
class Step:
    """One resumable step of a run."""

    seed: int
    #: ``train``, ``generate``, ``measure`` (:data:`~lmcollapse.layout.STEPS`) or ``pool``
    kind: str
    #: :data:`GENERATION`, :data:`HUMAN`, or a unit kind's name (a step of its own)
    target: str
    #: the generation (a unit's own: ``Generation(seed, k, unit key)``); None: human row
    gen: Generation | None
    #: the key of the unit (cell) the step belongs to; None: the seed's shared part
    unit: str | None

    @property
    def where(self) -> str:
        """The step's place, as the progress bar and an error name it."""
        if self.target == HUMAN:
            return f"seed {self.seed}, human reference"
        if self.target != GENERATION:  # a unit's own step: its row, or another kind of step
            return (f"seed {self.seed}, {self.target} {self.gen.cell_key}, "
                    + ("generation" if self.kind == "measure" else self.kind) + f" {self.gen.k}")
        return str(self.gen)

    def directory(self, layout: RunLayout) -> Path:
        """The folder that holds the step's marker and outputs."""
        return layout.human(self.seed) if self.gen is None else layout.gen_dir(self.gen)

    def row(self) -> dict[str, object]:
        """The step as a table row (``lmcollapse plan``)."""
        return {"seed": self.seed, "unit": self.unit or "(shared)", "generation":
                "" if self.gen is None else self.gen.k, "kind": self.kind, "where": self.where}


def build_plan(grid: Grid, units: list[Unit]) -> list[Step]:
    """Every step of ``units`` (seed, cell key), in the order the loop runs them."""
    seeds = list(dict.fromkeys(seed for seed, _ in units))
    out: list[Step] = []
    for seed in seeds:
        cells = [grid.cells[k] for s, k in units if s == seed]
        out += shared_part(grid, seed, cells)
        for k in range(grid.cfg.generations + 1):  # generations outermost
            for cell in cells:
                out += unit_steps(grid, seed, cell, k)
    return out


def shared_part(grid: Grid, seed: int, cells: list[Cell]) -> list[Step]:
    """The seed's generation-0 models (the shared one writes and measures corpus 0; another
    training setting's is only trained) and the human reference row."""
    out = []
    for founder in grid.founders(cells):
        gen = Generation(seed, 0, None, founder)
        kinds = STEPS if not founder else STEPS[:1]
        out += [Step(seed, kind, GENERATION, gen, None) for kind in kinds]
    return out + [Step(seed, "measure", HUMAN, None, None)]


def unit_steps(grid: Grid, seed: int, cell: Cell, k: int) -> list[Step]:
    """Generation ``k`` of one unit, as its kind lists it."""
    return UNIT_KINDS.get(cell.kind).steps(grid, seed, cell, k)


def lineage_steps(grid: Grid, seed: int, cell: Cell, k: int, unit: str) -> list[Step]:
    """Generation k of one lineage (a cell, or a participant of the unit ``unit``): train on
    the mix (k >= 1), write corpus k, measure; at k = 0 only a cell with a corpus 0 of its
    own (its model is the shared one)."""
    if not k and not grid.own_corpus0(cell):
        return []
    gen = Generation(seed, k, cell.key, cell.founder)
    return [Step(seed, kind, GENERATION, gen, unit) for kind in (STEPS if k else STEPS[1:])]
