"""Load: run directories into :class:`RunResults` (the first phase of a report).

Reads ``experiment.json`` and ``metrics.json`` (and, through :meth:`RunResults.table`, the
parquet files of a run) only: it never imports torch, a metric or a model, so tables can be
rebuilt anywhere. What a value means (display name, direction, whether the leaderboard
shows it by default) comes from the ``meta`` each metrics.json carries, written by the
metric that measured it.

Several directories of one experiment (e.g. seed_0 run on one machine, seed_1 on another)
merge their seeds; directories of different experiments (or configs) become separate
results.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lmcollapse import files
from lmcollapse.errors import ReportError
from lmcollapse.layout import EXPERIMENT_JSON, METRICS, STEPS, RunLayout
from lmcollapse.registry import unknown_name_message
from lmcollapse.report.stats import Stat, stat
from lmcollapse.settings import CONFIG_VERSION

log = logging.getLogger("lmcollapse.report")


@dataclass
class RunResults:
    """One experiment, merged from every given run directory with its name and config."""

    name: str
    dirs: list[Path]
    info: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    #: (policy, seed, generation) -> metrics.json; policy None at gen 0, "human" at gen None
    records: dict[tuple[str | None, int, int | None], dict[str, Any]] = field(default_factory=dict)
    key: str = ""
    #: files that could not be read (path: what is wrong); the report shows them and the rest
    problems: list[str] = field(default_factory=list)
    #: populations: key -> its participants' cell keys (each a policy row of its own)
    populations: dict[str, list[str]] = field(default_factory=dict)
    #: (population, seed, generation) -> the population's row (its pool, homogenization)
    population_records: dict[tuple[str, int, int], dict[str, Any]] = field(
        default_factory=dict)
    #: metrics.json files that could not be read -> what is wrong with them
    unreadable: dict[Path, str] = field(default_factory=dict)
    #: how :attr:`dirs` are named on the page (None: as given; a site names its own copies)
    shown: list[str] | None = None
    #: how results files were merged into these results (a leaderboard of several)
    merged: list[str] = field(default_factory=list)
    #: whether the corpora's text can be read (a run directory; not a results file)
    has_texts: bool = True
    #: parquet files read so far (None: unreadable), so each is checked and warned about once
    _tables: dict[tuple[Path, tuple[str, ...] | None], list[dict[str, Any]] | None] = field(
        default_factory=dict, repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return self.info.get("config", {})

    @property
    def generations(self) -> int:
        gens = [g for (_, _, g) in self.records if g is not None]
        return int(self.config.get("generations", max(gens, default=0)))

    def values(self, policy: str, metric: str, generation: int | None) -> dict[int, float]:
        """``{seed: value}`` of one metric; gen 0 is shared by all policies, None = human."""
        pol = "human" if generation is None else policy
        out = {}
        for seed in self.seeds:
            # generation 0: the cell's own (a curating cell's corpus 0), else the shared one
            rec = (self.records.get((pol, seed, generation))
                   or self.population_records.get((pol, seed, generation))
                   or (self.records.get((None, seed, 0), {}) if generation == 0 else {}))
            v = rec.get("values", {}).get(metric)
            if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v):
                out[seed] = float(v)
        return out

    def why_absent(self, policy: str, seed: int, generation: int | None,
                   metric: str | None = None) -> str:
        """Why one seed has no value of ``policy`` at ``generation`` (None: the human row):
        its metrics.json unreadable or missing though measured, the generation not
        measured yet, or the metric not in a readable record."""
        dirs = self.gen_dirs("human" if generation is None else policy, seed, generation)
        where = "the human row" if generation is None else f"generation {generation}"
        for d in dirs:
            path = d / METRICS
            if path in self.unreadable:
                return f"{where}: {path} {self.unreadable[path]}"
            if not path.exists() and RunLayout.marker(d, STEPS[-1]).exists():
                return f"{where}: {path} is missing (measured: {STEPS[-1]}.done is there)"
        if not any((d / METRICS).exists() for d in dirs):
            return f"{where}: not measured yet"
        return f"{where}: no {metric!r} in its metrics.json" if metric else \
            f"{where}: no value"

    def human(self, metric: str) -> Stat:
        """The human reference of one metric over seeds."""
        return stat(self.values("human", metric, None).values())

    def scored(self, policy: str, metric: str, generation: int | None,
               direction: bool | None) -> dict[int, float]:
        """``{seed: what is ranked and compared}``: the values, or for direction None each
        seed's distance ``|value - human value of that seed|`` (the human mean over seeds
        where that seed has none; nothing when no seed has one)."""
        vals = self.values(policy, metric, generation)
        if direction is not None:
            return vals
        human = self.values("human", metric, None)
        if not human:
            return {}
        ref = statistics.fmean(human.values())
        return {s: abs(v - human.get(s, ref)) for s, v in vals.items()}

    def latest(self, policy: str, metric: str) -> int | None:
        """Latest generation at which any seed of ``policy`` has ``metric``."""
        return next((g for g in range(self.generations, -1, -1)
                     if self.values(policy, metric, g)), None)

    def finished(self, policy: str, seed: int) -> int | None:
        """Latest measured generation of one cell, None when nothing is."""
        return max((g for (p, s, g) in self.records if s == seed and g is not None
                    and (g == 0 or p == policy)), default=None)

    def table(self, path: Path, columns: list[str] | None = None
              ) -> list[dict[str, Any]] | None:
        """The rows of a parquet file of the run directory, checked like metrics.json: one
        that is missing, cut, changed since it was written (its checksum) or unreadable is
        None, with a warning naming it (once) and a line in :attr:`problems`."""
        key = (Path(path), tuple(columns) if columns else None)
        if key not in self._tables:
            try:
                files.verify(path)
                rows = pq.read_table(path, columns=columns).to_pylist()
            except (files.ArtifactError, OSError, ValueError, pa.ArrowException) as err:
                problem = str(err) if isinstance(err, files.ArtifactError) else (
                    f"{path}: not readable ({type(err).__name__}: {str(err)[:150]})")
                if problem not in self.problems:
                    log.warning("skipped %s", problem)
                    self.problems.append(problem)
                rows = None
            self._tables[key] = rows
        return self._tables[key]

    def pairable(self, policy: str, other: str) -> bool:
        """Whether two cells' values pair by seed: they descend from the same generation 0
        for every seed (always, within one run)."""
        return True

    def has(self, path: Path) -> bool:
        """Whether a file of a row (a path below :meth:`gen_dirs`) is there to read."""
        return Path(path).is_file()

    @property
    def sources(self) -> list[Path]:
        """What the results were read from: each run directory's experiment.json."""
        return [RunLayout(d).experiment_json for d in self.dirs]

    def gen_dirs(self, policy: str | None, seed: int, generation: int | None) -> list[Path]:
        """The directories (one per merged run dir) that hold one row of one cell."""
        found = [RunLayout(d).row_dir(seed, policy, generation) for d in self.dirs]
        return [d for d in found if d.is_dir()]


def _runs_below(path: Path) -> list[str]:
    """Run directories one or two levels below ``path`` (e.g. ``runs/`` or a checkout)."""
    return sorted({str(p.parent) for pat in (f"*/{EXPERIMENT_JSON}", f"*/*/{EXPERIMENT_JSON}")
                   for p in path.glob(pat)}) if path.is_dir() else []


def _read_experiment(run: Path) -> dict[str, Any]:
    path = RunLayout(run).experiment_json
    if not path.is_file():
        what = "does not exist" if not run.exists() else "is not a run directory"
        below = _runs_below(run)
        raise ReportError(f"{run} {what} (no experiment.json); run directories found under "
                          f"{run}: {', '.join(below) if below else 'none'}")
    try:
        info = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise ReportError(f"{path} cannot be read ({type(err).__name__}: "
                          f"{err}); is {run} a run directory written by lmcollapse?") from None
    if not isinstance(info, dict):
        raise ReportError(f"{path} is not an lmcollapse experiment record")
    version = info.get("config", {}).get("version")
    if version != CONFIG_VERSION:
        log.warning("%s was written with config version %s (this lmcollapse reads %s); "
                    "showing what can be read", run, version, CONFIG_VERSION)
    return info


def _read_record(path: Path) -> tuple[dict[str, Any] | None, str]:
    """One metrics.json, or None and what is wrong with it."""
    try:
        rec = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        return None, f"not readable JSON ({type(err).__name__}: {str(err)[:100]})"
    if not isinstance(rec, dict) or not isinstance(rec.get("values"), dict):
        return None, "has no `values` mapping"
    if not isinstance(rec.get("seed"), int) or "generation" not in rec or "policy" not in rec:
        return None, "lacks seed, policy or generation"
    bad = [k for k, v in rec["values"].items()
           if not isinstance(v, int | float) or isinstance(v, bool)]
    if bad:
        return None, f"holds values that are not numbers ({', '.join(bad[:3])})"
    return rec, ""


def load_records(run_dirs: list[str | Path], problems: list[str] | None = None,
                 unreadable: dict[Path, str] | None = None) -> list[dict[str, Any]]:
    """Every readable ``metrics.json`` below the given run directories, each with ``run``
    added; one that cannot be read is skipped with a warning (and added to ``problems``,
    and to ``unreadable`` with what is wrong)."""
    records = []
    for run in map(Path, run_dirs):
        name = _read_experiment(run).get("experiment", run.name)
        for path in RunLayout(run).metrics_files():
            rec, problem = _read_record(path)
            if rec is None:
                log.warning("skipped %s: %s", path, problem)
                if problems is not None:
                    problems.append(f"{path}: {problem}")
                if unreadable is not None:
                    unreadable[path] = problem
                continue
            rec.update(run=str(run), experiment=name)
            records.append(rec)
            try:  # the row stands; say when what it was measured on is gone or changed
                files.verify_folder(path.parent)
            except files.ArtifactError as err:
                log.warning("%s", err)
                if problems is not None:
                    problems.append(str(err))
    return records


def _fingerprint(config: dict[str, Any]) -> str:
    """The config minus what may differ between machines running one experiment."""
    rest = {k: v for k, v in config.items() if k not in ("seeds", "output_dir", "log_level")}
    return json.dumps(rest, sort_keys=True, default=str)


def load_runs(run_dirs: list[str | Path]) -> list[RunResults]:
    """Group run directories into experiments (same name and config: seeds merge)."""
    if not run_dirs:
        raise ReportError("no run directory given")
    groups: dict[tuple[str, str], RunResults] = {}
    unique: dict[Path, Path] = {}
    for r in run_dirs:
        unique.setdefault(Path(r).resolve(), Path(r))
    for run in unique.values():
        info = _read_experiment(run)
        name = info.get("experiment", run.name)
        exp = groups.setdefault((name, _fingerprint(info.get("config", {}))),
                                RunResults(name, [], info))
        exp.dirs.append(run)
        seeds = info.get("seeds", info.get("config", {}).get("seeds", []))
        exp.seeds += [s for s in seeds if s not in exp.seeds]
        exp.populations.update(info.get("populations", {}))
        for p in info.get("policies", []):  # a population: its participants in its place
            exp.policies += [m for m in exp.populations.get(p, [p]) if m not in exp.policies]
        for rec in load_records([run], exp.problems, exp.unreadable):
            key = (rec["policy"], int(rec["seed"]), rec["generation"])
            if rec.get("population"):
                exp.population_records.setdefault(key, rec)
                exp.populations.setdefault(rec["policy"], [])
                continue
            if key in exp.records:  # shards in separate directories share generation 0
                if exp.records[key]["values"] != rec["values"]:
                    log.warning("%s: seed %s %s gen %s measured twice with different values; "
                                "keeping the first", run, key[1], key[0], key[2])
                continue
            exp.records[key] = rec
            if key[1] not in exp.seeds:
                exp.seeds.append(key[1])
            if key[0] not in (None, "human") and key[0] not in exp.policies:
                exp.policies.append(key[0])
    exps = list(groups.values())
    for exp in exps:
        exp.seeds.sort()
        exp.policies = [p for p in exp.policies if p not in exp.populations]
        twins = sum(e.name == exp.name for e in exps) > 1
        exp.key = f"{exp.name} ({', '.join(map(str, exp.dirs))})" if twins else exp.name
    return exps


def measured(exps: list[RunResults], populations: bool = False) -> dict[str, dict[str, Any]]:
    """``{value key: meta}`` of every value any record holds (``populations``: a
    population's row's too), sorted by key."""
    meta: dict[str, dict[str, Any]] = {}
    for exp in exps:
        recs = [*exp.records.values(), *(exp.population_records.values() if populations else [])]
        for rec in recs:
            for k in rec.get("values", {}):
                meta.setdefault(k, rec.get("meta", {}).get(k, {}))
    return {k: {"higher_is_better": None, "display_name": k, **meta[k]} for k in sorted(meta)}


def default_columns(exps: list[RunResults]) -> list[str]:
    """The value keys their metrics mark as leaderboard columns (``meta.column``), in the
    order the metrics were measured (the config's ``metrics.names``)."""
    out: list[str] = []
    for exp in exps:
        for rec in exp.records.values():
            meta = rec.get("meta", {})
            out += [k for k in rec.get("values", {}) if meta.get(k, {}).get("column")
                    and k not in out]
    return out


def check_name(kind: str, name: str, allowed: list[str]) -> None:
    if name not in allowed:
        raise ReportError(unknown_name_message(kind, name, allowed))
