"""Byte-level word segmentation of the pydoc topics: spaces removed, predict which bytes start a word.

The text is `pydoc_data.topics` split into train / validation topics exactly as `PydocMLMDataModule`
(`perceiver.data.pydoc.split_topics`, the validation topics are never seen in training). A topic's words are its
whitespace-separated tokens (`str.split()`: "print(x)," is one word); they are written without any whitespace, as
bytes + 6, and packed greedily, whole words, into sequences `[CLS] bytes [SEP]` of at most `max_seq_len` ids (a word
longer than a sequence is cut). The label of a byte is 1 if it is the first byte of a word, else 0; CLS / SEP /
padding get -100, and so does the first byte of every sequence: packing never splits a word, so it always starts one
(a free point that is not scored).

Training sequences start at a random word of their packed chunk, drawn from `(seed, epoch, index)` (chunk
boundaries move every epoch); validation sequences are the fixed packing.

Batch: `{"input_ids": int64 (B, L), "attention_mask": bool (B, L) True = token, "labels": int64 (B, L) in {0, 1} or
-100}`. `heuristic_f1()` is the F1 of word starts of a rule (a word starts at the first byte, after closing
punctuation, at a lower-to-upper case change and at a letter / digit boundary) on the validation sequences.
"""

from __future__ import annotations

import numpy as np
import torch

from perceiver.data._common import BaseDataModule, KeyedDataset, sample_rng
from perceiver.data.pydoc import pydoc_topics, split_topics
from perceiver.data.text import CLS_ID, NUM_SPECIAL_TOKENS, PAD_ID, SEP_ID, VOCAB_SIZE, pad_sequences

IGNORE_INDEX = -100
_TRAIN_STREAM = 2


def topic_words(text: str) -> list[bytes]:
    """The whitespace-separated words of `text` as UTF-8 bytes."""
    return [w.encode("utf-8") for w in text.split()]


def pack_words(words: list[bytes], start: int, max_bytes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Words `start, start + 1, ...` packed into at most `max_bytes` bytes: `(ids (n,), starts (n,), next word)`.

    `ids` are bytes + 6; `starts` is 1 at the first byte of each word. A word longer than `max_bytes` alone is cut.
    """
    ids: list[int] = []
    starts: list[int] = []
    end, used = start, 0
    while end < len(words) and (used + len(words[end]) <= max_bytes or used == 0):
        word = words[end][: max_bytes - used]
        ids.extend(word)
        starts.extend([1] + [0] * (len(word) - 1))
        used += len(word)
        end += 1
    return np.asarray(ids, dtype=np.int64) + NUM_SPECIAL_TOKENS, np.asarray(starts, dtype=np.int64), end


def chunk_starts(words: list[bytes], max_bytes: int) -> list[int]:
    """First word of each greedy packed chunk of `words`."""
    out, start = [], 0
    while start < len(words):
        out.append(start)
        start = pack_words(words, start, max_bytes)[2]
    return out


def with_specials(ids: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] ids [SEP]` and labels `[-100, -100] starts[1:] [-100]` (the first byte always starts a word)."""
    return (
        np.concatenate([[CLS_ID], ids, [SEP_ID]]).astype(np.int64),
        np.concatenate([[IGNORE_INDEX, IGNORE_INDEX], starts[1:], [IGNORE_INDEX]]).astype(np.int64),
    )


class SegmentationDataset(KeyedDataset):
    """Packed chunks of the words of some topics; with `shift=True` item `i` of epoch `e` starts at a random word of
    chunk `i` (drawn from `(seed, epoch, i)`), else at its first word."""

    def __init__(self, topics: list[list[bytes]], max_bytes: int, shift: bool = False, seed: int = 0) -> None:
        self.topics, self.max_bytes, self.shift, self.seed = topics, max_bytes, shift, seed
        self.chunks: list[tuple[int, int, int]] = []  # (topic, first word, next chunk's first word)
        for t, words in enumerate(topics):
            starts = chunk_starts(words, max_bytes)
            self.chunks += [(t, s, e) for s, e in zip(starts, starts[1:] + [len(words)])]

    def __len__(self) -> int:
        return len(self.chunks)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        t, start, end = self.chunks[index]
        if self.shift and end - start > 1:
            start += int(sample_rng(self.seed, _TRAIN_STREAM, epoch, index).integers(0, end - start))
        ids, starts, _ = pack_words(self.topics[t], start, self.max_bytes)
        ids, labels = with_specials(ids, starts)
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}


def collate_segments(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    input_ids, attention_mask = pad_sequences([e["input_ids"] for e in examples], PAD_ID)
    labels, _ = pad_sequences([e["labels"] for e in examples], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def heuristic_starts(input_ids: torch.Tensor) -> torch.Tensor:
    """Rule-based word starts `(B, L)` bool from ids `(B, L)`: the first byte after CLS, a letter or digit after
    closing punctuation (`.,;:)]}!?'"`), an upper-case letter after a lower-case one, a letter after a digit and a
    digit after a letter."""
    b = input_ids - NUM_SPECIAL_TOKENS
    prev = torch.cat([torch.full_like(b[:, :1], -1), b[:, :-1]], dim=1)

    def isin(x: torch.Tensor, chars: bytes) -> torch.Tensor:
        return torch.isin(x, torch.tensor(list(chars)))

    lower, upper, digit = (bytes(range(97, 123)), bytes(range(65, 91)), bytes(range(48, 58)))
    alnum = lower + upper + digit
    first = prev == CLS_ID - NUM_SPECIAL_TOKENS
    after_punct = isin(prev, b".,;:)]}!?'\"") & isin(b, alnum)
    case = isin(prev, lower) & isin(b, upper)
    letter_digit = (isin(prev, lower + upper) & isin(b, digit)) | (isin(prev, digit) & isin(b, lower + upper))
    return first | after_punct | case | letter_digit


def f1_counts(pred: torch.Tensor, labels: torch.Tensor) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of word starts over the labelled positions."""
    valid = labels != IGNORE_INDEX
    pred, gold = pred.bool() & valid, (labels == 1) & valid
    return int((pred & gold).sum()), int((pred & ~gold).sum()), int((~pred & gold).sum())


def f1_score(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / max(2 * tp + fp + fn, 1)


class SegmentPydocDataModule(BaseDataModule):
    """Word segmentation of space-less pydoc text (see the module docstring).

    Args:
        max_seq_len: ids per sequence including `[CLS]` and `[SEP]` (>= 3).
        batch_size, num_workers, seed: see `BaseDataModule`; `seed` drives training order and chunk shifts.
        val_fraction: share of the bytes (whole topics) held out for validation (the MLM split).
    """

    vocab_size = VOCAB_SIZE
    pad_token_id = PAD_ID
    num_labels = 2

    def __init__(
        self,
        max_seq_len: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be >= 3 ([CLS] byte [SEP]), got {max_seq_len}")
        self.max_seq_len = max_seq_len
        self.val_fraction = val_fraction
        self.topics = pydoc_topics()
        self.train_topics, self.val_topics = split_topics(self.topics, val_fraction)
        self.collate_fn = collate_segments
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        words = {name: topic_words(text) for name, text in self.topics.items()}
        max_bytes = self.max_seq_len - 2
        self.train_set = SegmentationDataset([words[n] for n in self.train_topics], max_bytes, True, self.seed)
        self.val_set = SegmentationDataset([words[n] for n in self.val_topics], max_bytes)
        self.test_set = self.val_set

    def heuristic_f1(self) -> float:
        """F1 of `heuristic_starts` on the validation word starts."""
        self.setup()
        tp = fp = fn = 0
        for batch in self.unsharded_val_dataloader():
            counts = f1_counts(heuristic_starts(batch["input_ids"]), batch["labels"])
            tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
        return f1_score(tp, fp, fn)
