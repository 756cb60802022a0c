"""``lmcollapse bench``: throughput of the three steps for a config, on this machine; prints
figures, asserts nothing.

    lmcollapse bench --config configs/quickstart.yaml
    lmcollapse bench --config configs/shumailov2023.yaml --steps 50 --prompts 512
    accelerate launch scripts/bench.py --config configs/shumailov2023.yaml

Uses the library's own training, generation and perplexity code on the config's data and
model (untrained weights are as fast as trained ones), so the figures predict a run's cost:
train time per generation ~ mix tokens x epochs / train tokens/s, generation time ~ N x
new_tokens / generated tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import torch

from lmcollapse.config import ExperimentConfig
from lmcollapse.data.base import load_human_text
from lmcollapse.data.blocks import prepare_human_data
from lmcollapse.generate import generate_corpus
from lmcollapse.metrics.perplexity import stream_perplexity
from lmcollapse.models import load_tokenizer, model_config, random_model, starting_model
from lmcollapse.preflight import make_accelerator, trained_length
from lmcollapse.train import train_generation


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lmcollapse bench`` (beside ``--config`` and overrides)."""
    p.add_argument("--steps", type=int, default=30, help="optimizer steps to time")
    p.add_argument("--prompts", type=int, default=256, help="prompts to continue")
    p.add_argument("--eval-tokens", type=int, default=20000, help="test tokens to score")


def bench(cfg: ExperimentConfig, steps: int = 30, prompts: int = 256,
          eval_tokens: int = 20000) -> int:
    """Time training, generation and held-out perplexity; print the figures."""
    acc = make_accelerator(cfg)
    texts = load_human_text(cfg.data)
    tok = load_tokenizer(cfg.model, texts["train"])
    human = prepare_human_data(tok, texts, cfg.data)
    config = model_config(cfg.model, tok)
    model = (random_model(config, 0) if cfg.model.source == "scratch"
             else starting_model(cfg.model, tok, "base", 0, None, None))
    rows: dict[str, tuple[float, str]] = {}

    # --- training
    tcfg = dataclasses.replace(cfg.train, budget_steps=steps, budget_tokens=None)
    need = steps * tcfg.batch_size * tcfg.grad_accum * acc.num_processes
    train_rows = (human.train * (need // len(human.train) + 1))[:need]
    start = time.perf_counter()
    model, _ = train_generation(acc, model, tok.pad_token_id, train_rows, human.validation[:8],
                                tcfg, seed=0, desc="bench train")
    elapsed = time.perf_counter() - start
    rows["train"] = (need * cfg.data.block_tokens / elapsed, "tokens/s (incl. one eval)")

    # --- generation
    chosen = human.train[:prompts]
    start = time.perf_counter()
    generate_corpus(acc, model, tok, chosen, cfg.generate, seed=0, generation=1,
                    desc="bench generate")
    elapsed = time.perf_counter() - start
    rows["generate"] = (len(chosen) * cfg.generate.new_tokens / elapsed,
                        f"new tokens/s ({cfg.generate.strategy}, batch {cfg.generate.batch_size})")

    # --- held-out perplexity
    stream = human.test_stream[:eval_tokens]
    pcfg = cfg.metrics.perplexity
    max_length, stride = pcfg.windows(trained_length(cfg, config), "metrics.perplexity")
    start = time.perf_counter()
    stream_perplexity(acc, model, stream, max_length, stride, tok.pad_token_id, pcfg.batch_size)
    rows["perplexity"] = (len(stream) / (time.perf_counter() - start),
                          f"test tokens/s (window {max_length}, stride {stride})")

    if acc.is_main_process:
        print(f"\n{cfg.experiment}: {sum(x.numel() for x in model.parameters()) / 1e6:.2f}M "
              f"params on {acc.device} x {acc.num_processes}, mixed precision "
              f"{acc.mixed_precision}")
        for name, (value, unit) in rows.items():
            print(f"  {name:<11} {value:>12,.0f} {unit}")
        if torch.cuda.is_available():
            print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        print(f"  peak host memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}"
              " GiB")
    return 0
