"""The evaluation behind docs/design.md's "Settings: conversion by hand": the same bad
values given to pydantic, to cattrs and to lmcollapse's own conversion, and what each says.

    pip install pydantic cattrs   # neither is a dependency of lmcollapse
    python scripts/settings_libraries.py

Prints one line per (library, bad value): the message, or ``accepted`` and what was kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError

BAD = [{"lrr": 0.1}, {"lr": -1}, {"epochs": "two"}, {"scheduler": "cosin"}, {"epochs": 1.5},
       {"epochs": True}, {"lr": "1e-3"}]


def _pydantic(bad: dict) -> str:
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    class Train(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lr: float = Field(5e-3, gt=0, le=1)
        epochs: int = Field(1, ge=1)
        scheduler: Literal["linear", "cosine", "constant"] = "linear"

    try:
        return f"accepted: {Train.model_validate(bad)}"
    except ValidationError as err:
        return " | ".join(line.strip() for line in str(err).splitlines())


def _cattrs(bad: dict) -> str:
    import cattrs

    @dataclass
    class Train:
        lr: float = 5e-3
        epochs: int = 1
        scheduler: Literal["linear", "cosine", "constant"] = "linear"

    try:
        return f"accepted: {cattrs.Converter(forbid_extra_keys=True).structure(bad, Train)}"
    except Exception as err:  # noqa: BLE001  (cattrs raises an exception group)
        return "; ".join(cattrs.transform_error(err))


def _ours(bad: dict) -> str:
    key, value = next(iter(bad.items()))
    try:
        return f"accepted: {load_config(None, [f'train.{key}={value}'])}"
    except ConfigError as err:
        return str(err)


def main() -> None:
    for name, fn in (("pydantic", _pydantic), ("cattrs", _cattrs), ("lmcollapse", _ours)):
        try:
            print(f"== {name} {version(name)}")
        except PackageNotFoundError:
            print(f"== {name}: not installed (pip install {name})")
            continue
        for bad in BAD:
            print(f"  train {bad}: {fn(bad)[:230]}")


if __name__ == "__main__":
    main()
