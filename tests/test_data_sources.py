"""Tests of the human data sources and block cutting (:mod:`lmcollapse.data`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcollapse.config import load_config
from lmcollapse.data.base import HELD_OUT_VALIDATION, load_human_text
from lmcollapse.data.blocks import prepare_human_data, tokenize_records
from lmcollapse.data.synthetic import SyntheticSettings
from lmcollapse.data.text import TextSettings, read_records
from lmcollapse.errors import ConfigError
from lmcollapse.models import train_tokenizer
from lmcollapse.settings import DataConfig

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jovial kings").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` ASCII records, each newline-terminated, from a fixed small vocabulary."""
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 12))) + "\n"
            for _ in range(n)]


def text_cfg(**kwargs: str | None) -> DataConfig:
    return DataConfig(source="text", sections={"text": TextSettings(**kwargs)})


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(sentences(300, seed=1), vocab_size=300)


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    return {"train": sentences(200, seed=2), "validation": sentences(40, seed=3),
            "test": sentences(40, seed=4)}


# ---------------------------------------------------------------- read_records


def test_txt_one_record_per_line_with_newlines(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("first line\n\n = Heading = \nlast without newline", encoding="utf-8")
    assert read_records(path) == ["first line\n", "\n", " = Heading = \n", "last without newline"]


def test_jsonl_text_field(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    rows = [{"body": "one", "id": 1}, {"body": "two\nlines", "id": 2}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_records(path, text_field="body") == ["one", "two\nlines"]


def test_jsonl_row_without_field(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_records(path, "text", "data.text.train")
    msg = str(info.value)
    assert "data.text.train" in msg and f"{path}:2" in msg and "'text'" in msg


def test_parquet_text_field(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["alpha", "beta", "gamma"], "n": [1, 2, 3]}), path)
    assert read_records(path, text_field="content") == ["alpha", "beta", "gamma"]
    with pytest.raises(ConfigError, match="no column 'text'"):
        read_records(path, text_field="text")


def test_missing_train_file_names_field_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    test = tmp_path / "test.txt"
    test.write_text("x\n")
    with pytest.raises(ConfigError) as info:
        load_human_text(text_cfg(train=str(missing), test=str(test)))
    assert "data.text.train" in str(info.value) and str(missing) in str(info.value)


def test_missing_test_file_is_refused(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_text("".join(sentences(20)))
    with pytest.raises(ConfigError, match="data.text.test"):
        load_human_text(text_cfg(train=str(train)))


# ---------------------------------------------------------------- the text source


def test_text_source_holds_out_last_records_for_validation(tmp_path: Path) -> None:
    records = sentences(200)
    (tmp_path / "train.txt").write_text("".join(records))
    (tmp_path / "test.txt").write_text("".join(sentences(10, seed=9)))
    splits = load_human_text(text_cfg(train=str(tmp_path / "train.txt"),
                                      test=str(tmp_path / "test.txt")))
    held = int(200 * HELD_OUT_VALIDATION)
    assert held == 10
    assert splits["train"] == records[:-held]
    assert splits["validation"] == records[-held:]
    assert splits["test"] == sentences(10, seed=9)


def test_text_source_tiny_train_still_holds_out_one(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("".join(sentences(5)))
    (tmp_path / "test.txt").write_text("x y\n")
    splits = load_human_text(text_cfg(train=str(tmp_path / "train.txt"),
                                      test=str(tmp_path / "test.txt")))
    assert len(splits["train"]) == 4 and len(splits["validation"]) == 1


def test_text_source_with_validation_file_mixed_formats(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"text": s}) + "\n" for s in sentences(30)))
    pq.write_table(pa.table({"text": sentences(5, seed=5)}), tmp_path / "valid.parquet")
    (tmp_path / "test.txt").write_text("".join(sentences(5, seed=6)))
    splits = load_human_text(text_cfg(train=str(tmp_path / "train.jsonl"),
                                      validation=str(tmp_path / "valid.parquet"),
                                      test=str(tmp_path / "test.txt")))
    assert splits["train"] == sentences(30)  # nothing held out
    assert splits["validation"] == sentences(5, seed=5)
    assert splits["test"] == sentences(5, seed=6)


@pytest.mark.parametrize("blank", ["train", "test"])
def test_all_blank_split_is_refused_naming_it(tmp_path: Path, blank: str) -> None:
    for split in ("train", "test"):
        body = " \n\n   \n" * 30 if split == blank else "".join(sentences(30))
        (tmp_path / f"{split}.txt").write_text(body)
    with pytest.raises(ConfigError, match=f"the {blank} split is empty"):
        load_human_text(text_cfg(train=str(tmp_path / "train.txt"),
                                 test=str(tmp_path / "test.txt")))


# ---------------------------------------------------------------- WikiText-2 files


@pytest.fixture(scope="module")
def wikitext_splits() -> dict[str, list[str]]:
    if not WIKITEXT.is_dir():
        pytest.skip(f"WikiText-2 files not present at {WIKITEXT}")
    cfg = load_config(None, ["data.source=text", f"data.text.train={WIKITEXT / 'valid.txt'}",
                             f"data.text.test={WIKITEXT / 'test.txt'}"])
    return load_human_text(cfg.data)


def _line_count(path: Path) -> int:
    text = path.read_text(encoding="utf-8")
    return text.count("\n") + (not text.endswith("\n"))


def test_wikitext_loads_through_text_source(wikitext_splits: dict[str, list[str]]) -> None:
    train, validation, test = (wikitext_splits[s] for s in ("train", "validation", "test"))
    assert len(train) > 1000 and len(test) > 1000 and validation
    assert len(train) + len(validation) == _line_count(WIKITEXT / "valid.txt")
    assert len(test) == _line_count(WIKITEXT / "test.txt")
    assert len(validation) == int(_line_count(WIKITEXT / "valid.txt") * HELD_OUT_VALIDATION)
    for split in (train, test):
        heading = next(i for i, r in enumerate(split) if r.strip().startswith("= "))
        assert heading < 5 and split[heading].strip().endswith(" =")
        assert all(r.endswith("\n") for r in split[:-1])


def test_wikitext_first_record_has_no_bom(wikitext_splits: dict[str, list[str]]) -> None:
    assert not wikitext_splits["train"][0].startswith("\ufeff")
    assert not wikitext_splits["test"][0].startswith("\ufeff")


# ---------------------------------------------------------------- prepare_human_data


def _stream(tokenizer, records: list[str]) -> list[int]:
    out: list[int] = []
    for rec in records:
        rec = rec if rec.endswith("\n") else rec + "\n"
        out += tokenizer(rec, add_special_tokens=False)["input_ids"]
    return out


def test_blocks_have_block_tokens_and_provenance(tokenizer, texts) -> None:
    data = prepare_human_data(tokenizer, texts, DataConfig(block_tokens=16))
    stream = _stream(tokenizer, texts["train"])
    assert len(data.train) == len(stream) // 16 >= 2
    assert all(len(row["input_ids"]) == 16 for row in data.train + data.validation)
    assert [row["sample_id"] for row in data.train] == [
        f"human:train:{i}" for i in range(len(data.train))]
    assert len({row["sample_id"] for row in data.train + data.validation}) == len(
        data.train) + len(data.validation)
    assert all(row["origin"] == "human" and row["generation"] == -1
               for row in data.train + data.validation)
    flat = [t for row in data.train for t in row["input_ids"]]
    assert flat == stream[:len(flat)]
    assert tokenizer.decode(flat) == "".join(texts["train"])[:len(tokenizer.decode(flat))]
    assert data.test_stream == _stream(tokenizer, texts["test"])
    assert len(data.records["train"]) == len(texts["train"])


def test_max_blocks_cap(tokenizer, texts) -> None:
    full = prepare_human_data(tokenizer, texts, DataConfig(block_tokens=16))
    capped = prepare_human_data(tokenizer, texts, DataConfig(
        block_tokens=16, max_train_blocks=5, max_validation_blocks=2))
    assert len(full.train) > 5 and len(full.validation) > 2
    assert capped.train == full.train[:5]
    assert capped.validation == full.validation[:2]


def test_too_short_train_split(tokenizer, texts) -> None:
    short = {**texts, "train": ["the fox\n"]}
    with pytest.raises(ConfigError, match="data.block_tokens"):
        prepare_human_data(tokenizer, short, DataConfig(block_tokens=16))


def test_too_short_validation_split_is_named(tokenizer, texts) -> None:
    with pytest.raises(ConfigError, match="validation split"):
        prepare_human_data(tokenizer, {**texts, "validation": ["dog\n"]},
                           DataConfig(block_tokens=16))


def test_empty_test_split_is_named(tokenizer, texts) -> None:
    with pytest.raises(ConfigError, match="test split"):
        prepare_human_data(tokenizer, {**texts, "test": []}, DataConfig(block_tokens=16))


def test_prepare_refuses_all_blank_split(tokenizer, texts) -> None:
    with pytest.raises(ConfigError, match="validation"):
        prepare_human_data(tokenizer, {**texts, "validation": [" \n"] * 200},
                           DataConfig(block_tokens=16))


# ---------------------------------------------------------------- synthetic source


def _synthetic(**kwargs: int) -> dict[str, list[str]]:
    sizes = {"train_docs": 30, "validation_docs": 8, "test_docs": 8, **kwargs}
    return load_human_text(DataConfig(source="synthetic",
                                      sections={"synthetic": SyntheticSettings(**sizes)}))


def test_synthetic_source_splits() -> None:
    splits = _synthetic()
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [30, 8, 8]
    assert all(doc.strip() for split in splits.values() for doc in split)
    assert splits["train"][:8] != splits["validation"]
    assert splits["validation"] != splits["test"]
    assert splits["train"][:8] != splits["test"]


def test_synthetic_source_is_deterministic() -> None:
    assert _synthetic() == _synthetic()
    assert _synthetic(seed=1)["train"] != _synthetic()["train"]
    # each split has its own stream: resizing one leaves the others intact
    resized = _synthetic(validation_docs=3)
    assert resized["train"] == _synthetic()["train"]
    assert resized["test"] == _synthetic()["test"]


# ---------------------------------------------------------------- the same text, hub or files


def _fake_hub(monkeypatch, splits: dict[str, list[str]]) -> list[tuple]:
    """``datasets.load_dataset`` answering from memory (no network): a DatasetDict of the
    given splits, one ``text`` column, as the hub's WikiText has; returns the calls."""
    import datasets

    calls = []

    def load_dataset(path, name=None, revision=None, **kw):
        calls.append((path, name, revision))
        return datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v})
                                     for k, v in splits.items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hf_source_maps_any_split_and_holds_out_like_text(tmp_path, monkeypatch) -> None:
    """A split of the hub as the training pool with ``validation_split: null`` gives what
    the text source gives for a file of the same records without a validation file."""
    # as the hub holds WikiText: lines with their newline, blank lines as empty strings
    pool = [f" = Title {i} = \n" if i % 10 == 0 else "" if i % 10 == 1 else f" line {i}\n"
            for i in range(61)]
    test = [f" held-out {i}\n" if i % 7 else "" for i in range(30)]
    calls = _fake_hub(monkeypatch, {"train": ["unused\n"], "validation": pool, "test": test})
    hub = load_human_text(load_config(None, [
        "data.source=hf", "data.hf.path=wikitext", "data.hf.name=wikitext-2-v1",
        "data.hf.train_split=validation", "data.hf.validation_split=null"]).data)
    assert calls == [("wikitext", "wikitext-2-v1", None)]
    # the same records as files, one per line (a blank record is an empty line)
    (tmp_path / "valid.txt").write_text("".join(r or "\n" for r in pool))
    (tmp_path / "test.txt").write_text("".join(r or "\n" for r in test))
    files = load_human_text(load_config(None, [
        "data.source=text", f"data.text.train={tmp_path / 'valid.txt'}",
        f"data.text.test={tmp_path / 'test.txt'}"]).data)
    assert hub["test"] == test and len(hub["validation"]) == int(61 * HELD_OUT_VALIDATION)
    # what is tokenized: every record newline-terminated (tokenize_records), the same
    for split in ("train", "validation", "test"):
        assert [r or "\n" for r in hub[split]] == files[split], split
    tok = train_tokenizer(files["train"], 300)
    assert tokenize_records(tok, hub["train"]) == tokenize_records(tok, files["train"])


def test_hf_split_the_dataset_lacks_is_named(monkeypatch) -> None:
    _fake_hub(monkeypatch, {"train": ["a\n"], "validation": ["b\n"], "test": ["c\n"]})
    cfg = load_config(None, ["data.source=hf", "data.hf.test_split=heldout"])
    with pytest.raises(ConfigError, match=r"data.hf.test_split: 'heldout' is not a split of "
                                          r"wikitext/wikitext-2-raw-v1; it has train, "
                                          r"validation, test"):
        load_human_text(cfg.data)
    one = load_config(None, ["data.source=hf", "data.hf.validation_split=null"])
    with pytest.raises(ConfigError, match="data.hf.validation_split: not set.*nothing would"):
        load_human_text(one.data)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_windows_line_endings_and_a_byte_order_mark_read_as_plain_text(tmp_path,
                                                                       suffix) -> None:
    lines = ["First line", "", "third, with é"]
    if suffix == ".txt":
        plain = "".join(f"{x}\n" for x in lines)
    else:
        plain = "".join(json.dumps({"text": x}) + "\n" for x in lines)
    (tmp_path / f"unix{suffix}").write_text(plain, encoding="utf-8")
    (tmp_path / f"windows{suffix}").write_bytes(
        "\ufeff".encode() + plain.replace("\n", "\r\n").encode("utf-8"))
    unix = read_records(tmp_path / f"unix{suffix}")
    windows = read_records(tmp_path / f"windows{suffix}")
    assert windows == unix and not any("\r" in r or "\ufeff" in r for r in windows)
