"""Hugging Face datasets: ``datasets.load_dataset(path, name)``; the defaults are WikiText-2."""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from lmcollapse.data.base import SPLITS, Source, hold_out
from lmcollapse.errors import ConfigError
from lmcollapse.registry import SOURCES


@dataclass
class HFSettings:
    """``data.hf``: the dataset, its revision, text column and split names. Any split may
    serve as the training pool (WikiText-2's ``validation`` on a laptop);
    ``validation_split: null`` holds out the last records of the training pool, exactly as
    the ``text`` source does without a validation file, so the hub's split and a local file
    of the same records give the same experiment."""

    path: str = "wikitext"
    name: str | None = "wikitext-2-raw-v1"
    revision: str | None = None
    text_field: str = "text"
    train_split: str = "train"
    validation_split: str | None = "validation"
    test_split: str = "test"


@SOURCES.register("hf")
class HFSource(Source):
    settings = HFSettings

    def load(self) -> dict[str, list[str]]:
        h = self.config
        ds = datasets.load_dataset(h.path, h.name, revision=h.revision)
        names = {"train": h.train_split, "validation": h.validation_split, "test": h.test_split}
        for split, name in names.items():
            if name is not None and name not in ds:
                raise ConfigError(f"data.hf.{split}_split: {name!r} is not a split of "
                                  f"{h.path}/{h.name}; it has {', '.join(ds)}")
        out = {}
        for split, name in names.items():
            if name is None:
                continue
            if h.text_field not in ds[name].column_names:
                raise ConfigError(f"data.hf.text_field: {h.text_field!r} not in columns "
                                  f"{ds[name].column_names}")
            out[split] = list(ds[name][h.text_field])
        if h.validation_split is None:
            out["train"], out["validation"] = hold_out(
                out["train"], "data.hf.validation_split", f"the {h.train_split!r} split")
        return {split: out[split] for split in SPLITS}

    def describe(self) -> str:
        return "hf " + "/".join(x for x in (self.config.path, self.config.name) if x)
