"""Models and tokenizers: load pretrained (hub id, local dir, gguf file) or build from scratch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
)

from lmcollapse.config import ConfigError, ModelConfig, ScratchModelConfig

log = logging.getLogger(__name__)
EOS, PAD = "<|endoftext|>", "<pad>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (the human train pool)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Any) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a ``tokenizers.Tokenizer`` (or its JSON string)."""
    if isinstance(tok, str):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(tok)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=PAD, unk_token=None)


def load_tokenizer(cfg: ModelConfig, train_texts: list[str] | None = None,
                   saved: Path | None = None) -> Any:
    """The experiment's tokenizer: the pretrained one, or trained on human train (scratch).

    A scratch tokenizer is trained once and saved to ``saved``; later calls reload it.
    """
    if cfg.source == "pretrained":
        tok = AutoTokenizer.from_pretrained(cfg.name_or_path, gguf_file=cfg.gguf_file,
                                            revision=cfg.revision)
    elif saved is not None and (saved / "tokenizer.json").exists():
        tok = AutoTokenizer.from_pretrained(saved)
    else:
        if not train_texts:
            raise ConfigError("model.source=scratch needs human train text to train a tokenizer")
        tok = train_tokenizer(train_texts, cfg.scratch.vocab_size)
        if saved is not None:
            tok.save_pretrained(saved)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def scratch_config(cfg: ScratchModelConfig, tokenizer: Any) -> Any:
    """A transformers config for a small architecture sized to ``tokenizer``."""
    vocab = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if cfg.arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden_size,
                           intermediate_size=cfg.intermediate_size,
                           num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                           num_key_value_heads=cfg.num_heads,
                           max_position_embeddings=cfg.max_position_embeddings,
                           tie_word_embeddings=True, **ids)
    if cfg.arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=cfg.hidden_size, n_layer=cfg.num_layers,
                          n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
                          n_positions=cfg.max_position_embeddings, **ids)
    return OPTConfig(vocab_size=vocab, hidden_size=cfg.hidden_size,
                     num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, ffn_dim=cfg.intermediate_size,
                     max_position_embeddings=cfg.max_position_embeddings,
                     word_embed_proj_dim=cfg.hidden_size, **ids)


def model_config(cfg: ModelConfig, tokenizer: Any) -> Any:
    """The architecture config of the experiment's model (no weights are loaded)."""
    if cfg.source == "scratch":
        return scratch_config(cfg.scratch, tokenizer)
    return AutoConfig.from_pretrained(cfg.name_or_path, gguf_file=cfg.gguf_file,
                                      revision=cfg.revision)


def context_length(config: Any) -> int | None:
    """The longest sequence the architecture accepts, when it declares one."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def random_model(config: Any, seed: int) -> torch.nn.Module:
    """Freshly initialised weights for ``config``, reproducible from ``seed``; the global
    random state is left as it was (so a resumed run draws the same numbers afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def load_model(name_or_path: str | Path, gguf_file: str | None = None,
               revision: str | None = None) -> torch.nn.Module:
    """A pretrained causal LM from a hub id or local directory, in float32 for training."""
    return AutoModelForCausalLM.from_pretrained(str(name_or_path), gguf_file=gguf_file,
                                                revision=revision, dtype=torch.float32)


def starting_model(cfg: ModelConfig, tokenizer: Any, init: str, seed: int,
                   base_dir: Path | None, previous_dir: Path | None) -> torch.nn.Module:
    """The weights a generation starts from.

    Args:
        init: ``base`` (the pretrained weights, or the seed's saved initial weights for a
            scratch model), ``previous`` (the model of generation k-1) or ``scratch``
            (fresh random weights drawn from ``seed``).
        base_dir: where a scratch model's initial weights are saved.
        previous_dir: the model directory of generation k-1.
    """
    if init == "previous" and previous_dir is not None:
        return load_model(previous_dir)
    if init == "scratch":
        return random_model(model_config(cfg, tokenizer), seed)
    if cfg.source == "pretrained":
        return load_model(cfg.name_or_path, cfg.gguf_file, cfg.revision)
    if base_dir is None or not (base_dir / "config.json").exists():
        raise FileNotFoundError(f"initial weights missing: {base_dir}")
    return load_model(base_dir)
