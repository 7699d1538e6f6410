"""Text classification from JSONL / CSV files or a Hugging Face `datasets` dataset, byte-tokenised for Perceiver IO.

Byte tokenisation (`encode_bytes`, `perceiver.tokenizer`'s one byte encoding as an int64 array): the UTF-8 bytes of
the text + 6, after six special ids `PAD 0, BOS 1, EOS 2, MASK 3, CLS 4, SEP 5`, i.e. 262 ids, id-for-id the ids of
transformers' `PerceiverTokenizer` and of `perceiver.tokenizer.ByteTokenizer` for plain text. A sequence is
`[CLS] bytes [SEP]`, truncated to `max_seq_len` ids; unlike the tokenizer, literal strings such as "[MASK]" inside a
text stay plain bytes.

`TextClassificationDataModule` reads files with `datasets.load_dataset("json" | "csv", data_files=...)`
(`.jsonl` / `.json` -> json, `.csv` -> csv, `.tsv` -> csv with tab delimiter). Local files need no network. Or it
reads a Hugging Face `datasets` dataset instead (`dataset=`: a Hub id such as `imdb`, downloaded once into the
`datasets` cache, or a folder written by `save_to_disk`; `train_split` / `val_split` / `test_split` name its splits).
Labels are strings (classes = sorted distinct training labels) or non-negative integers (classes
0..max training label; a `ClassLabel` column gives its names, and a split whose `ClassLabel` names differ from the
training split's is read by name), unless `class_names` is given. Without `val_file` /
`val_split`, a stratified `val_fraction` of the training data (fixed, independent of `seed`) is the validation set.

Batch (padded to the longest sequence of the batch):
`{"input_ids": int64 (B, L), "attention_mask": bool (B, L) True = token, "labels": int64 (B,)}`.

Attributes available right after construction (the files are read on first access): `num_classes`,
`class_names`, `vocab_size = 262`, `max_seq_len`, `pad_token_id = 0`.

Errors (`FileNotFoundError` / `ValueError`, naming the file or field): a missing file (in the constructor), an
unreadable file, a missing text / label field, an empty text or label value, a label unknown to the training file,
fewer than 2 classes found in the training labels, a TSV text cell holding tabs and line breaks (lines merged by a
stray double quote at the start of a cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perceiver.data._common import BaseDataModule, KeyedDataset, labels_by_name, require_file, stratified_split

# the byte vocabulary, defined once in perceiver.tokenizer (re-exported for the datasets)
from perceiver.tokenizer import BOS_ID as BOS_ID
from perceiver.tokenizer import CLS_ID as CLS_ID
from perceiver.tokenizer import EOS_ID as EOS_ID
from perceiver.tokenizer import MASK_ID as MASK_ID
from perceiver.tokenizer import NUM_SPECIAL_TOKENS as NUM_SPECIAL_TOKENS
from perceiver.tokenizer import PAD_ID as PAD_ID
from perceiver.tokenizer import SEP_ID as SEP_ID
from perceiver.tokenizer import VOCAB_SIZE as VOCAB_SIZE
from perceiver.tokenizer import decode_bytes as _decode_bytes
from perceiver.tokenizer import encode_bytes as _encode_bytes

SPLIT_SEED = 0


def encode_bytes(text: str) -> np.ndarray:
    """`perceiver.tokenizer.encode_bytes` as int64 `(n,)`: UTF-8 bytes of `text` + 6 (no special tokens)."""
    return np.asarray(_encode_bytes(text), dtype=np.int64)


def encode_sequence(text: str, max_seq_len: int) -> np.ndarray:
    """`[CLS] bytes [SEP]` as int64 `(L,)`, the bytes truncated so that `L <= max_seq_len`."""
    body = encode_bytes(text)[: max_seq_len - 2]
    return np.concatenate([[CLS_ID], body, [SEP_ID]]).astype(np.int64)


def decode_bytes(ids: Any) -> str:
    """Inverse of `encode_bytes` (`perceiver.tokenizer.decode_bytes`), skipping special ids; invalid UTF-8 is
    replaced."""
    return _decode_bytes(np.asarray(ids, dtype=np.int64).reshape(-1).tolist())


def pad_sequences(seqs: list[torch.Tensor], value: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors to `(B, L)` (L = longest); returns the padded tensor and the bool mask (True = real)."""
    length = max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=seqs[0].dtype)
    mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = True
    return out, mask


def read_table(
    path: str | Path, fields: list[str], cache_dir: str | None = None, text_fields: Sequence[str] = ()
) -> dict[str, list[Any]]:
    """Columns `fields` of a local JSONL / JSON / CSV / TSV file, read with HF `datasets`. CSV cells are kept as
    written: "NA", "null" or "None" are strings, an empty cell is "" (not a missing value), and the `text_fields`
    are never parsed as numbers ("007" stays "007").

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file for an unknown extension, a file
    that does not parse, no rows or a missing field (listing the fields that exist)."""
    p = require_file(path, "data file")
    suffix = p.suffix.lower()
    kwargs: dict[str, Any] = {}
    if suffix in (".jsonl", ".json"):
        builder = "json"
    elif suffix in (".csv", ".tsv"):
        builder = "csv"
        kwargs["keep_default_na"] = False  # pandas would read "NA", "null", "None", "nan", ... as missing values
        kwargs["converters"] = {field: str for field in text_fields}  # text, even where it looks like a number
        if suffix == ".tsv":
            kwargs["delimiter"] = "\t"
    else:
        raise ValueError(f"{p}: unsupported extension {suffix!r} (expected .jsonl, .json, .csv or .tsv)")
    import datasets
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        table = datasets.load_dataset(
            builder, data_files={"train": str(p)}, split="train", cache_dir=cache_dir, **kwargs
        )
    except Exception as e:
        chain: list[BaseException] = [e]  # datasets wraps the parser's error in a DatasetGenerationError
        while len(chain) < 10 and (link := chain[-1].__cause__ or chain[-1].__context__) is not None:
            chain.append(link)
        for cause in chain:
            if isinstance(cause, UnicodeDecodeError):
                raise ValueError(f"{p}: expected UTF-8 text, got bytes that are not ({cause})") from e
        cause = next((c for c in chain if type(c).__name__ != "DatasetGenerationError"), e)
        if "corresponds to no data" in str(cause):  # a header and no rows
            raise ValueError(f"{p}: no rows") from e
        raise ValueError(f"{p}: cannot be read as {builder} ({type(cause).__name__}: {cause})") from e
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()
    if len(table) == 0:
        raise ValueError(f"{p}: no rows")
    for field in fields:
        if field not in table.column_names:
            raise ValueError(f"{p}: field {field!r} not found (fields: {', '.join(table.column_names)})")
    columns = {field: table[field] for field in fields}
    if suffix == ".tsv":
        _check_tsv_rows(p, {f: columns[f] for f in text_fields if f in columns})
    return columns


def _check_tsv_rows(path: Path, texts: dict[str, Any]) -> None:
    """A ValueError for a TSV text cell that holds a tab and a line break: what the CSV parser makes of a cell that
    starts with an unclosed double quote (`"Great movie<TAB>pos`), which swallows the lines (and labels) after it
    up to the next quote, silently."""
    for field, values in texts.items():
        for i, value in enumerate(values):
            if isinstance(value, str) and "\t" in value and "\n" in value:
                raise ValueError(
                    f"{path}: row {i}: field {field!r} holds tabs and line breaks ({value[:60]!r}...): a double quote at "
                    "the start of a cell opens a quoted cell up to the next quote, merging the lines between into "
                    'one; quote such cells in full ("..." with "" for a quote inside) or remove the stray quote'
                )


class TextClassificationDataset(KeyedDataset):
    """Token id sequences (each `(L_i,)` int64) and integer labels."""

    def __init__(self, sequences: list[np.ndarray], labels: np.ndarray) -> None:
        self.sequences = sequences
        self.labels = labels

    def __len__(self) -> int:
        return len(self.sequences)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.sequences[index]), "labels": torch.tensor(int(self.labels[index]))}


def collate_text(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`{"input_ids": (B, L), "attention_mask": (B, L) bool, "labels": (B,)}`, padded with PAD (0)."""
    ids, mask = pad_sequences([e["input_ids"] for e in examples])
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([e["labels"] for e in examples])}


class TextClassificationDataModule(BaseDataModule):
    """Byte-level text classification from local files (see the module docstring).

    Args:
        train_file: JSONL / JSON / CSV / TSV file of training examples (or give `dataset`).
        val_file: validation file; if None a stratified `val_fraction` of `train_file` is held out (fixed).
        test_file: test file; `test_dataloader()` raises if None.
        dataset: a Hugging Face `datasets` dataset instead of files: a Hub id (`imdb`) or a `save_to_disk` folder;
            `dataset_name` its configuration, `revision` its Hub revision.
        train_split, val_split, test_split: the dataset's split names (`val_split=None`: a stratified
            `val_fraction` of the training split; `test_split=None`: no test set).
        text_field, label_field: column names of the text and the label.
        max_seq_len: longest sequence in ids, including `[CLS]` and `[SEP]` (>= 3); longer texts are truncated.
        batch_size, num_workers, seed: see `BaseDataModule`.
        val_fraction: share of `train_file` held out when `val_file` is None.
        class_names: fixes the classes (string labels must be among them, integer labels index them).
        cache_dir: HF `datasets` cache directory (default: the HF default, `~/.cache/huggingface/datasets`).
    """

    vocab_size = VOCAB_SIZE
    pad_token_id = PAD_ID

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        text_field: str = "text",
        label_field: str = "label",
        max_seq_len: int = 512,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
        val_fraction: float = 0.1,
        class_names: list[str] | None = None,
        cache_dir: str | None = None,
        dataset: str | None = None,
        dataset_name: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be >= 3 ([CLS] byte [SEP]), got {max_seq_len}")
        if (train_file is None) == (dataset is None):
            raise ValueError(
                f"expected train_file (local files) or dataset (a datasets dataset), got train_file={train_file!r} "
                f"and dataset={dataset!r}"
            )
        if dataset is not None and (val_file is not None or test_file is not None):
            raise ValueError("with dataset=, name its splits (val_split, test_split) instead of val_file / test_file")
        if isinstance(class_names, str):
            raise TypeError(f"class_names must be a list of class names, got the string {class_names!r}")
        if class_names is not None and len(set(class_names)) != len(class_names):
            twice = sorted({n for n in class_names if list(class_names).count(n) > 1})
            raise ValueError(f"class_names must be distinct, got {twice} more than once")
        held_out = val_file is None and val_split is None
        if held_out and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1) when no val_file is given, got {val_fraction}")
        self.splits: Any | None = None  # a `datasets.DatasetDict` with `dataset=`
        self.files: dict[str, str | Path]
        if dataset is not None:
            from perceiver.data.hf_datasets import open_dataset

            named = {"train": train_split, "val": val_split, "test": test_split}
            self.splits = open_dataset(dataset, dataset_name, None, revision, cache_dir, named)
            self.split_names = {role: split for role, split in named.items() if split is not None}
            # where rows come from, as messages name it: "imdb[test]"
            self.files = {role: f"{dataset}[{split}]" for role, split in self.split_names.items()}
        else:
            self.files = {
                split: require_file(f, f"{split} file")
                for split, f in (("train", train_file), ("val", val_file), ("test", test_file))
                if f is not None
            }
        self.text_field = text_field
        self.label_field = label_field
        self.max_seq_len = max_seq_len
        self.val_fraction = val_fraction
        self.cache_dir = cache_dir
        self._class_names = list(class_names) if class_names is not None else None
        self._rows: dict[str, tuple[list[str], np.ndarray]] | None = None
        self.collate_fn = collate_text
        self.save_hyperparameters()

    @property
    def class_names(self) -> list[str]:
        self._load()
        assert self._class_names is not None
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _load(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Read every file once: `{split: (texts, integer labels)}`; fixes `class_names`."""
        if self._rows is not None:
            return self._rows
        fields = [self.text_field, self.label_field]
        if self.splits is not None:
            raw = {role: self._split_columns(role, fields) for role in self.files}
            feature = self.splits[self.split_names["train"]].features[self.label_field]
            train_names = list(feature.names) if type(feature).__name__ == "ClassLabel" else None
            if self._class_names is None and train_names is not None:
                self._class_names = train_names
            for role, cols in raw.items():  # a split encoded with other ClassLabel names: its labels by name
                split_feature = self.splits[self.split_names[role]].features[self.label_field]
                if type(split_feature).__name__ == "ClassLabel" and list(split_feature.names) != train_names:
                    cols[self.label_field] = labels_by_name(cols[self.label_field], split_feature.names)
        else:
            raw = {split: read_table(p, fields, self.cache_dir, [self.text_field]) for split, p in self.files.items()}
        for split, cols in raw.items():
            for i, text in enumerate(cols[self.text_field]):
                if not isinstance(text, str):
                    raise ValueError(f"{self.files[split]}: row {i}: field {self.text_field!r} is {text!r}, not a text")
                if not text.strip():
                    raise ValueError(f"{self.files[split]}: row {i}: field {self.text_field!r} is empty")
        names = self._class_names or self._infer_classes(raw["train"][self.label_field], self.files["train"])
        self._class_names = names
        to_id = {name: i for i, name in enumerate(names)}
        self._rows = {}
        for split, cols in raw.items():
            ids = []
            for i, label in enumerate(cols[self.label_field]):
                idx = _label_id(label, to_id)
                if idx is None:
                    shown = f"{names[:20]}{' ...' if len(names) > 20 else ''}"
                    raise ValueError(
                        f"{self.files[split]}: row {i}: label {label!r} in field {self.label_field!r} is not a class "
                        f"(classes: {shown}; integer labels must be in 0..{len(names) - 1})"
                    )
                ids.append(idx)
            self._rows[split] = (cols[self.text_field], np.asarray(ids, dtype=np.int64))
        return self._rows

    def _split_columns(self, role: str, fields: list[str]) -> dict[str, list[Any]]:
        """Columns `fields` of the dataset split of `role`; ValueError naming the split and the columns there are."""
        assert self.splits is not None  # only with dataset=
        rows = self.splits[self.split_names[role]]
        for field in fields:
            if field not in rows.column_names:
                raise ValueError(
                    f"{self.files[role]}: field {field!r} not found (fields: {', '.join(rows.column_names)})"
                )
        if len(rows) == 0:
            raise ValueError(f"{self.files[role]}: no rows")
        return {field: rows[field] for field in fields}

    def _infer_classes(self, labels: list[Any], path: Path | str) -> list[str]:
        """Integer labels -> `["0", ..., str(max)]`; string labels -> sorted distinct strings."""
        for i, v in enumerate(labels):
            if _as_int(v) is None and not (isinstance(v, str) and v.strip()):
                raise ValueError(f"{path}: row {i}: label {v!r} in field {self.label_field!r} is empty or invalid")
        ints = [i for i in map(_as_int, labels) if i is not None]
        if len(ints) == len(labels):  # all integers
            if min(ints) < 0:
                raise ValueError(f"{path}: integer labels in field {self.label_field!r} must be >= 0, got {min(ints)}")
            names = [str(i) for i in range(max(ints) + 1)]
        else:
            names = sorted({str(v).strip() for v in labels})
        if len(names) < 2:
            raise ValueError(f"{path}: expected at least 2 classes in field {self.label_field!r}, got {names}")
        return names

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        rows = self._load()

        def make(texts: list[str], labels: np.ndarray) -> TextClassificationDataset:
            return TextClassificationDataset([encode_sequence(t, self.max_seq_len) for t in texts], labels)

        texts, labels = rows["train"]
        if "val" in rows:
            self.train_set = make(texts, labels)
            self.val_set = make(*rows["val"])
        else:
            keep, held = stratified_split(labels, self.val_fraction, SPLIT_SEED)
            if len(held) == 0:
                raise ValueError(f"{self.files['train']}: too few rows to hold out a validation split; give val_file")
            self.train_set = make([texts[i] for i in keep], labels[keep])
            self.val_set = make([texts[i] for i in held], labels[held])
        if "test" in rows:
            self.test_set = make(*rows["test"])


def _as_int(value: Any) -> int | None:
    """Integer value of an int / bool / integral float label, else None."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _label_id(value: Any, to_id: dict[str, int]) -> int | None:
    """Class index of a label: integers index the classes, strings are looked up by name; None if invalid."""
    i = _as_int(value)
    if i is not None:
        return i if 0 <= i < len(to_id) else None
    if isinstance(value, str):
        return to_id.get(value.strip())
    return None
