"""Your own data, as users have it: 16-bit images, macOS zip debris, one class only, non-UTF-8 or unparsable tables,
empty texts, non-audio or NaN sound files, a folder instead of a glob, byte order marks, broken images and empty labels
in a `datasets` dataset. Each is read right or is an error naming the file (or row) and what was expected."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from perceiver.data import ImageFolderDataModule, TextClassificationDataModule, TextFilesARDataModule
from perceiver.data._common import load_image


def save_png(path, array=None, mode="RGB", size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if array is not None else Image.new(mode, size, 128)
    image.save(path)
    return path


def image_folder(root, classes=("cat", "dog"), per_class=4):
    for name in classes:
        for i in range(per_class):
            save_png(root / name / f"{i}.png")
    return root


def text_module(tmp_path, path, **kwargs):
    return TextClassificationDataModule(
        train_file=str(path), cache_dir=str(tmp_path / "hf-cache"), batch_size=4, **kwargs
    )


# images


def test_16_bit_greyscale_png_is_scaled_not_clipped_at_255(tmp_path):
    ramp = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    path = save_png(tmp_path / "ramp16.png", ramp)
    assert Image.open(path).mode.startswith("I")
    expected = ramp.astype(np.float32) / 65535
    grey = load_image(path, grayscale=True)
    np.testing.assert_allclose(grey[..., 0], expected, atol=1e-6)
    assert grey.flags.writeable  # torch.from_numpy warns on a read-only array
    np.testing.assert_allclose(load_image(path)[0, :, 1], expected[0], atol=1e-6)  # RGB: grey in every channel
    resized = load_image(path, size=(2, 2))
    assert resized.shape == (2, 2, 3) and resized.min() >= 0.0 and resized.max() <= 1.0 and resized.mean() < 0.9
    from perceiver.training.predict import load_image as predict_image  # `perceiver predict` reads it the same way

    np.testing.assert_array_equal(predict_image(path, None, channels=1), grey)
    np.testing.assert_array_equal(predict_image(path, (2, 2)), resized)


def test_one_class_folder_is_an_error_naming_the_folder(tmp_path):
    root = image_folder(tmp_path / "train", classes=("cat",))
    with pytest.raises(ValueError, match=r"expected at least 2 class folders in .*train .*got 1: 'cat'"):
        ImageFolderDataModule(str(root))


def test_macos_zip_debris_is_skipped(tmp_path):
    root = image_folder(tmp_path / "train")
    debris = root / "__MACOSX" / "cat"
    debris.mkdir(parents=True)
    (debris / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "dog" / "._1.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    dm = ImageFolderDataModule(str(root), image_size=8, batch_size=2)
    assert dm.class_names == ["cat", "dog"]
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 8


# sound


def test_a_file_that_is_not_sound_and_nan_samples_are_named(tmp_path):
    sf = pytest.importorskip("soundfile")
    from perceiver.data.audio_folder import load_audio

    fake = tmp_path / "junk.mp3"
    fake.write_text("not audio")
    with pytest.raises(ValueError, match=r"cannot decode audio file .*junk\.mp3: not a sound file") as info:
        load_audio(fake, 16000)
    assert "does not exist" not in str(info.value)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full((100, 1), np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"audio file .*nan\.wav has NaN or infinite samples"):
        load_audio(nan, 16000)


# text classification


def test_non_utf8_and_unparsable_tables_say_why(tmp_path):
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"text,label\n" + "".join(f"café {i},{i % 2}\n" for i in range(10)).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv: expected UTF-8 text"):
        text_module(tmp_path, latin1).setup()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a", "label": 0}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: cannot be read as json \(ArrowInvalid: JSON parse error"):
        text_module(tmp_path, bad).setup()
    header = tmp_path / "header.csv"
    header.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"header\.csv: no rows"):
        text_module(tmp_path, header).setup()


def test_an_empty_text_is_an_error_naming_the_row(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(6)] + [{"text": "", "label": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.jsonl: row 6: field 'text' is empty"):
        text_module(tmp_path, path).setup()


@pytest.mark.parametrize("label", ["pos", 0])
def test_a_single_training_label_is_an_error(tmp_path, label):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": label}) + "\n" for i in range(6)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.jsonl: expected at least 2 classes in field 'label'"):
        _ = text_module(tmp_path, path).num_classes
    assert text_module(tmp_path, path, class_names=["neg", "pos"]).num_classes == 2  # given classes: fine


# text files


def test_a_folder_instead_of_a_glob_gets_a_hint(tmp_path):
    (tmp_path / "corpus").mkdir()
    with pytest.raises(FileNotFoundError, match=r"got the folder .*corpus.*give a glob: .*corpus/\*\*/\*\.txt"):
        TextFilesARDataModule(train=str(tmp_path / "corpus"), max_seq_len=16, num_targets=4).setup()


def test_a_byte_order_mark_is_not_text(tmp_path):
    path = tmp_path / "notepad.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"plain text " * 20)
    dm = TextFilesARDataModule(train=str(path), max_seq_len=16, num_targets=4, val_fraction=0.2)
    dm.setup()
    stream = np.concatenate([dm.streams["train"], dm.streams["val"]])
    assert stream[:5].tolist() == [b + 6 for b in b"plain"]


# Hugging Face datasets


def test_hf_broken_image_and_bad_labels_are_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    from perceiver.data import HFImageDataModule

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), 50).save(buf, "PNG")
    good = buf.getvalue()
    images = [{"bytes": good, "path": f"{i}.png"} for i in range(8)]
    images[3] = {"bytes": good[:30], "path": "broken.png"}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})

    def save(name, labels):
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(
            str(tmp_path / name)
        )
        return str(tmp_path / name)

    dm = HFImageDataModule(
        save("broken", list("abababab")), image_size=4, val_split="train", label_column="label", batch_size=2
    )
    dm.setup()
    assert dm.train_set[0]["inputs"].shape == (4, 4, 3) and dm.train_set[0]["inputs"].dtype == torch.float32
    with pytest.raises(ValueError, match=r"image cannot be decoded: broken\.png \(") as info:
        dm.train_set[3]
    assert "BytesIO" not in str(info.value)
    with pytest.raises(ValueError, match=r"split 'train' row 2: label column 'label' is empty"):
        HFImageDataModule(save("none", ["a", "b", None, "a", "b", "a", "b", "a"]), label_column="label")
    with pytest.raises(ValueError, match=r"expected at least 2 classes in label column 'label', got \['a'\]"):
        HFImageDataModule(save("one", ["a"] * 8), label_column="label")
