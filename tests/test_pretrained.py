"""Pretrained models as users load them: a local directory (a tiny OPT) and a GGUF file (a tiny
Llama written here with the gguf package) run the whole loop; preflight refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import QUICKSTART, tiny_config
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from lmcollapse.data.base import load_human_text
from lmcollapse.data.blocks import tokenize_records
from lmcollapse.errors import ConfigError
from lmcollapse.loop import CollapseLoop
from lmcollapse.models import EOS, PAD, load_model, train_tokenizer, wrap_tokenizer

#: one generation after generation 0, one policy, two cheap metrics (reference_perplexity
#: exercises the generation-0 reference model)
FAST = ["seeds=[0]", "generations=1", "policies=[{name: replace}]",
        "metrics.names=[perplexity, reference_perplexity]", "train.eval_every=4"]


def _tokenizer(run_root: Path, bos: bool):
    """A BPE tokenizer trained on the experiment's own human train text; ``bos``: it puts
    its BOS (= EOS, as OPT's ``</s>``) before every encoded text, as OPT's does."""
    texts = load_human_text(tiny_config(run_root).data)["train"]
    tok = train_tokenizer(texts, vocab_size=320)
    if not bos:
        return tok
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token=EOS,
                                   bos_token=EOS, pad_token=PAD, add_bos_token=True)


def _ids(tok) -> dict[str, int]:
    return dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)


def _opt(tok, vocab_size: int) -> OPTForCausalLM:
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                                    max_position_embeddings=64, **_ids(tok)))


def _metrics(run: Path) -> dict[str, dict]:
    return {str(p.relative_to(run)): json.loads(p.read_text())["values"]
            for p in sorted(run.rglob("metrics.json"))}


def _check_run(run: Path) -> None:
    """Every step finished, each model reloads, the corpus and metrics are there."""
    for d in (run / "seed_0" / "gen_00", run / "seed_0" / "replace" / "gen_01"):
        for step in ("train", "generate", "measure"):
            assert (d / f"{step}.done").exists(), (d, step)
        assert load_model(d / "model") is not None
        corpus = pq.read_table(d / "corpus.parquet").to_pylist()
        assert corpus and all(len(r["input_ids"]) == 16 for r in corpus)
        values = json.loads((d / "metrics.json").read_text())["values"]
        assert values["perplexity"] > 1 and "ref_ppl_p50" in values
    log = [json.loads(line) for line in (run / "seed_0" / "gen_00" / "train_log.jsonl")
           .read_text().splitlines()]
    assert len(log) >= 2 and log[-1]["val_loss"] < log[0]["val_loss"]


def _rerun_does_nothing(cfg_args: list[str], root: Path) -> None:
    run = root / "quickstart"
    before = _metrics(run)
    again = CollapseLoop(tiny_config(root, *cfg_args))
    again.run()
    assert again.timings == []  # every step was already done
    assert _metrics(run) == before


def test_local_pretrained_directory_runs_the_loop(tmp_path):
    """A tiny OPT saved with save_pretrained (its tokenizer puts BOS before every text, and
    the embedding matrix has more rows than the tokenizer has tokens, as OPT-125m's)."""
    tok = _tokenizer(tmp_path, bos=True)
    model_dir = tmp_path / "tiny-opt"
    _opt(tok, len(tok) + 7).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    args = [*FAST, "model.source=pretrained", f"model.name_or_path={model_dir}"]
    exp = CollapseLoop(tiny_config(tmp_path, *args))
    exp.run()
    run = tmp_path / "quickstart"
    _check_run(run)
    assert not (run / "base_model").exists()  # a plain checkpoint is loaded as named
    # the tokenizer's standard encoding: BOS at the start of every human record
    train_texts = exp.setup.human.texts["train"]
    stream = [t for rec in exp.setup.human.records["train"] for t in rec]
    assert stream.count(tok.bos_token_id) == len(train_texts)
    assert all(rec[0] == tok.bos_token_id for rec in exp.setup.human.records["train"])
    _rerun_does_nothing(args, tmp_path)


def test_tokenize_records_follows_the_tokenizer(tmp_path):
    plain, with_bos = _tokenizer(tmp_path, bos=False), _tokenizer(tmp_path, bos=True)
    records = ["the cat", "sat\n", ""]
    ids = tokenize_records(plain, records)
    assert tokenize_records(with_bos, records) == [[with_bos.bos_token_id] + r for r in ids]
    assert plain.bos_token_id not in sum(ids, [])


# --- GGUF ---------------------------------------------------------------------------------


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py), which transformers undoes."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(path: Path, model: LlamaForCausalLM, tok) -> dict[str, torch.Tensor]:
    """Write ``model`` and ``tok`` as a llama GGUF (2-D weights F16, the rest F32, a "gpt2"
    byte-level BPE tokenizer); return the weights a reader should get back."""
    gguf = pytest.importorskip("gguf")
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    spec = json.loads(tok.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    specials = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m)
                        for m in spec["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    expected = {}
    for key, value in model.state_dict().items():
        base, suffix = key.rsplit(".", 1)
        arr = value.numpy()
        if key.endswith("q_proj.weight"):
            arr = _permute(arr, c.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            arr = _permute(arr, c.num_key_value_heads)
        half = arr.ndim == 2
        w.add_tensor(f"{names.get_name(base)}.{suffix}",
                     arr.astype(np.float16 if half else np.float32))
        expected[key] = value.half().float() if half else value.clone()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def _tiny_llama(tok) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, **_ids(tok)))


def test_gguf_file_runs_the_loop_from_a_dequantized_copy(tmp_path):
    pytest.importorskip("gguf")
    tok = _tokenizer(tmp_path, bos=False)
    gguf_dir = tmp_path / "tiny-llama-gguf"
    gguf_dir.mkdir()
    expected = write_gguf(gguf_dir / "tiny.gguf", _tiny_llama(tok), tok)
    args = [*FAST, "model.source=pretrained", f"model.name_or_path={gguf_dir}",
            "model.gguf_file=tiny.gguf"]
    CollapseLoop(tiny_config(tmp_path, *args)).run()
    run = tmp_path / "quickstart"
    # the GGUF is dequantized once into ordinary weights, with its tokenizer
    base = run / "base_model"
    config = json.loads((base / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (base / "tokenizer.json").exists()
    weights = load_model(base).state_dict()
    assert set(weights) == set(expected)
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key
    _check_run(run)
    stamp = (base / "config.json").stat().st_mtime_ns
    _rerun_does_nothing(args, tmp_path)
    assert (base / "config.json").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_gguf_file_given_as_a_path_of_its_own(tmp_path):
    """``model.gguf_file`` may also be a path; ``name_or_path`` then does not matter."""
    pytest.importorskip("gguf")
    from lmcollapse.models import check_pretrained, load_pretrained, load_tokenizer
    from lmcollapse.settings import ModelConfig

    tok = _tokenizer(tmp_path, bos=False)
    path = tmp_path / "elsewhere" / "tiny.gguf"
    path.parent.mkdir()
    expected = write_gguf(path, _tiny_llama(tok), tok)
    cfg = ModelConfig(source="pretrained", gguf_file=str(path))
    check_pretrained(cfg)
    loaded = load_tokenizer(cfg)
    text = "the quick brown fox\n"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    model = load_pretrained(cfg)
    assert getattr(model, "hf_quantizer", None) is None
    assert torch.equal(model.state_dict()["lm_head.weight"], expected["lm_head.weight"])
    with pytest.raises(ConfigError, match="no file 'missing.gguf'"):
        check_pretrained(ModelConfig(source="pretrained", name_or_path=str(tmp_path),
                                     gguf_file="missing.gguf"))


@pytest.mark.parametrize("how", ["sys.modules", "find_spec"])
def test_missing_gguf_package_is_refused_before_any_work(tmp_path, monkeypatch, capsys, how):
    if how == "sys.modules":
        monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    else:
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "gguf" else real(name, *a))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.gguf").write_bytes(b"GGUF")
    cfg = tiny_config(tmp_path / "runs", "model.source=pretrained",
                      f"model.name_or_path={tmp_path / 'model'}", "model.gguf_file=tiny.gguf")
    with pytest.raises(ConfigError) as err:
        CollapseLoop(cfg).run()
    assert "model.gguf_file needs the 'gguf' package" in str(err.value)
    assert "pip install 'lmcollapse[gguf]'" in str(err.value)
    assert not cfg.run_dir.exists() or not any(cfg.run_dir.rglob("*"))
    # `lmcollapse validate` names the extra too, with exit code 2
    from lmcollapse.cli import run_main

    assert run_main(["validate", "--config", str(QUICKSTART), "model.source=pretrained",
                     f"model.name_or_path={tmp_path / 'model'}",
                     "model.gguf_file=tiny.gguf"]) == 2
    assert "pip install 'lmcollapse[gguf]'" in capsys.readouterr().err


def test_tokenizer_larger_than_the_embeddings_is_refused(tmp_path):
    tok = _tokenizer(tmp_path, bos=False)
    model_dir = tmp_path / "small-embeddings"
    _opt(tok, len(tok) - 20).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cfg = tiny_config(tmp_path / "runs", "model.source=pretrained",
                      f"model.name_or_path={model_dir}")
    with pytest.raises(ConfigError, match=rf"tokenizer has {len(tok)} tokens .* embedding "
                                          rf"matrix has {len(tok) - 20} rows"):
        CollapseLoop(cfg).run()
    assert not cfg.run_dir.exists()


def test_pad_falls_back_to_eos(tmp_path):
    from lmcollapse.models import load_tokenizer
    from lmcollapse.settings import ModelConfig

    tok = wrap_tokenizer(_tokenizer(tmp_path, bos=False).backend_tokenizer.to_str())
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    loaded = load_tokenizer(ModelConfig(source="pretrained", name_or_path=str(tmp_path / "nopad")))
    assert loaded.pad_token_id == loaded.eos_token_id is not None


def test_generation_decodes_as_configured_but_honours_every_eos(accelerator, tiny_model,
                                                                 tokenizer, texts):
    """A checkpoint's generation_config.json does not change decoding (the "sampling bias"
    is the experiment's), except that all its end-of-sequence ids are held back."""
    from collections import Counter

    from lmcollapse.data.blocks import human_rows
    from lmcollapse.generate import generate_corpus
    from lmcollapse.settings import GenerateConfig

    stream = [t for text in texts for t in tokenizer(text + "\n")["input_ids"]]
    prompts = human_rows(stream, 24, "train")[:16]
    gcfg = GenerateConfig(prompt_tokens=8, new_tokens=12, strategy="greedy", batch_size=8)

    def continuations():
        return [r["input_ids"] for r in generate_corpus(accelerator, tiny_model, tokenizer,
                                                         prompts, gcfg, seed=0, generation=1)]

    plain = continuations()
    assert any(len(set(c)) < len(c) for c in plain)  # greedy repeats itself here
    tiny_model.generation_config.no_repeat_ngram_size = 1
    assert continuations() == plain
    assert tiny_model.generation_config.no_repeat_ngram_size == 1  # given back
    frequent = Counter(t for c in plain for t in c).most_common(1)[0][0]
    tiny_model.generation_config.eos_token_id = [tokenizer.eos_token_id, frequent]
    ended = continuations()
    assert all(len(c) == 12 and frequent not in c for c in ended)
