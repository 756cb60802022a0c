"""The GPU check: what only a GPU can tell, in one short run, with no network.

    bash scripts/gpu_check.sh [OUT_DIR]           # on a CUDA machine: OPT-125m's shape
    GPU_CHECK_SMALL=1 bash scripts/gpu_check.sh   # a tiny OPT on any device (the tests)

1. ``lmcollapse bench`` on OPT-125m's shape: an ``OPTForCausalLM`` with facebook/opt-125m's
   configuration (125M parameters, 50272 embedding rows, context 2048) and random weights,
   saved with a byte-level BPE tokenizer trained on the synthetic language (so nothing is
   downloaded), blocks of 128 tokens, prompts of 64 continued by 64: training tokens/s and
   MFU under bf16 autocast, sampling and 5-beam generation tokens/s, peak GPU memory, and
   the loop's own time split; its parallel section runs the same units as ``--jobs N``
   cells on the one GPU (N against 1 cell per GPU, and whether every metric is identical).
2. bf16 against float32: the same run (one seed, generations 0 and 1, two policies) with
   ``train.mixed_precision`` bf16 and no; every metric side by side. Stated tolerance:
   held-out perplexity within 5% at every generation (bf16's rounding is a small
   perturbation of training, not a different model).

Everything goes to ``OUT_DIR`` (default ``gpu_check/``): ``bench.json``, the two run
directories and ``summary.json``; the summary is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"
#: held-out perplexity of bf16 and float32 training may differ by this much (relative)
PPL_TOLERANCE = 0.05


def model_dir(out: Path, small: bool) -> Path:
    """An OPT of OPT-125m's shape (``small``: a tiny one) with random weights and an
    OPT-style tokenizer (BOS = EOS ``</s>`` before every text), saved under ``out``."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    from lmcollapse.config import load_config
    from lmcollapse.data.base import load_human_text
    from lmcollapse.models import EOS, PAD, train_tokenizer

    where = out / ("tiny-opt" if small else "opt-125m-shape")
    if (where / "config.json").exists():
        return where
    texts = load_human_text(load_config(CONFIG, data_overrides(small)).data)["train"]
    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(texts, 512).backend_tokenizer,
                                  eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                  add_bos_token=True)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    shape = (dict(vocab_size=len(tok) + 7, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                  max_position_embeddings=256) if small else {})  # OPTConfig(): OPT-125m
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(**shape, **ids)).save_pretrained(where)
    tok.save_pretrained(where)
    return where


def data_overrides(small: bool) -> list[str]:
    docs = 400 if small else 3000  # the full shape: ~2.4k blocks of 128 tokens
    return [f"data.synthetic.train_docs={docs}", "data.block_tokens=128"]


def overrides(model: Path, small: bool, out: Path) -> list[str]:
    """The quickstart's loop on the OPT: one seed, generation 0 and 1, two policies."""
    return [*data_overrides(small), "model.source=pretrained", f"model.name_or_path={model}",
            "seeds=[0]", "generations=1", "policies=[replace,accumulate]",
            "generate.prompt_tokens=64", "generate.new_tokens=64",
            "generate.batch_size=" + ("64" if small else "256"),
            "train.lr=" + ("5.0e-3" if small else "1.0e-4"),
            "train.batch_size=" + ("16" if small else "32"),
            "train.budget_steps=" + ("8" if small else "200"),
            "metrics.names=[perplexity,reference_perplexity,diversity,tail]",
            "metrics.perplexity.max_length=128", "metrics.perplexity.batch_size=64",
            "metrics.reference.sample_size=null", "metrics.diversity.sample_size=null",
            "metrics.tail.sample_size=null", "metrics.diversity.self_bleu_sample=100",
            "log_level=WARNING", f"output_dir={out}",
            # on a CPU the thread count changes OPT's bits (LayerNorm's backward): one per
            # cell, so that N cells side by side can be compared with one process
            *(["cpu_threads=1"] if small else [])]


def lmcollapse(*args: str) -> None:
    print("+ lmcollapse " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lmcollapse.cli", *args], check=True,
                   stdout=None if args[0] != "bench" else subprocess.DEVNULL)


def values(run: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(run)): json.loads(p.read_text())["values"]
            for p in sorted(run.rglob("metrics.json"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check")
    p.add_argument("--small", action="store_true", help="a tiny OPT, any device")
    p.add_argument("--jobs", type=int, default=None,
                   help="cells per GPU in the parallel part (default 4; --small: 2)")
    args = p.parse_args()
    import torch

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.small and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; GPU_CHECK_SMALL=1 checks the script itself",
              file=sys.stderr)
        return 2
    model = model_dir(out, args.small)
    jobs = args.jobs or (2 if args.small else 4)
    common = overrides(model, args.small, out / "runs")
    bench = ["bench", "--config", str(CONFIG), *common, f"jobs={jobs}",
             "--loop-dir", str(out / "bench-loop"), "--out", str(out / "bench.json")]
    if args.small:
        bench += ["--prompts", "16", "--naive-prompts", "2", "--steps", "4", "--repeats", "1"]
    lmcollapse(*bench)
    record = json.loads((out / "bench.json").read_text())
    runs = {}
    for precision in ("bf16", "no"):
        name = f"precision-{precision}"
        lmcollapse("run", "--config", str(CONFIG), *common, f"experiment={name}",
                   f"train.mixed_precision={precision}", "jobs=1")
        runs[precision] = values(out / "runs" / name)
    rows = {}
    for row, bf16 in runs["bf16"].items():
        fp32 = runs["no"][row]
        rows[row] = {k: [bf16[k], fp32[k]] for k in sorted(bf16)
                     if isinstance(bf16[k], int | float) and isinstance(fp32.get(k), int | float)}
    ppl = [abs(v["perplexity"][0] / v["perplexity"][1] - 1) for v in rows.values()
           if "perplexity" in v]
    keys = ("device", "params_millions", "train_tokens_per_s", "train_mfu",
            "generate_sample_tokens_per_s", "generate_beam_tokens_per_s",
            "peak_gpu_memory_gib", "peak_host_memory_gib", "loop_wall_s", "loop_jobs",
            "loop_parallel_wall_s", "loop_parallel_speedup", "loop_parallel_identical")
    summary = {"bench": {k: record.get(k) for k in keys},
               "bf16_vs_fp32": {"perplexity_max_relative_difference": max(ppl),
                                "tolerance": PPL_TOLERANCE,
                                "within_tolerance": max(ppl) <= PPL_TOLERANCE,
                                "rows": rows}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({**summary["bench"], **{k: v for k, v in summary["bf16_vs_fp32"].items()
                                             if k != "rows"}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
