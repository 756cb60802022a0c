"""Tokenising human text into fixed-size blocks, each with its provenance."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmcollapse.errors import ConfigError
from lmcollapse.settings import DataConfig

#: one sample: provenance (see :data:`PROVENANCE`) and its ``input_ids``; human blocks,
#: corpus continuations and mix entries all have this shape
Sample = dict[str, Any]
#: the provenance columns every sample carries into mix.parquet and corpus.parquet
PROVENANCE = ["sample_id", "origin", "generation", "prompt_id"]


@dataclass
class HumanData:
    """Tokenised human splits.

    ``records[split]`` holds one token list per text record (kept for per-text scoring);
    ``train`` and ``validation`` are rows of ``block_tokens`` tokens cut from the
    concatenated split, and ``test_stream`` is the whole test split as one token list.
    ``reserve`` holds the blocks of the reserve (``data.fresh_reserve``; its text is
    ``texts["reserve"]``), empty without one: human text no model trains on before
    ``fresh`` with ``human_source: reserve`` draws it.
    """

    records: dict[str, list[list[int]]]
    texts: dict[str, list[str]]
    train: list[Sample]
    validation: list[Sample]
    test_stream: list[int]
    reserve: list[Sample] = field(default_factory=list)


def _terminated(record: str) -> str:
    return record if record.endswith("\n") else record + "\n"


def tokenize_records(tokenizer: Any, records: list[str], batch: int = 1000) -> list[list[int]]:
    """Token ids of each record (newline-terminated), encoded as the tokenizer encodes a text
    by default (``add_special_tokens=True``), before the records are concatenated into blocks.

    This is what Shumailov et al. did (their ``dataset.py``, the ``run_clm`` recipe):
    ``tokenizer(examples["text"])`` on each WikiText-2 line, then concatenate and cut into
    64-token blocks. OPT's tokenizer puts its BOS ``</s>`` before every record, so blocks
    carry ``</s>`` at record starts, as in the paper; a Llama/Gemma tokenizer puts ``<s>`` /
    ``<bos>`` there, as the model saw in pretraining; GPT-2's, Qwen's and the scratch
    tokenizer add nothing. Training blocks, prompts and the held-out test stream all come
    from here, so every step sees the same encoding. Generated continuations hold no EOS
    (generation runs to a fixed length), so for a tokenizer whose BOS is its EOS (OPT) the
    corpora carry no ``</s>`` while human text does, also as in the paper.
    """
    out: list[list[int]] = []
    for i in range(0, len(records), batch):
        chunk = [_terminated(r) for r in records[i:i + batch]]
        out += tokenizer(chunk, add_special_tokens=True)["input_ids"]
    return out


def human_rows(ids: list[int], block_tokens: int, split: str,
               limit: int | None = None) -> list[Sample]:
    """Cut a token stream into full blocks (the remainder is dropped)."""
    n = len(ids) // block_tokens
    if limit is not None:
        n = min(n, limit)
    return [{"sample_id": f"human:{split}:{i}", "origin": "human", "generation": -1,
             "prompt_id": -1, "input_ids": ids[i * block_tokens:(i + 1) * block_tokens]}
            for i in range(n)]


def human_continuations(corpus: list[Sample], human: list[Sample], prompt_tokens: int,
                         keep_prompt: bool) -> list[Sample]:
    """The human-continuation control of ``corpus``: for each of its samples, the true
    continuation of the same prompt in the same format (docs/policies.md, "Controls").

    A sample continues the first ``prompt_tokens`` tokens of human block ``prompt_id``; its
    stand-in is what that block holds after the prompt (from the block's start where the
    prompt is kept), as many tokens as the sample has. The rows, their number, lengths and
    prompt handling are the corpus's; only the writer changes: a perfect generator, so any
    change it shows comes from the format and the amount of text, not from a model's errors.
    """
    start = 0 if keep_prompt else prompt_tokens
    out = []
    for r in corpus:
        block = human[int(r["prompt_id"])]["input_ids"]
        length = len(r["input_ids"])
        if start + length > len(block):
            raise ValueError(
                f"the human continuation of prompt {r['prompt_id']} needs tokens "
                f"{start}..{start + length} of a {len(block)}-token block: human blocks must "
                "hold the prompt and the continuation (generate.prompt_tokens + "
                "generate.new_tokens <= data.block_tokens)")
        out.append({"sample_id": f"human-continuation:{r['sample_id']}", "origin": "human",
                    "generation": -1, "prompt_id": int(r["prompt_id"]),
                    "input_ids": np.asarray(block[start:start + length], dtype=np.int32)})
    return out


def pack_rows(rows: list[Any], length: int, separator: int) -> list[list[int]]:
    """Training rows of ``length`` tokens (``train.pack``): rows already that long stay as
    they are (human blocks are cuts of the concatenated human text); the shorter ones are
    concatenated in order, each followed by ``separator`` (the end-of-text token), and cut
    into rows of ``length`` tokens, as run_clm's ``group_texts`` does. Unlike group_texts the
    remainder is kept as one last, shorter row, so no token of the mix is dropped."""
    full = [list(map(int, r)) for r in rows if len(r) >= length]
    stream: list[int] = []
    for r in rows:
        if len(r) < length:
            stream += [*map(int, r), separator]
    return full + [stream[i:i + length] for i in range(0, len(stream), length)]


def fresh_blocks(write: Callable[[int, int], list[str]], tokenizer: Any, count: int,
                 block_tokens: int, blocks_per_doc: float, seed: int, split: str) -> list[Sample]:
    """``count`` blocks of new human text: documents the data source ``write``s (``write(n,
    seed)``), tokenized and cut like human train; more documents are asked for until they
    give ``count`` blocks."""
    docs = max(1, int(count / max(blocks_per_doc, 1e-9) * 1.2) + 2)
    while True:
        texts = write(docs, seed)
        stream = [t for rec in tokenize_records(tokenizer, texts) for t in rec]
        rows = human_rows(stream, block_tokens, split)
        if len(rows) >= count or count == 0:
            return rows[:count]
        docs *= 2


def fresh_writer(write: Callable[[int, int], list[str]] | None, tokenizer: Any,
                 human: HumanData, block_tokens: int, k: int, seed: int
                 ) -> Callable[[int], list[Sample]] | None:
    """``count`` -> that many new human blocks for generation ``k``: documents the source
    ``write``s with ``seed``, cut like human train; None where the source cannot write."""
    if write is None:
        return None
    return functools.partial(fresh_blocks, write, tokenizer, block_tokens=block_tokens,
                             split=f"fresh{k}", seed=seed, blocks_per_doc=len(human.train)
                             / max(1, len(human.texts["train"])))


def prepare_human_data(tokenizer: Any, texts: dict[str, list[str]], cfg: DataConfig,
                       min_train_blocks: int = 2) -> HumanData:
    """Tokenise the three splits and cut train/validation into blocks; refuse tiny data."""
    for split, recs in texts.items():
        if not any(r.strip() for r in recs):
            raise ConfigError(f"data: the {split} split is empty (every record is blank)")
    records = {split: tokenize_records(tokenizer, recs) for split, recs in texts.items()}
    streams = {split: [t for rec in recs for t in rec] for split, recs in records.items()}
    train = human_rows(streams["train"], cfg.block_tokens, "train", cfg.max_train_blocks)
    validation = human_rows(streams["validation"], cfg.block_tokens, "validation",
                            cfg.max_validation_blocks)
    if len(train) < min_train_blocks:
        held = (f", data.fresh_reserve={cfg.fresh_reserve} having held back "
                f"{len(texts['reserve'])} of its {len(texts['reserve']) + len(texts['train'])} "
                "records for the reserve" if "reserve" in texts else "")
        raise ConfigError(
            f"data: the train split gives {len(train)} blocks of data.block_tokens="
            f"{cfg.block_tokens} tokens ({len(streams['train'])} tokens{held}); need at least "
            f"{min_train_blocks}. Use more text or a smaller data.block_tokens"
            + (" or data.fresh_reserve." if held else "."))
    if not validation:
        raise ConfigError(f"data: the validation split has {len(streams['validation'])} tokens, "
                          f"fewer than one block of data.block_tokens={cfg.block_tokens}")
    if len(streams["test"]) < 2:
        raise ConfigError("data: the test split has fewer than 2 tokens")
    reserve = human_rows(streams.get("reserve", []), cfg.block_tokens, "reserve")
    if "reserve" in texts and not reserve:
        raise ConfigError(f"data.fresh_reserve: the reserve has {len(streams['reserve'])} "
                          f"tokens, fewer than one block of data.block_tokens="
                          f"{cfg.block_tokens}; raise data.fresh_reserve")
    return HumanData(records=records, texts=texts, train=train, validation=validation,
                     test_stream=streams["test"], reserve=reserve)
