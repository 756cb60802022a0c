"""The run directory: every path and step name the loop writes and the report reads.

::

    runs/<experiment>/
      experiment.json                     resolved config, versions, git sha, seeds
      prompts.parquet                     every prompt as text, with its human continuation
      .lock, .locks/                      who works on the directory, a seed's shared part,
                                          a cell (several jobs may run one directory)
      tokenizer/                          (scratch models) the tokenizer trained on human train
      base_model/                         (GGUF models) the checkpoint dequantized once
      seed_<s>/human/metrics.json         the human reference row
      seed_<s>/base/                      (scratch models) the seed's initial weights
      seed_<s>/gen_00/                    shared by every policy: mix, model, corpus, metrics
      seed_<s>/gen_00@<values>/           (grids over training keys) one per training setting
                                          (a name past MAX_NAME: its prefix and a digest)
      seed_<s>/<policy>/gen_00/           (curating cells) corpus 0 curated, its metrics
      seed_<s>/<policy>/gen_<k>/          mix.parquet, model/, corpus.parquet, metrics.json
                                          (LoRA: adapter/; keep_models may prune model/)
                                          (curating cells: candidates.parquet, curation.json)
      seed_<s>/<population>/gen_<k>/      (a population) pool.parquet, pool.json (k >= 1),
                                          metrics.json: the population's row
      seed_<s>/<population>.<participant>/gen_<k>/   a participant, as a policy's

A step (``train``, ``generate``, ``measure``) of a generation is finished when its
``<step>.done`` marker exists in the generation's directory.

A report writes into the first run directory (or ``--out``, :class:`ReportLayout`)::

      leaderboard.md|csv|tex|html         the leaderboard, tables, notes (html: one page)
      early_warning.csv                   per-document tests of each generation
      lineages.md, samples.md             the text itself (one per experiment when several)
      plots/<metric>.png|pdf, plots/sweep_<metric>_<axis>.png|pdf, plots/hist_<policy>...
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: the steps of one generation, in order (the human row has only ``measure``)
STEPS = ("train", "generate", "measure")
#: the steps of a population's generation k, in its own folder: the pool it crawls (k >= 1),
#: its row once every participant has written (lmcollapse.plan)
POPULATION_STEPS = ("pool", "measure")
#: every kind of step a run takes
STEP_KINDS = ("pool", *STEPS)
#: a step's marker is ``<step>`` + this, in the generation's directory
MARKER_SUFFIX = ".done"
#: the run's record: resolved config, versions, seeds, cells, one entry per invocation
EXPERIMENT_JSON = "experiment.json"
#: what transformers writes into a saved model's and a saved tokenizer's folder (a folder
#: holding it is complete: every save is a temp folder moved into place)
SAVED_CONFIG, SAVED_TOKENIZER = "config.json", "tokenizer.json"
#: files of one generation's directory
MIX, MODEL, CORPUS, METRICS, TRAIN_LOG = (
    "mix.parquet", "model", "corpus.parquet", "metrics.json", "train_log.jsonl")
#: (LoRA) the generation's adapter: the model is what it started from plus this adapter
ADAPTER = "adapter"
CANDIDATES, CURATION = "candidates.parquet", "curation.json"
#: (a population's directory ``seed_<s>/<population>/gen_<k>/``) the pool generation k
#: crawls, every block with its provenance, and its composition
POOL, POOL_SUMMARY = "pool.parquet", "pool.json"
#: (reference metric) each scored sample's perplexity under generation 0
REFERENCE_SCORES = "reference_scores.parquet"
#: (calibration metric) each held-out window's mean NLL, Brier score, confidence, accuracy,
#: entropy and top-k mass
CALIBRATION = "calibration.parquet"
#: the tag generation 0 carries in place of a policy (it is shared by every policy)
SHARED = "shared"
#: the row label of held-out human text
HUMAN = "human"


#: the longest name a folder or file takes from settings (a grid's cell key, a training
#: setting's ``gen_00@<values>``): file systems stop at 255 bytes, and a cell's lock file adds
#: ``seed_<s>.`` and ``.lock`` to its key
MAX_NAME = 200


def bounded(name: str) -> str:
    """``name`` when it fits in :data:`MAX_NAME` bytes; else a readable prefix of it, ``-``
    and 16 hex digits of its SHA-256 (two names differ in the digest where their prefixes
    agree)."""
    if len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    prefix = name.encode()[:MAX_NAME - 17].decode(errors="ignore")
    return f"{prefix}-{digest}"


def _component(parent: Path, name: str) -> Path:
    """``parent / bounded(name)``, unless a run made before the bound holds ``name`` itself
    (a name of 201-243 bytes worked then): that folder keeps being used, so the run
    resumes."""
    short = bounded(name)
    if short != name and os.path.isdir(parent / name):  # (False for a name too long)
        return parent / name
    return parent / short


@dataclass(frozen=True)
class Generation:
    """Generation ``k`` of one cell.

    Generation 0 trains on human data only and is shared by every cell of its seed: its
    ``cell_key`` is None (and its ``tag`` ``"shared"``). A cell that curates what it feeds
    back, or decodes otherwise, also has a generation 0 of its own (``cell_key`` set,
    ``k == 0``): the shared model, the cell's own corpus 0.
    """

    seed: int
    k: int
    #: the key of its cell (a policy label, plus grid values in a grid); None: the shared
    #: generation 0
    cell_key: str | None = None
    #: its founder: the generation-0 model the cell descends from ("": the seed's shared
    #: one; else the training setting's, named by the values that change training)
    founder: str = ""

    def __post_init__(self) -> None:
        if self.k > 0 and self.cell_key is None:
            raise ValueError("every generation after 0 belongs to a cell")

    @property
    def tag(self) -> str:
        """The cell key, or ``shared`` for the shared generation 0 (in derived seeds)."""
        if self.cell_key is not None:
            return self.cell_key
        return f"{SHARED}@{self.founder}" if self.founder else SHARED

    @property
    def founder_generation(self) -> Generation:
        """The shared generation 0 whose model the cell starts from."""
        return Generation(self.seed, 0, None, self.founder)

    @property
    def previous(self) -> Generation:
        """The generation whose model generation k continues from: k-1 of the same cell,
        the shared generation 0 for k = 1."""
        if self.k > 1:
            return Generation(self.seed, self.k - 1, self.cell_key, self.founder)
        return self.founder_generation

    def __str__(self) -> str:
        policy = self.cell_key if self.cell_key is not None else (
            f"all at {self.founder} (shared)" if self.founder else "all (shared)")
        own = " (own corpus)" if self.k == 0 and self.cell_key is not None else ""
        return f"seed {self.seed}, policy {policy}, generation {self.k}{own}"


def gen_name(k: int) -> str:
    return f"gen_{k:02d}"


class RunLayout:
    """Paths of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def experiment_json(self) -> Path:
        return self.root / EXPERIMENT_JSON

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def lock(self) -> Path:
        """The claim lock: held while a job checks the directory and records its invocation
        (:class:`~lmcollapse.files.RunLock`)."""
        return self.root / ".lock"

    def seed_lock(self, seed: int) -> Path:
        """Held while a job builds (or checks) the seed's shared part: its initial weights,
        generation 0 of every training setting, the human row."""
        return self.root / ".locks" / f"seed_{seed}.lock"

    def cell_lock(self, seed: int, cell: str) -> Path:
        """Held for the whole job by the job that runs ``cell`` of ``seed``."""
        return self.root / ".locks" / f"seed_{seed}.{bounded(cell)}.lock"

    @property
    def base_lock(self) -> Path:
        """Held while a job writes :attr:`base_model` (shared by every seed)."""
        return self.root / ".locks" / "base_model.lock"

    @property
    def prompts(self) -> Path:
        """Every prompt as text, with the human continuation it cut off (for lineages)."""
        return self.root / "prompts.parquet"

    @property
    def base_model(self) -> Path:
        """A GGUF checkpoint dequantized once, shared by every seed."""
        return self.root / "base_model"

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed_{seed}"

    def scratch_base(self, seed: int, founder: str = "") -> Path:
        """A scratch model's initial weights for ``seed`` (``base@<founder>``: of a training
        setting that builds another size)."""
        return _component(self.seed_dir(seed), "base@" + founder) if founder else \
            self.seed_dir(seed) / "base"

    def human(self, seed: int) -> Path:
        return self.seed_dir(seed) / HUMAN

    def gen_dir(self, gen: Generation) -> Path:
        if gen.cell_key is None:
            return _component(self.seed_dir(gen.seed), gen_name(0) + (
                f"@{gen.founder}" if gen.founder else ""))
        return _component(self.seed_dir(gen.seed), gen.cell_key) / gen_name(gen.k)

    def model_dir(self, gen: Generation) -> Path:
        """Where generation ``gen``'s weights are (generation 0: the shared model)."""
        return self.gen_dir(gen if gen.k > 0 else gen.founder_generation) / MODEL

    def adapter_dir(self, gen: Generation) -> Path:
        """(LoRA) generation ``gen``'s adapter (generation 0: the shared model's)."""
        return self.gen_dir(gen if gen.k > 0 else gen.founder_generation) / ADAPTER

    def row_dir(self, seed: int, policy: str | None, generation: int | None) -> Path:
        """The directory of one row of the results: generation None is the human row,
        generation 0 the cell's own when it has one (a curating cell), else the shared one,
        and ``policy``'s generation after that."""
        if generation is None:
            return self.human(seed)
        own = self.gen_dir(Generation(seed, generation, policy))
        return own if generation or own.is_dir() else self.gen_dir(Generation(seed, 0))

    @staticmethod
    def marker(directory: Path, step: str) -> Path:
        return directory / f"{step}{MARKER_SUFFIX}"

    def metrics_files(self) -> list[Path]:
        """Every ``metrics.json`` of the run, in path order."""
        return sorted(self.root.glob(f"seed_*/**/{METRICS}"))


def features_file(featurizer: str, size: int, seed: int) -> str:
    """The file caching one row's text features (``featurizer`` as a file-name slug, the
    sample ``size`` and the draw's ``seed``), shared by every metric with those settings."""
    return f"features_{featurizer}_n{size}_s{seed}.npy"


class ReportLayout:
    """The files a report writes into its output directory."""

    #: the leaderboard's formats, one file each
    FORMATS = ("md", "csv", "tex", "html")
    EARLY_WARNING = "early_warning.csv"
    PROFILE = "collapse_profile.csv"

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)

    @property
    def profile(self) -> Path:
        """The collapse profile: every policy against the eight definitions."""
        return self.out / self.PROFILE

    def leaderboard(self, fmt: str) -> Path:
        return self.out / f"leaderboard.{fmt}"

    @property
    def early_warning(self) -> Path:
        return self.out / self.EARLY_WARNING

    def plot(self, stem: str) -> Path:
        """A figure's path without its suffix (written as ``.png`` and ``.pdf``)."""
        return self.out / "plots" / stem

    def lineages(self, experiment: str | None = None) -> Path:
        """``lineages.md``, or ``lineages_<experiment>.md`` when a report has several."""
        return self.out / (f"lineages_{experiment}.md" if experiment else "lineages.md")

    def samples(self, experiment: str | None = None) -> Path:
        """``samples.md``, or ``samples_<experiment>.md`` when a report has several."""
        return self.out / (f"samples_{experiment}.md" if experiment else "samples.md")
