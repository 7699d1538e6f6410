"""Byte-level causal language modelling (Perceiver AR) on your own text files.

    TextFilesARDataModule(train="corpus/*.txt", val="held-out/*.txt", max_seq_len=512, num_targets=32)
    perceiver fit --config configs/examples/text-files-ar.yaml --data.train "corpus/*.txt" [--data.val "held-out/*.txt"]

Files: a path, a glob pattern or a list of them (matches sorted by path). `.jsonl` / `.json` / `.csv` / `.tsv` files
give the `text_field` column of each row (read with HF `datasets`); any other file is one document, its whole text,
which must be UTF-8 (an error names the file otherwise; a byte order mark is dropped and CRLF / CR line endings are
read as LF, as Python and `datasets`' text builder read text). Each split is one stream: the documents' UTF-8
bytes + 6 (the ids of `ByteTokenizer`), joined by a blank line. Without `val` files the last `val_fraction` of the
training stream is held out for validation (training windows never reach into it); without `test` files there is no
test split. A `val` or `test` file that the `train` patterns match too is named in a warning (validation would
score text the model trains on).

Causal LM (`TextFilesARDataModule`): windows and scoring are those of `perceiver.data.ar_pydoc`: training windows at
jittered offsets, `num_targets` apart; held-out bytes from `eval_context` on are scored in chunks of `num_targets`,
each after at least `max_seq_len - num_targets` bytes of context (`eval_context` defaults to that). `unigram_bpb`
gives the baseline of the training byte frequencies, which `CausalLMTask` logs beside the model's bits per byte.

Masked LM (`TextFilesMLMDataModule`): each document is cut into `[CLS] chunk [SEP]` sequences of at most `max_seq_len`
ids (chunks never cross documents) and masked as `perceiver.data.pydoc` masks (BERT-style, `mask_prob`; new masks
every training epoch, fixed ones for evaluation); without `val` files the last `val_fraction` of the training
sequences are held out; without `test` files `test_dataloader()` serves the validation split, as the pydoc module.
`most_frequent_byte_baseline()` gives the accuracy `MaskedLMTask` logs beside the model's.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from perceiver.data._common import BaseDataModule
from perceiver.data.ar_pydoc import SEPARATOR, RandomWindows, ScoredWindows, collate
from perceiver.data.pydoc import MaskedBytes, SequenceDataset, chunk_topics
from perceiver.data.text import NUM_SPECIAL_TOKENS, PAD_ID, VOCAB_SIZE, encode_bytes, read_table

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")

Files = str | Path | Sequence[str | Path]


def expand_files(files: Files, split: str) -> list[Path]:
    """The files of `files` (paths or glob patterns), each pattern's matches sorted; an error names what matched
    nothing. An existing file is taken as named, so a name with glob characters ("notes [draft].txt") is found."""
    patterns = [files] if isinstance(files, str | Path) else list(files)
    if not patterns:
        raise ValueError(f"expected {split} files (a path, a glob pattern or a list of them), got none")
    out: list[Path] = []
    for pattern in patterns:
        if Path(pattern).expanduser().is_file():
            out.append(Path(pattern).expanduser())
            continue
        matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            if Path(pattern).expanduser().is_dir():
                hint = str(Path(pattern) / "**" / "*.txt")
                raise FileNotFoundError(
                    f"expected {split} files, got the folder {str(pattern)!r}; give a glob: {hint!r}"
                )
            raise FileNotFoundError(f"no {split} file matches {str(pattern)!r}")
        out += [Path(m) for m in matches]
    return out


def read_text_file(path: Path) -> str:
    """The text of a UTF-8 file (a leading byte order mark is not text; CRLF / CR line endings read as LF);
    `ValueError` naming the file otherwise."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: expected UTF-8 text, got bytes that are not ({e})") from None


def read_documents(paths: list[Path], text_field: str) -> list[str]:
    """The documents of `paths`: the `text_field` of every row of a table file, the whole text of any other."""
    docs: list[str] = []
    for path in paths:
        if path.suffix.lower() in TABLE_SUFFIXES:
            column = read_table(path, [text_field], text_fields=[text_field])[text_field]
            docs += [str(text) for text in column if text is not None and text != ""]  # "": an empty CSV cell
            continue
        docs.append(read_text_file(path))
    return docs


def text_stream(files: Files, split: str, text_field: str = "text") -> np.ndarray:
    """int64 `(n,)`: byte ids (+6) of the documents of `files`, joined by a blank line."""
    stream = encode_bytes(SEPARATOR.join(read_documents(expand_files(files, split), text_field)))
    if len(stream) == 0:
        raise ValueError(f"expected text in the {split} files {files!r}, got none")
    return stream


class _TextFiles(BaseDataModule):
    """The split files and their options, shared by the causal and masked LM datamodules below."""

    def __init__(
        self,
        files: dict[str, Files | None],
        text_field: str,
        val_fraction: float,
        batch_size: int,
        num_workers: int,
        seed: int | None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if files["val"] is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"expected val_fraction in (0, 1) (no val files given), got {val_fraction}")
        self.files, self.text_field, self.val_fraction = files, text_field, val_fraction

    def _check_disjoint(self) -> None:
        """Warn naming the `val` / `test` files that are training files too (`--data.train "corpus/**/*.txt"` with
        `--data.val "corpus/val/*.txt"`): validation scores text the model trains on (on purpose only to check that
        a model can learn a small text by heart)."""
        train_files = self.files["train"]
        assert train_files is not None  # the constructors' train: Files
        train = {path.resolve() for path in expand_files(train_files, "train")}
        for split in ("val", "test"):
            files = self.files[split]
            both = [str(p) for p in expand_files(files, split) if p.resolve() in train] if files is not None else []
            if both:
                rank_zero_warn(
                    f"{len(both)} {split} file(s) are training files too, so {split} scores text the model trains "
                    f"on: {both[:5]}{' ...' if len(both) > 5 else ''}; give train patterns that leave them out"
                )


class TextFilesARDataModule(_TextFiles):
    """Byte-level causal LM on local text files (see the module docstring).

    Args:
        train, val, test: the files of each split (a path, a glob pattern or a list); val None: the last
            `val_fraction` of the training stream; test None: no test split.
        text_field: the column holding the text in `.jsonl` / `.json` / `.csv` / `.tsv` files.
        max_seq_len: window L (the model's `max_seq_len`, or less).
        num_targets: training stride and scored bytes per evaluation window (< the model's latents).
        eval_context: first scored position of the held-out streams (>= L - num_targets; None: L - num_targets).
        val_fraction: share of the training stream held out when there are no `val` files, in (0, 1).
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    vocab_size = VOCAB_SIZE
    pad_token_id = PAD_ID

    def __init__(
        self,
        train: Files,
        val: Files | None = None,
        test: Files | None = None,
        text_field: str = "text",
        max_seq_len: int = 512,
        num_targets: int = 64,
        eval_context: int | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        files = {"train": train, "val": val, "test": test}
        super().__init__(files, text_field, val_fraction, batch_size, num_workers, seed)
        if not 1 <= num_targets < max_seq_len:
            raise ValueError(f"expected 1 <= num_targets < max_seq_len={max_seq_len}, got {num_targets}")
        self.max_seq_len, self.num_targets = max_seq_len, num_targets
        self.eval_context = max_seq_len - num_targets if eval_context is None else eval_context
        self.collate_fn = collate
        self.streams: dict[str, np.ndarray] = {}
        self.save_hyperparameters()

    def _load_streams(self) -> dict[str, np.ndarray]:
        if self.streams:
            return self.streams
        self._check_disjoint()
        train_files = self.files["train"]
        assert train_files is not None  # the constructor's train: Files
        train = text_stream(train_files, "train", self.text_field)
        if self.files["val"] is None:
            cut = len(train) - int(len(train) * self.val_fraction)
            train, val = train[:cut], train[cut:]
        else:
            val = text_stream(self.files["val"], "val", self.text_field)
        streams = {"train": train, "val": val}
        if self.files["test"] is not None:
            streams["test"] = text_stream(self.files["test"], "test", self.text_field)
        self.streams = streams
        return streams

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        streams = self._load_streams()
        L, T, c = self.max_seq_len, self.num_targets, self.eval_context
        self.train_set = RandomWindows(streams["train"], L, T, self.seed)
        self.val_set = ScoredWindows(streams["val"], L, T, c)
        self.test_set = ScoredWindows(streams["test"], L, T, c) if "test" in streams else None

    def unigram_bpb(self, split: str = "val") -> float:
        """Bits per byte of the training byte frequencies (add-one smoothed) on a held-out split's scored bytes."""
        streams = self._load_streams()
        if split not in streams or split == "train":
            raise ValueError(f"expected a held-out split of {sorted(set(streams) - {'train'})}, got {split!r}")
        counts = np.bincount(streams["train"], minlength=VOCAB_SIZE) + 1.0
        counts[:NUM_SPECIAL_TOKENS] = 0
        scored = streams[split][self.eval_context :]
        return float(-np.log2(counts[scored] / counts.sum()).mean())


class TextFilesMLMDataModule(MaskedBytes, _TextFiles):
    """Masked byte language modelling on local text files (see the module docstring).

    Args:
        train, val, test: the files of each split (a path, a glob pattern or a list); val None: the last
            `val_fraction` of the training sequences; test None: the validation split.
        text_field: the column holding the text in `.jsonl` / `.json` / `.csv` / `.tsv` files.
        max_seq_len: ids per sequence including `[CLS]` and `[SEP]` (>= 3).
        val_fraction: share of the training sequences held out when there are no `val` files, in (0, 1).
        mask_prob: probability that a byte token is selected for prediction.
        batch_size, num_workers, seed: see `BaseDataModule`; `seed` drives training order and training masks.
    """

    def __init__(
        self,
        train: Files,
        val: Files | None = None,
        test: Files | None = None,
        text_field: str = "text",
        max_seq_len: int = 256,
        val_fraction: float = 0.1,
        mask_prob: float = 0.15,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        files = {"train": train, "val": val, "test": test}
        super().__init__(files, text_field, val_fraction, batch_size, num_workers, seed)
        self._init_masking(max_seq_len, mask_prob, self.seed)
        self.sequences: dict[str, list[np.ndarray]] = {}
        self.save_hyperparameters()

    def _chunks(self, split: str) -> list[np.ndarray]:
        files = self.files[split]
        assert files is not None  # called for the splits that have files
        docs = read_documents(expand_files(files, split), self.text_field)
        named = {f"{i:08d}": doc for i, doc in enumerate(docs) if doc}
        chunks = chunk_topics(named, sorted(named), self.max_seq_len)
        if not chunks:
            raise ValueError(f"expected text in the {split} files {self.files[split]!r}, got none")
        return chunks

    def _load_sequences(self) -> dict[str, list[np.ndarray]]:
        if self.sequences:
            return self.sequences
        self._check_disjoint()
        train = self._chunks("train")
        if self.files["val"] is None:
            held = int(len(train) * self.val_fraction)
            if held < 1 or held == len(train):
                raise ValueError(
                    f"expected enough training text to hold out val_fraction={self.val_fraction} of its "
                    f"{len(train)} sequences of max_seq_len={self.max_seq_len} for validation, got {held} held out; "
                    f"give val files or more text"
                )
            train, val = train[: len(train) - held], train[len(train) - held :]
        else:
            val = self._chunks("val")
        self.sequences = {"train": train, "val": val}
        if self.files["test"] is not None:
            self.sequences["test"] = self._chunks("test")
        return self.sequences

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sequences = self._load_sequences()
        self.train_set = SequenceDataset(sequences["train"])
        self.val_set = SequenceDataset(sequences["val"])
        self.test_set = SequenceDataset(sequences["test"]) if "test" in sequences else self.val_set

    def most_frequent_byte_id(self) -> int:
        """Token id (byte + 6) of the most frequent byte of the training sequences."""
        counts = np.bincount(np.concatenate(self._load_sequences()["train"]), minlength=VOCAB_SIZE)
        counts[:NUM_SPECIAL_TOKENS] = 0
        return int(np.argmax(counts))
