"""Mixup / CutMix of training batches (`perceiver.training.mixing`, `ClassificationTask(mixup_alpha, cutmix_alpha)`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perceiver.training.classification_task import ClassificationTask
from perceiver.training.mixing import mix_batch


def constant_images(batch: int = 6, shape=(8, 8, 3)) -> torch.Tensor:
    """Image i is filled with the value i + 1, so every pixel says which image it came from."""
    return (torch.arange(batch, dtype=torch.float32) + 1).view(-1, *[1] * len(shape)).expand(batch, *shape).clone()


def test_mixup_is_a_convex_combination_with_a_permutation():
    torch.manual_seed(0)
    x = torch.randn(5, 8, 8, 3)
    mixed, perm, lam = mix_batch(x, mixup_alpha=0.4)
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(5))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])


@pytest.mark.parametrize(("layout", "shape"), [("channels_last", (8, 10, 3)), ("channels_first", (3, 8, 10))])
def test_cutmix_pastes_one_box_and_lam_is_the_kept_share(layout, shape):
    torch.manual_seed(1)
    x = constant_images(6, shape)
    for _ in range(20):
        mixed, perm, lam = mix_batch(x, cutmix_alpha=1.0, layout=layout)
        for i in range(6):
            source = mixed[i] if layout == "channels_last" else mixed[i].movedim(0, -1)  # (H, W, C)
            assert (source == source[..., :1]).all()  # a pixel's channels come from one image
            pasted = source[..., 0] == perm[i].item() + 1
            kept = source[..., 0] == i + 1
            assert (pasted | kept).all()
            if perm[i] != i:
                rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
                if len(rows):  # the pasted pixels fill a rectangle
                    box = pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
                    assert box.all() and int(pasted.sum()) == box.numel()
                assert lam == pytest.approx(float(kept.float().mean()))


def test_with_both_alphas_each_batch_uses_one_of_them():
    torch.manual_seed(2)
    x = constant_images(4)
    kinds = set()
    for _ in range(40):
        mixed, _, lam = mix_batch(x, mixup_alpha=0.5, cutmix_alpha=1.0)
        fractional = not torch.equal(mixed, mixed.round())
        kinds.add("mixup" if fractional else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_zero_alphas_return_the_batch():
    x = torch.randn(3, 4, 4, 1)
    mixed, _, lam = mix_batch(x)
    assert mixed is x and lam == 1.0


@pytest.mark.parametrize(
    ("inputs", "kwargs", "match"),
    [
        (torch.randn(2, 8, 8, 1), {"mixup_alpha": -0.1}, "mixup_alpha must be a number >= 0.*got -0.1"),
        (torch.randn(2, 8, 8, 1), {"cutmix_alpha": float("inf")}, "cutmix_alpha must be a number >= 0"),
        (torch.randn(2, 100, 3), {"mixup_alpha": 0.2}, r"images \(B, H, W, C\).*got inputs of shape \(2, 100, 3\)"),
        (torch.zeros(2, 8, 8, 1, dtype=torch.long), {"mixup_alpha": 0.2}, "of floats.*torch.int64"),
        (torch.randn(2, 8, 8, 1), {"cutmix_alpha": 1.0, "layout": "nhwc"}, "input layout of.*got 'nhwc'"),
    ],
)
def test_bad_mixing_input_names_expected_and_got(inputs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mix_batch(inputs, **kwargs)


TINY = dict(
    model="perceiver",
    model_kwargs=dict(
        input_channels=1, input_axis=2, num_freq_bands=2, max_freq=4.0, depth=1, num_latents=4, latent_dim=16,
        cross_dim_head=8, latent_dim_head=8, latent_heads=2, num_classes=10,
    ),
)  # fmt: skip


def test_task_trains_on_the_mixed_loss():
    task = ClassificationTask(**TINY, mixup_alpha=0.4, label_smoothing=0.1)
    batch = {"inputs": torch.rand(6, 8, 8, 1), "labels": torch.arange(6)}
    torch.manual_seed(3)
    loss = task.step(batch, "train")
    torch.manual_seed(3)
    mixed, perm, lam = mix_batch(batch["inputs"], mixup_alpha=0.4)
    logits = task.model(mixed)
    expected = lam * F.cross_entropy(logits, batch["labels"], label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
        logits, batch["labels"][perm], label_smoothing=0.1
    )
    torch.testing.assert_close(loss, expected)
    assert lam != 1.0 and not torch.equal(mixed, batch["inputs"])
    plain = F.cross_entropy(task.model(batch["inputs"]), batch["labels"])
    torch.testing.assert_close(task.step(batch, "val"), plain)  # validation is never mixed


def test_task_refuses_to_mix_point_clouds_and_bad_alphas():
    task = ClassificationTask(**TINY, cutmix_alpha=1.0)
    clouds = {
        "inputs": torch.rand(2, 64, 3),
        "mask": torch.ones(2, 64, dtype=torch.bool),
        "labels": torch.tensor([0, 1]),
    }
    with pytest.raises(ValueError, match="mix image or video batches; this batch has keys.*'mask'"):
        task.step(clouds, "train")
    with pytest.raises(ValueError, match="mixup_alpha must be a number >= 0"):
        ClassificationTask(**TINY, mixup_alpha=-1)


@pytest.mark.parametrize("default_dtype", [torch.bfloat16, torch.float16])
def test_mixing_under_a_half_default_dtype_draws_as_in_fp32(default_dtype):
    """`precision: bf16-true` sets torch's default dtype to bf16: Beta(alpha, alpha) built from Python floats was then
    bf16, whose Dirichlet sampler torch does not have (NotImplementedError in the first training step)."""
    x = torch.rand(4, 6, 6, 3)
    torch.manual_seed(0)
    want = mix_batch(x, 0.2, 0.0, "channels_last")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        torch.manual_seed(0)
        got = mix_batch(x, 0.2, 0.0, "channels_last")
    finally:
        torch.set_default_dtype(previous)
    assert got[2] == want[2] and torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
