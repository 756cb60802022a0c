"""Loading an experiment's config: a YAML file, dotted overrides, then the typed settings
(:mod:`lmcollapse.settings`), validated, with every grid point built once
(:func:`lmcollapse.cells.cells`) so that a bad one is refused at load.

Command-line overrides use dotted paths (``train.lr=1e-4``, ``policies=[replace,accumulate]``);
values are parsed as YAML and then coerced to the field's declared type. Unknown keys, wrong
types and out-of-range values raise :class:`ConfigError` naming the dotted field and what is
allowed, before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmcollapse.cells import Cell, cells
from lmcollapse.errors import ConfigError
from lmcollapse.settings import ExperimentConfig, build, parse_yaml, uses_reserve, validate


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict; values are parsed as YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = parse_yaml(raw, f"override {item!r}") if raw.strip() else None
    return data


def load_config(path: str | Path | None = None,
                overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply overrides, coerce types and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})"
                              ) from None
        data = parse_yaml(text, str(path))
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return from_dict(apply_overrides(data, overrides or []))


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """A config from plain data (a YAML file's, or ``to_dict()``'s), coerced and validated."""
    cfg = build(ExperimentConfig, data)
    validate(cfg)
    _check_reserve_used(cfg, cells(cfg))  # every grid point must be a valid config too
    return cfg


def _check_reserve_used(cfg: ExperimentConfig, grid: list[Cell]) -> None:
    """A reserve no cell draws from would only shrink every cell's human data."""
    if cfg.data.fresh_reserve and not any(uses_reserve(c.policy, cfg.generations)
                                          for c in grid):
        raise ConfigError(f"data.fresh_reserve: {cfg.data.fresh_reserve} holds back training "
                          "records that no policy would use (a policy with human_source: "
                          "reserve draws from it); remove it or set human_source: reserve on a "
                          "policy that takes it")


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """List the dotted keys whose values differ between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else key
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, path)
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out
