"""Your text files (plain, JSONL, CSV; globs) for language modelling. TextFilesARDataModule: byte streams for causal
LM, the held-out tail never in training windows, the pydoc module's windows and scoring. TextFilesMLMDataModule:
`[CLS] chunk [SEP]` sequences per document, masked as the pydoc MLM module masks. A clear error for each bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from perceiver.data import TextFilesARDataModule, TextFilesMLMDataModule
from perceiver.data.ar_pydoc import IGNORE_INDEX
from perceiver.data.text import CLS_ID, MASK_ID, SEP_ID, encode_bytes

TEXT = "The quick brown fox jumps over the lazy dog. " * 20


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_files_globs_and_tables_become_one_stream(tmp_path):
    write(tmp_path, "corpus/b.txt", "second " * 10)
    write(tmp_path, "corpus/a.txt", "first é " * 10)
    rows = [{"text": "row one " * 5, "id": 1}, {"text": "row two " * 5, "id": 2}]
    write(tmp_path, "extra.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    train = [str(tmp_path / "corpus" / "*.txt"), str(tmp_path / "extra.jsonl")]
    dm = TextFilesARDataModule(train=train, max_seq_len=8, num_targets=2)
    dm.setup()
    # sorted matches, then the table's rows, joined by a blank line
    expected = encode_bytes("\n\n".join(["first é " * 10, "second " * 10, "row one " * 5, "row two " * 5]))
    assert np.array_equal(np.concatenate([dm.streams["train"], dm.streams["val"]]), expected)
    assert len(dm.streams["val"]) == int(len(expected) * 0.1)  # the tail
    assert dm.test_set is None
    write(tmp_path, "val.csv", "body\nheld out\n")
    with pytest.raises(ValueError, match="val.csv: field 'text' not found .fields: body."):
        TextFilesARDataModule(train=train, val=str(tmp_path / "val.csv"), max_seq_len=8, num_targets=2).setup()
    dm = TextFilesARDataModule(
        train=train, val=str(tmp_path / "val.csv"), text_field="body", max_seq_len=4, num_targets=2
    )
    with pytest.raises(ValueError, match="field 'body' not found"):  # the field applies to every table file
        dm.setup()


def test_training_windows_never_reach_the_held_out_tail_and_scoring_is_fixed(tmp_path):
    dm = TextFilesARDataModule(train=write(tmp_path, "t.txt", TEXT), max_seq_len=32, num_targets=8, val_fraction=0.25)
    dm.setup()
    train, val = dm.streams["train"], dm.streams["val"]
    assert len(train) + len(val) == len(TEXT)
    for epoch in range(2):
        for i in range(len(dm.train_set)):
            window = dm.train_set.get(i, epoch)["input_ids"].numpy()
            assert len(window) == 32 and any(np.array_equal(window, train[s : s + 32]) for s in range(len(train) - 31))
    assert dm.eval_context == 24  # max_seq_len - num_targets
    scored = []
    for i in range(len(dm.val_set)):
        item = dm.val_set.get(i, 0)
        keep = item["labels"] != IGNORE_INDEX
        scored += item["labels"][keep].tolist()
    assert scored == val[24:].tolist()  # every held-out byte after the first window's context, once
    assert 0 < dm.unigram_bpb("val") < 8.1
    with pytest.raises(ValueError, match=r"expected a held-out split of \['val'\], got 'test'"):
        dm.unigram_bpb("test")


def test_test_files_give_a_test_split(tmp_path):
    dm = TextFilesARDataModule(
        train=write(tmp_path, "t.txt", TEXT), test=write(tmp_path, "x.txt", TEXT[:200]), max_seq_len=32, num_targets=8
    )
    dm.setup()
    assert dm.test_set is not None and len(dm.test_set) == -(-(200 - 24) // 8)
    assert dm.unigram_bpb("test") > 0


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train file matches .*nothing-here"):
        TextFilesARDataModule(train=str(tmp_path / "nothing-here" / "*.txt")).setup()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="latin1.txt: expected UTF-8 text"):
        TextFilesARDataModule(train=str(tmp_path / "latin1.txt"), max_seq_len=8, num_targets=2).setup()
    empty = write(tmp_path, "empty.txt", "")
    with pytest.raises(ValueError, match="expected text in the train files"):
        TextFilesARDataModule(train=empty, max_seq_len=8, num_targets=2).setup()
    with pytest.raises(ValueError, match="expected a training stream longer than max_seq_len=512"):
        TextFilesARDataModule(train=write(tmp_path, "short.txt", "tiny text" * 10), num_targets=8).setup()
    with pytest.raises(ValueError, match=r"expected val_fraction in \(0, 1\)"):
        TextFilesARDataModule(train="x.txt", val_fraction=1.0)
    with pytest.raises(ValueError, match="expected 1 <= num_targets < max_seq_len=16"):
        TextFilesARDataModule(train="x.txt", max_seq_len=16, num_targets=16)
    with pytest.raises(ValueError, match="expected train files"):
        TextFilesARDataModule(train=[]).setup()


def test_mlm_sequences_are_chunks_of_each_document_and_masks_follow_the_pydoc_rules(tmp_path):
    write(tmp_path, "docs/a.txt", "alpha " * 30)
    write(tmp_path, "docs/b.txt", "beta " * 30)
    dm = TextFilesMLMDataModule(train=str(tmp_path / "docs" / "*.txt"), max_seq_len=18, val_fraction=0.2)
    dm.setup()
    train, val = dm.sequences["train"], dm.sequences["val"]
    every = train + val
    assert all(s[0] == CLS_ID and s[-1] == SEP_ID and len(s) <= 18 for s in every)
    inner = [s[1:-1] for s in every]
    a, b = encode_bytes("alpha " * 30), encode_bytes("beta " * 30)
    assert np.array_equal(np.concatenate(inner), np.concatenate([a, b]))  # chunks never cross documents:
    assert sum(len(x) for x in inner[: -(-len(a) // 16)]) == len(a)  # a's chunks end where a ends
    assert len(val) == int(len(every) * 0.2) and dm.test_set is dm.val_set
    batch = next(iter(dm.val_dataloader()))
    again = next(iter(dm.val_dataloader()))
    assert torch.equal(batch["input_ids"], again["input_ids"])  # fixed evaluation masks
    selected = batch["labels"] != IGNORE_INDEX
    assert selected.any(dim=1).all() and (batch["input_ids"][selected] == MASK_ID).any()
    assert not (batch["labels"][:, 0] != IGNORE_INDEX).any()  # [CLS] is never a target
    assert 0 < dm.most_frequent_byte_baseline() < 1
    assert dm.most_frequent_byte_id() == encode_bytes("a")[0]  # 2 in "alpha ", 1 in "beta ": the most frequent


def test_mlm_bad_input_is_a_clear_error(tmp_path):
    short = write(tmp_path, "short.txt", "a few bytes")
    with pytest.raises(ValueError, match="expected enough training text to hold out val_fraction=0.1 of its 1"):
        TextFilesMLMDataModule(train=short, max_seq_len=64).setup()
    dm = TextFilesMLMDataModule(train=short, val=short, test=short, max_seq_len=64)
    dm.setup()  # with val files nothing is held out
    assert len(dm.sequences["train"]) == 1 and dm.test_set is not dm.val_set
    with pytest.raises(ValueError, match="max_seq_len must be >= 3"):
        TextFilesMLMDataModule(train=short, max_seq_len=2)
    with pytest.raises(ValueError, match=r"mask_prob must be in \(0, 1\)"):
        TextFilesMLMDataModule(train=short, mask_prob=0.0)
    with pytest.raises(FileNotFoundError, match="no val file matches"):
        TextFilesMLMDataModule(train=short, val=str(tmp_path / "none.txt")).setup()


def test_table_cells_are_text_as_written(tmp_path):
    # "NA" / "None" and digits are text of a CSV's text column (not pandas' missing values or numbers); empty cells
    # and JSON nulls are no documents
    csv_file = write(tmp_path, "t.csv", "text,id\nNA,1\n,2\n007,3\nNone,4\n")
    jsonl = write(tmp_path, "t.jsonl", '{"text": "x"}\n{"text": null}\n{"text": ""}\n{"text": "y"}\n')
    dm = TextFilesARDataModule(train=[csv_file, jsonl], val=jsonl, max_seq_len=4, num_targets=2)
    dm.setup()
    assert np.array_equal(dm.streams["train"], encode_bytes("\n\n".join(["NA", "007", "None", "x", "y"])))
