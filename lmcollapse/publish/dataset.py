"""``lmcollapse dataset FILES... --out DIR``: results files as a Hugging Face datasets-style
folder, for publishing results on the Hub (``huggingface-cli upload``; nothing here touches
the network).

The folder holds ``data/values.parquet`` (one row per value: protocol, experiment, cell,
seed, generation, metric, value, and the results file (name and content digest) and row it
came from; the human rows
have cell ``human`` and no generation), ``data/protocols.parquet`` (each protocol as JSON
with its hash) and ``README.md``, a dataset card whose YAML header declares the two
configurations, so that ``datasets.load_dataset(DIR)`` reads the values and
``load_dataset(DIR, "protocols")`` the protocols.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lmcollapse import __version__
from lmcollapse.errors import ReportError
from lmcollapse.report.results import guarded, read_document

VALUES = pa.schema([
    ("protocol_sha256", pa.string()), ("experiment", pa.string()), ("cell", pa.string()),
    ("seed", pa.int64()), ("generation", pa.int64()), ("metric", pa.string()),
    ("value", pa.float64()), ("higher_is_better", pa.bool_()), ("results_file", pa.string()),
    ("results_sha256", pa.string()), ("row", pa.string())])
PROTOCOLS = pa.schema([("protocol_sha256", pa.string()), ("protocol", pa.string()),
                       ("experiments", pa.list_(pa.string())), ("cells", pa.list_(pa.string())),
                       ("seeds", pa.list_(pa.int64())), ("generations", pa.int64())])


def _values(path: Path, doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in doc["rows"]:
        rec = row["metrics"]
        if row.get("population"):
            continue
        cell = rec["policy"] if rec["policy"] is not None else "generation 0 (shared)"
        for metric, value in rec.get("values", {}).items():
            out.append({"protocol_sha256": doc["protocol_sha256"],
                        "experiment": doc["experiment"], "cell": cell, "seed": rec["seed"],
                        "generation": rec["generation"], "metric": metric,
                        "value": float(value),
                        "higher_is_better": rec.get("meta", {}).get(metric, {}).get(
                            "higher_is_better"),
                        "results_file": path.name,
                        "results_sha256": doc["content_sha256"], "row": row["dir"]})
    return out


def card(docs: list[dict[str, Any]], values: int) -> str:
    """The dataset card: YAML header (configurations, tags) and what the columns mean."""
    protocols = sorted({d["protocol_sha256"] for d in docs})
    experiments = sorted({d["experiment"] for d in docs})
    header = "\n".join([
        "---", "pretty_name: lmcollapse results", "tags:", "- model-collapse",
        "- lmcollapse", "- leaderboard", "configs:", "- config_name: values",
        "  default: true", "  data_files:", "  - split: train", "    path: data/values.parquet",
        "- config_name: protocols", "  data_files:", "  - split: train",
        "    path: data/protocols.parquet", "---"])
    return (f"{header}\n\n# lmcollapse results\n\n"
            f"{values} values of {len(experiments)} experiment(s) "
            f"({', '.join(experiments)}) under {len(protocols)} protocol(s), exported by "
            f"lmcollapse {__version__} from results files (`lmcollapse export`).\n\n"
            "- `values` (default): one row per value: `protocol_sha256`, `experiment`, "
            "`cell` (a policy label; `human` is the human reference row, "
            "`generation 0 (shared)` the generation-0 row every cell of a seed shares), "
            "`seed`, `generation` (null for the human row), `metric`, `value`, "
            "`higher_is_better` (null: closest to the human value is best), `results_file`, "
            "`results_sha256` (the file's `content_sha256`: which file a row came from) "
            "and `row` (the row's folder in the run).\n"
            "- `protocols`: each protocol (JSON) with its sha256, experiments, cells, seeds "
            "and generations.\n\n"
            "A protocol fixes data, model, training, decoding, metrics, generations and "
            "seeds; compare cells only within one protocol. The results files themselves "
            "(per-sample values, digests, versions, hardware) are what `lmcollapse "
            "leaderboard` merges and ranks.\n\n```python\nfrom datasets import load_dataset\n"
            "values = load_dataset(\"<this folder or repo>\", split=\"train\")\n```\n")


def write_dataset(paths: list[str | Path], out: str | Path) -> Path:
    """Write the folder; returns it."""
    if not paths:
        raise ReportError("no results file given")
    out = Path(out)
    docs, values = [], []
    for p in paths:
        doc = read_document(p)
        docs.append(doc)
        values += _values(Path(p), doc)
    by_hash: dict[str, dict[str, Any]] = {}
    for doc in docs:
        entry = by_hash.setdefault(doc["protocol_sha256"], {
            "protocol_sha256": doc["protocol_sha256"],
            "protocol": json.dumps(doc["protocol"], sort_keys=True), "experiments": [],
            "cells": [], "seeds": list(doc["seeds"]), "generations": doc["generations"]})
        entry["experiments"] += [doc["experiment"]] * (doc["experiment"] not in
                                                       entry["experiments"])
        entry["cells"] += [c for c in doc["cells"] if c not in entry["cells"]]
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(values, schema=VALUES), out / "data" / "values.parquet")
    pq.write_table(pa.Table.from_pylist(list(by_hash.values()), schema=PROTOCOLS),
                   out / "data" / "protocols.parquet")
    (out / "README.md").write_text(card(docs, len(values)))
    return out


def command(args: argparse.Namespace) -> int:
    return guarded("dataset", lambda: f"wrote {write_dataset(args.files, args.out)} "
                   f"(datasets.load_dataset({str(args.out)!r}) reads it)")
