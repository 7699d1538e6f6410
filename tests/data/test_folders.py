"""ImageFolderDataModule on generated PNG / JPEG folders: shapes, labels, splits, augmentation, clear errors."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from perceiver.data import ImageFolderDataModule
from perceiver.data._common import SampleKey


def save(path, size=(20, 30), mode="RGB", fmt=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode=mode).save(path, format=fmt)
    return path


def make_folder(root, classes=("cat", "dog", "emu"), per_class=10):
    for c, name in enumerate(classes):
        for i in range(per_class):
            ext = ".jpg" if i % 3 == 0 else ".png"
            mode = "L" if i % 4 == 1 else "RGB"
            sub = "nested/" if i == 2 else ""
            save(root / name / f"{sub}{name}{i}{ext}", size=(16 + i, 24 + c), mode=mode, seed=c * 100 + i)
        (root / name / "notes.txt").write_text("not an image")
    return root


def test_batches_shapes_labels_and_split(tmp_path):
    root = make_folder(tmp_path / "train")
    dm = ImageFolderDataModule(str(root), image_size=(12, 14), batch_size=8)
    assert dm.class_names == ["cat", "dog", "emu"] and dm.num_classes == 3 and dm.image_shape == (12, 14, 3)
    dm.setup()
    assert len(dm.train_set) == 27 and len(dm.val_set) == 3  # 10% per class, nested folder included
    assert not set(dm.train_set.files) & set(dm.val_set.files)
    assert all(f.suffix != ".txt" for f in dm.train_set.files)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (8, 12, 14, 3) and batch["inputs"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long and batch["labels"].max() < 3
    assert batch["inputs"].min() >= 0 and batch["inputs"].max() <= 1
    # same split whatever the seed
    other = ImageFolderDataModule(str(root), image_size=12, seed=3)
    other.setup()
    assert other.val_set.files == dm.val_set.files and other.image_shape == (12, 12, 3)


def test_values_match_pillow_and_grayscale_cache(tmp_path):
    root = make_folder(tmp_path / "train", per_class=4)
    dm = ImageFolderDataModule(str(root), image_size=8, grayscale=True, cache_images=True, batch_size=4)
    dm.setup()
    item = dm.train_set[0]
    assert item["inputs"].shape == (8, 8, 1) and dm.image_shape == (8, 8, 1)
    ref = Image.open(dm.train_set.files[0]).convert("L").resize((8, 8), Image.Resampling.BILINEAR)
    assert torch.allclose(item["inputs"][..., 0], torch.from_numpy(np.asarray(ref, dtype=np.float32) / 255))


def test_val_and_test_roots_and_augmentation(tmp_path):
    root = make_folder(tmp_path / "train", per_class=4)
    val = make_folder(tmp_path / "val", classes=("cat", "emu"), per_class=2)
    test = make_folder(tmp_path / "test", per_class=1)
    dm = ImageFolderDataModule(str(root), 10, val_root=str(val), test_root=str(test), augment=True, batch_size=4)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 4, 3)
    assert sorted(set(dm.val_set.labels.tolist())) == [0, 2]  # labels follow the training classes
    a, b = dm.train_set[SampleKey(0, 5)]["inputs"], dm.train_set[SampleKey(0, 5)]["inputs"]
    assert torch.equal(a, b)
    assert any(not torch.equal(a, dm.train_set[SampleKey(e, 5)]["inputs"]) for e in range(1, 6))
    plain = dm.val_set[0]["inputs"]
    assert torch.equal(plain, dm.val_set[SampleKey(3, 0)]["inputs"])  # no augmentation at evaluation


def test_missing_root_and_no_test_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        ImageFolderDataModule(str(tmp_path / "absent"))
    (tmp_path / "flat").mkdir()
    save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderDataModule(str(tmp_path / "flat"))
    dm = ImageFolderDataModule(str(make_folder(tmp_path / "t", per_class=3)), 8)
    with pytest.raises(ValueError, match="no test split"):
        dm.test_dataloader()


def test_empty_class_folder_names_the_folder(tmp_path):
    root = make_folder(tmp_path / "train", per_class=3)
    (root / "yak").mkdir()
    (root / "yak" / "readme.md").write_text("no images here")
    dm = ImageFolderDataModule(str(root), 8)
    with pytest.raises(ValueError, match=r"class folder .*yak has no images"):
        dm.setup()


@pytest.mark.parametrize("check", ["decode", "verify"])
@pytest.mark.parametrize("kind", ["garbage", "truncated_png"])
def test_undecodable_image_names_the_file(tmp_path, check, kind):
    root = make_folder(tmp_path / "train", per_class=3)
    bad = root / "dog" / "broken.png"
    if kind == "garbage":
        bad.write_bytes(b"this is not a png at all" * 10)
    else:
        good = save(tmp_path / "x.png", size=(40, 40)).read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"dog.broken\.png"):
        ImageFolderDataModule(str(root), 8, check_images=check).setup()


def test_truncated_jpeg_fails_full_decode(tmp_path):
    root = make_folder(tmp_path / "train", per_class=3)
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    (root / "emu" / "cut.jpg").write_bytes(buf.getvalue()[:800])
    with pytest.raises(ValueError, match=r"emu.cut\.jpg"):
        ImageFolderDataModule(str(root), 8).setup()


def test_unknown_class_in_val_root(tmp_path):
    root = make_folder(tmp_path / "train", per_class=3)
    val = make_folder(tmp_path / "val", classes=("cat", "wolf"), per_class=1)
    with pytest.raises(ValueError, match=r"val.wolf is not a class"):
        ImageFolderDataModule(str(root), 8, val_root=str(val)).setup()


@pytest.mark.parametrize("grayscale", [False, True])
def test_lab_tiff_reads_in_rgb_and_grayscale(tmp_path, grayscale):
    """Pillow converts a LAB TIFF to RGB but not to L ("conversion from LAB to RGB not supported"): a grayscale
    model's data failed in the first batch after `check_images="decode"` passed. Grey goes through RGB."""
    from PIL import ImageCms

    from perceiver.data._common import load_image

    rgb = Image.fromarray((np.random.default_rng(0).random((6, 5, 3)) * 255).astype(np.uint8))
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    ImageCms.applyTransform(rgb, to_lab).save(tmp_path / "lab.tif")
    with Image.open(tmp_path / "lab.tif") as im:
        assert im.mode == "LAB"
        expected = np.asarray(im.convert("RGB").convert("L" if grayscale else "RGB"), dtype=np.float32) / 255.0
    got = load_image(tmp_path / "lab.tif", grayscale=grayscale)
    assert got.shape == (6, 5, 1 if grayscale else 3)
    np.testing.assert_array_equal(got, expected[..., None] if grayscale else expected)
    assert np.abs(got.reshape(-1) - 0.5).max() > 0.1  # real values, not a blank conversion
