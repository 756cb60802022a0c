"""Prompted continuation: each human training block's first tokens are continued by the model.

Prompts are cut into batches in prompt order, the batches dealt out across processes and the
continuations gathered back in prompt order; sampling is seeded per batch from its first
prompt id, so the corpus does not depend on the number of processes.

Every prompt is the first ``prompt_tokens`` tokens of a full human block, so a batch has no
padding (its attention mask is all ones, and the tokenizer's padding side never matters);
``pad_token_id`` only fills the rows of beams that finish early, which a forced length
prevents. Decoding is exactly what ``generate`` configures: the checkpoint's own
``generation_config.json`` (a chat model's temperature, a ``no_repeat_ngram_size``) is not
mixed in, except its end-of-sequence ids, which are all held back until ``new_tokens``
tokens are written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import GenerationConfig

from lmcollapse.data.blocks import Sample
from lmcollapse.faults import kill_point
from lmcollapse.progress import bars_disabled
from lmcollapse.settings import GenerateConfig


def eos_token_ids(model: Any, tokenizer: Any) -> int | list[int] | None:
    """The ids that end a sequence: the tokenizer's EOS and any the model's generation config
    adds (a chat model's end-of-turn token)."""
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(extra if isinstance(extra, list) else [extra])]
    ids = sorted({i for i in ids if i is not None})
    return ids[0] if len(ids) == 1 else (ids or None)


def generation_config(gcfg: GenerateConfig, tokenizer: Any,
                      eos_token_id: int | list[int] | None = None) -> GenerationConfig:
    """Decoding settings; ``min_new_tokens == max_new_tokens`` forces the length (every id
    in ``eos_token_id``, default the tokenizer's EOS, is held back until then). The pad
    token, when it is not an end-of-sequence id, is never written: padding is not text,
    yet a model that never saw it (its labels are masked) still gives it a little mass."""
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    pad = tokenizer.pad_token_id
    suppress = [pad] if pad is not None and pad not in (
        eos if isinstance(eos, list) else [eos]) else None
    common = dict(max_new_tokens=gcfg.new_tokens, min_new_tokens=gcfg.new_tokens,
                  repetition_penalty=gcfg.repetition_penalty, suppress_tokens=suppress,
                  pad_token_id=pad, eos_token_id=eos)
    if gcfg.strategy == "beam":
        return GenerationConfig(num_beams=gcfg.num_beams, do_sample=False,
                                early_stopping=True, **common)
    if gcfg.strategy == "greedy":
        return GenerationConfig(num_beams=1, do_sample=False, **common)
    return GenerationConfig(do_sample=True, num_beams=1, temperature=gcfg.temperature,
                            top_p=gcfg.top_p, top_k=gcfg.top_k, **common)  # 0: no top-k


@contextlib.contextmanager
def thread_invariant_attention(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """On a CPU, decode with eager attention (matmul, softmax, matmul), not torch's fused
    kernel: with a query of one token over a cached prefix, the fused kernel's rounding
    depends on the number of threads (measured with torch 2.13 for every shape tried), so
    a corpus, and every later generation, would depend on how many threads ran it, and
    ``--jobs`` (which divides the threads) would change the results. The eager path gave
    the same bits on 1 and 2 threads, as full-sequence passes (training, scoring) do, at
    the same speed. On a GPU nothing changes."""
    current = getattr(model.config, "_attn_implementation", None)
    if device.type != "cpu" or current in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


@torch.no_grad()
def generate_corpus(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any,
                    prompts: list[Sample], gcfg: GenerateConfig, seed: int, generation: int,
                    desc: str = "generate") -> list[Sample]:
    """Continue every prompt row; return corpus rows with provenance, in prompt order."""
    model.eval()
    model.to(accelerator.device)
    config = generation_config(gcfg, tokenizer, eos_token_ids(model, tokenizer))
    short = [i for i, p in enumerate(prompts) if len(p["input_ids"]) < gcfg.prompt_tokens]
    if short:
        raise ValueError(f"{len(short)} prompts (first: row {short[0]}) are shorter than "
                         f"generate.prompt_tokens={gcfg.prompt_tokens}")
    # decode exactly as configured: transformers would fill every setting left unset from
    # the checkpoint's generation_config.json; the model gets its own back afterwards
    checkpoint_defaults, model.generation_config = model.generation_config, GenerationConfig()
    try:
        # batches are cut from the global order and then dealt out, so every batch (and its
        # sampling seed) is the same whatever the number of processes
        order = list(range(len(prompts)))
        batches = [order[i:i + gcfg.batch_size] for i in range(0, len(order), gcfg.batch_size)]
        written: list[tuple[int, list[int]]] = []
        with accelerator.split_between_processes(batches) as mine, \
                thread_invariant_attention(model, accelerator.device):
            for batch in tqdm(mine, desc=desc, disable=bars_disabled(accelerator),
                              leave=False):
                torch.manual_seed(seed * 1_000_003 + batch[0])
                ids = torch.tensor([prompts[i]["input_ids"][: gcfg.prompt_tokens] for i in batch],
                                   device=accelerator.device)
                with accelerator.autocast():
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         generation_config=config)
                start = 0 if gcfg.keep_prompt else ids.shape[1]
                written += [(i, out[j, start:].tolist()) for j, i in enumerate(batch)]
                kill_point("generate_batch")
    finally:
        model.generation_config = checkpoint_defaults
    written = sorted(gather_object(written))
    origin = f"gen_{generation}"
    return [{"sample_id": f"{origin}:{i}", "origin": origin, "generation": generation,
             "prompt_id": i, "input_ids": ids,
             "text": tokenizer.decode(ids, skip_special_tokens=False)} for i, ids in written]
