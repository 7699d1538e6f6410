"""`HFImageDataModule` / `HFAudioDataModule`: a Hugging Face `datasets` dataset (a `save_to_disk` folder, parquet files
through the `parquet` builder) gives the batches of the folder datamodules, with the ClassLabel names or the sorted
string labels as classes; missing splits, columns, unknown labels and undecodable sound are errors naming them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
from PIL import Image  # noqa: E402

from perceiver.data import HFImageDataModule  # noqa: E402
from perceiver.data._common import stratified_split  # noqa: E402

NAMES = [f"digit-{i}" for i in range(10)]


def digits_dataset(n_train: int = 120, n_test: int = 30, string_labels: bool = False):
    """sklearn's digits as 8x8 greyscale PIL images with ClassLabel (or string) labels, as a DatasetDict."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L") for img in d.images[: n_train + n_test]]
    labels = [int(t) for t in d.target[: n_train + n_test]]
    label_feature = datasets.Value("string") if string_labels else datasets.ClassLabel(names=NAMES)
    features = datasets.Features({"img": datasets.Image(), "digit": label_feature, "id": datasets.Value("int64")})

    def part(lo, hi):
        rows = {"img": images[lo:hi], "id": list(range(lo, hi))}
        rows["digit"] = [NAMES[t] for t in labels[lo:hi]] if string_labels else labels[lo:hi]
        return datasets.Dataset.from_dict(rows, features=features)

    return datasets.DatasetDict({"train": part(0, n_train), "test": part(n_train, n_train + n_test)}), d, labels


def test_a_saved_dataset_gives_image_folder_batches(tmp_path):
    ds, digits, labels = digits_dataset()
    ds.save_to_disk(str(tmp_path / "digits"))
    dm = HFImageDataModule(str(tmp_path / "digits"), image_size=8, grayscale=True, test_split="test", batch_size=16)
    assert dm.class_names == NAMES and dm.num_classes == 10 and dm.image_shape == (8, 8, 1)
    assert (dm.image_column, dm.label_column) == ("img", "digit")  # found by their feature types
    dm.setup("fit")
    keep, held = stratified_split(np.asarray(labels[:120]), 0.1, 0)  # what ImageFolderDataModule holds out
    assert (len(dm.train_set), len(dm.val_set)) == (len(keep), len(held)) and len(held) >= 10
    assert len(dm.test_set) == 30
    batch = next(iter(dm.test_dataloader()))
    assert batch["inputs"].shape == (16, 8, 8, 1) and batch["inputs"].dtype == torch.float32
    assert batch["labels"].tolist() == labels[120:136]
    want = torch.from_numpy((digits.images[120:136] * 255 / 16).astype(np.uint8).astype(np.float32) / 255)
    torch.testing.assert_close(batch["inputs"][..., 0], want, atol=0, rtol=0)
    train = next(iter(dm.train_dataloader()))
    assert train["inputs"].shape == (16, 8, 8, 1) and set(train["labels"].tolist()) <= set(range(10))


def test_parquet_files_with_string_labels(tmp_path):
    ds, _, labels = digits_dataset(string_labels=True)
    files = {}
    for split in ("train", "test"):
        files[split] = str(tmp_path / f"{split}.parquet")
        ds[split].to_parquet(files[split])
    with pytest.raises(
        ValueError, match=r"expected one ClassLabel column to use as the label, found no.*label_column="
    ):
        HFImageDataModule("parquet", data_files=files, image_size=8)
    dm = HFImageDataModule(
        "parquet", data_files=files, image_size=(6, 4), label_column="digit", val_split="test", test_split="test"
    )
    assert dm.class_names == sorted(NAMES) and dm.image_shape == (6, 4, 3)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].shape == (30, 6, 4, 3)
    assert batch["labels"].tolist() == [sorted(NAMES).index(NAMES[t]) for t in labels[120:150]]


def test_bad_splits_columns_and_labels_are_named(tmp_path):
    ds, _, _ = digits_dataset(n_train=30, n_test=10, string_labels=True)
    ds.save_to_disk(str(tmp_path / "d"))
    path = str(tmp_path / "d")
    with pytest.raises(ValueError, match=r"test_split 'validation' not found; the splits are \['train', 'test'\]"):
        HFImageDataModule(path, label_column="digit", test_split="validation")
    with pytest.raises(ValueError, match=r"image column 'image' not found; the columns are \['img', 'id', 'digit'\]"):
        HFImageDataModule(path, label_column="digit", image_column="image")
    odd = datasets.DatasetDict({"train": ds["train"], "test": ds["test"].map(lambda r: {"digit": "seven-ish"})})
    odd.save_to_disk(str(tmp_path / "odd"))
    dm = HFImageDataModule(str(tmp_path / "odd"), label_column="digit", test_split="test")
    with pytest.raises(ValueError, match=r"split 'test' row 0: label 'seven-ish' is not a class of the training"):
        dm.setup("test")


def test_a_row_without_an_image_or_a_label_is_named_before_training(tmp_path):
    ds, _, _ = digits_dataset(n_train=30, n_test=10)
    images = ds["train"]["img"][:]
    images[7] = None
    no_image = datasets.DatasetDict({"train": ds["train"].map(lambda r, i: {"img": images[i]}, with_indices=True)})
    no_image.save_to_disk(str(tmp_path / "no-image"))
    dm = HFImageDataModule(str(tmp_path / "no-image"), image_size=8)
    with pytest.raises(ValueError, match=r"split 'train' row 7: image column 'img' is empty"):
        dm.setup("fit")  # not an AttributeError of Pillow in the middle of an epoch
    no_label = ds["test"].map(lambda r, i: {"digit": None if i == 2 else r["digit"]}, with_indices=True)
    datasets.DatasetDict({"train": ds["train"], "test": no_label}).save_to_disk(str(tmp_path / "no-label"))
    dm = HFImageDataModule(str(tmp_path / "no-label"), image_size=8, test_split="test")
    with pytest.raises(ValueError, match=r"split 'test' row 2: label column 'digit' is empty"):
        dm.setup("test")


def audio_table(audio: list[dict], labels: list[int], names: list[str]):
    """An `Audio` + `ClassLabel` dataset of stored files (`{"bytes", "path"}`), cast rather than encoded: encoding
    audio needs torchcodec in datasets 5, which Hub datasets (stored encoded) do not."""
    table = datasets.Dataset.from_dict({"audio": audio, "label": labels})
    return table.cast_column("audio", datasets.Audio()).cast_column("label", datasets.ClassLabel(names=names))


def test_audio_rows_as_bytes_or_paths_give_audio_folder_batches(tmp_path):
    """An `Audio` column (decoded here with soundfile, not `datasets`' torchcodec) gives the batches of
    `AudioFolderDataModule`: mono, resampled, cut or padded with a mask; file bytes and file paths alike."""
    import soundfile as sf

    from perceiver.data import HFAudioDataModule
    from perceiver.data.audio_folder import fit_length, load_audio

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(12):
        path = tmp_path / f"{i}.wav"
        seconds = 0.05 if i % 3 else 0.2  # some shorter than the clip (padded), some longer (centre crop)
        wave = rng.uniform(-0.5, 0.5, (int(8000 * seconds), 2)).astype(np.float32)  # stereo, 8 kHz
        sf.write(path, wave, 8000)
        paths.append(path)
        labels.append(i % 2)
    audio = [
        {"bytes": p.read_bytes() if i % 2 else None, "path": p.name if i % 2 else str(p)} for i, p in enumerate(paths)
    ]
    table = audio_table(audio, labels, ["a", "b"])
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "sounds"))
    dm = HFAudioDataModule(str(tmp_path / "sounds"), sample_rate=4000, num_samples=600, test_split="test", batch_size=6)
    assert dm.class_names == ["a", "b"] and dm.audio_column == "audio"
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["inputs"].shape == (6, 600, 1) and batch["mask"].shape == (6, 600)
    assert batch["labels"].tolist() == labels[:6]
    for i in range(6):
        clip, mask = fit_length(load_audio(paths[i], 4000), 600)
        torch.testing.assert_close(batch["inputs"][i, :, 0], torch.from_numpy(clip))
        assert batch["mask"][i].tolist() == mask.tolist()
    assert not batch["mask"][1].all() and batch["mask"][0].all()  # 0.05 s = 200 samples at 4 kHz: padded


def test_undecodable_audio_bytes_are_named(tmp_path):
    from perceiver.data import HFAudioDataModule

    table = audio_table([{"bytes": b"not a sound", "path": "clip7.wav"}] * 2, [0, 0], ["a"])
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "bad"))
    dm = HFAudioDataModule(str(tmp_path / "bad"), num_samples=100, val_split="train")
    dm.setup("fit")
    with pytest.raises(ValueError, match="cannot decode audio file clip7.wav"):
        dm.train_set[0]


def test_a_missing_folder_or_a_malformed_id_is_named(tmp_path, monkeypatch):
    from perceiver.data.hf_datasets import open_dataset

    monkeypatch.chdir(tmp_path)
    for path in ("./nope", str(tmp_path / "nope"), "~/surely-not-a-folder-here"):
        with pytest.raises(FileNotFoundError, match="no dataset folder"):
            HFImageDataModule(path, image_size=8).setup("fit")
    with pytest.raises(ValueError, match="neither a dataset folder here nor a Hub dataset id"):
        open_dataset("bad id with spaces!")
