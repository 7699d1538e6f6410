"""Byte-level causal language modelling on `pydoc_data.topics`, with whole topics held out for validation and test.

Topics are split with `perceiver.data.pydoc.split_topics` (the MLM datamodule's split, same validation topics for
the same `val_fraction`); the remaining topics are split again the same way into train and test. Each split is one
stream: its topics' UTF-8 bytes + 6 (ids of `ByteTokenizer`), topics in name order, separated by `"\\n\\n"`.

Training: window `i` of an epoch starts at `i * stride + j` with `j` drawn from `(seed, epoch, i)` in
[0, stride); `stride` = `num_targets`, so an epoch covers the stream about once. Batch `{"input_ids" (B, L),
"labels" (B, L)}` with `labels = input_ids` (the model shifts: the latent at t predicts t + 1).

Evaluation (fixed, independent of `seed` and of `max_seq_len`): the scored bytes are stream positions
`[eval_context, len)`, cut in chunks of `num_targets`; the window of a chunk is the `max_seq_len` bytes ending with
it, `labels` are -100 except on the chunk. So models with different windows (e.g. Perceiver AR and a decoder with
a short context) are scored on exactly the same bytes, each with at least `max_seq_len - num_targets` bytes of
context. `num_targets` must be < the model's latents (the latents predict their next byte).
"""

from __future__ import annotations

import numpy as np
import torch

from perceiver.data._common import BaseDataModule, KeyedDataset, sample_rng
from perceiver.data.pydoc import pydoc_topics, split_topics
from perceiver.data.text import NUM_SPECIAL_TOKENS, PAD_ID, VOCAB_SIZE, encode_bytes

IGNORE_INDEX = -100
SEPARATOR = "\n\n"
_TRAIN_STREAM = 2


def topic_stream(topics: dict[str, str], names: list[str]) -> np.ndarray:
    """int64 `(n,)`: byte ids (+6) of the topics `names` in name order, joined by a blank line."""
    return encode_bytes(SEPARATOR.join(topics[n] for n in sorted(names)))


def split_train_val_test(
    topics: dict[str, str], val_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[list[str], list[str], list[str]]:
    """Topic names `(train, val, test)`: val as `split_topics(topics, val_fraction)`, then test out of the rest."""
    rest, val = split_topics(topics, val_fraction)
    train, test = split_topics({n: topics[n] for n in rest}, test_fraction / (1.0 - val_fraction))
    return train, val, test


class RandomWindows(KeyedDataset):
    """Training windows `(L,)` of a stream at jittered offsets (see the module docstring)."""

    def __init__(self, stream: np.ndarray, length: int, stride: int, seed: int) -> None:
        if len(stream) <= length:
            raise ValueError(f"expected a training stream longer than max_seq_len={length}, got {len(stream)} bytes")
        self.stream, self.length, self.stride, self.seed = stream, length, stride, seed
        self.count = (len(stream) - length) // stride + 1

    def __len__(self) -> int:
        return self.count

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        jitter = int(sample_rng(self.seed, _TRAIN_STREAM, epoch, index).integers(self.stride))
        start = min(index * self.stride + jitter, len(self.stream) - self.length)
        ids = torch.from_numpy(self.stream[start : start + self.length].copy())
        return {"input_ids": ids, "labels": ids.clone()}


class ScoredWindows(KeyedDataset):
    """Evaluation windows: chunk `i` scores `stream[c + i * T : c + (i + 1) * T]` (c = eval_context, T = targets)."""

    def __init__(self, stream: np.ndarray, length: int, num_targets: int, eval_context: int) -> None:
        if eval_context < length - num_targets:
            raise ValueError(
                f"expected eval_context >= max_seq_len - num_targets = {length - num_targets}, got {eval_context}"
            )
        if len(stream) <= eval_context:
            raise ValueError(f"expected a held-out stream longer than eval_context={eval_context}, got {len(stream)}")
        self.stream, self.length, self.num_targets, self.eval_context = stream, length, num_targets, eval_context
        self.count = -(-(len(stream) - eval_context) // num_targets)

    def __len__(self) -> int:
        return self.count

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        first = self.eval_context + index * self.num_targets
        end = min(first + self.num_targets, len(self.stream))
        ids = torch.from_numpy(self.stream[end - self.length : end].copy())
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[self.length - (end - first) :] = ids[self.length - (end - first) :]
        return {"input_ids": ids, "labels": labels}


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


class PydocARDataModule(BaseDataModule):
    """Byte-level causal LM on Python's pydoc topics (see the module docstring).

    Args:
        max_seq_len: window L (the model's `max_seq_len`, or less).
        num_targets: training stride and scored bytes per evaluation window (< the model's latents).
        eval_context: first scored position of the held-out streams (>= L - num_targets; keep it fixed across
            models that are compared).
        val_fraction / test_fraction: share of the bytes (whole topics) held out for validation / test.
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    vocab_size = VOCAB_SIZE
    pad_token_id = PAD_ID

    def __init__(
        self,
        max_seq_len: int = 512,
        num_targets: int = 64,
        eval_context: int = 1024,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not 1 <= num_targets < max_seq_len:
            raise ValueError(f"expected 1 <= num_targets < max_seq_len={max_seq_len}, got {num_targets}")
        self.max_seq_len, self.num_targets, self.eval_context = max_seq_len, num_targets, eval_context
        self.topics = pydoc_topics()
        self.train_topics, self.val_topics, self.test_topics = split_train_val_test(
            self.topics, val_fraction, test_fraction
        )
        self.collate_fn = collate
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        L, T, c = self.max_seq_len, self.num_targets, self.eval_context
        self.train_set = RandomWindows(topic_stream(self.topics, self.train_topics), L, T, self.seed)
        self.val_set = ScoredWindows(topic_stream(self.topics, self.val_topics), L, T, c)
        self.test_set = ScoredWindows(topic_stream(self.topics, self.test_topics), L, T, c)

    def unigram_bpb(self, split: str = "val") -> float:
        """Bits per byte of the training byte frequencies (add-one smoothed) on a held-out split's scored bytes."""
        names = self.val_topics if split == "val" else self.test_topics
        counts = np.bincount(topic_stream(self.topics, self.train_topics), minlength=VOCAB_SIZE) + 1.0
        counts[:NUM_SPECIAL_TOKENS] = 0
        scored = topic_stream(self.topics, names)[self.eval_context :]
        return float(-np.log2(counts[scored] / counts.sum()).mean())
