"""Handwritten digits from scikit-learn (`sklearn.datasets.load_digits`): real data, bundled, works offline.

1797 grey images of 8x8 pixels with 17 grey levels (0..16), mapped to [0, 1].

Splits (fixed, independent of `seed`): a stratified 80/20 train/test split (`random_state=0`, 360 test images),
then a stratified `val_fraction` of the remaining images as validation.

Batch: `{"inputs": float32 (B, 8, 8, 1) channels-last in [0, 1], "labels": int64 (B,) in 0..9}`.

Attributes available right after construction: `num_classes = 10`, `image_shape = (8, 8, 1)`,
`class_names = ["0", ..., "9"]`.
"""

from __future__ import annotations

import numpy as np
import torch

from perceiver.data._common import BaseDataModule, KeyedDataset, sample_rng, stratified_split

TEST_FRACTION = 0.2
SPLIT_SEED = 0


class DigitsDataset(KeyedDataset):
    """Images `(N, 8, 8, 1)` in [0, 1] and labels `(N,)`; with `shift > 0` every sample is translated by a random
    integer offset in [-shift, shift] px (zero fill) drawn from `(seed, epoch, index)`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, shift: int = 0, seed: int = 0) -> None:
        self.images = torch.as_tensor(images, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.shift = shift
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        image = self.images[index]
        if self.shift > 0:
            dy, dx = sample_rng(self.seed, epoch, index).integers(-self.shift, self.shift + 1, size=2)
            image = shift_image(image, int(dy), int(dx))
        return {"inputs": image, "labels": self.labels[index]}


def shift_image(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate `(H, W, C)` by `(dy, dx)` pixels (down / right positive), filling with zeros."""
    h, w = image.shape[:2]
    out = torch.zeros_like(image)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = image[ys, xs]
    return out


class DigitsDataModule(BaseDataModule):
    """scikit-learn handwritten digits for image classification (see the module docstring).

    Args:
        batch_size: images per batch per process.
        num_workers: DataLoader workers.
        seed: training order and augmentation (splits are fixed).
        val_fraction: share of the 1437 non-test images used for validation (stratified, fixed).
        augment: random shifts of the training images by up to `max_shift` px.
        max_shift: largest shift in pixels when `augment` is on.
    """

    num_classes = 10
    image_shape = (8, 8, 1)
    class_names = [str(i) for i in range(10)]

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        augment: bool = False,
        max_shift: int = 1,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.val_fraction = val_fraction
        self.augment = augment
        self.max_shift = max_shift
        self.save_hyperparameters()

    @staticmethod
    def load_arrays() -> tuple[np.ndarray, np.ndarray]:
        """All images `(1797, 8, 8, 1)` float32 in [0, 1] and labels `(1797,)` int64."""
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images.astype(np.float32) / 16.0)[..., None], d.target.astype(np.int64)

    @staticmethod
    def split_indices(labels: np.ndarray, val_fraction: float = 0.1) -> dict[str, np.ndarray]:
        """Fixed indices of the `train`, `val` and `test` splits into the arrays of `load_arrays()`."""
        from sklearn.model_selection import train_test_split

        rest, test = train_test_split(
            np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
        )
        rest = np.sort(rest)
        keep, val = stratified_split(labels[rest], val_fraction, SPLIT_SEED)
        return {"train": rest[keep], "val": rest[val], "test": np.sort(test)}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = self.load_arrays()
        idx = self.split_indices(labels, self.val_fraction)
        shift = self.max_shift if self.augment else 0
        self.train_set = DigitsDataset(images[idx["train"]], labels[idx["train"]], shift=shift, seed=self.seed)
        self.val_set = DigitsDataset(images[idx["val"]], labels[idx["val"]])
        self.test_set = DigitsDataset(images[idx["test"]], labels[idx["test"]])
