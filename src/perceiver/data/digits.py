"""Handwritten digits from scikit-learn (`sklearn.datasets.load_digits`): real data, bundled, works offline.

1797 grey images of 8x8 pixels with 17 grey levels (0..16), mapped to [0, 1].

Splits (fixed, independent of `seed`): a stratified 80/20 train/test split (`random_state=0`, 360 test images),
then a stratified `val_fraction` of the remaining images as validation.

Batch: `{"inputs": float32 (B, 8, 8, 1) channels-last in [0, 1], "labels": int64 (B,) in 0..9}`.

Attributes available right after construction: `num_classes = 10`, `image_shape = (8, 8, 1)`,
`class_names = ["0", ..., "9"]`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from perceiver.data._common import BaseDataModule, KeyedDataset, sample_rng, stratified_split

TEST_FRACTION = 0.2
SPLIT_SEED = 0


class DigitsDataset(KeyedDataset):
    """Images `(N, 8, 8, 1)` in [0, 1] and labels `(N,)`, optionally augmented per `(seed, epoch, index)`.

    With `shift > 0` every sample is translated by a random integer offset in [-shift, shift] px (zero fill); with
    `rotation > 0` (degrees) or `scale > 0` (fraction) it is also rotated by an angle in [-rotation, rotation] and
    zoomed by a factor in [1 - scale, 1 + scale] about the image centre (bilinear, zero fill).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        shift: int = 0,
        seed: int = 0,
        rotation: float = 0.0,
        scale: float = 0.0,
    ) -> None:
        self.images = torch.as_tensor(images, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.shift = shift
        self.seed = seed
        self.rotation = rotation
        self.scale = scale

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        image = self.images[index]
        rng = sample_rng(self.seed, epoch, index)
        if self.shift > 0:
            dy, dx = rng.integers(-self.shift, self.shift + 1, size=2)
            image = shift_image(image, int(dy), int(dx))
        if self.rotation > 0 or self.scale > 0:
            angle = rng.uniform(-self.rotation, self.rotation)
            zoom = rng.uniform(1.0 - self.scale, 1.0 + self.scale)
            image = rotate_scale_image(image, angle, zoom)
        return {"inputs": image, "labels": self.labels[index]}


def shift_image(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate `(H, W, C)` by `(dy, dx)` pixels (down / right positive), filling with zeros."""
    h, w = image.shape[:2]
    out = torch.zeros_like(image)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = image[ys, xs]
    return out


def rotate_scale_image(image: torch.Tensor, degrees: float, zoom: float) -> torch.Tensor:
    """Rotate `(H, W, C)` by `degrees` (counter-clockwise) and zoom by `zoom` (> 1 enlarges) about the centre."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
    # affine_grid maps output coordinates to input coordinates: the inverse of the wanted transform.
    matrix = torch.tensor([[[cos, sin, 0.0], [-sin, cos, 0.0]]], dtype=image.dtype)
    x = image.permute(2, 0, 1)[None]  # (1, C, H, W)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0)


class DigitsDataModule(BaseDataModule):
    """scikit-learn handwritten digits for image classification (see the module docstring).

    Args:
        batch_size: images per batch per process.
        num_workers: DataLoader workers.
        seed: training order and augmentation (splits are fixed).
        val_fraction: share of the 1437 non-test images used for validation (stratified, fixed).
        augment: augment the training images: random shifts by up to `max_shift` px, rotations by up to
            `max_rotation` degrees and zooms by up to `max_scale` (0.1 = 0.9x to 1.1x).
        max_shift: largest shift in pixels when `augment` is on.
        max_rotation: largest rotation in degrees when `augment` is on (0 = none).
        max_scale: largest relative zoom when `augment` is on (0 = none).
    """

    num_classes = 10
    image_shape = (8, 8, 1)
    class_names = [str(i) for i in range(10)]

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int | None = None,
        val_fraction: float = 0.1,
        augment: bool = False,
        max_shift: int = 1,
        max_rotation: float = 0.0,
        max_scale: float = 0.0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        if not 0.0 <= max_rotation <= 180.0:
            raise ValueError(f"max_rotation must be in [0, 180] degrees, got {max_rotation}")
        if not 0.0 <= max_scale < 1.0:
            raise ValueError(f"max_scale must be in [0, 1), got {max_scale}")
        self.max_rotation = max_rotation
        self.max_scale = max_scale
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
        rotation, scale = (self.max_rotation, self.max_scale) if self.augment else (0.0, 0.0)
        self.train_set = DigitsDataset(
            images[idx["train"]], labels[idx["train"]], shift=shift, seed=self.seed, rotation=rotation, scale=scale
        )
        self.val_set = DigitsDataset(images[idx["val"]], labels[idx["val"]])
        self.test_set = DigitsDataset(images[idx["test"]], labels[idx["test"]])
