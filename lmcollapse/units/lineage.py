"""``lineage``: the default unit kind. One cell, one chain of generations: generation k
trains on what its policy builds from human data and the cell's corpora 0..k-1, writes
corpus k and is measured (the loop's own ``train``, ``generate`` and ``measure`` steps)."""

from __future__ import annotations

from lmcollapse.cells import Cell
from lmcollapse.grid import Grid
from lmcollapse.plan import Step, lineage_steps
from lmcollapse.registry import UNIT_KINDS
from lmcollapse.units.base import UnitKind


@UNIT_KINDS.register("lineage", default=True)
class Lineage(UnitKind):
    """A cell that is one lineage: no participants, no steps of its own, no shared pool."""

    @classmethod
    def steps(cls, grid: Grid, seed: int, cell: Cell, k: int) -> list[Step]:
        return lineage_steps(grid, seed, cell, k, cell.key)
