"""Typed experiment configuration: dataclasses, YAML loading, dotted overrides, validation.

A config is a YAML file whose keys mirror :class:`ExperimentConfig`. Command-line overrides
use dotted paths (``train.lr=1e-4``, ``policies=[replace,accumulate]``); values are parsed as
YAML and then coerced to the field's declared type, so ``5e-5`` is a float even though PyYAML
reads it as a string. Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the dotted field and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmcollapse.errors import ConfigError

CONFIG_VERSION = 1


# --- sections ----------------------------------------------------------------------------


@dataclass
class HFSourceConfig:
    """``datasets.load_dataset(path, name)``; the defaults are WikiText-2 raw."""

    path: str = "wikitext"
    name: str | None = "wikitext-2-raw-v1"
    revision: str | None = None
    text_field: str = "text"
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"


@dataclass
class TextSourceConfig:
    """Local files: ``.txt`` (one record per line), ``.jsonl`` or ``.parquet``."""

    train: str | None = None
    validation: str | None = None
    test: str | None = None
    text_field: str = "text"


@dataclass
class SyntheticSourceConfig:
    """A seeded Markov language with exactly known probabilities."""

    vocab_size: int = 500
    branching: int = 16
    zipf_exponent: float = 1.1
    mean_sentence_words: float = 12.0
    seed: int = 0
    sentences_per_doc: int = 4
    train_docs: int = 2000
    validation_docs: int = 200
    test_docs: int = 200


@dataclass
class DataConfig:
    source: Literal["hf", "text", "synthetic"] = "hf"
    hf: HFSourceConfig = field(default_factory=HFSourceConfig)
    text: TextSourceConfig = field(default_factory=TextSourceConfig)
    synthetic: SyntheticSourceConfig = field(default_factory=SyntheticSourceConfig)
    block_tokens: int = 64
    max_train_blocks: int | None = None
    max_validation_blocks: int | None = None


@dataclass
class ScratchModelConfig:
    """A small architecture built from scratch with a tokenizer trained on human train."""

    arch: Literal["llama", "gpt2", "opt"] = "llama"
    vocab_size: int = 1024
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 256


@dataclass
class ModelConfig:
    source: Literal["pretrained", "scratch"] = "pretrained"
    name_or_path: str = "facebook/opt-125m"
    gguf_file: str | None = None
    revision: str | None = None
    init: Literal["base", "previous", "scratch"] = "base"
    scratch: ScratchModelConfig = field(default_factory=ScratchModelConfig)


@dataclass
class LoraConfig:
    """LoRA (peft) instead of full fine-tuning; the adapter is merged into the saved model."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    #: None: peft's default modules for the architecture
    target_modules: list[str] | None = None


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = 1.0
    budget_steps: int | None = None
    budget_tokens: int | None = None
    select_best: bool = True
    #: optimizer steps between validation evaluations; None: once per pass over the mix
    #: (with a fixed budget: 4 evaluations, so growing mixes get as many candidates)
    eval_every: int | None = None
    eval_batch_size: int = 16
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class GenerateConfig:
    prompt_tokens: int = 64
    new_tokens: int = 64
    strategy: Literal["beam", "greedy", "sample"] = "beam"
    num_beams: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    batch_size: int = 32
    keep_prompt: bool = False


@dataclass
class PerplexityConfig:
    """Sliding windows over the human test text. ``max_length`` defaults to the trained
    length (a scratch model: ``data.block_tokens``; a pretrained one: its context, at most
    1024) and may not exceed it; ``stride`` defaults to half the window."""

    max_length: int | None = None
    stride: int | None = None
    max_tokens: int | None = None
    batch_size: int = 8


@dataclass
class ReferenceConfig:
    """Per-sample perplexity of corpus k under the generation-0 model.

    ``sample_size`` samples of the corpus and as many held-out human chunks are scored
    (None: the largest size both allow)."""

    sample_size: int | None = None
    batch_size: int = 64
    seed: int = 0


@dataclass
class DiversityConfig:
    """Equal-size samples for the human row and every corpus (None: the largest size both
    allow; ``self_bleu_sample`` None: ``sample_size``), averaged over ``draws`` draws."""

    sample_size: int | None = None
    self_bleu_sample: int | None = None
    draws: int = 3
    seed: int = 0


@dataclass
class TailConfig:
    """Every tail number is measured on ``sample_size`` samples (None: the largest size both
    the human test split and a corpus allow), the same for every row, averaged over
    ``draws`` draws."""

    head_mass: float = 0.9
    epsilon: float = 1e-6
    sample_size: int | None = None
    draws: int = 3
    seed: int = 0


@dataclass
class MauveConfig:
    """``featurizer``: ``gen0`` (the seed's generation-0 model), a hub id or a local dir."""

    featurizer: str = "gen0"
    #: human and corpus samples (None: the largest size both allow)
    num_samples: int | None = None
    num_buckets: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    batch_size: int = 32
    seed: int = 0


@dataclass
class GroundTruthConfig:
    batch_size: int = 32


@dataclass
class MetricsConfig:
    names: list[str] = field(default_factory=lambda: ["perplexity"])
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    tail: TailConfig = field(default_factory=TailConfig)
    mauve: MauveConfig = field(default_factory=MauveConfig)
    ground_truth: GroundTruthConfig = field(default_factory=GroundTruthConfig)


@dataclass
class PolicySpec:
    """One retention policy of the grid; ``label`` names its directory (default: ``name``).

    ``epochs``, when set, replaces ``train.epochs`` for generations >= 1 of this policy
    (Shumailov et al. train the 0%-kept and 10%-kept settings for 5 and 10 epochs).
    """

    name: str = "replace"
    fraction: float | None = None
    label: str | None = None
    epochs: int | None = None

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass
class ExperimentConfig:
    version: int = CONFIG_VERSION
    experiment: str = "experiment"
    output_dir: str = "runs"
    seeds: list[int] = field(default_factory=lambda: [0])
    generations: int = 5
    policies: list[PolicySpec] = field(default_factory=lambda: [PolicySpec("replace")])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log_level: str = "INFO"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- building dataclasses from plain data --------------------------------------------------


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotation ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads no/off/false and yes/on/true as booleans
            spellings = ("yes", "on", "true") if value else ("no", "off", "false")
            value = next((a for a in allowed if isinstance(a, str) and a in spellings), value)
        if value not in allowed:
            raise ConfigError(
                f"{where}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}"
            )
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if tp is PolicySpec and isinstance(value, str):
            value = {"name": value}
        return build(tp, value, where)
    return _coerce_scalar(value, tp, where)


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)
            except ValueError:
                raise bad from None
            if as_float.is_integer():
                return int(as_float)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    return value


def build(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys with the valid ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {path!r}{hint}; valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


# --- overrides, loading, validation ---------------------------------------------------------


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
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: cannot parse {raw!r} as YAML: {err}") from None
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
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    data = apply_overrides(data, overrides or [])
    cfg = build(ExperimentConfig, data)
    validate(cfg)
    return cfg


def _positive(value: Any, where: str, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        limit = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where}: must be {limit}, got {value!r}")


def _fraction(value: Any, where: str) -> None:
    if value is None or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: must be a number in [0, 1], got {value!r}")


def validate(cfg: ExperimentConfig) -> None:
    """Check ranges and cross-field rules that the types alone cannot express."""
    from lmcollapse.metrics import METRICS
    from lmcollapse.policies import POLICIES
    from lmcollapse.registry import unknown_name_message

    if cfg.version != CONFIG_VERSION:
        raise ConfigError(f"version: this lmcollapse reads config version {CONFIG_VERSION}")
    if not cfg.experiment or "/" in cfg.experiment:
        raise ConfigError("experiment: must be a non-empty name without '/'")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: must be a non-empty list of distinct integers, got {cfg.seeds}")
    _positive(cfg.generations, "generations", allow_zero=True)
    if not cfg.policies:
        raise ConfigError("policies: name at least one policy")
    keys = [p.key for p in cfg.policies]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"policies: labels must be unique, got {keys}; set `label` to tell apart")
    for i, spec in enumerate(cfg.policies):
        if spec.name not in POLICIES:
            raise ConfigError(f"policies[{i}].name: " + unknown_name_message(
                "policy", spec.name, POLICIES.names()))
        POLICIES.get(spec.name).check(spec, cfg, f"policies[{i}]")
        _positive(spec.epochs, f"policies[{i}].epochs", allow_none=True)
    for i, name in enumerate(cfg.metrics.names):
        if name not in METRICS:
            raise ConfigError(f"metrics.names[{i}]: " + unknown_name_message(
                "metric", name, METRICS.names()))
    _validate_sizes(cfg)


def _validate_sizes(cfg: ExperimentConfig) -> None:
    d, t, g, m = cfg.data, cfg.train, cfg.generate, cfg.model
    _positive(d.block_tokens, "data.block_tokens")
    _positive(d.max_train_blocks, "data.max_train_blocks", allow_none=True)
    _positive(d.max_validation_blocks, "data.max_validation_blocks", allow_none=True)
    if d.source == "text":
        for split in ("train", "test"):
            if not getattr(d.text, split):
                raise ConfigError(f"data.text.{split}: a file path is required when data.source "
                                  "is 'text'")
    for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
        _positive(getattr(t, name), f"train.{name}")
    _positive(t.lr, "train.lr")
    _positive(t.budget_steps, "train.budget_steps", allow_none=True)
    _positive(t.eval_every, "train.eval_every", allow_none=True)
    _positive(t.budget_tokens, "train.budget_tokens", allow_none=True)
    if t.budget_steps is not None and t.budget_tokens is not None:
        raise ConfigError("train.budget_steps and train.budget_tokens: set at most one")
    _fraction(t.warmup_ratio, "train.warmup_ratio")
    if t.lora.enabled:
        _positive(t.lora.r, "train.lora.r")
        _positive(t.lora.alpha, "train.lora.alpha")
        _fraction(t.lora.dropout, "train.lora.dropout")
    for name in ("prompt_tokens", "new_tokens", "batch_size", "num_beams"):
        _positive(getattr(g, name), f"generate.{name}")
    if g.prompt_tokens > d.block_tokens:
        raise ConfigError(
            f"generate.prompt_tokens ({g.prompt_tokens}) must be <= data.block_tokens "
            f"({d.block_tokens}): prompts are the first tokens of human training blocks")
    _positive(g.temperature, "generate.temperature")
    _positive(g.repetition_penalty, "generate.repetition_penalty")
    if not 0.0 < g.top_p <= 1.0:
        raise ConfigError(f"generate.top_p: must be in (0, 1], got {g.top_p}")
    _positive(g.top_k, "generate.top_k", allow_zero=True)
    if m.source == "scratch":
        s = m.scratch
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                     "intermediate_size", "max_position_embeddings"):
            _positive(getattr(s, name), f"model.scratch.{name}")
        if s.hidden_size % s.num_heads:
            raise ConfigError("model.scratch.hidden_size must be divisible by num_heads")
    mc = cfg.metrics
    for where, value in [("reference.batch_size", mc.reference.batch_size),
                         ("diversity.draws", mc.diversity.draws),
                         ("tail.draws", mc.tail.draws),
                         ("mauve.batch_size", mc.mauve.batch_size),
                         ("ground_truth.batch_size", mc.ground_truth.batch_size)]:
        _positive(value, f"metrics.{where}")
    for where, value in [("reference.sample_size", mc.reference.sample_size),
                         ("diversity.sample_size", mc.diversity.sample_size),
                         ("diversity.self_bleu_sample", mc.diversity.self_bleu_sample),
                         ("tail.sample_size", mc.tail.sample_size),
                         ("mauve.num_samples", mc.mauve.num_samples)]:
        if value is not None and value < 2:
            raise ConfigError(f"metrics.{where}: must be >= 2 (samples) or null, got {value!r}")
    if not 0.0 < mc.tail.head_mass < 1.0:
        raise ConfigError(f"metrics.tail.head_mass: must be in (0, 1), got {mc.tail.head_mass}")
    _positive(mc.tail.epsilon, "metrics.tail.epsilon")
    if mc.mauve.num_buckets != "auto" and not mc.mauve.num_buckets.isdigit():
        raise ConfigError(f"metrics.mauve.num_buckets: 'auto' or a positive integer, got "
                          f"{mc.mauve.num_buckets!r}")
    if not mc.mauve.seeds:
        raise ConfigError("metrics.mauve.seeds: give at least one k-means seed")
    p = cfg.metrics.perplexity
    _positive(p.max_length, "metrics.perplexity.max_length", allow_none=True)
    _positive(p.stride, "metrics.perplexity.stride", allow_none=True)
    _positive(p.max_tokens, "metrics.perplexity.max_tokens", allow_none=True)
    if p.max_length and p.stride and p.stride > p.max_length:
        raise ConfigError("metrics.perplexity.stride must be <= metrics.perplexity.max_length")


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
