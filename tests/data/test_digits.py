"""DigitsDataModule: shapes, dtypes, fixed splits, determinism, augmentation."""

import numpy as np
import pytest
import torch

from perceiver.data import DigitsDataModule
from perceiver.data._common import EpochSampler, SampleKey
from perceiver.data.digits import rotate_scale_image, shift_image


def _all(loader):
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_batch_shapes_and_ranges():
    dm = DigitsDataModule(batch_size=32)
    assert dm.num_classes == 10 and dm.image_shape == (8, 8, 1) and len(dm.class_names) == 10
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (32, 8, 8, 1) and batch["inputs"].dtype == torch.float32
    assert batch["labels"].shape == (32,) and batch["labels"].dtype == torch.long
    assert batch["inputs"].min() >= 0.0 and batch["inputs"].max() <= 1.0
    assert batch["inputs"].max() == 1.0  # 16 grey levels -> [0, 1]
    labels = _all(dm.test_dataloader())["labels"]
    assert labels.min() == 0 and labels.max() == 9


def test_splits_fixed_disjoint_and_independent_of_seed():
    images, labels = DigitsDataModule.load_arrays()
    a = DigitsDataModule.split_indices(labels)
    assert len(a["test"]) == 360 and len(a["train"]) + len(a["val"]) + len(a["test"]) == 1797
    assert not set(a["train"]) & set(a["val"]) and not set(a["train"]) & set(a["test"])
    assert not set(a["val"]) & set(a["test"])
    # stratified: every class in every split
    for split in a.values():
        assert len(np.unique(labels[split])) == 10
    dm0, dm1 = DigitsDataModule(batch_size=64, seed=0), DigitsDataModule(batch_size=64, seed=5)
    dm0.setup(), dm1.setup()
    for name in ("val_dataloader", "test_dataloader"):
        x0, x1 = _all(getattr(dm0, name)()), _all(getattr(dm1, name)())
        assert torch.equal(x0["inputs"], x1["inputs"]) and torch.equal(x0["labels"], x1["labels"])


def test_training_order_depends_on_seed_and_epoch_only():
    def first(seed, epoch):
        dm = DigitsDataModule(batch_size=16, seed=seed)
        dm.setup()
        dm.set_epoch(epoch)
        return next(iter(dm.train_dataloader()))["labels"]

    assert torch.equal(first(0, 0), first(0, 0))
    assert not torch.equal(first(0, 0), first(0, 1))
    assert not torch.equal(first(0, 0), first(1, 0))


def test_sampler_matches_distributed_sampler_and_splits_ranks():
    data = list(range(10))
    one = [k.index for k in EpochSampler(data, seed=3, epoch_fn=lambda: 2)]
    ref = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, seed=3)
    ref.set_epoch(2)
    assert one == list(ref)
    ranks = [[k.index for k in EpochSampler(data, seed=3, num_replicas=2, rank=r, epoch_fn=lambda: 2)] for r in (0, 1)]
    # global step i over 2 ranks with batch b == step i of one process with batch 2b
    assert sorted(ranks[0][:2] + ranks[1][:2]) == sorted(one[:4])
    assert all(isinstance(k, SampleKey) for k in EpochSampler(data))


def test_augmentation_shifts_deterministically():
    dm = DigitsDataModule(batch_size=8, augment=True)
    dm.setup()
    ds = dm.train_set
    assert torch.equal(ds[SampleKey(3, 5)]["inputs"], ds[SampleKey(3, 5)]["inputs"])
    differs = sum(not torch.equal(ds[SampleKey(e, 5)]["inputs"], ds[SampleKey(0, 5)]["inputs"]) for e in range(1, 8))
    assert differs > 0
    assert DigitsDataModule(batch_size=8).augment is False


def test_shift_image():
    img = torch.arange(16.0).reshape(4, 4, 1)
    out = shift_image(img, 1, -1)
    assert out[0].abs().sum() == 0 and out[:, -1].abs().sum() == 0
    assert out[1, 0, 0] == img[0, 1, 0]


def test_rotate_scale_image():
    img = torch.zeros(8, 8, 1)
    img[1:7, 3:5] = 1.0  # a vertical bar
    assert torch.equal(rotate_scale_image(img, 0.0, 1.0), img)  # identity
    turned = rotate_scale_image(img, 90.0, 1.0)
    torch.testing.assert_close(turned, img.transpose(0, 1), atol=1e-5, rtol=0)  # the bar lies down
    grown = rotate_scale_image(img, 0.0, 1.25)
    assert grown[0, 3, 0] > 0 and grown[7, 4, 0] > 0  # zooming in stretches it to the border
    assert rotate_scale_image(img, 0.0, 0.75)[1, 3, 0] < 0.5  # zooming out shrinks it


def test_rotation_and_scale_augmentation_is_deterministic_and_train_only():
    dm = DigitsDataModule(batch_size=8, augment=True, max_shift=0, max_rotation=15.0, max_scale=0.1)
    dm.setup()
    ds = dm.train_set
    assert torch.equal(ds[SampleKey(2, 4)]["inputs"], ds[SampleKey(2, 4)]["inputs"])
    assert not torch.equal(ds[SampleKey(2, 4)]["inputs"], ds[SampleKey(3, 4)]["inputs"])
    assert not torch.equal(ds[SampleKey(2, 4)]["inputs"], ds.images[4])
    assert torch.equal(dm.val_set[SampleKey(2, 4)]["inputs"], dm.val_set.images[4])
    plain = DigitsDataModule(batch_size=8, max_rotation=15.0, max_scale=0.1)  # augment off: no effect
    plain.setup()
    assert torch.equal(plain.train_set[SampleKey(2, 4)]["inputs"], plain.train_set.images[4])


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_rotation"):
        DigitsDataModule(max_rotation=-1.0)
    with pytest.raises(ValueError, match="max_scale"):
        DigitsDataModule(max_scale=1.0)
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        DigitsDataModule(batch_size=0)
