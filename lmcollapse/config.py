"""Typed experiment configuration: dataclasses, YAML loading, dotted overrides, validation.

A config is a YAML file whose keys mirror :class:`ExperimentConfig`. Command-line overrides
use dotted paths (``train.lr=1e-4``, ``policies=[replace,accumulate]``); values are parsed as
YAML and then coerced to the field's declared type, so ``5e-5`` is a float even though PyYAML
reads it as a string. Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the dotted field and what is allowed, before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from lmcollapse.errors import ConfigError
from lmcollapse.registry import (
    METRICS,
    POLICIES,
    SCORERS,
    SOURCES,
    Registry,
    settings_of,
    unknown_name_message,
)

CONFIG_VERSION = 1

#: largest integer a config may hold (seeds, sizes): beyond it a value is a typo
MAX_INT = 2**53
#: a run directory, policy label, axis name or cell name: one safe path component
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@=+,-]{0,119}")
DERIVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@=+,-]*")
#: names the run directory uses itself (a cell may not take them)
RESERVED_NAMES = ("human", "base", "tokenizer", "all")
RESERVED_PATTERN = re.compile(r"(gen|seed)_\d+")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: the lowest sampling temperature: logits / temperature must stay finite (float16 ends at
#: 65504, and a logit gap of 0.1 at 0.01 already makes the top token e^10 times likelier)
MIN_TEMPERATURE = 0.01
#: a scratch tokenizer is byte-level BPE: its 256 bytes and 2 special tokens come first
MIN_SCRATCH_VOCAB = 258


class DuplicateKey(yaml.YAMLError):
    """A mapping that names one key twice (the last would silently win)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers: ``1:30`` is a string, not 90 (YAML 1.1
    reads colon-separated digits as base 60); a key given twice in one mapping is refused
    with both lines, not silently overwritten by the last."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKey(f"line {line}: the key {key!r} is given twice in one "
                                   f"mapping (first on line {seen[key]}); keep one")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0b[01_]+|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT_TAG, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                               |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                               |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, what: str) -> Any:
    """Parse YAML text with :class:`_Loader`; any failure (syntax, a tag that cannot be
    built such as ``!!float abc``, nesting too deep, a number too long) is a ConfigError
    naming ``what``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what}: not valid YAML ({type(err).__name__}: {first[:200]})"
                          ) from None


# --- core sections -------------------------------------------------------------------------
# The settings of the loop itself. A registered part (policy, metric, data source) declares
# its own settings next to its code; the sections below hold them by name (see Sections).


def positive(value: Any, where: str, allow_none: bool = False, allow_zero: bool = False) -> None:
    """Refuse a missing, non-finite, negative (or zero) number, naming ``where``."""
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        limit = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where}: must be {limit}, got {value!r}")


def fraction(value: Any, where: str) -> None:
    """Refuse anything but a number in [0, 1], naming ``where``."""
    if value is None or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: must be a number in [0, 1], got {value!r}")


def safe_name(value: str, where: str, derived: bool = False) -> None:
    """A name that becomes a folder of the run directory: one path component of letters,
    digits and ``._@=+,-`` (starting with a letter or digit, so never ``..``), not one the
    run directory uses itself. A name typed by hand has at most 120 characters; one
    ``derived`` from settings (a grid's cell key) any length: its folder is a prefix and a
    digest past :data:`~lmcollapse.layout.MAX_NAME`."""
    if not (DERIVED_NAME if derived else SAFE_NAME).fullmatch(value or ""):
        size = "" if derived else "1-120 "
        raise ConfigError(f"{where}: {value!r} is not a safe folder name; use {size}letters, "
                          "digits and ._@=+,- starting with a letter or digit")
    if value in RESERVED_NAMES or RESERVED_PATTERN.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} is a name the run directory uses itself "
                          f"({', '.join(RESERVED_NAMES)}, gen_<k>, seed_<s>); choose another")


def sample_size(value: int | None, where: str) -> None:
    """A size-dependent metric's sample size: null (the largest both allow) or >= 2."""
    if value is not None and value < 2:
        raise ConfigError(f"{where}: must be >= 2 (samples) or null, got {value!r}")


class Sections:
    """Settings sections owned by registered parts, read as attributes (``cfg.metrics.tail``).

    A subclass names its registry in ``registry``; every registered part gets a section
    built from its ``settings`` dataclass (defaults where the config says nothing), keyed
    by the part's ``section`` (default: its name). The config layer never names a part.
    """

    registry: ClassVar[Registry[Any]]
    sections: dict[str, Any]

    @classmethod
    def owners(cls) -> dict[str, Any]:
        """``{section key: part class}`` of every registered part."""
        return {getattr(part, "section", "") or name: part for name, part in cls.registry.items()}

    def checked(self) -> dict[str, Any]:
        """The sections whose ``check`` runs at validation (all of them by default)."""
        return self.sections

    def fill_defaults(self) -> None:
        for key, part in self.owners().items():
            self.sections.setdefault(key, settings_of(part)())

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no section {name!r}")


@dataclass
class DataConfig(Sections):
    """Human data: ``source`` names a registered data source, whose settings live in the
    section of the same name (``data.synthetic``, ``data.text``, ``data.hf``)."""

    registry: ClassVar[Registry[Any]] = SOURCES
    source: str = "hf"
    block_tokens: int = 64
    max_train_blocks: int | None = None
    max_validation_blocks: int | None = None
    #: share of the training pool's records held back for ``fresh`` with ``pool: reserve``
    #: (the last records, after the validation hold-out): text that generation 0, every
    #: policy's mix, the scratch tokenizer and the words metric's train counts never see
    fresh_reserve: float = 0.0
    sections: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.fill_defaults()

    def check(self, where: str) -> None:
        if self.source not in self.registry:
            raise ConfigError(f"{where}.source: " + unknown_name_message(
                "data source", self.source, self.registry.names()))
        positive(self.block_tokens, f"{where}.block_tokens")
        if self.block_tokens < 2:
            raise ConfigError(f"{where}.block_tokens: must be >= 2 (a block is a context and a "
                              f"next token), got {self.block_tokens}")
        positive(self.max_train_blocks, f"{where}.max_train_blocks", allow_none=True)
        positive(self.max_validation_blocks, f"{where}.max_validation_blocks", allow_none=True)
        if not (isinstance(self.fresh_reserve, int | float)
                and 0.0 <= self.fresh_reserve < 1.0):
            raise ConfigError(f"{where}.fresh_reserve: a share of the training records in "
                              f"[0, 1) (0: no reserve), got {self.fresh_reserve!r}")

    def checked(self) -> dict[str, Any]:
        """Only the selected source's section: the others are not used."""
        return {self.source: self.sections[self.source]} if self.source in self.sections else {}

    @property
    def selected(self) -> Any:
        """The settings of the selected source."""
        return self.sections[self.source]


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

    def check(self, where: str) -> None:
        for name, most in (("vocab_size", 1_000_000), ("hidden_size", 65_536),
                           ("num_layers", 1024), ("num_heads", 1024),
                           ("intermediate_size", 262_144),
                           ("max_position_embeddings", 1_048_576)):
            positive(getattr(self, name), f"{where}.{name}")
            if getattr(self, name) > most:  # a typo, not a model this harness builds
                raise ConfigError(f"{where}.{name}: at most {most}, got {getattr(self, name)}")
        if self.vocab_size < MIN_SCRATCH_VOCAB:
            raise ConfigError(f"{where}.vocab_size: a byte-level tokenizer needs at least "
                              f"{MIN_SCRATCH_VOCAB} (256 bytes + 2 special tokens), got "
                              f"{self.vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{where}.hidden_size ({self.hidden_size}) must be divisible by "
                              f"{where}.num_heads ({self.num_heads}): each head gets "
                              "hidden_size / num_heads dimensions")
        head = self.hidden_size // self.num_heads
        if self.arch == "llama" and head % 2:
            # rotary position embeddings turn pairs of dimensions: transformers' LlamaConfig
            # accepts an odd head size, and the model then fails in its first forward pass
            raise ConfigError(f"{where}: a llama head has hidden_size / num_heads = "
                              f"{self.hidden_size} / {self.num_heads} = {head} dimensions; its "
                              "rotary position embedding needs an even number; change "
                              f"{where}.hidden_size or {where}.num_heads")


@dataclass
class ModelConfig:
    source: Literal["pretrained", "scratch"] = "pretrained"
    name_or_path: str = "facebook/opt-125m"
    gguf_file: str | None = None
    revision: str | None = None
    init: Literal["base", "previous", "scratch"] = "base"
    scratch: ScratchModelConfig = field(default_factory=ScratchModelConfig)

    def check(self, where: str) -> None:
        if self.source == "scratch":
            self.scratch.check(f"{where}.scratch")


@dataclass
class LoraConfig:
    """LoRA (peft) instead of full fine-tuning; the adapter is merged into the saved model."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    #: None: peft's default modules for the architecture
    target_modules: list[str] | None = None

    def check(self, where: str) -> None:  # checked when off too: turning it on must work
        positive(self.r, f"{where}.r")
        positive(self.alpha, f"{where}.alpha")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout: must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not all(self.target_modules):
            raise ConfigError(f"{where}.target_modules: module names, or null for peft's "
                              f"default; got {self.target_modules}")


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
    #: train on rows of data.block_tokens tokens: the mix's shorter rows (continuations)
    #: concatenated with an end-of-text separator and cut, as run_clm's group_texts does
    #: (lmcollapse.data.blocks.pack_rows); full-length rows (human blocks) stay as they
    #: are, so generation 0 is the same packed or not
    pack: bool = False

    def check(self, where: str) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            positive(getattr(self, name), f"{where}.{name}")
        if not 0 < self.lr <= 1:
            raise ConfigError(f"{where}.lr: must be in (0, 1], got {self.lr}")
        positive(self.max_grad_norm, f"{where}.max_grad_norm")
        if not 0 <= self.weight_decay <= 1:
            raise ConfigError(f"{where}.weight_decay: must be in [0, 1], got "
                              f"{self.weight_decay}")
        for name in ("budget_steps", "eval_every", "budget_tokens"):
            positive(getattr(self, name), f"{where}.{name}", allow_none=True)
        if self.budget_steps is not None and self.budget_tokens is not None:
            raise ConfigError(f"{where}.budget_steps and {where}.budget_tokens: set at most one")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{where}.warmup_ratio: must be in [0, 1), got "
                              f"{self.warmup_ratio}")
        self.lora.check(f"{where}.lora")


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

    def check(self, where: str) -> None:
        for name in ("prompt_tokens", "new_tokens", "batch_size", "num_beams"):
            positive(getattr(self, name), f"{where}.{name}")
        if self.num_beams > 100:
            raise ConfigError(f"{where}.num_beams: at most 100, got {self.num_beams}")
        if not self.temperature >= MIN_TEMPERATURE:
            raise ConfigError(
                f"{where}.temperature: must be >= {MIN_TEMPERATURE}, got {self.temperature!r} "
                "(logits are divided by it: a smaller one can overflow them to inf, and "
                f"sampling below {MIN_TEMPERATURE} is greedy decoding in effect; for that use "
                f"{where}.strategy: greedy)")
        positive(self.repetition_penalty, f"{where}.repetition_penalty")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"{where}.top_p: must be in (0, 1], got {self.top_p}")
        positive(self.top_k, f"{where}.top_k", allow_zero=True)

    @property
    def sample_tokens(self) -> int:
        """Length of one corpus sample as written (new tokens, plus the prompt if kept)."""
        return self.new_tokens + (self.prompt_tokens if self.keep_prompt else 0)


@dataclass
class MetricsConfig(Sections):
    """``names``: the metrics to measure, in order; each metric's settings live in its own
    section (``metrics.perplexity``, ``metrics.tail``, ...)."""

    registry: ClassVar[Registry[Any]] = METRICS
    names: list[str] = field(default_factory=lambda: ["perplexity"])
    #: the forward passes of the measure step: fp32, or bf16 autocast (faster on a GPU;
    #: docs/scaling-out.md, "bf16", gives its effect on the metrics)
    precision: Literal["fp32", "bf16"] = "fp32"
    sections: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.fill_defaults()

    def check(self, where: str) -> None:
        if not self.names:
            raise ConfigError(f"{where}.names: name at least one metric; allowed: "
                              f"{', '.join(self.registry.names())}")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"{where}.names: each metric once, got {self.names}")
        for i, name in enumerate(self.names):
            if name not in self.registry:
                raise ConfigError(f"{where}.names[{i}]: " + unknown_name_message(
                    "metric", name, self.registry.names()))

    def of(self, metric: str) -> Any:
        """The settings of the metric registered as ``metric``."""
        part = self.registry.get(metric)
        return self.sections[getattr(part, "section", "") or metric]


class NamedPart:
    """A config entry that names a registered part (``name``) and holds the part's own
    settings (every key of the entry that is not a field of the entry itself)."""

    registry: ClassVar[Registry[Any]]
    #: an entry must say which part it is (a policy); False: ``name`` has a default
    name_required: ClassVar[bool] = False
    name: str
    settings: Any

    def __post_init__(self) -> None:
        if self.settings is None and self.name in self.registry:
            self.settings = settings_of(self.registry.get(self.name))()

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings")
        if settings is not None and hasattr(settings, name):
            return getattr(settings, name)
        raise AttributeError(f"{self.__dict__.get('name')!r} has no setting {name!r}")

    @classmethod
    def own_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "settings"]


@dataclass
class ScorerSpec(NamedPart):
    """``curate.scorer``: a registered scorer (``loglik``, ``oracle``) and its settings."""

    registry: ClassVar[Registry[Any]] = SCORERS
    name: str = "loglik"
    settings: Any = None


@dataclass
class CurationConfig:
    """``curate`` of a policy entry: which generated samples are fed back (see
    :mod:`lmcollapse.curation`). ``rule: none`` and ``best_of: 1`` feed back everything."""

    rule: Literal["none", "threshold", "best", "worst", "tails"] = "none"
    #: best/worst/tails: the share of candidates kept (round(1/fraction) per prompt)
    fraction: float = 0.5
    #: threshold: the least score kept, and how many continuations each prompt gets
    threshold: float | None = None
    candidates: int = 2
    #: n continuations per prompt, the best by the scorer kept (1: off)
    best_of: int = 1
    scorer: ScorerSpec = field(default_factory=ScorerSpec)

    @property
    def active(self) -> bool:
        return self.rule != "none" or self.best_of > 1

    def check(self, where: str) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"{where}.fraction: must be in (0, 1], got {self.fraction}")
        positive(self.candidates, f"{where}.candidates")
        positive(self.best_of, f"{where}.best_of")
        if self.rule == "threshold" and self.threshold is None:
            raise ConfigError(f"{where}.threshold: the threshold rule needs a number")
        if self.best_of > 1 and self.rule != "none":
            raise ConfigError(f"{where}: best_of ({self.best_of}) keeps one sample per prompt; "
                              f"it cannot be combined with rule {self.rule!r} (set rule: none)")
        if hasattr(self.scorer.settings, "check"):
            self.scorer.settings.check(f"{where}.scorer")


@dataclass
class PolicySpec(NamedPart):
    """One retention policy of the grid; ``label`` names its directory (default: ``name``).

    ``epochs``, when set, replaces ``train.epochs`` for generations >= 1 of this policy
    (Shumailov et al. train the 0%-kept and 10%-kept settings for 5 and 10 epochs);
    ``curate`` filters what each generation of this cell feeds back. Any other key of the
    entry (``fraction``) belongs to the policy's own settings.
    """

    registry: ClassVar[Registry[Any]] = POLICIES
    name_required: ClassVar[bool] = True
    name: str = "replace"
    label: str | None = None
    epochs: int | None = None
    curate: CurationConfig = field(default_factory=CurationConfig)
    #: what the policy reads as corpus j: ``model`` (what generation j wrote) or ``human``
    #: (for each of its prompts the true human continuation, in the same format: the
    #: human-continuation control of the format and the amount of text, docs/policies.md)
    continuations: Literal["model", "human"] = "model"
    settings: Any = None

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass
class GridAxis:
    """``grid[i]``: one swept config key and its values, crossed with the policies and
    the other axes. ``key`` is a dotted key of ``generate``, ``train`` or ``model``
    (``generate.temperature``, ``train.lr``, ``model.init``) or ``policy.<key>`` for a key
    of every policy entry (``policy.fraction``, ``policy.curate.rule``); ``name`` labels it
    in cell names (default: the key's last part)."""

    key: str = ""
    values: list[Any] = field(default_factory=list)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.key.rsplit(".", 1)[-1]


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
    grid: list[GridAxis] = field(default_factory=list)
    log_level: str = "INFO"
    #: training curves through accelerate's trackers, in ``<run dir>/logs/``: auto
    #: (TensorBoard when it is installed), none, tensorboard, wandb
    log_with: Literal["auto", "none", "tensorboard", "wandb"] = "auto"
    #: which generations' weights stay on disk: all; last (each cell's latest); none (only
    #: what a later step needs). Generation 0 of a seed is always kept: every cell starts
    #: from it and it scores every later corpus. LoRA adapters are always kept.
    keep_models: Literal["all", "last", "none"] = "all"
    #: worker processes that run the (seed, cell) units side by side on this machine
    #: (``--jobs`` overrides it): an integer, or auto (one per GPU, else one per CPU core);
    #: the CPU threads, or the GPUs, are divided between them (lmcollapse.parallel)
    jobs: int | Literal["auto"] = 1
    #: CPU threads of each cell (torch and BLAS); null: the cores divided among the jobs.
    #: On a CPU some kernels round differently with the thread count (LayerNorm's
    #: backward; not the Llama models of the shipped configs): fix it here and the
    #: numbers no longer depend on ``jobs``
    cpu_threads: int | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def plain(obj: Any) -> Any:
    """A config object as the plain data YAML and experiment.json hold: sections and a
    part's own settings flattened into their parent, as they are written."""
    if isinstance(obj, NamedPart):
        return {**{k: plain(getattr(obj, k)) for k in obj.own_keys()}, **plain(obj.settings)}
    if dataclasses.is_dataclass(obj):
        out = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
               if f.name != "sections"}
        if isinstance(obj, Sections):
            out.update({k: plain(v) for k, v in sorted(obj.sections.items())})
        return out
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


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
        if len(errors) == 1:
            raise ConfigError(errors[0])
        words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}
        kinds = " or ".join(words.get(_type_name(a), _type_name(a)) for a in args
                            if a is not type(None))
        raise ConfigError(f"{where}: invalid value {value!r}; allowed: {kinds}"
                          + (" or null" if type(None) in args else ""))
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
        if isinstance(tp, type) and issubclass(tp, NamedPart) and isinstance(value, str):
            value = {"name": value}
        if value is None:
            raise ConfigError(f"{where}: expected a mapping of settings, got null (leave the "
                              "key out for the defaults)")
        return build(tp, value, where)
    if tp is Any:
        return value
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
        if isinstance(value, int | float) and not (math.isfinite(value)
                                                   and abs(value) <= MAX_INT):
            raise ConfigError(f"{where}: expected an integer of at most {MAX_INT} in size, "
                              f"got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)
            except ValueError:
                raise bad from None
            if as_float.is_integer() and abs(as_float) <= MAX_INT:
                return int(as_float)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}: YAML reads yes, no, "
                              "on, off, true and false unquoted as booleans; quote it "
                              f"(\"{'yes' if value else 'no'}\")")
        raise bad
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types, resolved once (a population builds its config per
    participant: typing.get_type_hints each time took most of a large one's load)."""
    return typing.get_type_hints(cls)


def build(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys with the valid ones.

    A :class:`Sections` class also takes one key per registered part (its settings); a
    :class:`PolicySpec` passes every key but ``name``, ``label`` and ``epochs`` to the
    named policy's settings."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    if issubclass(cls, NamedPart):
        return _build_named(cls, data, where)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "sections"]
    owners = cls.owners() if issubclass(cls, Sections) else {}
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key in owners:
            if value is None:
                raise ConfigError(f"{path}: expected a mapping of settings, got null (leave "
                                  "the key out for the defaults)")
            sections[key] = build(settings_of(owners[key]), value, path)
            continue
        if key not in names:
            valid = names + sorted(owners)
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {path!r}{hint}; valid keys: {', '.join(valid)}")
        kwargs[key] = _coerce(value, hints[key], path)
    if owners:
        kwargs["sections"] = sections
    return cls(**kwargs)


def _build_named(cls: type[NamedPart], data: dict[str, Any], where: str) -> NamedPart:
    keys = cls.own_keys()
    if cls.name_required and "name" not in data:
        raise ConfigError(f"{where}.name: missing; name one of: "
                          f"{', '.join(cls.registry.names())}")
    own = {k: v for k, v in data.items() if k not in keys}
    name = _coerce(data.get("name", cls.name), str, f"{where}.name")
    kind = cls.registry.kind
    if name not in cls.registry:
        raise ConfigError(f"{where}.name: " + unknown_name_message(kind, name,
                                                                   cls.registry.names()))
    settings_cls = settings_of(cls.registry.get(name))
    allowed = [f.name for f in dataclasses.fields(settings_cls)]
    for key in own:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed + keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}.{key}: {kind} {name!r} takes no setting {key!r}{hint}; its own "
                f"settings: {', '.join(allowed) or 'none'}; every {kind} takes "
                f"{', '.join(keys)}")
    hints = _hints(cls)
    common = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()
              if k in keys and k != "name"}
    return cls(name=name, settings=build(settings_cls, own, where), **common)


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


def _check_reserve(cfg: ExperimentConfig) -> None:
    """``pool: reserve`` needs a reserve (its size is checked at set-up, once the text is
    tokenised); :func:`_check_reserve_used` checks the converse over every cell."""
    users = [i for i, p in enumerate(cfg.policies) if _uses_reserve(p, cfg.generations)]
    if users and not cfg.data.fresh_reserve:
        spec = cfg.policies[users[0]]
        field_name = "pool" if hasattr(spec.settings, "pool") else "human_source"
        raise ConfigError(f"policies[{users[0]}].{field_name}: 'reserve' draws never-seen "
                          "human text from data.fresh_reserve, which is 0; set "
                          "data.fresh_reserve (a share of the training records, e.g. 0.3) or "
                          + ("use pool: shards" if field_name == "pool" else
                             "use human_source: source (a source that writes new text)"))


def _uses_reserve(spec: PolicySpec, generations: int) -> bool:
    """Whether the policy draws from ``data.fresh_reserve`` (as its reserve_needed says)."""
    return POLICIES.get(spec.name).reserve_needed(spec.settings, 1000, max(generations, 1)) > 0


def _check_reserve_used(cfg: ExperimentConfig, grid: list[Cell]) -> None:
    """A reserve no cell draws from would only shrink every cell's human data."""
    if cfg.data.fresh_reserve and not any(_uses_reserve(c.policy, cfg.generations)
                                          for c in grid):
        raise ConfigError(f"data.fresh_reserve: {cfg.data.fresh_reserve} holds back training "
                          "records that no policy would use (fresh with pool: reserve and "
                          "internet with human_source: reserve draw from it); remove it or "
                          "give a fresh policy pool: reserve")


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
    continuation per prompt to stand in for (no curation, no population's pool)."""
    if spec.continuations == "model":
        return
    g, block = cfg.generate, cfg.data.block_tokens
    if hasattr(spec.settings, "participants"):
        raise ConfigError(f"{where}.continuations: a population's participants crawl its "
                          "shared pool, not a lineage of corpora; allowed here: model")
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


# --- grids: the cells of an experiment ------------------------------------------------------

#: sections a grid axis may sweep (data, metrics and the run's shape stay one per experiment)
SWEEPABLE = ("generate.", "train.", "model.init", "policy.")
#: keys that would change what a corpus sample is, so the human row could not match it
NOT_SWEEPABLE = ("generate.new_tokens", "generate.prompt_tokens", "generate.keep_prompt")
#: keys of the run's one Accelerator (gradient accumulation, precision): a cell of a grid or
#: a population's participant cannot set them apart from the run
RUN_WIDE = ("train.mixed_precision", "train.grad_accum")


@dataclass
class Cell:
    """One cell of the grid: a policy at one grid point, with its resolved config.

    ``key`` names its directory and its report row: the policy's label, followed by the
    grid values (``replace@temperature=0.7``) when the experiment has a grid."""

    key: str
    policy: PolicySpec
    cfg: ExperimentConfig
    axes: dict[str, Any]
    #: which generation-0 model the cell starts from: "" for the seed's shared one, else
    #: the values of the axes that change how generation 0 is trained
    zero_group: str = ""
    #: a population (a policy with ``participants``): one cell per participant, each with
    #: its own resolved config, keyed ``<population>.<participant>`` (the population's
    #: key is this cell's)
    members: list[Cell] = field(default_factory=list)
    #: a member: its population's key (else "")
    population: str = ""
    #: a member: its participant's ``seed_offset`` (!= 0: initial weights and a
    #: generation-0 model of its own, drawn as if from another seed)
    seed_offset: int = 0


def zero_signature(cfg: ExperimentConfig) -> str:
    """What decides generation 0's model: the training settings and whether the model
    starts from random weights (``model.init: scratch``); decoding does not (it decides
    corpus 0, not model 0)."""
    train = {k: v for k, v in plain(cfg.train).items() if k != "pack"}  # (generation 0
    # trains on full-length human blocks, which packing leaves as they are)
    return json.dumps([train, cfg.model.init == "scratch", plain(cfg.model.scratch)],
                      sort_keys=True)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "", text.replace(":", "-")) or "x"


def cells(cfg: ExperimentConfig) -> list[Cell]:
    """Every (policy, grid point) of the experiment, each with its own validated config.

    Without a grid there is one cell per policy, keyed by the policy's label. Errors name
    the grid axis and value (``grid[0].values[2]``)."""
    base = cfg.to_dict()
    points: list[list[tuple[int, int, Any]]] = [[]]
    for i, axis in enumerate(cfg.grid):
        _check_axis(axis, i)
        points = [p + [(i, j, v)] for p in points for j, v in enumerate(axis.values)]
    out = []
    for point in points:
        data = copy.deepcopy(base)
        data["grid"] = []
        for i, _, value in point:
            key = cfg.grid[i].key
            if key.startswith("policy."):
                for entry in data["policies"]:
                    _set(entry, key.split(".")[1:], value)
            else:
                _set(data, key.split("."), value)
        where = ", ".join(f"grid[{i}].values[{j}] ({cfg.grid[i].key}={v!r})"
                          for i, j, v in point)
        try:
            resolved = build(ExperimentConfig, data)
            validate(resolved)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        axes = {cfg.grid[i].key: v for i, _, v in point}
        suffix = ",".join(f"{cfg.grid[i].label}={_short(v)}" for i, _, v in point)
        group = "" if zero_signature(resolved) == zero_signature(cfg) else ",".join(
            f"{cfg.grid[i].label}={_short(v)}" for i, _, v in point
            if cfg.grid[i].key.startswith(("train.", "model.")))
        for i, spec in enumerate(resolved.policies):
            key = f"{spec.key}@{suffix}" if suffix else spec.key
            cell = Cell(key, spec, resolved, axes, group)
            if hasattr(spec.settings, "participants"):
                cell.members = [_member(cell, data, i, j, suffix, where)
                                for j in range(len(spec.participants))]
            out.append(cell)
    keys = [c.key for c in out] + [m.key for c in out for m in c.members]
    for cell in out:
        safe_name(cell.key, f"grid: the cell name {cell.key!r} (policy label @ axis name=value)",
                  derived=True)
    if len(set(keys)) != len(keys):
        raise ConfigError(f"grid: two cells would share a name ({keys}); give the axes "
                          "distinct values or `name`s")
    return out


def _member(population: Cell, data: dict[str, Any], i: int, j: int, suffix: str,
            where: str) -> Cell:
    """Participant ``j`` of the population ``population`` (policy entry ``i`` at one grid
    point, whose plain data is ``data``): the shared config with the participant's own
    settings, and the generation-0 model it starts from."""
    spec = population.policy
    p = spec.participants[j]
    at = f"policies[{i}].participants[{j}]"
    member = copy.deepcopy(data)
    sized = sorted(k for k in p.overrides() if k.startswith("model.scratch."))
    if sized and population.cfg.model.source != "scratch":
        raise ConfigError(f"{at}.{sized[0]}: only a model built from scratch (model.source: "
                          f"scratch) takes a size of its own; this one is "
                          f"{population.cfg.model.source}")
    for key, value in p.overrides().items():
        _set(member, key.split("."), value, at)
    entry = {**plain(spec), "label": f"{spec.key}.{p.label}", "curate": {
        **plain(spec.curate), **p.curate}}
    member["policies"] = [entry]
    try:
        resolved = build(ExperimentConfig, member)
        validate(resolved)
    except ConfigError as err:
        raise ConfigError(f"{where + ': ' if where else ''}{at}: {err}") from None
    parts = [population.zero_group] if population.zero_group else []
    if zero_signature(resolved) != zero_signature(population.cfg):
        parts += [f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in sorted(
            p.overrides().items()) if k.startswith(("train.", "model."))]
    if p.seed_offset:
        parts.append(f"seed{p.seed_offset:+d}")
    key = f"{spec.key}.{p.label}" + (f"@{suffix}" if suffix else "")
    return Cell(key, resolved.policies[0], resolved, population.axes, ",".join(parts),
                population=population.key, seed_offset=p.seed_offset)


def _check_axis(axis: GridAxis, i: int) -> None:
    where = f"grid[{i}]"
    if axis.key in RUN_WIDE:
        raise ConfigError(f"{where}.key: {axis.key!r} cannot be swept: the run's one "
                          "Accelerator applies it to every cell; set it for the run (or run "
                          "an experiment per value)")
    if not axis.key.startswith(SWEEPABLE) or axis.key in NOT_SWEEPABLE:
        raise ConfigError(
            f"{where}.key: {axis.key!r} cannot be swept; allowed: keys of generate and "
            f"train, model.init, or policy.<key> (not {', '.join(NOT_SWEEPABLE)}: the human "
            "row's samples must stay as long as a corpus sample; data, the architecture and "
            "metrics are one per experiment)")
    if not axis.values or len({json.dumps(v, sort_keys=True) for v in axis.values}) != len(
            axis.values):
        raise ConfigError(f"{where}.values: give distinct values, got {axis.values!r}")


def _set(node: dict[str, Any], parts: list[str], value: Any, where: str = "grid") -> None:
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(parts)} is not a config key")
    node[parts[-1]] = copy.deepcopy(value)
