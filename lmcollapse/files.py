"""Atomic file writes and the small readers/writers the run directory uses (named
``files``, not ``io``, so it never shadows the standard library)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + rename)."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in records))


def write_rows(path: str | Path, rows: list[dict[str, Any]],
               columns: list[str] | None = None) -> None:
    """Write a list of dicts as parquet atomically (``columns`` selects and orders)."""
    columns = columns or (list(rows[0]) if rows else [])
    table = pa.table({c: [r[c] for r in rows] for c in columns})
    _atomic(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_npy(path: str | Path, array: Any) -> None:
    """Save a numpy array atomically."""
    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(Path(path), save)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished temp folder into place, replacing a stale one."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
