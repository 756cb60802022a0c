"""Hugging Face datasets: ``datasets.load_dataset(path, name)``; the defaults are WikiText-2."""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from lmcollapse.data.base import SPLITS, Source
from lmcollapse.errors import ConfigError
from lmcollapse.registry import SOURCES


@dataclass
class HFSettings:
    """``data.hf``: the dataset, its revision, text column and split names."""

    path: str = "wikitext"
    name: str | None = "wikitext-2-raw-v1"
    revision: str | None = None
    text_field: str = "text"
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"


@SOURCES.register("hf")
class HFSource(Source):
    settings = HFSettings

    def load(self) -> dict[str, list[str]]:
        h = self.config
        ds = datasets.load_dataset(h.path, h.name, revision=h.revision)
        out = {}
        for split, name in zip(SPLITS, (h.train_split, h.validation_split, h.test_split),
                               strict=True):
            if name not in ds:
                raise ConfigError(f"data.hf.{split}_split: {name!r} not in dataset; has {list(ds)}")
            if h.text_field not in ds[name].column_names:
                raise ConfigError(f"data.hf.text_field: {h.text_field!r} not in columns "
                                  f"{ds[name].column_names}")
            out[split] = list(ds[name][h.text_field])
        return out

    def describe(self) -> str:
        return "hf " + "/".join(x for x in (self.config.path, self.config.name) if x)
