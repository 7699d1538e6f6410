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
    train = str(tmp_path / "t.jsonl")
    with pytest.raises(ValueError, match=r"class_names must be distinct, got \['a'\] more than once"):
        make(tmp_path, train_file=train, text_field="sentence", label_field="y", class_names=["a", "b", "a"])
    with pytest.raises(TypeError, match="class_names must be a list of class names, got the string 'a,b'"):
        make(tmp_path, train_file=train, text_field="sentence", label_field="y", class_names="a,b")


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


def saved_text_dataset(tmp_path):
    """ROWS as a `datasets` DatasetDict (ClassLabel labels "neg" / "pos", text under "sentence"), saved to disk."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def part(rows):
        return datasets.Dataset.from_dict(
            {"sentence": [r["text"] for r in rows], "label": [r["label"] for r in rows]}, features=features
        )

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": part(ROWS[:30]), "test": part(ROWS[30:])}).save_to_disk(str(folder))
    return str(folder)


def test_a_datasets_dataset_instead_of_files(tmp_path):
    folder = saved_text_dataset(tmp_path)
    dm = make(tmp_path, dataset=folder, text_field="sentence", test_split="test", max_seq_len=64)
    assert dm.class_names == ["neg", "pos"] and dm.num_classes == 2  # the ClassLabel's names
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 30 and len(dm.test_set) == 10
    batch = next(iter(dm.test_dataloader()))
    want = [encode_sequence(r["text"], 64).tolist() for r in ROWS[30:38]]
    for ids, mask, expected in zip(batch["input_ids"], batch["attention_mask"], want, strict=True):
        assert ids[mask].tolist() == expected
    assert batch["labels"].tolist() == [int(r["label"] == "pos") for r in ROWS[30:38]]
    as_val = make(tmp_path, dataset=folder, text_field="sentence", val_split="test")
    as_val.setup("fit")
    assert len(as_val.train_set) == 30 and len(as_val.val_set) == 10


def test_datasets_dataset_errors_name_the_split_and_fields(tmp_path):
    folder = saved_text_dataset(tmp_path)
    jsonl = write_jsonl(tmp_path / "t.jsonl", ROWS)
    with pytest.raises(ValueError, match="expected train_file .* or dataset .*, got train_file=None and dataset=None"):
        make(tmp_path)
    with pytest.raises(ValueError, match="expected train_file .* or dataset"):
        make(tmp_path, train_file=jsonl, dataset=folder)
    with pytest.raises(ValueError, match="name its splits"):
        make(tmp_path, dataset=folder, test_file=jsonl)
    with pytest.raises(ValueError, match=r"test_split 'validation' not found; the splits are \['train', 'test'\]"):
        make(tmp_path, dataset=folder, test_split="validation")
    dm = make(tmp_path, dataset=folder)  # text_field "text": not a column
    with pytest.raises(ValueError, match=r"saved\[train\]: field 'text' not found \(fields: sentence, label\)"):
        dm.setup("fit")


def test_csv_cells_are_read_as_written(tmp_path):
    # pandas' defaults would read "NA" / "None" / "null" as missing values and a text of digits as a number
    texts = ["NA", "None", "null", "007", "1.50", "fine film"] * 2
    labels = ["pos", "NA", "neg"] * 4  # "NA" is a class name here (not applicable), not a missing label
    train = write_csv(tmp_path / "train.csv", [{"text": t, "label": y} for t, y in zip(texts, labels)])
    dm = make(tmp_path, train_file=train, val_fraction=0.25)
    assert dm.class_names == ["NA", "neg", "pos"]
    assert dm._load()["train"][0] == texts
    ints = write_csv(tmp_path / "ints.csv", [{"text": t, "label": i % 2} for i, t in enumerate(texts)])
    assert make(tmp_path, train_file=ints).class_names == ["0", "1"]  # integer labels stay integers
    empty = write_csv(tmp_path / "empty.csv", [{"text": "", "label": "a"}, {"text": "b", "label": "c"}])
    with pytest.raises(ValueError, match=r"empty\.csv: row 0: field 'text' is empty"):
        make(tmp_path, train_file=empty).setup()
