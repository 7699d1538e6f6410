"""Image classification from a folder per class (the torchvision / Keras `ImageFolder` layout).

    root/<class_a>/xxx.png
    root/<class_a>/sub/yyy.jpg      (searched recursively, symbolic links to folders followed)
    root/<class_b>/zzz.jpeg

Classes are the sorted sub-folder names of `root` (at least two; hidden folders and macOS's `__MACOSX` skipped;
sub-folders that are all split names, `train` / `val` / `test`, are an error: `root` is the training split). Files
are images by extension (`IMAGE_EXTENSIONS`, case-insensitive); other files are ignored. Images are decoded with
Pillow, turned upright by their EXIF orientation (as photo viewers and `datasets.Image` show them), converted to RGB
(or L with `grayscale=True`) and resized to `image_size` with bilinear filtering (aspect ratio not preserved).
Validation is `val_root` (same layout, a subset of the classes) or a stratified `val_fraction` of `root` (fixed,
independent of `seed`); `test_root` is optional.

`setup()` checks the data before training starts: `FileNotFoundError` for a missing root or a broken symbolic link,
`PermissionError` for a sub-folder it cannot list, `ValueError` naming the folder for a class folder with no images
(or a `val_root` / `test_root` class unknown to `root`), and naming the file for an image Pillow cannot decode
(`check_images="decode"`, the default, fully decodes every image once; "verify" only opens and integrity-checks
them, faster for big folders; "none" skips the check).

Batch: `{"inputs": float32 (B, H, W, C) channels-last in [0, 1], "labels": int64 (B,)}`, C = 3 (1 if grayscale).
Augmentation (`augment=True`, training only): random horizontal flip and a random translation by up to 1/8 of
the size (zero fill), drawn from `(seed, epoch, index)`.

Attributes available right after construction: `class_names`, `num_classes`, `image_shape = (H, W, C)`.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from perceiver.data._common import (
    IMAGE_EXTENSIONS,
    BaseDataModule,
    ImageCheck,
    KeyedDataset,
    as_hw,
    check_image,
    load_image,
    require_dir,
    sample_rng,
    stratified_split,
)
from perceiver.data.digits import shift_image

SPLIT_SEED = 0
#: folder names of dataset splits: a root whose class folders are all such names is a folder of splits
SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "dev", "test", "testing", "eval"}


def _skipped(name: str) -> bool:
    """A hidden file or folder, or the `__MACOSX` folder of a zip made on macOS (resource forks, not data)."""
    return name.startswith(".") or name == "__MACOSX"


def list_classes(root: Path, files: str = "image files") -> list[str]:
    """Sorted sub-folder names of `root` (hidden ones and `__MACOSX` skipped); `ValueError` naming `root` if there
    are none."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not _skipped(p.name))
    if not classes:
        raise ValueError(f"no class folders in {root} (expected {root}/<class>/<{files}>)")
    return classes


def list_files(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Sorted files with one of `extensions` (case-insensitive) under `folder`: searched recursively, through symbolic
    links to folders too (as torchvision's `ImageFolder`; each real folder once, so a link back up the tree is no
    loop), hidden files and folders skipped. `FileNotFoundError` naming a broken symbolic link among them, and the
    `OSError` of a folder that cannot be listed (`PermissionError`), rather than fewer files."""

    def unreadable(error: OSError) -> None:
        raise error

    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # reached again through a link
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not _skipped(d)]
        for name in names:
            path = Path(top) / name
            if _skipped(name) or path.suffix.lower() not in extensions:
                continue
            if path.is_file():
                found.append(path)
            elif not path.exists():  # os.walk lists a broken link as a file
                raise FileNotFoundError(f"broken symbolic link {path} -> {os.readlink(path)}")
    return sorted(found)


def scan_class_folders(
    root: Path,
    class_names: list[str],
    check: Callable[[Path], None],
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    kind: str = "images",
) -> tuple[list[Path], np.ndarray]:
    """Files and labels of every class folder of `root` (each must be one of `class_names`, compared in Unicode NFC:
    macOS writes "é" decomposed where Linux and Windows usually write it composed, so a validation folder unpacked
    from a Mac's zip names the same classes), each passed to `check` (which raises naming a file it cannot read)."""
    to_id = {unicodedata.normalize("NFC", name): i for i, name in enumerate(class_names)}
    if len(to_id) != len(class_names):
        raise ValueError(f"class folders whose names differ only in Unicode normalization (NFC / NFD): {class_names}")
    files: list[Path] = []
    labels: list[int] = []
    for name in list_classes(root, kind):
        folder, name = root / name, unicodedata.normalize("NFC", name)
        if name not in to_id:
            raise ValueError(f"class folder {folder} is not a class of the training folder ({class_names})")
        found = list_files(folder, extensions)
        if not found:
            raise ValueError(f"class folder {folder} has no {kind} (extensions: {', '.join(extensions)})")
        for f in found:
            check(f)
        files += found
        labels += [to_id[name]] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


Scan = Callable[[Path], tuple[list[Path], np.ndarray]]


def train_val_files(
    root: Path, val_root: Path | None, val_fraction: float, scan: Scan, kind: str = "images"
) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """Training and validation `(files, labels)`: `scan(root)` and `scan(val_root)`, or without `val_root` a
    stratified `val_fraction` of `root` held out (fixed: `SPLIT_SEED`)."""
    files, labels = scan(root)
    if val_root is not None:
        return files, labels, *scan(val_root)
    keep, held = stratified_split(labels, val_fraction, SPLIT_SEED)
    if len(held) == 0:
        raise ValueError(f"{root}: too few {kind} to hold out a validation split; give val_root")
    return [files[i] for i in keep], labels[keep], [files[i] for i in held], labels[held]


class ImageFileDataset(KeyedDataset):
    """Image files and labels; items `{"inputs": (H, W, C), "labels": ()}` (see the module docstring)."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray,
        size: tuple[int, int],
        grayscale: bool = False,
        augment: bool = False,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self.files, self.labels, self.size, self.grayscale = files, labels, size, grayscale
        self.augment, self.seed = augment, seed
        self.cache = torch.stack([self._load(i) for i in range(len(files))]) if cache and files else None

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> torch.Tensor:
        return torch.from_numpy(load_image(self.files[index], self.size, self.grayscale))

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        image = self.cache[index] if self.cache is not None else self._load(index)
        if self.augment:
            rng = sample_rng(self.seed, epoch, index)
            h, w = self.size
            dy, dx = rng.integers(-(h // 8), h // 8 + 1), rng.integers(-(w // 8), w // 8 + 1)
            image = shift_image(image.flip(1) if rng.random() < 0.5 else image, int(dy), int(dx))
        return {"inputs": image, "labels": torch.tensor(int(self.labels[index]))}


class ClassFolderDataModule(BaseDataModule):
    """What the folder-per-class datamodules share (images, sound, video): the training, validation and test roots,
    the class names (the training root's sub-folders), the validation split and `setup()`. Subclasses give `kind` (as
    errors name the files), `extensions`, `scan_file` (the check of one file) and `dataset(files, labels, augment)`.

    Args:
        root, val_root, test_root, val_fraction: see the subclasses; augment: random changes of training samples.
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    noun: str = "data"  # in messages: "<noun> folder not found"
    kind: str = "files"  # plural noun of the files, in messages ("images", "sound files", "videos")
    extensions: tuple[str, ...] = ()

    def __init__(
        self,
        root: str,
        val_root: str | None,
        test_root: str | None,
        val_fraction: float,
        augment: bool,
        batch_size: int,
        num_workers: int,
        seed: int | None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if val_root is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1) when no val_root is given, got {val_fraction}")
        noun = self.noun
        self.root = require_dir(root, f"{noun} folder")
        self.val_root = require_dir(val_root, f"validation {noun} folder") if val_root is not None else None
        self.test_root = require_dir(test_root, f"test {noun} folder") if test_root is not None else None
        self.class_names = list_classes(self.root, self.kind if self.kind.endswith("files") else f"{noun} files")
        if len(self.class_names) < 2:
            raise ValueError(
                f"expected at least 2 class folders in {self.root} (one per class), got 1: {self.class_names[0]!r}"
            )
        if all(name.lower() in SPLIT_NAMES for name in self.class_names):  # the dataset's folder, not its train split
            split = next((n for n in self.class_names if n.lower().startswith("train")), self.class_names[0])
            raise ValueError(
                f"the class folders of {self.root} are {self.class_names}: split folders, not classes; give the "
                f"training split as root (root={self.root / split}) and the others as val_root / test_root"
            )
        self.num_classes = len(self.class_names)
        self.val_fraction, self.augment = val_fraction, augment

    def scan_file(self, path: Path) -> None:
        """Check one file before training (raise naming it); default: nothing."""

    def dataset(self, files: list[Path], labels: np.ndarray, augment: bool) -> KeyedDataset:
        raise NotImplementedError

    def scan(self, root: Path) -> tuple[list[Path], np.ndarray]:
        """Files and labels of `root`'s class folders, each file checked (`scan_file`)."""
        return scan_class_folders(root, self.class_names, self.scan_file, self.extensions, self.kind)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        files, labels, val_files, val_labels = train_val_files(
            self.root, self.val_root, self.val_fraction, self.scan, self.kind
        )
        self.train_set = self.dataset(files, labels, self.augment)
        self.val_set = self.dataset(val_files, val_labels, False)
        if self.test_root is not None:
            self.test_set = self.dataset(*self.scan(self.test_root), False)


class ImageFolderDataModule(ClassFolderDataModule):
    """Image classification from folders of images, one sub-folder per class (see the module docstring).

    Args:
        root: training folder (`root/<class>/...`).
        image_size: `H` or `(H, W)` images are resized to.
        val_root: validation folder with the same layout; default: a stratified `val_fraction` of `root`.
        test_root: test folder with the same layout; `test_dataloader()` raises if None.
        val_fraction: share of `root` held out when `val_root` is None.
        grayscale: decode to one channel instead of RGB.
        augment: random flips and translations of training images.
        check_images: "decode" (default), "verify" or "none" (see the module docstring).
        cache_images: keep every decoded, resized image in memory (float32) after `setup()`.
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    noun, kind, extensions = "image", "images", IMAGE_EXTENSIONS

    def __init__(
        self,
        root: str,
        image_size: int | tuple[int, int] = 64,
        val_root: str | None = None,
        test_root: str | None = None,
        val_fraction: float = 0.1,
        grayscale: bool = False,
        augment: bool = False,
        check_images: ImageCheck = "decode",
        cache_images: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        if check_images not in ("decode", "verify", "none"):
            raise ValueError(f"check_images must be 'decode', 'verify' or 'none', got {check_images!r}")
        super().__init__(root, val_root, test_root, val_fraction, augment, batch_size, num_workers, seed)
        self.image_size = as_hw(image_size)
        self.image_shape = (*self.image_size, 1 if grayscale else 3)
        self.grayscale = grayscale
        self.check_images = check_images
        self.cache_images = cache_images
        self.save_hyperparameters()

    def scan_file(self, path: Path) -> None:
        check_image(path, self.check_images)

    def dataset(self, files: list[Path], labels: np.ndarray, augment: bool) -> ImageFileDataset:
        return ImageFileDataset(files, labels, self.image_size, self.grayscale, augment, self.seed, self.cache_images)
