"""Throughput of the three steps for a config, on this machine: prints figures, asserts nothing.

    python scripts/bench.py --config configs/quickstart.yaml
    python scripts/bench.py --config configs/shumailov2023.yaml --steps 50 --prompts 512
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
import sys
import time

import torch

from lmcollapse.config import load_config
from lmcollapse.data import load_human_text, prepare_human_data
from lmcollapse.generate import generate_corpus
from lmcollapse.loop import make_accelerator, trained_length
from lmcollapse.metrics.perplexity import stream_perplexity, window_settings
from lmcollapse.models import load_tokenizer, model_config, random_model, starting_model
from lmcollapse.train import train_generation


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps to time")
    p.add_argument("--prompts", type=int, default=256, help="prompts to continue")
    p.add_argument("--eval-tokens", type=int, default=20000, help="test tokens to score")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    acc = make_accelerator(cfg)
    texts = load_human_text(cfg.data)
    tok = load_tokenizer(cfg.model, texts["train"])
    human = prepare_human_data(tok, texts, cfg.data)
    config = model_config(cfg.model, tok)
    model = (random_model(config, 0) if cfg.model.source == "scratch"
             else starting_model(cfg.model, tok, "base", 0, None, None))
    rows: dict[str, tuple[float, str]] = {}

    # --- training
    tcfg = dataclasses.replace(cfg.train, budget_steps=args.steps, budget_tokens=None)
    need = args.steps * tcfg.batch_size * tcfg.grad_accum * acc.num_processes
    train_rows = (human.train * (need // len(human.train) + 1))[:need]
    start = time.perf_counter()
    model, _ = train_generation(acc, model, tok.pad_token_id, train_rows, human.validation[:8],
                                tcfg, seed=0, desc="bench train")
    elapsed = time.perf_counter() - start
    rows["train"] = (need * cfg.data.block_tokens / elapsed, "tokens/s (incl. one eval)")

    # --- generation
    prompts = human.train[: args.prompts]
    start = time.perf_counter()
    generate_corpus(acc, model, tok, prompts, cfg.generate, seed=0, generation=1,
                    desc="bench generate")
    elapsed = time.perf_counter() - start
    rows["generate"] = (len(prompts) * cfg.generate.new_tokens / elapsed,
                        f"new tokens/s ({cfg.generate.strategy}, batch {cfg.generate.batch_size})")

    # --- held-out perplexity
    stream = human.test_stream[: args.eval_tokens]
    max_length, stride = window_settings(cfg.metrics.perplexity, trained_length(cfg, config))
    start = time.perf_counter()
    stream_perplexity(acc, model, stream, max_length, stride, tok.pad_token_id,
                      cfg.metrics.perplexity.batch_size)
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


if __name__ == "__main__":
    sys.exit(main())
