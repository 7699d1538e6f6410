"""TextClassificationDataModule and the byte encoding: JSONL / CSV fixtures, labels, padding, clear errors."""

import csv
import json

import pytest
import torch

from perceiver.data import TextClassificationDataModule
from perceiver.data.text import CLS_ID, SEP_ID, decode_bytes, encode_bytes, encode_sequence


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    return str(path)


ROWS = [
    {"text": f"{'good' if i % 2 else 'bad'} movie number {i} 😀", "label": "pos" if i % 2 else "neg"} for i in range(40)
]


def make(tmp_path, **kwargs):
    kwargs.setdefault("cache_dir", str(tmp_path / "hf-cache"))
    kwargs.setdefault("batch_size", 8)
    return TextClassificationDataModule(**kwargs)


def test_byte_encoding_matches_perceiver_tokenizer_ids():
    assert encode_bytes("aé").tolist() == [ord("a") + 6, 0xC3 + 6, 0xA9 + 6]
    seq = encode_sequence("héllo", 5)
    assert seq.tolist()[0] == CLS_ID and seq.tolist()[-1] == SEP_ID and len(seq) == 5
    assert decode_bytes(encode_sequence("héllo wörld", 64)) == "héllo wörld"
    tok = pytest.importorskip("perceiver.tokenizer")
    if hasattr(tok, "ByteTokenizer"):
        ids = tok.ByteTokenizer()("héllo wörld 🙂")["input_ids"]
        assert list(ids) == encode_sequence("héllo wörld 🙂", 64).tolist()


def test_jsonl_string_labels_with_carved_validation(tmp_path):
    dm = make(tmp_path, train_file=write_jsonl(tmp_path / "train.jsonl", ROWS), max_seq_len=16)
    assert dm.class_names == ["neg", "pos"] and dm.num_classes == 2 and dm.vocab_size == 262
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 40 and len(dm.val_set) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, 16)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.bool
    assert batch["labels"].dtype == torch.long and set(batch["labels"].tolist()) <= {0, 1}
    assert (batch["input_ids"][:, 0] == CLS_ID).all()
    # validation split is fixed whatever the seed
    other = make(tmp_path, train_file=str(tmp_path / "train.jsonl"), max_seq_len=16, seed=4)
    other.setup()
    assert [s.tolist() for s in other.val_set.sequences] == [s.tolist() for s in dm.val_set.sequences]


def test_csv_integer_labels_val_and_test_files_and_padding(tmp_path):
    rows = [{"text": "x" * (i + 1), "label": i % 3} for i in range(12)]
    train = write_csv(tmp_path / "train.csv", rows)
    val = write_csv(tmp_path / "val.csv", rows[:5])
    test = write_jsonl(tmp_path / "test.jsonl", rows[5:9])
    dm = make(tmp_path, train_file=train, val_file=val, test_file=test, batch_size=4, max_seq_len=64)
    assert dm.num_classes == 3 and dm.class_names == ["0", "1", "2"]
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 5, 4)
    batch = next(iter(dm.val_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.tolist() == [3, 4, 5, 6] and batch["input_ids"].shape == (4, 6)
    assert (batch["input_ids"][~batch["attention_mask"]] == 0).all()
    assert batch["labels"].tolist() == [0, 1, 2, 0]


def test_custom_fields_and_class_names(tmp_path):
    rows = [{"sentence": "abc", "y": "b"}, {"sentence": "de", "y": "a"}] * 4
    dm = make(
        tmp_path,
        train_file=write_jsonl(tmp_path / "t.jsonl", rows),
        text_field="sentence",
        label_field="y",
        class_names=["b", "a", "c"],
        val_fraction=0.25,
    )
    assert dm.num_classes == 3
    dm.setup()
    assert sorted(dm.train_set.labels.tolist() + dm.val_set.labels.tolist()) == [0] * 4 + [1] * 4


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        make(tmp_path, train_file=str(tmp_path / "nope.jsonl"))
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(FileNotFoundError, match="val.csv"):
        make(tmp_path, train_file=train, val_file=str(tmp_path / "val.csv"))


def test_missing_field_names_field_and_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    dm = make(tmp_path, train_file=train, label_field="sentiment")
    with pytest.raises(ValueError, match=r"train\.jsonl.*'sentiment' not found"):
        dm.setup()
    with pytest.raises(ValueError, match="'body' not found"):
        _ = make(tmp_path, train_file=train, text_field="body").num_classes


def test_corrupt_file_and_bad_labels_name_the_file(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "ok", "label": 1}\n{"text": "oops", "lab\n', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.jsonl"):
        make(tmp_path, train_file=str(bad)).setup()
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "meh", "label": "neutral"}])
    with pytest.raises(ValueError, match=r"val\.jsonl.*'neutral'"):
        make(tmp_path, train_file=train, val_file=val).setup()
    nulls = write_jsonl(tmp_path / "nulls.jsonl", [{"text": None, "label": "a"}, {"text": "b", "label": "a"}])
    with pytest.raises(ValueError, match=r"nulls\.jsonl: row 0"):
        make(tmp_path, train_file=nulls).setup()
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"data\.txt.*extension"):
        make(tmp_path, train_file=str(tmp_path / "data.txt")).setup()
