"""Plumbing shared by every datamodule: deterministic epoch-aware sampling, per-sample RNGs, file checks.

Determinism contract (all datamodules of `perceiver.data`):

- Splits and evaluation data (validation / test sets, validation MLM masks, synthetic validation / test samples)
  are fixed: they do not depend on the `seed` argument, so metrics are comparable across seeds and epochs.
- `seed` drives everything random in training: the order of training samples, augmentation and MLM masks. Its
  default (None) is the run's global seed (`seed_everything`, `PL_GLOBAL_SEED`; 0 without one), as Lightning's own
  samplers follow it: `perceiver fit --seed_everything 1` changes the data order too; `--data.seed` pins it.
  Epoch `e` shuffles with `torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))`, exactly the
  permutation of `torch.utils.data.DistributedSampler(seed=seed)`, and rank `r` of `R` processes takes
  `perm[r::R]` (padded like `DistributedSampler`). So with `R` processes and per-process batch `b` every global
  step sees the same samples as one process with batch `R * b`.
- Per-sample randomness is a function of `(seed, epoch, index)` only (see `sample_rng`): it does not depend on the
  number of workers, processes or the batch a sample lands in, and a run resumed at an epoch boundary sees the
  same data as an uninterrupted run. The sampler yields `SampleKey(epoch, index)` so that the epoch reaches
  worker processes; datasets also accept a plain `int` index (epoch 0).
- The epoch comes from the attached Lightning trainer (`trainer.current_epoch`), or from `set_epoch(e)` on the
  sampler when the loader is used without Lightning.
- Validation and test loaders of `R > 1` processes (`EvalSampler`) give every process the same number of batches of
  `batch_size` and evaluate every sample once over all processes (Lightning's `DistributedSampler` would repeat up to
  `R - 1` samples, which then count twice in the metrics); only when the last `R * batch_size` block has fewer than
  `R` samples is that impossible: then a warning names the samples counted twice.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

ImageCheck = Literal["decode", "verify", "none"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class SampleKey(NamedTuple):
    """What the training sampler yields: the epoch and the dataset index."""

    epoch: int
    index: int  # type: ignore[assignment]  # a field named like tuple.index (typeshed's method), as it always was


def split_key(key: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """`SampleKey(epoch, index)` or a plain index (epoch 0) -> `(epoch, index)`."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return 0, int(key)


def sample_rng(*keys: int) -> np.random.Generator:
    """A numpy generator that is a pure function of the non-negative integers `keys` (e.g. seed, stream, epoch, index)."""
    return np.random.default_rng([int(k) for k in keys])


class KeyedDataset(Dataset):
    """Map-style dataset whose items may depend on the epoch: subclasses implement `get(index, epoch)`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, index: int, epoch: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int] | list[int]) -> Any:
        epoch, index = split_key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        return self.get(index, epoch)


class EpochSampler(DistributedSampler):
    """Deterministic (optionally distributed) sampler yielding `SampleKey(epoch, index)`.

    The permutation of epoch `e` is `randperm(n, generator=manual_seed(seed + e))`, identical to
    `DistributedSampler(dataset, num_replicas, rank, shuffle, seed)`. Being a `DistributedSampler`, Lightning does
    not replace it under DDP; the datamodules build it with the trainer's world size and rank.

    Args:
        dataset: the dataset (only its length is used).
        shuffle: shuffle every epoch (training) or keep the order.
        seed: base seed of the permutation.
        num_replicas, rank: number of processes and this process's rank.
        epoch_fn: returns the current epoch when iteration starts (takes precedence over `set_epoch`); the
            datamodules pass `lambda: trainer.current_epoch` so the epoch is right even for the first epoch after a
            resume, whose iterator Lightning creates before it calls `set_epoch`.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.epoch_fn = epoch_fn

    def __iter__(self) -> Iterator[SampleKey]:
        if self.epoch_fn is not None:
            self.epoch = int(self.epoch_fn())
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        pad = self.total_size - n
        if pad > 0:
            indices += (indices * math.ceil(pad / max(n, 1)))[:pad]
        return iter([SampleKey(self.epoch, i) for i in indices[self.rank : self.total_size : self.num_replicas]])


def eval_shard(n: int, batch_size: int, num_replicas: int, rank: int) -> tuple[list[int], int]:
    """The dataset indices process `rank` of `num_replicas` evaluates, and how many samples the processes count twice.

    Global blocks of `num_replicas * batch_size` samples in order; process `r` takes batch `r` of each full block and
    an even share of the last, shorter block, so every process has `ceil(n / (num_replicas * batch_size))` batches
    and every sample appears once. When the last block has fewer samples than processes, the processes without one
    repeat a sample of it (`num_replicas - len(last block)` samples counted twice).
    """
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"expected 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    block = num_replicas * batch_size
    blocks = math.ceil(n / block)
    if blocks == 0:
        return [], 0
    indices = [g * block + rank * batch_size + i for g in range(blocks - 1) for i in range(batch_size)]
    start, m = (blocks - 1) * block, n - (blocks - 1) * block
    q, rem = divmod(m, num_replicas)
    size, offset = q + (rank < rem), start + rank * q + min(rank, rem)
    if size:
        return indices + list(range(offset, offset + size)), max(0, num_replicas - m)
    return indices + [start + rank % m], num_replicas - m


class EvalSampler(DistributedSampler):
    """In-order evaluation sampler of one of `num_replicas` processes (`eval_shard`): every process gets the same
    number of batches of `batch_size` (collective operations such as FSDP2's all-gathers stay in step) and every
    sample is evaluated once over all processes. Being a `DistributedSampler`, Lightning keeps it under DDP / FSDP2.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.indices, repeated = eval_shard(n, batch_size, num_replicas, rank)
        self.num_samples = len(self.indices)
        self.total_size = n + repeated
        if repeated and rank == 0:
            warnings.warn(
                f"evaluating {n} samples in batches of {batch_size} on {num_replicas} processes counts {repeated} of "
                f"them twice (each process needs a sample in the last batch); a batch size with n % (processes x "
                f"batch size) == 0 or >= processes, or one process, evaluates every sample once",
                UserWarning,
                stacklevel=2,
            )

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


def global_seed() -> int:
    """The seed `lightning.seed_everything` set in this process (`PL_GLOBAL_SEED`; LightningCLI's
    `seed_everything`), or 0 without one."""
    value = os.environ.get("PL_GLOBAL_SEED", "")
    try:
        return int(value) if value else 0
    except ValueError:
        raise ValueError(f"expected PL_GLOBAL_SEED as an integer seed, got {value!r}") from None


class BaseDataModule(LightningDataModule):
    """Common constructor arguments and loaders; subclasses set `train_set`, `val_set`, `test_set` in `setup()`.

    Args:
        batch_size: samples per batch per process.
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: non-negative seed of training order, augmentation and masks (see the module docstring); None (the
            default): the run's global seed, `seed_everything` (Lightning's `PL_GLOBAL_SEED`), or 0 without one,
            so `--seed_everything N` varies the data as well as the initial weights.
    """

    collate_fn: Callable[[list[Any]], Any] | None = None
    val_collate_fn: Callable[[list[Any]], Any] | None = None

    def __init__(self, batch_size: int, num_workers: int = 0, seed: int | None = None) -> None:
        super().__init__()
        if seed is None:
            seed = global_seed()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by `train_dataloader()` when no Lightning trainer is attached."""
        self._epoch = epoch

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else self._epoch

    def _require(self, dataset: Dataset | None, split: str) -> Dataset:
        if dataset is None:
            self.setup("fit" if split != "test" else "test")
            dataset = getattr(self, f"{split}_set")
        if dataset is None:
            raise ValueError(f"{type(self).__name__} has no {split} split{_split_hint(type(self), split)}")
        return dataset

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set, "train")
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(
            dataset, shuffle=True, seed=self.seed, num_replicas=world, rank=rank, epoch_fn=self._current_epoch
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
        )

    def _eval_loader(self, dataset: Dataset, shard: bool = True) -> DataLoader:
        """The loader of an evaluation split, in order: with `shard` and a trainer of several processes, this
        process's `EvalSampler` share (each sample evaluated once over all processes); else the whole split."""
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EvalSampler(dataset, self.batch_size, world, rank) if shard and world > 1 else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.val_collate_fn or self.collate_fn,
        )

    def unsharded_val_dataloader(self) -> DataLoader:
        """The whole validation split in every process (for statistics of the split itself, e.g. a baseline that
        each process computes alike); `val_dataloader()` gives each process of a run its share."""
        return self._eval_loader(self._require(self.val_set, "val"), shard=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require(self.val_set, "val"))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require(self.test_set, "test"))

    def predict_dataloader(self) -> DataLoader:
        """The test split (`perceiver predict --config ...` and `trainer.predict(datamodule=...)` predict over it;
        Lightning itself splits it over processes, without repeating samples)."""
        return self._eval_loader(self._require(self.test_set, "test"), shard=False)


def _split_hint(cls: type, split: str) -> str:
    """What to give a datamodule that has no `split`: the constructor arguments named after it (`test_root`,
    `test_file`, `test_split`, `test`) as `--data.*` options, else a pointer to the constructor."""
    import inspect

    names = [
        name
        for name in inspect.signature(cls).parameters
        if name == split or (name.startswith(f"{split}_") and not name.endswith("_fraction"))
    ]
    if not names:
        return " (see its constructor arguments)"
    options = " or ".join(f"--data.{name}" for name in names)
    return f"; give it one with {options} (the constructor argument {' / '.join(names)})"


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices `(keep, held_out)` with about `fraction` of every class held out (at least one sample per class
    that has >= 2 samples, none when `fraction == 0`), deterministic given `seed`; both sorted."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if fraction == 0 or len(idx) < 2:
            continue
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        held.append(rng.permutation(idx)[:k])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`Path(path)` if it is an existing file, else `FileNotFoundError` naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def require_dir(path: str | os.PathLike, what: str = "directory") -> Path:
    """`Path(path)` if it is an existing directory, else `FileNotFoundError` naming it."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def check_image(path: str | os.PathLike, mode: ImageCheck = "decode") -> None:
    """Raise `ValueError` naming `path` if Pillow cannot open (`verify`: open + integrity check) or fully decode
    (`decode`) the image; `none` checks nothing."""
    if mode == "none":
        return
    if mode not in ("decode", "verify"):
        raise ValueError(f"image check must be 'decode', 'verify' or 'none', got {mode!r}")
    from PIL import Image

    try:
        with Image.open(path) as im:
            if mode == "verify":
                im.verify()
            else:
                im.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise ValueError(f"image cannot be decoded: {path} ({type(e).__name__}: {e})") from e


def load_image(
    path: str | os.PathLike | BinaryIO,
    size: tuple[int, int] | None = None,
    grayscale: bool = False,
    name: str | None = None,
) -> np.ndarray:
    """Decode an image to float32 `(H, W, C)` in [0, 1] (C = 1 if `grayscale` else 3), upright by its EXIF
    orientation, resized to `size = (H, W)` with bilinear filtering (aspect ratio not preserved) when given. Raises
    `FileNotFoundError` / `ValueError` naming the file (`name` for a file-like `path`, e.g. stored bytes)."""
    from PIL import Image

    name = str(path) if name is None else name
    try:
        with Image.open(path) as im:
            return image_array(im, size, grayscale)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"image not found: {name}") from e
    except Exception as e:
        reason = str(e).replace(repr(path), name)  # Pillow names a file-like by its repr
        raise ValueError(f"image cannot be decoded: {name} ({type(e).__name__}: {reason})") from e


def converted(image: Any, grayscale: bool) -> Any:
    """A Pillow image in mode "L" (`grayscale`) or "RGB"; through RGB where Pillow has no direct conversion (a LAB
    TIFF converts to RGB but not to L)."""
    target = "L" if grayscale else "RGB"
    try:
        return image.convert(target)
    except ValueError:
        if not grayscale:
            raise
        return image.convert("RGB").convert("L")


def labels_by_name(values: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """A split's `ClassLabel` ids as the split's own class `names`, for a split encoded with other names than the
    training split's (`class_encode_column` on each split: id 0 is another class in each); a value that is no id of
    `names` is kept as it is, for the caller's error to name it."""
    return [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in values]


def upright(image: Any) -> Any:
    """`image` turned as its EXIF orientation tag says (a phone photo stored sideways is shown upright by viewers,
    and `datasets.Image` decodes it upright too); `image` itself when it has no such tag or unreadable EXIF."""
    from PIL import ExifTags, ImageOps

    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF: the pixels are still fine
        return image
    return image if orientation in (1, None) else ImageOps.exif_transpose(image)


def image_array(image: Any, size: tuple[int, int] | None = None, grayscale: bool = False) -> np.ndarray:
    """A Pillow image as float32 `(H, W, C)` in [0, 1] (C = 1 if `grayscale` else 3), turned upright by its EXIF
    orientation (`upright`), resized to `size = (H, W)` with bilinear filtering (aspect ratio not preserved) when
    given. 16-bit grey images (and 32-bit integer ones, read as 16-bit) are scaled by 1/65535, not clipped at 255."""
    from PIL import Image

    image = upright(image)
    if image.mode.startswith("I"):  # 16-bit (I;16...) or 32-bit integer grey: convert() would clip it at 255
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0), "F")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        grey = np.array(image, dtype=np.float32)[..., None]  # a writable copy (torch.from_numpy)
        return grey if grayscale else np.repeat(grey, 3, axis=-1)
    image = converted(image, grayscale)
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return arr[..., None] if grayscale else arr


def as_hw(size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """`64` or `(64, 96)` -> `(H, W)`, validated positive."""
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return hw
