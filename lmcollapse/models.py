"""Models and tokenizers: load pretrained (hub id, local dir, gguf file) or build from scratch.

A pretrained model is used as its users load it: ``AutoTokenizer`` / ``AutoModelForCausalLM``
from ``model.name_or_path`` (a hub id or a local directory), or from a GGUF file
(``model.gguf_file``: a file inside that directory or hub repository, or a path of its own).
A GGUF checkpoint is dequantized once into a plain float32 model (transformers would
otherwise keep it behind its GGUF quantizer, which can neither train nor save); the loop
saves that copy in the run directory and every generation starts from it.

Tokenizer rules (checked before any work, see :func:`check_pretrained`, :func:`check_vocab`):
a tokenizer without a pad token pads with its EOS token (padding is always told apart by
the attention mask, never by the id); a tokenizer with more tokens than the model has
embedding rows is refused rather than resized, since new rows would be untrained weights
that change the pretrained model.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
)

try:  # transformers >= 5
    from transformers import GgufConfig
except ImportError:  # transformers 4 dequantizes GGUF weights by itself
    GgufConfig = None

from lmcollapse.errors import ConfigError
from lmcollapse.layout import SAVED_CONFIG, SAVED_TOKENIZER
from lmcollapse.settings import ModelConfig, ScratchModelConfig

log = logging.getLogger(__name__)
EOS, PAD = "<|endoftext|>", "<pad>"
#: the oldest gguf package transformers reads GGUF files with
GGUF_MIN_VERSION = "0.10.0"
GGUF_HINT = "pip install 'lmcollapse[gguf]'"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (the human train pool)."""
    tok = Tokenizer(BPE())
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
        tok = Tokenizer.from_str(tok)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=PAD, unk_token=None)


def load_tokenizer(cfg: ModelConfig, train_texts: list[str] | None = None,
                   saved: Path | None = None) -> Any:
    """The experiment's tokenizer: the pretrained one, or trained on human train (scratch).

    A scratch tokenizer is trained once and saved to ``saved``; later calls reload it.
    """
    if cfg.source == "pretrained":
        where, gguf_file = pretrained_location(cfg)
        try:
            tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file,
                                                revision=cfg.revision)
        except OSError as err:  # not found locally, or the hub cannot be reached
            raise ConfigError(f"model.name_or_path: cannot load the tokenizer of {where}"
                              f"{' / ' + gguf_file if gguf_file else ''}: {err}") from err
    elif saved is not None and (saved / SAVED_TOKENIZER).exists():
        tok = AutoTokenizer.from_pretrained(saved)
    else:
        if not train_texts:
            raise ConfigError("model.source=scratch needs human train text to train a tokenizer")
        tok = train_tokenizer(train_texts, cfg.scratch.vocab_size)
        if saved is not None:
            tok.save_pretrained(saved)
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ConfigError(f"model.name_or_path: the tokenizer of {cfg.name_or_path} has "
                              "neither a pad nor an EOS token to pad batches with")
        tok.pad_token = tok.eos_token  # padding is masked by attention_mask, never by id
    return tok


def pretrained_location(cfg: ModelConfig) -> tuple[str, str | None]:
    """``(name_or_path, gguf_file)`` as transformers' ``from_pretrained`` takes them.

    ``model.gguf_file`` names a file inside ``model.name_or_path`` (a local directory or a
    hub repository), or else a local path of its own, whose folder is then used.
    """
    if not cfg.gguf_file:
        return cfg.name_or_path, None
    alone = Path(cfg.gguf_file).expanduser()
    inside = Path(cfg.name_or_path).expanduser() / alone
    if alone.is_absolute() or (alone.is_file() and not inside.is_file()):
        return str(alone.resolve().parent), alone.name
    return cfg.name_or_path, cfg.gguf_file


def check_pretrained(cfg: ModelConfig) -> None:
    """Refuse, before any work, a pretrained model that cannot load: a GGUF file without
    the optional ``gguf`` package (transformers reads GGUF files with it), or a GGUF file
    that is not where the config says."""
    if cfg.source != "pretrained" or not cfg.gguf_file:
        return
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model.gguf_file needs the 'gguf' package: {GGUF_HINT}")
    try:
        found = version("gguf")
    except PackageNotFoundError:  # importable but not installed as a distribution
        found = None
    if found is not None and Version(found) < Version(GGUF_MIN_VERSION):
        raise ConfigError(f"model.gguf_file needs gguf>={GGUF_MIN_VERSION}, found {found}: "
                          f"{GGUF_HINT.replace('install', 'install -U')}")
    where, gguf_file = pretrained_location(cfg)
    local = Path(where).expanduser().is_dir() or Path(cfg.gguf_file).expanduser().is_absolute()
    if local and not (Path(where).expanduser() / gguf_file).is_file():
        raise ConfigError(f"model.gguf_file: no file {gguf_file!r} in {where} (nor at "
                          f"{Path(cfg.gguf_file).expanduser()})")


def embedding_rows(config: Any) -> int | None:
    """The number of rows of the model's input embedding matrix (``vocab_size``)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    rows = getattr(text, "vocab_size", None)
    return rows if isinstance(rows, int) and rows > 0 else None


def check_vocab(tokenizer: Any, config: Any) -> None:
    """Refuse a tokenizer that can emit ids past the model's embedding matrix.

    ``len(tokenizer) <= vocab_size`` is fine (OPT-125m: 50265 tokens, 50272 rows, padded
    for speed); a larger tokenizer (an added pad or chat token the checkpoint never learnt)
    is refused instead of resized: resizing adds untrained rows to the pretrained model.
    """
    rows = embedding_rows(config)
    if rows is None:
        return
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    if len(tokenizer) > rows or any(i >= rows for i in special):
        raise ConfigError(
            f"model: the tokenizer has {len(tokenizer)} tokens (special ids "
            f"{sorted(special)}) but the model's embedding matrix has {rows} rows "
            f"(config.vocab_size); ids >= {rows} would index past it. Use the tokenizer that "
            "belongs to the checkpoint, or resize its embeddings "
            "(model.resize_token_embeddings) and save it as a new checkpoint first.")


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


def check_architecture(config: Any, where: str = "model.scratch") -> None:
    """Refuse an architecture transformers builds but cannot run, before any work: one
    layer of it is allocated without initialising its weights (``to_empty``) and run on two
    tokens, so every shape rule of the model's code is checked, those its config class does
    not validate included (:meth:`ScratchModelConfig.check` names the known ones more
    plainly). A pure meta-device pass cannot do it: the models call ``.item()`` on masks."""
    one_layer = copy.deepcopy(config)
    one_layer.num_hidden_layers = 1  # every layer has the same shapes (GPT-2 maps n_layer)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(one_layer)
        with torch.no_grad():
            model.to_empty(device="cpu")(input_ids=torch.zeros(1, 2, dtype=torch.long))
    except Exception as err:  # noqa: BLE001  (any failure here is a bad architecture)
        raise ConfigError(f"{where}: transformers cannot run this architecture "
                          f"({type(err).__name__}: {str(err)[:300]}); check hidden_size, "
                          "num_heads and intermediate_size") from None


def model_config(cfg: ModelConfig, tokenizer: Any) -> Any:
    """The architecture config of the experiment's model (no weights are loaded)."""
    if cfg.source == "scratch":
        return scratch_config(cfg.scratch, tokenizer)
    where, gguf_file = pretrained_location(cfg)
    try:
        return AutoConfig.from_pretrained(where, gguf_file=gguf_file, revision=cfg.revision)
    except OSError as err:
        raise ConfigError(f"model.name_or_path: cannot load the config of {where}"
                          f"{' / ' + gguf_file if gguf_file else ''}: {err}") from err


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
    """A pretrained causal LM from a hub id or local directory, in float32 for training.

    With ``gguf_file`` (a file in ``name_or_path``) every weight is dequantized and the model
    detached from transformers' GGUF quantizer, so it trains and saves like any other.
    """
    kwargs: dict[str, Any] = {}
    if gguf_file is not None and GgufConfig is not None:
        # transformers 5 keeps GGUF blocks packed unless told otherwise (4 always dequantizes)
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), gguf_file=gguf_file,
                                                 revision=revision, dtype=torch.float32,
                                                 **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if gguf_file is not None and quantizer is not None:
        quantizer.remove_quantization_config(model)  # plain weights: nothing is packed
    return model


def load_pretrained(cfg: ModelConfig) -> torch.nn.Module:
    """The configured pretrained weights (a GGUF file dequantized), float32."""
    where, gguf_file = pretrained_location(cfg)
    return load_model(where, gguf_file, cfg.revision)


def starting_model(cfg: ModelConfig, tokenizer: Any, init: str, seed: int,
                   base_dir: Path | None, previous_dir: Path | None) -> torch.nn.Module:
    """The weights a generation starts from.

    Args:
        init: ``base`` (the pretrained weights, or the seed's saved initial weights for a
            scratch model), ``previous`` (the model of generation k-1) or ``scratch``
            (fresh random weights drawn from ``seed``).
        base_dir: the run's saved copy of the ``base`` weights: a scratch model's initial
            weights, or a GGUF checkpoint dequantized; used when it holds a model. Without
            one a pretrained model is loaded from ``cfg`` (a GGUF file dequantized anew).
        previous_dir: the model directory of generation k-1.
    """
    if init == "previous" and previous_dir is not None:
        return load_model(previous_dir)
    if init == "scratch":
        return random_model(model_config(cfg, tokenizer), seed)
    if base_dir is not None and (base_dir / SAVED_CONFIG).exists():
        return load_model(base_dir)
    if cfg.source == "pretrained":
        return load_pretrained(cfg)
    raise FileNotFoundError(f"initial weights missing: {base_dir}")
