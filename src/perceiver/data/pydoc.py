"""Byte-level masked language modelling on the English text that ships with Python (`pydoc_data.topics`).

`pydoc_data.topics.topics` maps ~80 help topics ("assert", "types", ...) to their reference text (~466 kB of
UTF-8). Topics are split, whole, into train and validation: the topic names are shuffled with a fixed generator
(independent of `seed`) and taken into validation until they hold `val_fraction` of the bytes. The exact text
depends on the Python version (it is the documentation of the running interpreter).

Each topic is encoded as bytes + 6 (see `perceiver.data.text`) and cut into chunks of `max_seq_len - 2` bytes,
each a sequence `[CLS] chunk [SEP]`; chunks never cross topics, the last chunk of a topic is shorter.

Masking (`MLMCollator`, BERT-style): every byte token (never PAD / CLS / SEP) is selected with probability
`mask_prob` (at least one per sequence); a selected token becomes MASK (3) with probability 0.8, a random byte
with 0.1 and stays unchanged with 0.1. Masks are drawn per sequence from `(seed, epoch, index)`: new every
training epoch, fixed for validation (a constant seed, epoch 0), so validation accuracy is comparable across
epochs and runs.

Batch: `{"input_ids": int64 (B, L) with the masked inputs, "attention_mask": bool (B, L) True = token,
"labels": int64 (B, L) original ids at selected positions, -100 elsewhere}`, L = longest sequence of the batch
(<= max_seq_len).

Attributes available right after construction: `vocab_size = 262`, `max_seq_len`, `mask_token_id = 3`,
`pad_token_id = 0`, `train_topics`, `val_topics`. `test_dataloader()` serves the validation topics (there is no
third split). `most_frequent_byte_baseline()` gives the accuracy of always predicting the most frequent training
byte on the validation masked positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader

from perceiver.data._common import BaseDataModule, KeyedDataset, sample_rng
from perceiver.data.text import (
    CLS_ID,
    MASK_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    SEP_ID,
    VOCAB_SIZE,
    encode_bytes,
    pad_sequences,
)

SPLIT_SEED = 0
VAL_MASK_SEED = 0
IGNORE_INDEX = -100
_TRAIN_STREAM, _VAL_STREAM = 0, 1


def pydoc_topics() -> dict[str, str]:
    """The `pydoc_data.topics.topics` dict (topic name -> text)."""
    from pydoc_data.topics import topics

    return dict(topics)


def split_topics(topics: dict[str, str], val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Deterministic split of topic names into `(train, val)` with about `val_fraction` of the UTF-8 bytes in val.

    Topics are visited in a fixed random order; one is added to val unless that would exceed 1.5x the target.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    names = sorted(topics)
    sizes = {n: len(topics[n].encode("utf-8")) for n in names}
    target = val_fraction * sum(sizes.values())
    val: list[str] = []
    total = 0
    for i in np.random.default_rng(SPLIT_SEED).permutation(len(names)):
        name = names[i]
        if total >= target:
            break
        if total + sizes[name] <= 1.5 * target:
            val.append(name)
            total += sizes[name]
    val_set = set(val)
    return [n for n in names if n not in val_set], sorted(val)


def chunk_topics(topics: dict[str, str], names: list[str], max_seq_len: int) -> list[np.ndarray]:
    """`[CLS] chunk [SEP]` int64 sequences `(L_i,)`, L_i <= max_seq_len, of every topic in `names` in order."""
    step = max_seq_len - 2
    out = []
    for name in names:
        ids = encode_bytes(topics[name])
        for start in range(0, len(ids), step):
            out.append(np.concatenate([[CLS_ID], ids[start : start + step], [SEP_ID]]).astype(np.int64))
    return out


def mask_sequence(ids: np.ndarray, rng: np.random.Generator, mask_prob: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """BERT-style masking of one sequence `(L,)`: returns `(inputs, labels)`, both int64 `(L,)`.

    Only byte ids (>= 6) are selected, each with probability `mask_prob` (at least one if the sequence has a byte);
    selected positions get MASK (80%), a random byte (10%) or keep their id (10%); `labels` holds the original id at
    selected positions and -100 elsewhere.
    """
    maskable = ids >= NUM_SPECIAL_TOKENS
    selected = maskable & (rng.random(len(ids)) < mask_prob)
    if not selected.any() and maskable.any():
        selected[rng.choice(np.flatnonzero(maskable))] = True
    labels = np.where(selected, ids, IGNORE_INDEX)
    action = rng.random(len(ids))
    inputs = ids.copy()
    inputs[selected & (action < 0.8)] = MASK_ID
    rand = selected & (action >= 0.8) & (action < 0.9)
    inputs[rand] = rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE, size=int(rand.sum()))
    return inputs, labels


class SequenceItem(TypedDict):
    """A `SequenceDataset` item: the unmasked ids `(L,)` and the `(epoch, index)` its mask is drawn from."""

    input_ids: np.ndarray
    epoch: int
    index: int


class SequenceDataset(KeyedDataset):
    """Unmasked id sequences; items carry their `(epoch, index)` so the collator can draw per-sequence masks."""

    def __init__(self, sequences: list[np.ndarray]) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def get(self, index: int, epoch: int) -> SequenceItem:
        return {"input_ids": self.sequences[index], "epoch": epoch, "index": index}


class MLMCollator:
    """Masks and pads a list of `SequenceDataset` items into an MLM batch (see the module docstring).

    The mask of a sequence is drawn from `sample_rng(seed, stream, epoch, index)`; `fixed=True` ignores the epoch
    (validation).
    """

    def __init__(self, seed: int, stream: int, mask_prob: float = 0.15, fixed: bool = False) -> None:
        self.seed, self.stream, self.mask_prob, self.fixed = seed, stream, mask_prob, fixed

    def __call__(self, examples: list[SequenceItem]) -> dict[str, torch.Tensor]:
        inputs, labels = [], []
        for e in examples:
            epoch = 0 if self.fixed else int(e["epoch"])
            rng = sample_rng(self.seed, self.stream, epoch, int(e["index"]))
            x, y = mask_sequence(e["input_ids"], rng, self.mask_prob)
            inputs.append(torch.from_numpy(x))
            labels.append(torch.from_numpy(y))
        input_ids, attention_mask = pad_sequences(inputs, PAD_ID)
        label_ids, _ = pad_sequences(labels, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


class _MLMDataModule(Protocol):
    """What `MaskedBytes.most_frequent_byte_baseline` needs of the datamodule it is mixed into."""

    def setup(self, stage: str | None = None) -> None: ...

    def most_frequent_byte_id(self) -> int: ...

    def unsharded_val_dataloader(self) -> DataLoader: ...


class MaskedBytes:
    """What the MLM datamodules share (mixed into a `BaseDataModule`): the byte vocabulary's ids, the checked masking
    options and their collators (`_init_masking`), and `most_frequent_byte_baseline()` from the subclass's
    `most_frequent_byte_id()` (the baseline `MaskedLMTask` logs beside the model's accuracy)."""

    vocab_size = VOCAB_SIZE
    mask_token_id = MASK_ID
    pad_token_id = PAD_ID
    collate_fn: Callable[[list[Any]], Any] | None  # as `BaseDataModule`'s
    val_collate_fn: Callable[[list[Any]], Any] | None

    def _init_masking(self, max_seq_len: int, mask_prob: float, seed: int) -> None:
        """Check and keep `max_seq_len` / `mask_prob`; training masks from `seed`, fixed validation masks."""
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be >= 3 ([CLS] byte [SEP]), got {max_seq_len}")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.max_seq_len, self.mask_prob = max_seq_len, mask_prob
        self.collate_fn = MLMCollator(seed, _TRAIN_STREAM, mask_prob)
        self.val_collate_fn = MLMCollator(VAL_MASK_SEED, _VAL_STREAM, mask_prob, fixed=True)

    def most_frequent_byte_baseline(self: _MLMDataModule) -> float:
        """Accuracy of always predicting `most_frequent_byte_id()` on the (fixed) validation masked positions."""
        self.setup()
        best = self.most_frequent_byte_id()
        hits = total = 0
        for batch in self.unsharded_val_dataloader():
            target = batch["labels"][batch["labels"] != IGNORE_INDEX]
            hits += int((target == best).sum())
            total += target.numel()
        return hits / max(total, 1)


class PydocMLMDataModule(MaskedBytes, BaseDataModule):
    """Masked byte language modelling on Python's pydoc topics (see the module docstring).

    Args:
        max_seq_len: ids per sequence including `[CLS]` and `[SEP]` (>= 3).
        batch_size, num_workers, seed: see `BaseDataModule`; `seed` drives training order and training masks.
        val_fraction: share of the bytes (whole topics) held out for validation.
        mask_prob: probability that a byte token is selected for prediction.
    """

    def __init__(
        self,
        max_seq_len: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
        val_fraction: float = 0.1,
        mask_prob: float = 0.15,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self._init_masking(max_seq_len, mask_prob, self.seed)
        self.val_fraction = val_fraction
        self.topics = pydoc_topics()
        self.train_topics, self.val_topics = split_topics(self.topics, val_fraction)
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = SequenceDataset(chunk_topics(self.topics, self.train_topics, self.max_seq_len))
        self.val_set = SequenceDataset(chunk_topics(self.topics, self.val_topics, self.max_seq_len))
        self.test_set = self.val_set

    def most_frequent_byte_id(self) -> int:
        """Token id (byte + 6) of the most frequent byte of the training topics."""
        counts = np.bincount(np.concatenate([encode_bytes(self.topics[n]) for n in self.train_topics]))
        return int(np.argmax(counts))
