"""The grid of an experiment: its cells (:mod:`lmcollapse.cells`) by key, which of them
share generation 0 and corpus 0, and the settings each generation runs with.

Built once from the config (:meth:`Grid.of`) and handed to whoever needs it: the plan of
steps (:mod:`lmcollapse.plan`), the loop, the set-up, the selection of a job's units, the
workers of ``--jobs``, the rehearsal's forecast, the disk estimate and the benchmark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lmcollapse.cells import Cell, cells
from lmcollapse.layout import Generation
from lmcollapse.settings import ExperimentConfig, TrainConfig, plain
from lmcollapse.shards import Selection, Unit, select_units


@dataclass(frozen=True)
class Grid:
    """The cells of ``cfg`` by key (one per policy without a grid; ``<policy>@<axis
    values>`` with one), each with its resolved, validated config."""

    cfg: ExperimentConfig
    cells: dict[str, Cell]

    #: every lineage (a cell that owns generations), by key: the cells, a unit's
    #: participants in place of the unit (a population runs as one unit; its participants
    #: train)
    lineages: dict[str, Cell]

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> Grid:
        found = cells(cfg)
        return cls(cfg, {c.key: c for c in found},
                   {m.key: m for c in found for m in (c.participants or [c])})

    def cell(self, key: str) -> Cell:
        """A cell or a participant, by key."""
        return self.lineages[key] if key in self.lineages else self.cells[key]

    def unit_of(self, cell: Cell) -> Cell:
        """The unit a lineage runs in: its own cell, or (a participant) the unit's."""
        return self.cells[cell.unit or cell.key]

    def kind_of(self, gen: Generation) -> str:
        """The kind of the unit generation ``gen`` (k >= 1, or a cell's own corpus 0) runs
        in."""
        return self.unit_of(self.lineages[gen.cell_key]).kind

    def units(self, selection: Selection | None = None) -> list[Unit]:
        """The (seed, cell key) units ``selection`` picks, in run order (all of them by
        default)."""
        return select_units(self.cfg, self.cells, selection or Selection())

    # --- who shares generation 0 --------------------------------------------------------

    def own_corpus0(self, cell: Cell) -> bool:
        """Whether a cell writes a corpus 0 of its own with the shared model: it curates,
        decodes otherwise than the shared corpus 0 was written, or starts from another
        training setting's model."""
        return (cell.policy.curate.active or bool(cell.founder)
                or plain(cell.cfg.generate) != plain(self.cfg.generate))

    def generation0(self, gen: Generation) -> Generation:
        """Generation 0 as ``gen``'s cell sees it: its own corpus 0 or the shared one."""
        cell = self.lineages[gen.cell_key]
        return Generation(gen.seed, 0, cell.key, cell.founder) if self.own_corpus0(cell) \
            else gen.founder_generation

    @staticmethod
    def founders(cells: list[Cell]) -> list[str]:
        """The generation-0 models ``cells`` need: the seed's shared one (the human row's
        reference) and one per other training setting (a unit's: its participants')."""
        return ["", *sorted({m.founder for c in cells for m in (c.participants or [c])} - {""})]

    # --- the settings of a generation ---------------------------------------------------

    def settings(self, gen: Generation) -> ExperimentConfig:
        """The settings generation ``gen`` runs with: its cell's (a grid point's); for the
        seed's shared generation 0 the base config (it writes the corpus 0 of every cell at
        the base decoding); for another training setting's generation 0 (trained only)
        those of a cell with that setting."""
        if gen.cell_key is not None:
            return self.cell(gen.cell_key).cfg
        if not gen.founder:
            return self.cfg
        return next(c.cfg for c in self.lineages.values() if c.founder == gen.founder)

    def train_settings(self, gen: Generation) -> TrainConfig:
        """The training settings of ``gen``: its cell's, with the policy's own ``epochs``
        where it sets them."""
        tcfg = self.settings(gen).train
        cell = self.lineages.get(gen.cell_key)
        if cell is not None and cell.policy.epochs is not None:
            tcfg = dataclasses.replace(tcfg, epochs=cell.policy.epochs)
        return tcfg
