"""Human data sources. Each returns ``{"train": [...], "validation": [...], "test": [...]}``,
lists of text records in their original order."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq

from lmcollapse.config import DataConfig
from lmcollapse.data.synthetic import MarkovSource
from lmcollapse.errors import ConfigError

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
#: share of train records held out for validation when a text source names no validation file
HELD_OUT_VALIDATION = 0.05


def load_human_text(cfg: DataConfig) -> dict[str, list[str]]:
    """Load the three human splits named by ``cfg.source``."""
    loader = {"hf": _load_hf, "text": _load_text, "synthetic": _load_synthetic}[cfg.source]
    splits = loader(cfg)
    for split in SPLITS:
        if not any(r.strip() for r in splits[split]):
            raise ConfigError(f"data ({cfg.source}): the {split} split is empty")
    return splits


def _load_hf(cfg: DataConfig) -> dict[str, list[str]]:
    import datasets

    h = cfg.hf
    ds = datasets.load_dataset(h.path, h.name, revision=h.revision)
    out = {}
    for split, name in zip(SPLITS, (h.train_split, h.validation_split, h.test_split), strict=True):
        if name not in ds:
            raise ConfigError(f"data.hf.{split}_split: {name!r} not in dataset; has {list(ds)}")
        if h.text_field not in ds[name].column_names:
            raise ConfigError(f"data.hf.text_field: {h.text_field!r} not in columns "
                              f"{ds[name].column_names}")
        out[split] = list(ds[name][h.text_field])
    return out


def read_records(path: str | Path, text_field: str = "text", where: str = "data.text") -> list[str]:
    """Read text records from ``.txt`` (one per line), ``.jsonl`` or ``.parquet``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: file not found: {path}")
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


def _load_text(cfg: DataConfig) -> dict[str, list[str]]:
    t = cfg.text
    train = read_records(t.train, t.text_field, "data.text.train")
    if t.test is None:
        raise ConfigError("data.text.test: a held-out test file is required for measurement")
    test = read_records(t.test, t.text_field, "data.text.test")
    if t.validation is not None:
        validation = read_records(t.validation, t.text_field, "data.text.validation")
    else:
        cut = len(train) - max(1, int(len(train) * HELD_OUT_VALIDATION))
        train, validation = train[:cut], train[cut:]
        log.info("data.text.validation not set: holding out the last %d train records",
                 len(validation))
    return {"train": train, "validation": validation, "test": test}


def make_synthetic_source(cfg: DataConfig) -> MarkovSource:
    s = cfg.synthetic
    return MarkovSource(vocab_size=s.vocab_size, branching=s.branching,
                        zipf_exponent=s.zipf_exponent,
                        mean_sentence_words=s.mean_sentence_words, seed=s.seed)


def _load_synthetic(cfg: DataConfig) -> dict[str, list[str]]:
    s = cfg.synthetic
    source = make_synthetic_source(cfg)
    counts = (s.train_docs, s.validation_docs, s.test_docs)
    # each split draws from its own stream so changing one size leaves the others intact
    return {split: source.sample_documents(n, s.sentences_per_doc, seed=s.seed * 1000 + i + 1)
            for i, (split, n) in enumerate(zip(SPLITS, counts, strict=True))}
