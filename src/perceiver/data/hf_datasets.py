"""Classification from a Hugging Face `datasets` dataset: a Hub id (`cifar10`, `owner/name`), a folder written by
`Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or a `datasets` builder over local files (`"parquet"`,
`"imagefolder"`, `"audiofolder"` with `data_files`). Images (`HFImageDataModule`) and sound (`HFAudioDataModule`).

    HFImageDataModule("cifar10", image_size=32)                                   # the Hub (network), then its cache
    HFImageDataModule("path/to/saved_dataset_dict", image_size=64)                # save_to_disk, offline
    HFImageDataModule("parquet", data_files={"train": "train-*.parquet", "test": "test.parquet"})
    HFAudioDataModule("path/to/saved_dataset_dict", sample_rate=16000, num_samples=16000)

Columns: the input column (`image_column` / `audio_column`; default: the one `Image` / `Audio` feature; a named
column of strings is read as file paths, relative ones from the working directory, and one of bytes or of `{"bytes",
"path"}` structs as files, as `cast_column(column, Image())` reads them) and `label_column` (default: the one `ClassLabel` feature; an integer or string column must be named).
Classes are the `ClassLabel` names; for an integer column the ids 0..max (named "0", "1", ...: label `i` is class
`i`); for a string column the sorted distinct labels of the training split. Another split's labels are read by name
where they are strings or its `ClassLabel` names differ from the training split's (splits encoded one by one).
Splits: `train_split`; validation `val_split`, or a stratified `val_fraction` of the training split held out (fixed,
independent of `seed`); `test_split` optional. The dataset is opened in the constructor, since the model needs the
class names and the input shape before training (a Hub dataset is downloaded there, into `datasets`' cache:
`cache_dir`, `revision`).

Batches are those of the folder datamodules: images (`ImageFolderDataModule`) `{"inputs": float32 (B, H, W, C)
channels-last in [0, 1], "labels": int64 (B,)}`, the stored bytes decoded with Pillow (as `datasets.Image` decodes
them: upright by their EXIF orientation), converted to RGB (L with `grayscale=True`), resized bilinearly to
`image_size`; sound (`AudioFolderDataModule`) `{"inputs": float32 (B, S, 1),
"mask": bool (B, S), "labels": int64 (B,)}`, the stored file bytes decoded with soundfile (libsndfile: `datasets`'
own audio decoding needs torchcodec and FFmpeg, which the audio extra does not), mixed down to mono, resampled to
`sample_rate` and cut or padded to `num_samples`. `augment=True` adds the folder modules' random changes, from
`(seed, epoch, index)`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perceiver.data._common import (
    BaseDataModule,
    KeyedDataset,
    as_hw,
    labels_by_name,
    load_image,
    stratified_split,
)
from perceiver.data.audio_folder import AudioFileDataset, load_audio
from perceiver.data.folders import SPLIT_SEED, ImageFileDataset


def open_dataset(
    path: str,
    name: str | None = None,
    data_files: str | list[str] | dict[str, Any] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    splits: dict[str, str | None] | None = None,
) -> Any:
    """A `datasets.DatasetDict`: `load_from_disk` for a folder `save_to_disk` wrote, else `load_dataset` (a single
    `Dataset` becomes the split "train"). `splits` (`{role: split name or None}`, e.g. `{"train": "train", "test":
    None}`) must name splits it has: a ValueError names the role, the split and the splits there are."""
    import datasets

    folder = Path(path).expanduser()
    if folder.is_dir() and any((folder / f).is_file() for f in ("dataset_dict.json", "state.json")):
        opened = datasets.load_from_disk(str(folder))
    elif path.startswith((".", "/", "~")) and not folder.exists():  # meant as a local folder, not a Hub id
        raise FileNotFoundError(f"no dataset folder {path!r} (resolved: {folder.resolve()})")
    else:
        from huggingface_hub.errors import HFValidationError

        try:
            opened = datasets.load_dataset(path, name, data_files=data_files, revision=revision, cache_dir=cache_dir)
        except HFValidationError as e:
            raise ValueError(
                f"{path!r} is neither a dataset folder here nor a Hub dataset id ('name' or 'owner/name'): {e}"
            ) from e
    opened = datasets.DatasetDict({"train": opened}) if isinstance(opened, datasets.Dataset) else opened
    for role, split in (splits or {}).items():
        if split is not None and split not in opened:
            raise ValueError(f"{path}: {role}_split {split!r} not found; the splits are {list(opened)}")
    return opened


def _feature_column(features: Any, kind: str, given: str | None, role: str, source: str) -> str:
    """`given` if it is a column, else the one column whose feature is a `kind` (`Image` / `ClassLabel`)."""
    columns = list(features)
    if given is not None:
        if given not in features:
            raise ValueError(f"{source}: {role} column {given!r} not found; the columns are {columns}")
        return given
    found = [c for c, f in features.items() if type(f).__name__ == kind]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({found})"
        raise ValueError(
            f"{source}: expected one {kind} column to use as the {role}, found {what}; name it with "
            f"{role}_column= (the columns are {columns})"
        )
    return found[0]


def _is_strings(feature: Any) -> bool:
    """A column of strings (file paths in an input column, class names in a label column)."""
    return type(feature).__name__ == "Value" and feature.dtype in ("string", "large_string")


def _holds_files(feature: Any) -> bool:
    """A column that `cast_column(column, Image())` / `Audio()` reads as files: paths (strings), file bytes, or the
    `{"bytes", "path"}` structs of a parquet file written without `datasets`' feature metadata."""
    if isinstance(feature, dict):
        return "bytes" in feature and set(feature) <= {"bytes", "path"}
    return _is_strings(feature) or (type(feature).__name__ == "Value" and feature.dtype in ("binary", "large_binary"))


class _SplitRows:
    """Where a dataset's rows come from, for errors: `split` and `row_ids`, the rows of the split its items are (a
    held-out validation share or its complement re-index them); set by `HFClassificationDataModule.setup()`."""

    split: str | None = None
    row_ids: np.ndarray | None = None

    def row_name(self, index: int) -> str:
        """`"split 'train' row 12"`: item `index` as the user finds it in the dataset."""
        row = int(self.row_ids[index]) if self.row_ids is not None else index
        return f"split {self.split!r} row {row}" if self.split is not None else f"row {row}"


class HFImageDataset(_SplitRows, ImageFileDataset):
    """Rows of a `datasets.Dataset` holding images (an `Image` column, or a column of files, read undecoded:
    `{"bytes", "path"}`, so that an image Pillow cannot decode is named); items `{"inputs": (H, W, C), "labels": ()}`
    (see the module docstring)."""

    files: Any  # the rows: a `datasets.Dataset`, not a list of paths

    def __init__(
        self,
        rows: Any,
        column: str,
        labels: np.ndarray,
        size: tuple[int, int],
        grayscale: bool = False,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        import datasets

        self.column = column
        rows = rows.select_columns([column]).cast_column(column, datasets.Image(decode=False))  # paths too
        super().__init__(rows, labels, size, grayscale, augment, seed)

    def _load(self, index: int) -> torch.Tensor:
        stored = self.files[index][self.column]
        if stored.get("bytes"):
            name = stored.get("path") or self.row_name(index)
            return torch.from_numpy(load_image(io.BytesIO(stored["bytes"]), self.size, self.grayscale, name))
        return torch.from_numpy(load_image(stored["path"], self.size, self.grayscale))


class HFAudioDataset(_SplitRows, AudioFileDataset):
    """Rows of a `datasets.Dataset` holding sound files (an `Audio` column, or a column of files, read undecoded:
    `{"bytes", "path"}`);
    items `{"inputs": (S, 1), "mask": (S,), "labels": ()}` (see the module docstring)."""

    files: Any  # the rows: a `datasets.Dataset`, not a list of paths

    def __init__(
        self,
        rows: Any,
        column: str,
        labels: np.ndarray,
        sample_rate: int,
        num_samples: int,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        import datasets

        self.column = column
        rows = rows.select_columns([column]).cast_column(column, datasets.Audio(decode=False))
        super().__init__(rows, labels, sample_rate, num_samples, augment, seed)

    def load(self, index: int) -> np.ndarray:
        stored = self.files[index][self.column]
        if stored.get("bytes"):
            name = stored.get("path") or self.row_name(index)
            return load_audio(io.BytesIO(stored["bytes"]), self.sample_rate, name=name)
        return load_audio(stored["path"], self.sample_rate)


class HFClassificationDataModule(BaseDataModule):
    """What the `datasets` classification modules share (see the module docstring): the dataset, its splits, the
    input and label columns, the class names and `setup()`. Subclasses give `feature` (the input column's feature
    type: "Image", "Audio") and `dataset(rows, labels, augment)`.

    Args:
        path: a Hub dataset id, a folder written by `save_to_disk`, or a builder name (`"parquet"`, `"imagefolder"`,
            `"audiofolder"`) with `data_files`.
        name: the dataset's configuration (`load_dataset(path, name)`).
        data_files: files of a builder: a path, a list or `{split: paths}`.
        train_split, val_split, test_split: split names; `val_split=None` holds out a stratified `val_fraction` of
            the training split; `test_split=None`: no test set.
        val_fraction: share of the training split held out when `val_split` is None.
        input_column, label_column: the columns to read (default: the one column of the `feature` type, and the
            `ClassLabel` column); an input column of strings holds file paths, a label column of integers class ids.
        augment: random changes of training samples. revision, cache_dir: for a Hub dataset (`load_dataset`'s).
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    feature: str = ""  # the input column's `datasets` feature type
    noun: str = "input"  # in messages ("image column", "audio column")

    def __init__(
        self,
        path: str,
        name: str | None,
        data_files: str | list[str] | dict[str, Any] | None,
        train_split: str,
        val_split: str | None,
        test_split: str | None,
        val_fraction: float,
        input_column: str | None,
        label_column: str | None,
        augment: bool,
        revision: str | None,
        cache_dir: str | None,
        batch_size: int,
        num_workers: int,
        seed: int | None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if val_split is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1) when no val_split is given, got {val_fraction}")
        self.augment, self.val_fraction = augment, val_fraction
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.splits = open_dataset(path, name, data_files, revision, cache_dir, self.split_names)
        features = self.splits[train_split].features
        self.input_column = _feature_column(features, self.feature, input_column, self.noun, path)
        input_feature = features[self.input_column]
        if type(input_feature).__name__ != self.feature and not _holds_files(input_feature):
            raise ValueError(
                f"{path}: {self.noun} column {self.input_column!r} holds {input_feature}, expected an {self.feature} "
                f"feature or files (paths, bytes or {{'bytes', 'path'}} structs)"
            )
        self.label_column = _feature_column(features, "ClassLabel", label_column, "label", path)
        label_feature = features[self.label_column]
        # the ClassLabel names of the training split: another split's ClassLabel ids are read through its own names
        self._label_names: list[str] | None = None
        self._to_id: dict[Any, int] | None = None  # None: the labels are the class ids
        if type(label_feature).__name__ == "ClassLabel":
            self.class_names = self._label_names = list(label_feature.names)
        else:
            values = self.splits[train_split].unique(self.label_column)
            if None in values:
                row = self.splits[train_split][self.label_column].index(None)
                raise ValueError(
                    f"{path}: split {train_split!r} row {row}: label column {self.label_column!r} is empty"
                )
            if str(getattr(label_feature, "dtype", "")).startswith(("int", "uint")):  # ids, as TextClassification's
                if min(values) < 0:
                    raise ValueError(f"{path}: integer labels in column {self.label_column!r} must be >= 0")
                self.class_names = [str(i) for i in range(max(values) + 1)]
            else:
                self.class_names = sorted(str(v) for v in values)
                self._to_id = {name: i for i, name in enumerate(self.class_names)}  # the labels are names
            if len(self.class_names) < 2:
                raise ValueError(
                    f"{path}: expected at least 2 classes in label column {self.label_column!r}, got {self.class_names}"
                )
        self.num_classes = len(self.class_names)
        self.source = path

    def dataset(self, rows: Any, labels: np.ndarray, augment: bool) -> KeyedDataset:
        raise NotImplementedError

    def _check_present(self, split: str) -> None:
        """ValueError naming the split and column if the split lacks the input or label column (an unlabelled test
        split), or the split, row and column of the first row without an input or a label (a null)."""
        table = self.splits[split].data
        for column, role in ((self.input_column, self.noun), (self.label_column, "label")):
            if column not in table.column_names:
                raise ValueError(
                    f"{self.source}: split {split!r} has no {role} column {column!r} (its columns are "
                    f"{table.column_names}); every split read needs {role}s"
                )
            values = table.column(column)
            if values.null_count:
                row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                raise ValueError(f"{self.source}: split {split!r} row {row}: {role} column {column!r} is empty")

    def _labels(self, split: str) -> np.ndarray:
        """The class ids of a split; ValueError naming the split and row of a label that is not a class, or of a row
        without an input or a label."""
        self._check_present(split)
        values: Any = self.splits[split][self.label_column]
        to_id, by_name = self._to_id, {name: i for i, name in enumerate(self.class_names)}
        feature = self.splits[split].features[self.label_column]
        if type(feature).__name__ == "ClassLabel" and list(feature.names) != self._label_names:
            values, to_id = labels_by_name(values, feature.names), by_name  # encoded with other names
        elif _is_strings(feature):  # names, where the training split has ClassLabel or integer ids
            to_id = by_name
        if to_id is None:
            ids = np.asarray(values, dtype=np.int64)
            bad = np.flatnonzero((ids < 0) | (ids >= self.num_classes))
            if len(bad):  # e.g. -1: the unlabelled test split of some datasets
                raise ValueError(
                    f"{self.source}: split {split!r} row {bad[0]}: label {ids[bad[0]]} is not a class id "
                    f"(0..{self.num_classes - 1})"
                )
            return ids
        found: list[int] = []
        for row, value in enumerate(values):
            if str(value) not in to_id:
                raise ValueError(
                    f"{self.source}: split {split!r} row {row}: label {value!r} is not a class of the training split "
                    f"{self.class_names[:10]}"
                )
            found.append(to_id[str(value)])
        return np.asarray(found, dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train = self.split_names["train"]
        assert train is not None  # the constructor's train_split: str
        rows, labels = self.splits[train], self._labels(train)
        keep: np.ndarray | None = None
        held: np.ndarray | None = None
        val = self.split_names["val"]
        if val is None:
            keep, held = stratified_split(labels, self.val_fraction, SPLIT_SEED)
            if len(held) == 0:
                raise ValueError(f"{self.source}: too few rows to hold out a validation split; give val_split")
            val_rows, val_labels = rows.select(held), labels[held]
            rows, labels = rows.select(keep), labels[keep]
        else:
            val_rows, val_labels = self.splits[val], self._labels(val)
        self.train_set = self._named(self.dataset(rows, labels, self.augment), train, keep)
        self.val_set = self._named(self.dataset(val_rows, val_labels, False), train if val is None else val, held)
        if self.split_names["test"] is not None:
            test = self.split_names["test"]
            self.test_set = self._named(self.dataset(self.splits[test], self._labels(test), False), test, None)

    @staticmethod
    def _named(dataset: KeyedDataset, split: str, row_ids: np.ndarray | None) -> KeyedDataset:
        """`dataset` told which split and rows it reads, so an undecodable file without a path is named by them."""
        if isinstance(dataset, _SplitRows):
            dataset.split, dataset.row_ids = split, None if row_ids is None else np.asarray(row_ids)
        return dataset


class HFImageDataModule(HFClassificationDataModule):
    """Image classification from a `datasets` dataset (see the module docstring and `HFClassificationDataModule`
    for the arguments they share).

    Args:
        path: a Hub dataset id, a `save_to_disk` folder, or a builder name with `data_files`.
        image_size: `H` or `(H, W)` images are resized to.
        image_column: the images (default: the one `Image` column; or a column of files).
        grayscale: one channel instead of RGB.
        augment: random flips and translations of training images.
    """

    feature, noun = "Image", "image"

    def __init__(
        self,
        path: str,
        image_size: int | tuple[int, int] = 64,
        name: str | None = None,
        data_files: str | list[str] | dict[str, Any] | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.1,
        image_column: str | None = None,
        label_column: str | None = None,
        grayscale: bool = False,
        augment: bool = False,
        revision: str | None = None,
        cache_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        self.image_size = as_hw(image_size)
        self.image_shape = (*self.image_size, 1 if grayscale else 3)
        self.grayscale = grayscale
        super().__init__(
            path, name, data_files, train_split, val_split, test_split, val_fraction, image_column, label_column,
            augment, revision, cache_dir, batch_size, num_workers, seed,
        )  # fmt: skip
        self.save_hyperparameters()

    @property
    def image_column(self) -> str:
        return self.input_column

    def dataset(self, rows: Any, labels: np.ndarray, augment: bool) -> HFImageDataset:
        return HFImageDataset(rows, self.image_column, labels, self.image_size, self.grayscale, augment, self.seed)


class HFAudioDataModule(HFClassificationDataModule):
    """Audio classification from a `datasets` dataset with an `Audio` column (see the module docstring and
    `HFClassificationDataModule` for the arguments they share); batches as `AudioFolderDataModule`'s.

    Args:
        path: a Hub dataset id, a `save_to_disk` folder, or a builder name with `data_files`.
        sample_rate: Hz every clip is resampled to. num_samples: clip length in samples.
        audio_column: the sound (default: the one `Audio` column; or a column of files).
        augment: random crops and gains of training clips.
    """

    feature, noun = "Audio", "audio"

    def __init__(
        self,
        path: str,
        sample_rate: int = 16000,
        num_samples: int = 16000,
        name: str | None = None,
        data_files: str | list[str] | dict[str, Any] | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.1,
        audio_column: str | None = None,
        label_column: str | None = None,
        augment: bool = False,
        revision: str | None = None,
        cache_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        if sample_rate < 1 or num_samples < 1:
            raise ValueError(f"sample_rate and num_samples must be >= 1, got {sample_rate} and {num_samples}")
        self.sample_rate, self.num_samples = sample_rate, num_samples
        super().__init__(
            path, name, data_files, train_split, val_split, test_split, val_fraction, audio_column, label_column,
            augment, revision, cache_dir, batch_size, num_workers, seed,
        )  # fmt: skip
        self.save_hyperparameters()

    @property
    def audio_column(self) -> str:
        return self.input_column

    def dataset(self, rows: Any, labels: np.ndarray, augment: bool) -> HFAudioDataset:
        return HFAudioDataset(rows, self.audio_column, labels, self.sample_rate, self.num_samples, augment, self.seed)
