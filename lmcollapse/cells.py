"""The cells of an experiment: every (grid point, policy), each with its own resolved and
validated config, and the participants of a unit (a population's) as cells of their own.

:func:`cells` expands a config once; :class:`lmcollapse.grid.Grid` holds the result for
everyone who runs, selects or forecasts them (the config layer expands it once more at load,
so that a bad grid point is refused before any work). Errors name the grid axis and value
(``grid[0].values[2]``) or the participant. A cell's participants come from the unit kind
its policy declares (:mod:`lmcollapse.units`), asked through the registry.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from lmcollapse.checks import safe_name
from lmcollapse.errors import ConfigError
from lmcollapse.registry import unit_kind
from lmcollapse.settings import (
    NOT_SWEEPABLE,
    RUN_WIDE,
    SWEEPABLE,
    ExperimentConfig,
    GridAxis,
    PolicySpec,
    build,
    plain,
    validate,
)


@dataclass
class Cell:
    """One cell of the grid: a policy at one grid point, with its resolved config.

    ``key`` names its directory and its report row: the policy's label, followed by the
    grid values (``replace@temperature=0.7``) when the experiment has a grid."""

    key: str
    policy: PolicySpec
    cfg: ExperimentConfig
    axes: dict[str, Any]
    #: its founder: the generation-0 model it descends from ("" for the seed's shared one,
    #: else the values of the axes that change how generation 0 is trained)
    founder: str = ""
    #: the kind of unit it runs as (:mod:`lmcollapse.units`: the name its policy declares;
    #: a participant is a lineage)
    kind: str = ""
    #: the cells that train in this unit in place of it (a population's participants: one
    #: each, with its own resolved config, keyed ``<unit>.<participant>``); none: a lineage
    participants: list[Cell] = field(default_factory=list)
    #: a participant: the key of the unit it runs in (else "")
    unit: str = ""
    #: a participant: its ``seed_offset`` (!= 0: initial weights and a generation-0 model of
    #: its own, drawn as if from another seed)
    seed_offset: int = 0


def founder_signature(cfg: ExperimentConfig) -> str:
    """What decides generation 0's model: the training settings and whether the model
    starts from random weights (``model.init: scratch``); decoding does not (it decides
    corpus 0, not model 0)."""
    train = {k: v for k, v in plain(cfg.train).items() if k != "pack"}  # (generation 0
    # trains on full-length human blocks, which packing leaves as they are)
    return json.dumps([train, cfg.model.init == "scratch", plain(cfg.model.scratch)],
                      sort_keys=True)


def short(value: Any) -> str:
    """A grid value as a cell key shows it."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "", text.replace(":", "-")) or "x"


def cells(cfg: ExperimentConfig) -> list[Cell]:
    """Every (policy, grid point) of the experiment, each with its own validated config.

    Without a grid there is one cell per policy, keyed by the policy's label. Errors name
    the grid axis and value (``grid[0].values[2]``)."""
    base = cfg.to_dict()
    points: list[list[tuple[int, int, Any]]] = [[]]
    for i, axis in enumerate(cfg.grid):
        _check_axis(axis, i)
        points = [p + [(i, j, v)] for p in points for j, v in enumerate(axis.values)]
    out = []
    for point in points:
        data = copy.deepcopy(base)
        data["grid"] = []
        for i, _, value in point:
            key = cfg.grid[i].key
            if key.startswith("policy."):
                for entry in data["policies"]:
                    set_key(entry, key.split(".")[1:], value)
            else:
                set_key(data, key.split("."), value)
        where = ", ".join(f"grid[{i}].values[{j}] ({cfg.grid[i].key}={v!r})"
                          for i, j, v in point)
        try:
            resolved = build(ExperimentConfig, data)
            validate(resolved)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        axes = {cfg.grid[i].key: v for i, _, v in point}
        suffix = ",".join(f"{cfg.grid[i].label}={short(v)}" for i, _, v in point)
        founder = "" if founder_signature(resolved) == founder_signature(cfg) else ",".join(
            f"{cfg.grid[i].label}={short(v)}" for i, _, v in point
            if cfg.grid[i].key.startswith(("train.", "model.")))
        for i, spec in enumerate(resolved.policies):
            key = f"{spec.key}@{suffix}" if suffix else spec.key
            kind = unit_kind(spec.name)
            cell = Cell(key, spec, resolved, axes, founder, kind.name)
            cell.participants = kind.participants(cell, data, i, suffix, where)
            out.append(cell)
    keys = [c.key for c in out] + [m.key for c in out for m in c.participants]
    for cell in out:
        safe_name(cell.key, f"grid: the cell name {cell.key!r} (policy label @ axis name=value)",
                  derived=True)
    if len(set(keys)) != len(keys):
        raise ConfigError(f"grid: two cells would share a name ({keys}); give the axes "
                          "distinct values or `name`s")
    return out


def _check_axis(axis: GridAxis, i: int) -> None:
    where = f"grid[{i}]"
    if axis.key in RUN_WIDE:
        raise ConfigError(f"{where}.key: {axis.key!r} cannot be swept: the run's one "
                          "Accelerator applies it to every cell; set it for the run (or run "
                          "an experiment per value)")
    if not axis.key.startswith(SWEEPABLE) or axis.key in NOT_SWEEPABLE:
        raise ConfigError(
            f"{where}.key: {axis.key!r} cannot be swept; allowed: keys of generate and "
            f"train, model.init, or policy.<key> (not {', '.join(NOT_SWEEPABLE)}: the human "
            "row's samples must stay as long as a corpus sample; data, the architecture and "
            "metrics are one per experiment)")
    if not axis.values or len({json.dumps(v, sort_keys=True) for v in axis.values}) != len(
            axis.values):
        raise ConfigError(f"{where}.values: give distinct values, got {axis.values!r}")


def set_key(node: dict[str, Any], parts: list[str], value: Any, where: str = "grid") -> None:
    """Set the dotted key ``parts`` of plain config data ``node`` (refused, naming
    ``where``, where a part is not a mapping)."""
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(parts)} is not a config key")
    node[parts[-1]] = copy.deepcopy(value)
