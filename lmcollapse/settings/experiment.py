"""The settings of an experiment as a whole: its policies (each naming a registered policy
and holding that policy's own settings), curation and scorers, the grid's axes, and
:class:`ExperimentConfig`, the root every config file fills; :func:`plain` writes any of
them back as the plain data YAML and experiment.json hold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from lmcollapse.checks import positive
from lmcollapse.errors import ConfigError
from lmcollapse.registry import POLICIES, SCORERS, Registry
from lmcollapse.settings.sections import (
    DataConfig,
    GenerateConfig,
    MetricsConfig,
    ModelConfig,
    NamedPart,
    Sections,
    TrainConfig,
)

CONFIG_VERSION = 1

#: sections a grid axis may sweep (data, metrics and the run's shape stay one per experiment)
SWEEPABLE = ("generate.", "train.", "model.init", "policy.")
#: keys that would change what a corpus sample is, so the human row could not match it
NOT_SWEEPABLE = ("generate.new_tokens", "generate.prompt_tokens", "generate.keep_prompt")
#: keys of the run's one Accelerator (gradient accumulation, precision): a cell of a grid or
#: a population's participant cannot set them apart from the run
RUN_WIDE = ("train.mixed_precision", "train.grad_accum")


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
    name: str = ""
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
    #: the retention policies (each a cell, or one per grid point); none named: the
    #: registry's default policy (the one its module registers with ``default=True``)
    policies: list[PolicySpec] = field(
        default_factory=lambda: [PolicySpec(POLICIES.default())])
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
