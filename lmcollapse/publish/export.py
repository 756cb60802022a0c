"""``lmcollapse export RUN``: one run directory as one results file.

The file (schema: docs/reports.md, "Results files") holds the run's protocol and its
sha256, every row's metrics.json as written, the per-sample columns the report reads with
the sha256 of the parquet file each came from, every file's recorded digest, library
versions, the lmcollapse version and commit, the hardware and the wall time, sealed by
``content_sha256`` (:func:`lmcollapse.report.results.seal`). Only a finished, intact run is
exported: a missing row, an unreadable metrics.json or a file changed since it was written
is refused, naming it, and nothing is written.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lmcollapse import __version__, files
from lmcollapse.errors import ConfigError
from lmcollapse.layout import EXPERIMENT_JSON, MARKER_SUFFIX, RunLayout
from lmcollapse.registry import SOURCES
from lmcollapse.report.load import load_runs
from lmcollapse.report.results import (
    FORMAT,
    SCHEMA,
    ResultsFileError,
    check_rows,
    guarded,
    protocol_hash,
    protocol_of,
    read_document,
    seal,
)
from lmcollapse.settings import ExperimentConfig, build

#: the default file name, inside the run directory
RESULTS_JSON = "results.json"


def normalized(config: dict[str, Any]) -> dict[str, Any]:
    """The config as this version resolves it (keys added since the run began at their
    defaults, as resuming compares them) without the settings of parts it does not use
    (other data sources' sections, unmeasured metrics'), or as written where it no longer
    loads."""
    try:
        cfg = build(ExperimentConfig, config)
    except ConfigError:
        return dict(config)
    out = cfg.to_dict()
    source = SOURCES.find(cfg.data.source)
    for key, part in type(cfg.data).owners().items():
        if part is not source:
            out["data"].pop(key, None)
    names = set(cfg.metrics.names)
    for key, part in type(cfg.metrics).owners().items():
        if getattr(part, "name", key) not in names:
            out["metrics"].pop(key, None)
    return out


def _declared(details: dict[str, Any]) -> list[tuple[str, str]]:
    """The (file, column) pairs a row's metrics declare as their per-sample values."""
    out = []
    for entry in (details or {}).values():
        spec = entry.get("per_sample") if isinstance(entry, dict) else None
        for one in spec if isinstance(spec, list) else [spec]:
            if isinstance(one, dict) and "file" in one and "column" in one:
                out.append((str(one["file"]), str(one["column"])))
    return list(dict.fromkeys(out))


def _row(run: Path, path: Path) -> dict[str, Any]:
    folder = path.parent
    try:
        files.verify_folder(folder, full=True)
        rec = json.loads(path.read_text())
    except (files.ArtifactError, ValueError, OSError) as err:
        raise ResultsFileError(f"{path}: cannot be exported ({err})") from None
    recorded = files.recorded(folder)
    samples: dict[str, dict[str, list[float]]] = {}
    digests: dict[str, str] = {}
    for name, column in _declared(rec.get("details", {})):
        table = pq.read_table(folder / name, columns=[column]).to_pydict()
        samples.setdefault(name, {})[column] = [float(v) for v in table[column]]
        digests[name] = recorded.get(name, {}).get("sha256") or files.sha256(folder / name)
    row = {"dir": folder.relative_to(run).as_posix(), "metrics": rec,
           "samples": samples, "sample_sha256": digests,
           "files": {n: e["sha256"] for n, e in sorted(recorded.items())}}
    if rec.get("population"):
        row["population"] = True
    return row


def _checksums(run: Path) -> dict[str, str]:
    """Every file any manifest of the run records: ``{path in the run: sha256}``."""
    out = {}
    for manifest in sorted(run.rglob(files.MANIFEST)):
        base = manifest.parent.relative_to(run)
        for name, entry in files.recorded(manifest.parent).items():
            out[(base / name).as_posix()] = entry["sha256"]
    return out


def _wall(run: Path) -> dict[str, Any]:
    """When the run's first step started and its last finished, and the steps' seconds."""
    started, finished, seconds = [], [], 0.0
    for marker in run.rglob(f"seed_*/**/*{MARKER_SUFFIX}"):
        try:
            t = json.loads(marker.read_text())
            started.append(dt.datetime.fromisoformat(t["started"]))
            finished.append(dt.datetime.fromisoformat(t["finished"]))
            seconds += float(t["elapsed_s"])
        except (ValueError, KeyError, TypeError, OSError):
            continue
    if not started:
        return {}
    return {"first_step_started": min(started).isoformat(),
            "last_step_finished": max(finished).isoformat(),
            "wall_s": (max(finished) - min(started)).total_seconds(),
            "steps_s": seconds, "steps": len(started)}


def _commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        return None
    return sha or None


def build_results(run: str | Path) -> dict[str, Any]:
    """The results document of one run directory (checked; not written)."""
    run = Path(run)
    exps = load_runs([run])
    exp = exps[0]
    if exp.problems:
        raise ResultsFileError(f"{run}: cannot be exported: {exp.problems[0]}")
    info = files.read_json(run / EXPERIMENT_JSON)
    config = normalized(info.get("config", {}))
    protocol = protocol_of(config)
    layout = RunLayout(run)
    doc = {
        "format": FORMAT, "schema": SCHEMA, "experiment": exp.name,
        "protocol": protocol, "protocol_sha256": protocol_hash(protocol),
        "cells": list(exp.policies), "seeds": list(exp.seeds),
        "generations": int(config.get("generations", exp.generations)),
        "lmcollapse": {"version": __version__, "run_commit": info.get("git_sha"),
                       "export_commit": _commit()},
        "versions": info.get("versions", {}),
        "hardware": {**{k: info.get(k) for k in ("device", "num_processes", "devices",
                                                  "jobs", "threads_per_job")},
                     **info.get("hardware", {})},
        "wall": _wall(run),
        "exported": {"at": dt.datetime.now().isoformat(timespec="seconds"),
                     "platform": platform.platform(), "cpu_count": os.cpu_count()},
        "info": info,
        "rows": [_row(run, p) for p in layout.metrics_files()],
        "checksums": _checksums(run),
    }
    try:
        check_rows(run, doc)
    except ResultsFileError as err:
        raise ResultsFileError(f"{err} (finish the run first: the same `lmcollapse run` "
                               "command resumes it)") from None
    return seal(doc)


def export(run: str | Path, out: str | Path | None = None) -> Path:
    """Write ``run``'s results file (default ``RUN/results.json``; a name ending in
    ``.gz`` is gzip-compressed, about a third of the size) and read it back."""
    doc = build_results(run)
    path = Path(out) if out else Path(run) / RESULTS_JSON
    text = json.dumps(doc, separators=(",", ":"), allow_nan=True) + "\n"
    if path.name.endswith(".gz"):  # mtime 0: gzip adds no time of its own
        data = gzip.compress(text.encode(), compresslevel=9, mtime=0)
        files.write_bytes(path, data, record=False)
    else:
        files.write_text(path, text, record=False)
    read_document(path)  # what was written reads back
    return path



def command(args: Any) -> int:
    """``lmcollapse export RUN [-o FILE]``: prints where the file went and its protocol."""
    def work() -> str:
        path = export(args.run, args.out)
        doc = read_document(path)
        return (f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {doc['experiment']}, "
                f"{len(doc['cells'])} cells x {len(doc['seeds'])} seeds x generations 0.."
                f"{doc['generations']}, protocol {doc['protocol_sha256'][:12]}")
    return guarded("export", work, "try -o FILE")
