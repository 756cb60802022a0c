"""Shared fixtures: a tiny tokenizer and model built in-process, and a tiny experiment config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# every test runs offline: a hub lookup fails at once instead of retrying for half a minute
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmcollapse.config import load_config
from lmcollapse.data.markov import MarkovSource
from lmcollapse.models import scratch_config, train_tokenizer
from lmcollapse.settings import ScratchModelConfig

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

#: the quickstart shrunk to seconds: same code paths, smaller everything
TINY = [
    "seeds=[0]", "generations=2", "data.synthetic.train_docs=120",
    "data.synthetic.validation_docs=20",
    "data.synthetic.test_docs=20", "data.synthetic.vocab_size=60", "data.synthetic.branching=6",
    "model.scratch.vocab_size=258", "model.scratch.hidden_size=32",
    "model.scratch.intermediate_size=64", "train.budget_steps=null", "train.epochs=1",
    "train.batch_size=16",
    "generate.new_tokens=16", "generate.batch_size=64", "log_level=WARNING",
    "metrics.mauve.num_samples=null", "metrics.diversity.sample_size=null",
    "metrics.diversity.self_bleu_sample=50", "metrics.reference.sample_size=null",
    "metrics.tail.sample_size=null", "jobs=1",
]


def tiny_config(run_root: Path, *extra: str):
    return load_config(QUICKSTART, [*TINY, f"output_dir={run_root}", *extra])


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return MarkovSource(vocab_size=80, branching=6, seed=3).sample_documents(200, 4, seed=1)


@pytest.fixture(scope="session")
def tokenizer(texts):
    return train_tokenizer(texts, vocab_size=160)


@pytest.fixture()
def tiny_model(tokenizer):
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    cfg = ScratchModelConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                             max_position_embeddings=128)
    return AutoModelForCausalLM.from_config(scratch_config(cfg, tokenizer))


@pytest.fixture(scope="session")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def measure_context(cfg, accelerator, tokenizer, human, out_dir: Path, **row):
    """A metric context as the loop builds it, for a metric called outside the loop."""
    from lmcollapse.metrics.base import MeasureContext

    return MeasureContext(accelerator=accelerator, tokenizer=tokenizer, human=human,
                          trained_length=cfg.data.block_tokens,
                          sample_tokens=cfg.generate.sample_tokens,
                          sample_tokens_from="generate.new_tokens",
                          reference_model=lambda: row.get("model"), seed_dir=out_dir,
                          out_dir=out_dir, **row)


def metric(cfg, name: str):
    """The metric registered as ``name``, with its settings from ``cfg``."""
    from lmcollapse.registry import METRICS

    return METRICS.get(name)(cfg.metrics.of(name))


def text_source(tmp_path: Path) -> list[str]:
    """Overrides for a ``text`` source (files written into ``tmp_path``) holding the tiny
    synthetic language: a source that cannot write new text nor knows log p."""
    words = MarkovSource(vocab_size=60, branching=6, seed=0).sample_documents(150, 4, seed=0)
    (tmp_path / "train.txt").write_text("\n".join(words[:120]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(words[120:]) + "\n")
    return ["data.source=text", f"data.text.train={tmp_path / 'train.txt'}",
            f"data.text.test={tmp_path / 'test.txt'}"]


def executed_steps(run_dir: Path) -> list[tuple[str, str]]:
    """The steps a run took, as (folder relative to the run, kind), in the order they
    started (each marker records when its step started)."""
    import json

    marks = []
    for marker in run_dir.rglob("*.done"):
        started = json.loads(marker.read_text())["started"]
        marks.append((started, str(marker.parent.relative_to(run_dir)), marker.name[:-5]))
    return [(d, kind) for _, d, kind in sorted(marks)]


def planned_steps(cfg) -> list[tuple[str, str]]:
    """The steps lmcollapse.plan lists for every unit of ``cfg``, as (folder relative to
    the run, kind)."""
    from lmcollapse.grid import Grid
    from lmcollapse.layout import RunLayout
    from lmcollapse.plan import build_plan

    grid, layout = Grid.of(cfg), RunLayout(cfg.run_dir)
    return [(str(s.directory(layout).relative_to(cfg.run_dir)), s.kind)
            for s in build_plan(grid, grid.units())]
