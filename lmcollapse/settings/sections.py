"""The core settings sections of a config: ``data``, ``model``, ``train``, ``generate``,
``metrics``. Each is a dataclass whose fields are the YAML keys, with a ``check(where)``
that refuses a value out of range, naming its dotted field.

A registered part (policy, metric, data source) declares its own settings next to its code;
a :class:`Sections` holds them by the part's name, built through its registry, so this
module names no part.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from lmcollapse.checks import positive
from lmcollapse.errors import ConfigError
from lmcollapse.registry import (
    LOSSES,
    METRICS,
    SOURCES,
    Registry,
    settings_of,
    unknown_name_message,
)

#: the lowest sampling temperature: logits / temperature must stay finite (float16 ends at
#: 65504, and a logit gap of 0.1 at 0.01 already makes the top token e^10 times likelier)
MIN_TEMPERATURE = 0.01
#: a scratch tokenizer is byte-level BPE: its 256 bytes and 2 special tokens come first
MIN_SCRATCH_VOCAB = 258


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
    #: share of the training pool's records held back for ``fresh`` with ``human_source: reserve``
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


class NamedPart:
    """A config entry that names a registered part (``name``) and holds the part's own
    settings (every key of the entry that is not a field of the entry itself)."""

    registry: ClassVar[Registry[Any]]
    #: an entry must say which part it is (a policy); False: ``name`` has a default
    name_required: ClassVar[bool] = False
    name: str
    settings: Any

    def __post_init__(self) -> None:
        if not self.name and not self.name_required:  # the part its registry calls default
            self.name = self.registry.default()
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
class LossSpec(NamedPart):
    """``train.loss``: the training objective, a registered loss (:mod:`lmcollapse.losses`)
    and its settings; none named: the one its module declares the default (plain
    cross-entropy)."""

    registry: ClassVar[Registry[Any]] = LOSSES
    name: str = ""
    settings: Any = None

    def check(self, where: str) -> None:
        if hasattr(self.settings, "check"):
            self.settings.check(where)


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
    #: the training objective (plain cross-entropy unless a loss is named: truncated
    #: cross-entropy, :mod:`lmcollapse.losses`); generation 0 trains with it too, so a
    #: loss is a training setting with a founder of its own
    loss: LossSpec = field(default_factory=LossSpec)

    def check(self, where: str) -> None:
        self.loss.check(f"{where}.loss")
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
