"""Validation of a built config: each section's own ``check(where)`` (the core sections'
and every part's), then the rules that span sections (names, seeds, a policy's settings
against the run, prompts against blocks). Every refusal names the dotted field and what is
allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from lmcollapse.checks import positive, safe_name
from lmcollapse.errors import ConfigError
from lmcollapse.registry import POLICIES, unit_kind
from lmcollapse.settings.experiment import CONFIG_VERSION, ExperimentConfig, PolicySpec
from lmcollapse.settings.sections import Sections

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def uses_reserve(spec: PolicySpec, generations: int) -> bool:
    """Whether the policy draws from ``data.fresh_reserve`` (as its reserve_needed says)."""
    return POLICIES.get(spec.name).reserve_needed(spec.settings, 1000, max(generations, 1)) > 0


def _check_reserve(cfg: ExperimentConfig) -> None:
    """``human_source: reserve`` needs a reserve (its size is checked at set-up, once the
    text is tokenised); :func:`_check_reserve_used` checks the converse over every cell."""
    users = [i for i, p in enumerate(cfg.policies) if uses_reserve(p, cfg.generations)]
    if users and not cfg.data.fresh_reserve:
        spec = cfg.policies[users[0]]
        other = [v for v in typing.get_args(typing.get_type_hints(type(spec.settings)).get(
            "human_source")) if v != "reserve"]
        raise ConfigError(f"policies[{users[0]}].human_source: 'reserve' draws never-seen "
                          "human text from data.fresh_reserve, which is 0; set "
                          "data.fresh_reserve (a share of the training records, e.g. 0.3)"
                          + (f" or use human_source: {' or '.join(other)}" if other else ""))


def validate(cfg: ExperimentConfig) -> None:
    """Check ranges and cross-field rules that the types alone cannot express.

    Every section with a ``check(where)`` method checks itself (the core sections here, a
    part's settings next to its code); what spans sections is checked below."""
    if cfg.version != CONFIG_VERSION:
        raise ConfigError(f"version: this lmcollapse reads config version {CONFIG_VERSION}")
    safe_name(cfg.experiment, "experiment")
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir: must name a folder, got an empty string")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: must be a non-empty list of distinct integers, got {cfg.seeds}")
    if any(not 0 <= s < 2**32 for s in cfg.seeds):
        raise ConfigError(f"seeds: each in 0..{2**32 - 1} (a numpy/torch seed), got {cfg.seeds}")
    if not 0 <= cfg.generations <= 1000:
        raise ConfigError(f"generations: must be in 0..1000, got {cfg.generations}")
    if cfg.cpu_threads is not None and not 1 <= cfg.cpu_threads <= 4096:
        raise ConfigError(f"cpu_threads: must be null (the cores divided among the jobs) or "
                          f"a number of threads in 1..4096, got {cfg.cpu_threads}")
    if cfg.jobs != "auto" and not 1 <= cfg.jobs <= 1024:
        raise ConfigError(f"jobs: must be auto or a number of worker processes in 1..1024, "
                          f"got {cfg.jobs}")
    if cfg.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level: {cfg.log_level!r} is not allowed; allowed: "
                          f"{', '.join(LOG_LEVELS)} (any case)")
    cfg.log_level = cfg.log_level.upper()
    if not cfg.policies:
        raise ConfigError("policies: name at least one policy")
    keys = [p.key for p in cfg.policies]
    for i, key in enumerate(keys):
        safe_name(key, f"policies[{i}].label" if cfg.policies[i].label else f"policies[{i}].name")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"policies: labels must be unique, got {keys}; set `label` to tell apart")
    for i, spec in enumerate(cfg.policies):
        POLICIES.get(spec.name).check(spec.settings, f"policies[{i}]", cfg.generations)
        positive(spec.epochs, f"policies[{i}].epochs", allow_none=True)
        spec.curate.check(f"policies[{i}].curate")
        unit_kind(spec.name).check(spec, f"policies[{i}]")  # what its unit kind refuses
        _check_continuations(spec, f"policies[{i}]", cfg)
    for name in ("data", "model", "train", "generate", "metrics"):
        _check_tree(getattr(cfg, name), name)
    _check_reserve(cfg)
    g = cfg.generate
    if g.sample_tokens < 2:
        raise ConfigError(
            f"generate.new_tokens: a corpus sample holds generate.new_tokens ({g.new_tokens})"
            + (f" + generate.prompt_tokens ({g.prompt_tokens})" if g.keep_prompt else
               " tokens (the prompt is dropped: generate.keep_prompt is false)")
            + f" = {g.sample_tokens} token(s); the next generation trains on these samples, "
            "so each must hold at least 2 (a context and a next token); raise "
            "generate.new_tokens or set generate.keep_prompt: true")
    if cfg.generate.prompt_tokens > cfg.data.block_tokens:
        raise ConfigError(
            f"generate.prompt_tokens ({cfg.generate.prompt_tokens}) must be <= data.block_tokens "
            f"({cfg.data.block_tokens}): prompts are the first tokens of human training blocks")


def _check_continuations(spec: PolicySpec, where: str, cfg: ExperimentConfig) -> None:
    """``continuations: human`` stands the true continuation of each prompt in for what a
    model wrote: the human block must hold prompt and continuation, and there must be one
    continuation per prompt to stand in for (no curation; a unit kind without a lineage of
    corpora refuses it itself)."""
    if spec.continuations == "model":
        return
    g, block = cfg.generate, cfg.data.block_tokens
    if spec.curate.active:
        raise ConfigError(f"{where}.continuations: human stands the true continuation in for "
                          "each prompt, so curation has nothing to choose among; drop "
                          f"{where}.curate or set continuations: model")
    if g.prompt_tokens + g.new_tokens > block:
        raise ConfigError(
            f"{where}.continuations: human takes each prompt's continuation from the rest of "
            f"its human block, so generate.prompt_tokens + generate.new_tokens "
            f"({g.prompt_tokens} + {g.new_tokens}) must be <= data.block_tokens ({block})")


def _check_tree(section: Any, where: str) -> None:
    """``check(where)`` of a section, then of its part sections; every ``seed`` or
    ``seeds`` in them must be a valid numpy/torch seed."""
    check = getattr(section, "check", None)
    if check is not None:
        check(where)
    _check_seeds(section, where)
    if isinstance(section, Sections):
        for key, settings in sorted(section.checked().items()):
            if hasattr(settings, "check"):
                settings.check(f"{where}.{key}")
            _check_seeds(settings, f"{where}.{key}")


def _check_seeds(section: Any, where: str) -> None:
    if not dataclasses.is_dataclass(section):
        return
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name in ("seed", "seeds"):
            values = value if isinstance(value, list) else [value]
            if any(not isinstance(v, int) or not 0 <= v < 2**32 for v in values):
                raise ConfigError(f"{where}.{f.name}: each seed in 0..{2**32 - 1}, got {value}")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            _check_seeds(value, f"{where}.{f.name}")
