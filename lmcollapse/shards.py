"""Which cells one job runs, so a cluster can run an experiment as many independent jobs.

The unit of work is a cell of one seed: ``(seed, cell key)``; an experiment has
``len(seeds) x len(cells)`` of them, listed seed by seed in config order. A job selects some
from the command line and runs only those::

    lmcollapse run --config c.yaml --policies replace,accumulate   # by policy label
    lmcollapse run --config c.yaml --seeds 0,1                     # by seed
    lmcollapse run --config c.yaml --cells 'replace@temperature=*' # by cell key (glob)
    lmcollapse run --config c.yaml --shard 3/8                     # every 8th unit from the 4th

Filters combine (AND); ``--shard i/n`` then deals the selected units round-robin, so n jobs
with ``i = 0..n-1`` cover them all exactly once. Every job of an experiment uses the same
config and the same run directory: the shared generation 0 of a seed is built by whichever
job gets there first while the others wait for it and reuse it, and each unit is locked by
the job that runs it (:class:`lmcollapse.files.RunLock`).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from lmcollapse.cells import Cell
from lmcollapse.errors import ConfigError
from lmcollapse.settings import ExperimentConfig

#: one unit of work: a cell (by key) of one seed
Unit = tuple[int, str]


@dataclass(frozen=True)
class Selection:
    """What ``--policies``, ``--seeds``, ``--cells`` and ``--shard`` chose (empty: all)."""

    policies: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    cells: tuple[str, ...] = ()
    #: (index, count): this job is shard ``index`` of ``count``
    shard: tuple[int, int] | None = None

    @property
    def everything(self) -> bool:
        return not (self.policies or self.seeds or self.cells or self.shard)

    def describe(self) -> str:
        parts = [f"policies {','.join(self.policies)}" if self.policies else "",
                 f"seeds {','.join(map(str, self.seeds))}" if self.seeds else "",
                 f"cells {','.join(self.cells)}" if self.cells else "",
                 f"shard {self.shard[0]}/{self.shard[1]}" if self.shard else ""]
        return "; ".join(p for p in parts if p) or "all cells"

    @classmethod
    def parse(cls, policies: str | None = None, seeds: str | None = None,
              cells: str | None = None, shard: str | None = None) -> Selection:
        """From the command-line strings (comma-separated lists, ``i/n``)."""
        def split(text: str | None) -> tuple[str, ...]:
            return tuple(x.strip() for x in (text or "").split(",") if x.strip())

        seed_list = []
        for s in split(seeds):
            if not re.fullmatch(r"\d+", s):
                raise ConfigError(f"--seeds: {s!r} is not a seed; give seeds of the config "
                                  "separated by commas, e.g. --seeds 0,2")
            seed_list.append(int(s))
        index = None
        if shard is not None:
            m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
            if not m or not 0 <= int(m[1]) < int(m[2]):
                raise ConfigError(f"--shard: {shard!r} must be i/n with 0 <= i < n (job i of "
                                  "n, e.g. --shard $SLURM_ARRAY_TASK_ID/8)")
            index = (int(m[1]), int(m[2]))
        return cls(split(policies), tuple(seed_list), split(cells), index)


def select_units(cfg: ExperimentConfig, cells: dict[str, Cell],
                 selection: Selection) -> list[Unit]:
    """The units ``selection`` picks from the experiment, in run order; a name that matches
    nothing, or a shard left with nothing to do, is a ConfigError naming what exists."""
    labels = list(dict.fromkeys(c.policy.key for c in cells.values()))
    for p in selection.policies:
        if p not in labels:
            raise ConfigError(f"--policies: no policy labelled {p!r}; the config has "
                              f"{', '.join(labels)}")
    for s in selection.seeds:
        if s not in cfg.seeds:
            raise ConfigError(f"--seeds: seed {s} is not in the config's seeds "
                              f"{cfg.seeds}")
    for pattern in selection.cells:
        if not fnmatch.filter(cells, pattern):
            raise ConfigError(f"--cells: {pattern!r} matches no cell; the cells are "
                              f"{', '.join(cells)}")
    units = [(seed, key) for seed in cfg.seeds for key, cell in cells.items()
             if (not selection.seeds or seed in selection.seeds)
             and (not selection.policies or cell.policy.key in selection.policies)
             and (not selection.cells
                  or any(fnmatch.fnmatchcase(key, p) for p in selection.cells))]
    if not units:
        raise ConfigError(f"the selection ({selection.describe()}) leaves no cell to run")
    if selection.shard is not None:
        i, n = selection.shard
        if n > len(units):
            raise ConfigError(f"--shard {i}/{n}: the selection has {len(units)} units "
                              f"(seed x cell), fewer than {n} shards, so some jobs would have "
                              f"nothing to do; use at most {len(units)} shards")
        units = units[i::n]
    return units
