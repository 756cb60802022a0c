"""Local text files: ``.txt`` (one record per line), ``.jsonl`` or ``.parquet``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmcollapse.data.base import Source, hold_out
from lmcollapse.errors import ConfigError
from lmcollapse.registry import SOURCES

log = logging.getLogger(__name__)


@dataclass
class TextSettings:
    """``data.text``: one file per split; without ``validation`` the last
    :data:`~lmcollapse.data.base.HELD_OUT_VALIDATION` of the train records are held out."""

    train: str | None = None
    validation: str | None = None
    test: str | None = None
    text_field: str = "text"

    def check(self, where: str) -> None:
        for split in ("train", "test"):
            if not getattr(self, split):
                raise ConfigError(f"{where}.{split}: a file path is required when data.source "
                                  "is 'text'")


def read_records(path: str | Path, text_field: str = "text", where: str = "data.text") -> list[str]:
    """Read text records from ``.txt`` (one per line), ``.jsonl`` or ``.parquet``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: file not found: {path}")
    try:
        return _read(path, text_field, where)
    except ConfigError:
        raise
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: {path} is not UTF-8 text (byte {err.start}: "
                          f"{err.reason}); convert it to UTF-8") from None
    except (OSError, ValueError, pa.ArrowException) as err:
        raise ConfigError(f"{where}: {path} cannot be read ({type(err).__name__}: "
                          f"{str(err)[:200]})") from None


def _read(path: Path, text_field: str, where: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines()):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{where}: {path}:{i + 1} is not JSON: {err}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                raise ConfigError(f"{where}: {path}:{i + 1} has no string field {text_field!r}")
            records.append(obj[text_field])
        return records
    if suffix == ".parquet":
        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise ConfigError(f"{where}: {path} has no column {text_field!r}; "
                              f"has {table.column_names}")
        records = table.column(text_field).to_pylist()
        if any(not isinstance(r, str) for r in records):
            raise ConfigError(f"{where}: {path} column {text_field!r} has null/non-text values")
        return records
    return path.read_text(encoding="utf-8-sig").splitlines(keepends=True)


@SOURCES.register("text")
class TextSource(Source):
    settings = TextSettings

    def load(self) -> dict[str, list[str]]:
        t = self.config
        if t.train is None:
            raise ConfigError("data.text.train: a training file is required")
        train = read_records(t.train, t.text_field, "data.text.train")
        if t.test is None:
            raise ConfigError("data.text.test: a held-out test file is required for measurement")
        test = read_records(t.test, t.text_field, "data.text.test")
        if t.validation is not None:
            validation = read_records(t.validation, t.text_field, "data.text.validation")
        else:
            train, validation = hold_out(train, "data.text.validation",
                                         f"data.text.train ({t.train}; one per line in a .txt)")
            log.info("data.text.validation not set: holding out the last %d train records",
                     len(validation))
        return {"train": train, "validation": validation, "test": test}

    def describe(self) -> str:
        t = self.config
        return "text " + ", ".join(x for x in (t.train, t.validation, t.test) if x)
