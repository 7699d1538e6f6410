"""A user's own data, as it comes: phone photos with an EXIF orientation, class folders assembled from symbolic links,
folder names from a Mac, a dataset folder given instead of its training split, `datasets` splits encoded separately
(`class_encode_column` per split), integer label columns, image columns of paths or bytes, an unlabelled test split,
sound files that moved, a text file named with glob characters. Each case here was read wrongly (silently) or failed
with an unclear error."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from perceiver.data import ImageFolderDataModule, TextClassificationDataModule
from perceiver.data._common import load_image
from perceiver.data.folders import list_files

datasets = pytest.importorskip("datasets")
from perceiver.data import HFImageDataModule  # noqa: E402


def picture(seed: int, size: tuple[int, int] = (10, 16)) -> Image.Image:
    """A random RGB picture `size = (H, W)` (synthetic)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8))


def class_folders(root, classes=("cat", "dog"), per_class=4):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            picture(10 * c + i).save(root / name / f"{i}.png")
    return root


def test_exif_orientation_is_applied_as_photo_viewers_and_datasets_do(tmp_path):
    """A phone stores a portrait photo as landscape pixels + EXIF orientation 6 ("rotate 90 clockwise"): viewers and
    `datasets.Image` show it upright (tall), and so do training and `perceiver predict` now (they read it sideways)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    picture(0, (10, 16)).save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "portrait.jpg") as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float32) / 255.0
    got = load_image(tmp_path / "portrait.jpg")
    assert got.shape == (16, 10, 3)  # upright: 16 high, 10 wide
    np.testing.assert_array_equal(got, expected)
    as_datasets = datasets.Dataset.from_dict({"image": [str(tmp_path / "portrait.jpg")]})
    decoded = as_datasets.cast_column("image", datasets.Image())[0]["image"]
    assert decoded.size == (10, 16)  # (W, H): what the user sees in `datasets` too


def test_symlinked_sub_folders_are_searched_once_and_broken_links_named(tmp_path):
    """`root/cat/batch1 -> /elsewhere/batch1`: torchvision's ImageFolder follows it; the images were silently left
    out (and a class made only of such links was "a class folder with no images")."""
    root = class_folders(tmp_path / "train")
    elsewhere = tmp_path / "elsewhere" / "batch1"
    elsewhere.mkdir(parents=True)
    for i in range(3):
        picture(100 + i).save(elsewhere / f"x{i}.png")
    os.symlink(elsewhere, root / "cat" / "batch1")
    os.symlink(root / "cat", elsewhere / "back_up")  # a loop: cat/batch1/back_up -> cat
    found = list_files(root / "cat")
    assert len(found) == 4 + 3 and len({f.resolve() for f in found}) == 7
    assert (root / "cat" / "batch1" / "x0.png") in found
    dm = ImageFolderDataModule(str(root), 8, val_fraction=0.25)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 7 + 4
    os.symlink(tmp_path / "moved-away.png", root / "dog" / "gone.png")
    with pytest.raises(FileNotFoundError, match=r"broken symbolic link .*dog.gone\.png"):
        ImageFolderDataModule(str(root), 8).setup()


def separately_encoded(tmp_path, text: bool = False):
    """A DatasetDict whose splits were label-encoded one by one: the validation split lacks "cat", so its ClassLabel
    is ["dog", "emu"] and its id 0 means "dog", while the training split's id 0 means "cat"; the test split was left
    with its label strings."""
    key = "text" if text else "image"
    train_inputs = [f"row {i}" for i in range(9)] if text else [picture(i) for i in range(9)]
    val_inputs = [f"val {i}" for i in range(4)] if text else [picture(50 + i) for i in range(4)]
    train = datasets.Dataset.from_dict({key: train_inputs, "label": ["cat", "dog", "emu"] * 3})
    val = datasets.Dataset.from_dict({key: val_inputs, "label": ["dog", "emu", "emu", "dog"]})
    train, val = train.class_encode_column("label"), val.class_encode_column("label")
    assert val.features["label"].names == ["dog", "emu"] and val["label"][:] == [0, 1, 1, 0]
    path = tmp_path / ("text" if text else "images")
    test = datasets.Dataset.from_dict({key: val_inputs[:2], "label": ["emu", "cat"]})
    datasets.DatasetDict({"train": train, "validation": val, "test": test}).save_to_disk(str(path))
    return str(path)


def test_hf_images_read_another_splits_class_label_by_name(tmp_path):
    dm = HFImageDataModule(separately_encoded(tmp_path), image_size=8, val_split="validation", test_split="test")
    assert dm.class_names == ["cat", "dog", "emu"]
    dm.setup("fit")
    assert dm.val_set.labels.tolist() == [1, 2, 2, 1]  # dog, emu, emu, dog: not cat, dog, dog, cat
    assert dm.test_set.labels.tolist() == [2, 0]  # names: not "invalid literal for int()"


def test_text_dataset_reads_another_splits_class_label_by_name(tmp_path):
    path = separately_encoded(tmp_path, text=True)
    dm = TextClassificationDataModule(dataset=path, val_split="validation", test_split="test")
    assert dm.class_names == ["cat", "dog", "emu"]
    dm.setup("fit")
    assert dm.val_set.labels.tolist() == [1, 2, 2, 1]
    assert dm.test_set.labels.tolist() == [2, 0]


def test_hf_integer_labels_are_class_ids(tmp_path):
    """An integer label column (not a ClassLabel, e.g. from pandas or parquet): label i is class i, as in
    TextClassificationDataModule; the classes were the labels sorted as strings, so label 10 was class 2."""
    labels = [i % 12 for i in range(24)]
    images = [Image.fromarray(np.full((4, 4, 3), 20 * label, np.uint8)) for label in labels]  # the label, shown
    datasets.Dataset.from_dict({"image": images, "digit": labels}).save_to_disk(str(tmp_path / "d"))
    dm = HFImageDataModule(str(tmp_path / "d"), image_size=4, label_column="digit", val_fraction=0.5)
    assert dm.class_names == [str(i) for i in range(12)] and dm.num_classes == 12
    dm.setup("fit")
    for ds in (dm.train_set, dm.val_set):
        for i in range(len(ds)):
            item = ds[i]
            assert int(item["labels"]) == round(float(item["inputs"].mean()) * 255 / 20)


def test_hf_image_column_of_file_paths(tmp_path):
    """An image column of file paths (strings, not yet cast to `Image()`), named by `image_column`: read as paths,
    as `cast_column(column, Image())` reads them; it failed in the first batch with Pillow's AttributeError."""
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        picture(i).save(paths[-1])
    rows = {"file": paths, "label": ["a", "b"] * 3, "score": [0.5] * 6}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "d"))
    dm = HFImageDataModule(str(tmp_path / "d"), image_size=(10, 16), image_column="file", label_column="label")
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].shape[1:] == (10, 16, 3)
    shown = [torch.from_numpy(load_image(p)) for p in paths]
    assert any(torch.equal(batch["inputs"][0], s) for s in shown)
    with pytest.raises(ValueError, match=r"image column 'score' holds .*float.*expected an Image feature or file"):
        HFImageDataModule(str(tmp_path / "d"), image_column="score", label_column="label")


def test_a_validation_folder_unpacked_from_a_macs_zip_names_the_same_classes(tmp_path):
    """macOS writes "dög" decomposed (NFD), Linux keeps what it is given: the validation folder's "dög" was "not a
    class of the training folder ([..., 'dög'])", two names that print the same."""
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "dög"), unicodedata.normalize("NFD", "dög")
    assert nfc != nfd
    root = class_folders(tmp_path / "train", classes=("cat", nfc))
    val = class_folders(tmp_path / "val", classes=(nfd, "cat"), per_class=2)
    dm = ImageFolderDataModule(str(root), 8, val_root=str(val))
    dm.setup()
    assert dm.class_names == ["cat", nfc]
    assert dm.val_set.labels.tolist() == [0, 0, 1, 1]  # sorted paths: cat/..., then dög/...


def test_an_unlabelled_test_split_is_named(tmp_path):
    """A test split without the label column (labels withheld) was a KeyError of pyarrow."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    train = datasets.Dataset.from_dict({"image": [picture(i) for i in range(6)], "label": [0, 1] * 3}, features)
    test = datasets.Dataset.from_dict({"image": [picture(9)]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "d"))
    dm = HFImageDataModule(str(tmp_path / "d"), image_size=8, test_split="test", val_fraction=0.34)
    with pytest.raises(ValueError, match=r"split 'test' has no label column 'label' \(its columns are \['image'\]\)"):
        dm.setup("test")


def test_a_sound_file_that_moved_away_is_named_as_missing(tmp_path):
    """A `datasets` audio column of file paths whose files moved: libsndfile's "System error." became the message."""
    sf = pytest.importorskip("soundfile")
    from perceiver.data import HFAudioDataModule

    paths = [str(tmp_path / f"{i}.wav") for i in range(4)]
    for i, path in enumerate(paths):
        sf.write(path, np.full(80, 0.1 * i, np.float32), 8000)
    rows = {"file": paths, "label": ["a", "b"] * 2}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "d"))
    dm = HFAudioDataModule(str(tmp_path / "d"), 8000, 100, audio_column="file", label_column="label", val_split="train")
    dm.setup("fit")
    assert dm.val_set[2]["inputs"][:80, 0].tolist() == pytest.approx([0.2] * 80, abs=1e-4)
    os.remove(paths[3])
    with pytest.raises(FileNotFoundError, match=r"audio file not found: .*3\.wav"):
        dm.val_set[3]


def test_a_text_file_named_with_glob_characters_is_found(tmp_path):
    """ "book [v2].txt" given by its exact name was "no train file matches" (glob reads [v2] as a character set)."""
    from perceiver.data import TextFilesARDataModule
    from perceiver.data.text import encode_bytes

    (tmp_path / "book [v2].txt").write_bytes(b"\xef\xbb\xbf" + b"line one\r\nline two\r\n" * 40)  # BOM, CRLF
    dm = TextFilesARDataModule(train=str(tmp_path / "book [v2].txt"), max_seq_len=32, num_targets=8)
    dm.setup("fit")
    stream = np.concatenate([dm.streams["train"], dm.streams["val"]])
    assert stream.tolist() == encode_bytes("line one\nline two\n" * 40).tolist()  # as documented: no BOM, LF


def test_a_folder_of_splits_given_as_root_is_an_error(tmp_path):
    """root=data/ holding data/train/<class>/ and data/val/<class>/: a "train" vs "val" classifier was trained (the
    images are found recursively), with no error."""
    class_folders(tmp_path / "data" / "train")
    class_folders(tmp_path / "data" / "val", per_class=2)
    with pytest.raises(ValueError, match=r"\['train', 'val'\]: split folders, not classes; .*root=.*data.train"):
        ImageFolderDataModule(str(tmp_path / "data"))


def test_parquet_written_without_datasets_metadata(tmp_path):
    """Parquet written by pyarrow / pandas holds images as `{"bytes", "path"}` structs or as raw bytes (no `Image`
    feature): both are image files to read; the bytes column failed in the first batch with an AttributeError."""
    import io

    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((6, 6, 3), 30 * i, np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    labels = ["a", "b"] * 3
    table = {"struct": [{"bytes": png(i), "path": f"{i}.png"} for i in range(6)], "raw": [png(i) for i in range(6)]}
    pq.write_table(pa.table({**table, "label": labels}), str(tmp_path / "train.parquet"))
    for column in ("struct", "raw"):
        dm = HFImageDataModule(
            "parquet", data_files={"train": str(tmp_path / "train.parquet")}, image_size=6, image_column=column,
            label_column="label", val_split="train",
        )  # fmt: skip
        dm.setup("fit")
        batch = next(iter(dm.val_dataloader()))
        assert batch["labels"].tolist() == [0, 1] * 3
        assert torch.allclose(batch["inputs"][:, 0, 0, 0] * 255, torch.arange(6) * 30.0)


def test_a_sub_folder_that_cannot_be_listed_is_an_error(tmp_path, monkeypatch):
    """A sub-folder copied with another owner's permissions: its images were left out silently."""
    root = class_folders(tmp_path / "train")
    (root / "dog" / "locked").mkdir()
    picture(7).save(root / "dog" / "locked" / "x.png")
    scandir = os.scandir

    def denied(path="."):
        if str(path).endswith("locked"):  # as root in a test, chmod would not stop the listing
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(PermissionError, match="dog.locked"):
        ImageFolderDataModule(str(root), 8).setup()


def test_val_files_that_the_train_pattern_matches_too_are_named(tmp_path):
    """`--data.train "corpus/**/*.txt" --data.val "corpus/val/*.txt"`: the validation text was trained on too, and
    the validation bits per byte measured memorisation, without a word."""
    from perceiver.data import TextFilesARDataModule

    (tmp_path / "corpus" / "val").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("training text " * 20)
    (tmp_path / "corpus" / "val" / "b.txt").write_text("held-out text " * 20)
    train, val = str(tmp_path / "corpus" / "**" / "*.txt"), str(tmp_path / "corpus" / "val" / "*.txt")
    with pytest.warns(UserWarning, match=r"1 val file\(s\) are training files too.*val.b\.txt"):
        TextFilesARDataModule(train=train, val=val, max_seq_len=16, num_targets=4).setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the training files alone: no warning
        TextFilesARDataModule(train=str(tmp_path / "corpus" / "*.txt"), val=val, max_seq_len=16, num_targets=4).setup()
