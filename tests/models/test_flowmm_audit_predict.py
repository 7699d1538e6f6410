"""`PerceiverForOpticalFlow.predict` / `predict_flow_tiled` as a user calls them on loaded images: numpy arrays
(PIL), mixed frame dtypes, forward keywords that a tiled prediction cannot honour, tiles batched per forward."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import perceiver
from perceiver.adapters.flow import compute_grid_indices, frames_to_patches, normalize_frames, predict_flow_tiled
from perceiver.models.flow import PerceiverForOpticalFlow

SIZE = (8, 12)


@pytest.fixture(scope="module")
def model() -> PerceiverForOpticalFlow:
    torch.manual_seed(0)
    kw = dict(train_size=SIZE, num_latents=8, latent_dim=16, num_self_attends_per_block=1, latent_heads=2)
    kw |= dict(num_bands=4, out_channels=8, output_init_zeros=False)
    return perceiver.create_model("optical-flow-perceiver", **kw).eval()


def frames(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(2))  # type: ignore[return-value]


def test_numpy_and_pil_frames_give_the_tensor_result(model):
    a, b = frames(*SIZE)
    want = model.predict(torch.from_numpy(a), torch.from_numpy(b))
    assert torch.equal(model.predict(a, b), want)  # was: AttributeError 'numpy.ndarray' ... 'is_floating_point'
    image = pytest.importorskip("PIL.Image")
    assert torch.equal(model.predict(image.fromarray(a), image.fromarray(b)), want)


def test_frames_that_are_not_pixels_raise_clear_errors(model, tmp_path):
    a, _ = frames(*SIZE)
    with pytest.raises(TypeError, match="frame2 .*path"):
        model.predict(a, str(tmp_path / "x.png"))
    with pytest.raises(TypeError, match="uint8 .*floating.*int64"):
        model.predict(torch.from_numpy(a).long(), torch.from_numpy(a).long())
    with pytest.raises(ValueError, match=r"\(H, W, 3\) or \(B, H, W, 3\), got \(3, 8, 12\)"):
        model.predict(torch.rand(3, *SIZE), torch.rand(3, *SIZE))


def test_mixed_uint8_and_float_frames_raise_instead_of_normalising_one(model):
    a, b = frames(*SIZE)
    with pytest.raises(ValueError, match="both frames uint8 .* or both floating"):
        model.predict(torch.from_numpy(a), normalize_frames(torch.from_numpy(b)))


@pytest.mark.parametrize("shape", [SIZE, (13, 21)], ids=["train-size", "tiled"])
def test_subset_and_mask_keywords_raise_a_clear_error(model, shape):
    a, b = frames(*shape)
    for kwargs in (dict(output_index=torch.arange(4)), dict(attention_mask=torch.ones(1, 96, dtype=torch.bool))):
        with pytest.raises(ValueError, match=f"no {next(iter(kwargs))} for a tiled prediction"):
            model.predict(a, b, **kwargs)  # was a RuntimeError inside torch for frames larger than train_size
    with pytest.raises(ValueError, match="return_dict"):
        model.predict(a, b, return_dict=False)


def test_tiles_per_pass_does_not_change_the_flow(model):
    a, b = frames(21, 30, seed=1)
    f1, f2 = (normalize_frames(torch.from_numpy(np.stack([x, x[::-1]]))) for x in (a, b))  # a batch of 2
    one = predict_flow_tiled(model, f1, f2, min_overlap=3, tiles_per_pass=1)
    for k in (2, 5, None):
        assert torch.allclose(predict_flow_tiled(model, f1, f2, min_overlap=3, tiles_per_pass=k), one, atol=1e-5)
    assert torch.allclose(model.predict(f1, f2, min_overlap=3, tiles_per_pass=3), one, atol=1e-5)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="tiles_per_pass"):
            predict_flow_tiled(model, f1, f2, tiles_per_pass=bad)


def test_tiles_are_batched_into_few_forwards(model, monkeypatch):
    calls = []
    forward = PerceiverForOpticalFlow.forward

    def counting(self, inputs, *args, **kwargs):
        calls.append(inputs.shape[0])
        return forward(self, inputs, *args, **kwargs)

    monkeypatch.setattr(PerceiverForOpticalFlow, "forward", counting)
    a, b = frames(40, 60)
    model.predict(a, b, min_overlap=2)
    tiles = len(compute_grid_indices((40, 60), SIZE, 2))
    assert tiles == 42 and calls == [tiles]  # one forward of every tile, not 42 forwards


def test_train_size_predict_is_the_direct_forward_in_float32(model):
    a, b = frames(*SIZE)
    x = normalize_frames(torch.from_numpy(np.stack([a, b])))[None]  # (1, 2, H, W, 3)
    bf16 = perceiver.create_model(
        "optical-flow-perceiver", train_size=SIZE, num_latents=8, latent_dim=16, num_self_attends_per_block=1,
        latent_heads=2, num_bands=4, out_channels=8, output_init_zeros=False,
    ).eval()  # fmt: skip
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    with torch.no_grad():
        direct = model(frames_to_patches(x)).logits[0]
    assert torch.allclose(model.predict(a, b), direct, atol=1e-6)
    got = bf16.predict(a, b)  # same dtype for every frame size (tiled predictions accumulate in float32)
    assert got.dtype == torch.float32 and bf16.predict(*frames(13, 21)).dtype == torch.float32
    assert (got - direct).abs().max() <= 0.05 * direct.abs().max()


def test_labels_give_the_mean_end_point_error_as_loss(model):
    x = frames_to_patches(torch.rand(2, 2, *SIZE, 3) * 2 - 1)
    gt = torch.randn(2, *SIZE, 2)
    with torch.no_grad():
        out = model(x, labels=gt)  # was: TypeError unexpected keyword argument 'labels'
        want = (out.logits - gt).norm(dim=-1).mean()
        assert torch.allclose(out.loss, want)
        loss, logits = model(x, labels=gt, return_dict=False)  # the loss first, as transformers' Trainer reads it
        assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)
        index = torch.tensor([0, 5, 17])
        sub = model(x, output_index=index, labels=gt.flatten(1, 2)[:, index])
        assert torch.allclose(sub.loss, (sub.logits - gt.flatten(1, 2)[:, index]).norm(dim=-1).mean())
    with pytest.raises(ValueError, match=r"labels of shape \(2, 8, 12, 2\).*got \(2, 96, 2\)"):
        model(x, labels=gt.flatten(1, 2))
    with pytest.raises(TypeError, match="labels"):
        model(x, labels=gt.long())
    model.train()
    try:
        model.zero_grad()
        model(x, labels=gt).loss.backward()
        assert model.decoder.final_layer.weight.grad.abs().sum() > 0
    finally:
        model.eval()
        model.zero_grad()


def test_floating_frames_outside_the_normalised_range_warn(model):
    a, b = (torch.from_numpy(x) for x in frames(*SIZE))
    for f1, f2 in ((a / 255.0, b / 255.0), (a.float(), b.float())):  # [0, 1] and [0, 255] floats
        with pytest.warns(UserWarning, match=r"normalised to \[-1, 1\].*normalize_frames"):
            model.predict(f1, f2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(normalize_frames(a), normalize_frames(b))  # the documented input: no warning
        model.predict(a, b)
