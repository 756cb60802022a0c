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

    #: every lineage (a cell that owns generations), by key: the cells, a population's
    #: participants in place of the population (a population runs as one unit; its
    #: participants train)
    lineages: dict[str, Cell]

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> Grid:
        found = cells(cfg)
        return cls(cfg, {c.key: c for c in found},
                   {m.key: m for c in found for m in (c.members or [c])})

    def cell(self, key: str) -> Cell:
        """A cell or a participant, by key."""
        return self.lineages[key] if key in self.lineages else self.cells[key]

    def units(self, selection: Selection | None = None) -> list[Unit]:
        """The (seed, cell key) units ``selection`` picks, in run order (all of them by
        default)."""
        return select_units(self.cfg, self.cells, selection or Selection())

    # --- who shares generation 0 --------------------------------------------------------

    def own_zero(self, cell: Cell) -> bool:
        """Whether a cell writes a corpus 0 of its own with the shared model: it curates,
        decodes otherwise than the shared corpus 0 was written, or starts from another
        training setting's model."""
        return (cell.policy.curate.active or bool(cell.zero_group)
                or plain(cell.cfg.generate) != plain(self.cfg.generate))

    def zero_of(self, gen: Generation) -> Generation:
        """Generation 0 as ``gen``'s cell sees it: its own corpus 0 or the shared one."""
        cell = self.lineages[gen.cell_key]
        return Generation(gen.seed, 0, cell.key, cell.zero_group) if self.own_zero(cell) \
            else gen.shared_zero

    @staticmethod
    def zero_groups(cells: list[Cell]) -> list[str]:
        """The generation-0 models ``cells`` need: the seed's shared one (the human row's
        reference) and one per other training setting (a population's: its participants')."""
        return ["", *sorted({m.zero_group for c in cells for m in (c.members or [c])} - {""})]

    # --- the settings of a generation ---------------------------------------------------

    def settings(self, gen: Generation) -> ExperimentConfig:
        """The settings generation ``gen`` runs with: its cell's (a grid point's); for the
        seed's shared generation 0 the base config (it writes the corpus 0 of every cell at
        the base decoding); for another training setting's generation 0 (trained only)
        those of a cell with that setting."""
        if gen.cell_key is not None:
            return self.cell(gen.cell_key).cfg
        if not gen.group:
            return self.cfg
        return next(c.cfg for c in self.lineages.values() if c.zero_group == gen.group)

    def train_settings(self, gen: Generation) -> TrainConfig:
        """The training settings of ``gen``: its cell's, with the policy's own ``epochs``
        where it sets them."""
        tcfg = self.settings(gen).train
        cell = self.lineages.get(gen.cell_key)
        if cell is not None and cell.policy.epochs is not None:
            tcfg = dataclasses.replace(tcfg, epochs=cell.policy.epochs)
        return tcfg
