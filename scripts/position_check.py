"""Is a generation's held-out perplexity hurt by positions it never trained on?

A model trained from scratch on corpora alone (``replace`` with ``model.init: base`` or
``scratch``) sees only corpus samples (``generate.new_tokens``, plus the prompt when
``keep_prompt``), shorter than the
``data.block_tokens`` windows the perplexity metric scores. This scores the run's held-out
test text in blocks of ``data.block_tokens`` under each named model and prints the
perplexity of the first ``--split`` positions and of the rest: equal halves mean the later
positions cost nothing extra.

    python scripts/position_check.py runs/wikitext-laptop --models seed_0/gen_00 \
        seed_0/replace/gen_04 [--split 32] [--max-tokens 40000]

For runs with a scratch tokenizer (saved in the run directory) and saved models.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmcollapse.data.base import make_source
from lmcollapse.data.blocks import tokenize_records
from lmcollapse.settings import ExperimentConfig, build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--models", nargs="+", required=True,
                   help="model folders under the run (seed_0/gen_00, seed_0/replace/gen_04)")
    p.add_argument("--split", type=int, default=None,
                   help="first position of the second part (default: the corpus sample "
                   "length, generate.new_tokens (+ prompt_tokens with keep_prompt))")
    p.add_argument("--max-tokens", type=int, default=40_000)
    args = p.parse_args(argv)
    cfg = build(ExperimentConfig, json.loads((args.run / "experiment.json").read_text())["config"])
    block = cfg.data.block_tokens
    split = args.split or cfg.generate.sample_tokens
    if not 1 < split < block:
        print(f"--split: between 2 and {block - 1} (data.block_tokens - 1), got {split}",
              file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(args.run / "tokenizer")
    stream = [t for r in tokenize_records(tokenizer, make_source(cfg.data).load()["test"])
              for t in r][: args.max_tokens]
    x = torch.tensor(stream[: len(stream) // block * block]).view(-1, block)
    print(f"{args.run}: {x.shape[0]} test blocks of {block} tokens; perplexity of positions "
          f"1-{split - 1} and {split}-{block - 1} (each block scored on its own)\n")
    print(f"| model | positions 1-{split - 1} | positions {split}-{block - 1} | ratio |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        model = AutoModelForCausalLM.from_pretrained(args.run / name / "model").eval()
        parts = []
        with torch.no_grad():
            for batch in x.split(64):
                logp = torch.log_softmax(model(input_ids=batch).logits[:, :-1].float(), -1)
                parts.append(-logp.gather(-1, batch[:, 1:, None])[..., 0])
        nll = torch.cat(parts)  # nll[:, j] scores position j + 1
        early, late = math.exp(nll[:, : split - 1].mean()), math.exp(nll[:, split - 1:].mean())
        print(f"| {name} | {early:.1f} | {late:.1f} | {late / early:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
