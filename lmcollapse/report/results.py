"""Results files: a run's numbers as one JSON file that anyone can submit, read back into
the :class:`~lmcollapse.report.load.RunResults` a report is computed from.

A results file (``lmcollapse export RUN``, written by :mod:`lmcollapse.publish.export`;
the schema is in docs/reports.md) holds the run's **protocol** (its resolved config minus
the cells: data, model, training, decoding, metrics, generations and seeds) with the
protocol's sha256, every row's metrics.json as written, the per-sample columns the report's
statistics read (early warnings, histograms) with the sha256 of the file each came from,
the digests of every file the run recorded, library versions, the lmcollapse version and
commit, the hardware and the wall time. ``content_sha256`` seals the rest: any edit after
export is refused.

Reading one checks, in order, and refuses with one line naming the file and the field:
the format and schema (a newer schema than this lmcollapse reads), the content digest,
the protocol hash against the protocol, and that every declared cell has a row for every
seed and generation. JSON only, like the rest of the report.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcollapse.errors import ReportError
from lmcollapse.layout import METRICS
from lmcollapse.report.load import RunResults, load_runs

#: the first bytes of a gzip file: a results file may be compressed (``.json.gz``)
GZIP_MAGIC = b"\x1f\x8b"
#: what a results file says it is, and the newest schema this version reads and writes
FORMAT = "lmcollapse-results"
SCHEMA = 1
#: config keys that are not the protocol: the cells (policies and grid axes), where the run
#: directory is and how the run was executed (logging, workers, threads, kept weights)
NOT_PROTOCOL = ("policies", "grid", "output_dir", "experiment", "log_level", "log_with",
                "keep_models", "jobs", "cpu_threads")
#: the fields every results file holds
REQUIRED = ("format", "schema", "experiment", "protocol", "protocol_sha256", "cells",
            "seeds", "generations", "info", "rows", "content_sha256")


class ResultsFileError(ReportError):
    """A results file that cannot be used: the message names the file and the field."""


def canonical(obj: Any) -> bytes:
    """The bytes a digest is taken of: JSON with sorted keys and no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True).encode()


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def protocol_of(config: dict[str, Any]) -> dict[str, Any]:
    """The protocol of a resolved config: everything but its cells and execution."""
    return {k: v for k, v in config.items() if k not in NOT_PROTOCOL}


def protocol_hash(protocol: dict[str, Any]) -> str:
    return digest(protocol)


def seal(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with ``content_sha256``: the digest of everything else in it."""
    body = {k: v for k, v in doc.items() if k != "content_sha256"}
    return {**body, "content_sha256": digest(body)}


def protocol_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "protocol"
                         ) -> list[str]:
    """The dotted keys whose values differ between two protocols, with both values."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}.{key}"
        x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(x, dict) and isinstance(y, dict):
            out += protocol_differences(x, y, path)
        elif x != y:
            out.append(f"{path}: {x!r} vs {y!r}")
    return out


@dataclass
class ExportedResults(RunResults):
    """One results file as results a report reads: rows found by their cell, seed and
    generation, per-sample columns from the file instead of parquet files. The text of
    the corpora is not in a results file, so a report of one has no lineages."""

    path: Path = field(default_factory=Path)
    protocol: dict[str, Any] = field(default_factory=dict)
    protocol_sha256: str = ""
    #: (policy, seed, generation) -> the row: the results file / its folder in the run
    row_dirs: dict[tuple[str | None, int, int | None], Path] = field(default_factory=dict)
    #: row (as in :attr:`row_dirs`) -> {file: {column: values}}
    samples: dict[Path, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    has_texts: bool = False
    #: cells measured from a generation 0 of their own file's, not the first file's (a
    #: merge of files run on different machines): cell -> that file
    zero_from: dict[str, Path] = field(default_factory=dict)

    def pairable(self, policy: str, other: str) -> bool:
        """Cells pair by seed when they descend from the same generation 0 (merged files
        whose generation 0 differ do not)."""
        return self.zero_from.get(policy) == self.zero_from.get(other)

    def _row(self, policy: str | None, seed: int, generation: int | None) -> Path | None:
        if generation is None:
            return self.row_dirs.get(("human", seed, None))
        return self.row_dirs.get((policy, seed, generation)) or (
            self.row_dirs.get((None, seed, 0)) if generation == 0 else None)

    def gen_dirs(self, policy: str | None, seed: int, generation: int | None) -> list[Path]:
        row = self._row(policy, seed, generation)
        return [row] if row is not None else []

    def has(self, path: Path) -> bool:
        row = Path(path).parent
        return Path(path).name in self.samples.get(row, {}) or (
            Path(path).name == METRICS and row in self.samples)

    def table(self, path: Path, columns: list[str] | None = None
              ) -> list[dict[str, Any]] | None:
        cols = self.samples.get(Path(path).parent, {}).get(Path(path).name)
        if cols is None:
            return None
        names = list(columns or cols)
        if any(c not in cols for c in names):
            return None
        return [dict(zip(names, values, strict=True))
                for values in zip(*(cols[c] for c in names), strict=True)]

    def why_absent(self, policy: str, seed: int, generation: int | None,
                   metric: str | None = None) -> str:
        where = "the human row" if generation is None else f"generation {generation}"
        row = self._row(policy, seed, generation)
        if row is None:
            return f"{where}: not in {', '.join(map(str, self.dirs))}"
        return f"{where}: no {metric!r} in {row}" if metric else f"{where}: no value"

    @property
    def sources(self) -> list[Path]:
        return list(self.dirs)


def _refuse(path: Path, field_: str, what: str) -> ResultsFileError:
    return ResultsFileError(f"{path}: {field_}: {what}")


def read_document(path: str | Path) -> dict[str, Any]:
    """A results file's JSON, checked (format, schema, seal, protocol hash, fields); raises
    :class:`ResultsFileError` naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise _refuse(path, "file", "does not exist" if not path.exists() else "is not a file")
    try:
        raw = path.read_bytes()
        doc = json.loads(gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as err:
        raise _refuse(path, "file", f"not readable JSON ({type(err).__name__}: "
                                    f"{str(err)[:120]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _refuse(path, "format", f"not an lmcollapse results file (expected "
                                      f"{FORMAT!r}; write one with `lmcollapse export RUN`)")
    schema = doc.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise _refuse(path, "schema", f"a positive integer, got {schema!r}")
    if schema > SCHEMA:
        raise _refuse(path, "schema", f"{schema} is newer than this lmcollapse reads "
                                      f"({SCHEMA}); upgrade lmcollapse to read it")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise _refuse(path, missing[0], "missing (a results file holds "
                                        f"{', '.join(REQUIRED)})")
    if digest({k: v for k, v in doc.items() if k != "content_sha256"}) != doc["content_sha256"]:
        raise _refuse(path, "content_sha256", "does not match the file's content: it was "
                                              "changed after export; export the run again")
    if not isinstance(doc["protocol"], dict) or protocol_hash(doc["protocol"]) != \
            doc["protocol_sha256"]:
        raise _refuse(path, "protocol_sha256", "is not the sha256 of the file's protocol")
    check_rows(path, doc)
    return doc


def check_rows(path: Path, doc: dict[str, Any]) -> None:
    """Every declared cell has a row for every seed and generation; every seed a human row
    and a generation 0."""
    rows = doc["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(
            r.get("metrics"), dict) and isinstance(r.get("dir"), str) for r in rows):
        raise _refuse(path, "rows", "a list of {dir, metrics, ...} rows")
    have = {(r["metrics"].get("policy"), r["metrics"].get("seed"),
             r["metrics"].get("generation")) for r in rows if not r.get("population")}
    seeds, gens, cells = doc["seeds"], doc["generations"], doc["cells"]
    for seed in seeds:
        if ("human", seed, None) not in have:
            raise _refuse(path, "rows", f"seed {seed} has no human row")
        for cell in cells:
            for k in range(gens + 1):
                if (cell, seed, k) not in have and not (k == 0 and any(
                        p is None and s == seed and g == 0 for p, s, g in have)):
                    raise _refuse(path, "rows", f"cell {cell!r} has no row for seed {seed}, "
                                                f"generation {k} (the file declares cells "
                                                f"{cells}, seeds {seeds}, generations "
                                                f"0..{gens})")


def read_results(path: str | Path) -> ExportedResults:
    """A checked results file as results a report reads (:class:`ExportedResults`)."""
    path = Path(path)
    doc = read_document(path)
    exp = ExportedResults(doc["experiment"], [path], doc["info"], path=path,
                          protocol=doc["protocol"], protocol_sha256=doc["protocol_sha256"])
    exp.seeds = sorted(doc["seeds"])
    exp.populations = dict(doc["info"].get("populations", {}))
    for p in doc["info"].get("policies", []):
        exp.policies += [m for m in exp.populations.get(p, [p]) if m not in exp.policies]
    for row in doc["rows"]:
        rec = dict(row["metrics"])
        bad = [k for k, v in rec.get("values", {}).items()
               if not isinstance(v, int | float) or isinstance(v, bool)]
        if bad:
            raise _refuse(path, "rows", f"{row['dir']}: values that are not numbers "
                                        f"({', '.join(bad[:3])})")
        key = (rec["policy"], int(rec["seed"]), rec["generation"])
        rec.update(run=str(path), experiment=exp.name)
        where = path / row["dir"]
        exp.samples[where] = {f: dict(cols) for f, cols in row.get("samples", {}).items()}
        if rec.get("population"):
            exp.population_records[key] = rec
            continue
        exp.records[key] = rec
        exp.row_dirs[key] = where
        if key[0] not in (None, "human") and key[0] not in exp.policies:
            exp.policies.append(key[0])
    exp.policies = [p for p in exp.policies if p not in exp.populations]
    exp.key = exp.name
    return exp


def is_results_file(path: str | Path) -> bool:
    """A path a report reads as a results file rather than a run directory (``.json``, or
    ``.json.gz`` gzip-compressed)."""
    return Path(path).name.endswith((".json", ".json.gz")) and not Path(path).is_dir()



def guarded(command: str, work: Callable[[], str], hint: str = "try --out DIR") -> int:
    """Run a publishing command's ``work`` (which returns what to print): a refusal
    (:class:`ReportError`) is one line on stderr and exit 2, a failed write exit 1."""
    try:
        message = work()
    except ReportError as err:
        print(f"lmcollapse {command}: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"lmcollapse {command}: cannot write ({err}); {hint}", file=sys.stderr)
        return 1
    print(message)
    return 0


def load_any(paths: list[str | Path]) -> list[RunResults]:
    """Run directories (grouped by :func:`~lmcollapse.report.load.load_runs`) and results
    files (each its own results), in the order given."""
    if not paths:
        raise ReportError("no run directory or results file given")
    dirs = [p for p in paths if not is_results_file(p)]
    out = load_runs(dirs) if dirs else []
    return out + [read_results(p) for p in paths if is_results_file(p)]
