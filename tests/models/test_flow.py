"""Optical flow model: patch extraction order, shapes, chunked / subset decoding, tiled inference, bad input, colours,
the nested config (shared output settings, format-1 files of the previous release)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import perceiver
from perceiver.adapters.flow import (
    compute_grid_indices,
    flow_to_color,
    frames_to_patches,
    predict_flow_tiled,
    tile_weights,
    write_flow_png,
)
from perceiver.hub import config_from_dict, config_to_dict
from perceiver.models.flow import OpticalFlowConfig, PerceiverForOpticalFlow

SIZE = (8, 12)


def tiny(**overrides) -> PerceiverForOpticalFlow:
    kw = dict(train_size=SIZE, num_latents=8, latent_dim=16, num_self_attends_per_block=1, latent_heads=2)
    kw |= dict(num_bands=4, out_channels=8, output_init_zeros=False)
    return perceiver.create_model("optical-flow-perceiver", **(kw | overrides)).eval()


@pytest.fixture
def model() -> PerceiverForOpticalFlow:
    return tiny()


def colab_extract_image_patches(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """transformers' optical flow tutorial (TF 'SAME' padding + unfold), `(N, C, H, W)` -> `(N, 9C, H, W)`."""
    b, c, h, w = x.shape
    pad = kernel - 1
    x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    patches = x.unfold(2, kernel, 1).unfold(3, kernel, 1).permute(0, 4, 5, 1, 2, 3).contiguous()
    return patches.view(b, -1, patches.shape[-2], patches.shape[-1])


def test_frames_to_patches_channel_order():
    frames = torch.randn(2, 2, 5, 7, 3)
    patches = frames_to_patches(frames)
    assert patches.shape == (2, 2, 27, 5, 7)
    # channel (dy * 3 + dx) * 3 + c = colour c at offset (dy - 1, dx - 1), zero outside (DeepMind / TF order)
    padded = F.pad(frames, (0, 0, 1, 1, 1, 1))
    for dy in range(3):
        for dx in range(3):
            for c in range(3):
                want = padded[:, :, dy : dy + 5, dx : dx + 7, c]
                assert torch.equal(patches[:, :, (dy * 3 + dx) * 3 + c], want)
    reference = colab_extract_image_patches(frames.permute(0, 1, 4, 2, 3).reshape(4, 3, 5, 7)).view(2, 2, 27, 5, 7)
    assert torch.equal(patches, reference)
    assert torch.equal(frames_to_patches(frames.permute(0, 1, 4, 2, 3)), patches)  # channels-first input
    assert frames_to_patches(torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8)).dtype == torch.float32


def test_shapes_and_preset_defaults(model):
    out = model(torch.randn(2, 2, 27, *SIZE))
    assert out.logits.shape == (2, *SIZE, 2)
    assert out.last_hidden_state.shape == (2, 8, 16)
    c = PerceiverForOpticalFlow.config_class()
    e = c.encoder
    assert (c.adapter.train_size, e.num_latents, e.latent_dim, e.num_self_attends_per_block, e.latent_heads) == (
        (368, 496), 2048, 512, 24, 16
    )  # fmt: skip
    assert (e.cross_heads, e.num_blocks, e.cross_attention_shape, c.decoder.num_heads) == (1, 1, "kv", 1)
    assert not c.decoder.use_query_residual and c.query_chunk_size == 8192
    assert (c.output.rescale_factor, c.output.flow_scale_factor) == (100.0, 20.0)
    assert model.num_classes == 2  # the logits' last axis: (dx, dy)
    # the preset's final layer starts at zero (DeepMind's output_w_init): an untrained model predicts zero flow
    z = tiny(output_init_zeros=True)
    assert torch.equal(z(torch.randn(1, 2, 27, *SIZE)).logits, torch.zeros(1, *SIZE, 2))


def test_chunked_equals_one_shot_and_default_chunks(model):
    x = torch.randn(2, 2, 27, *SIZE)
    with torch.no_grad():
        whole = model(x, query_chunk_size=0).logits
        for chunk in (7, 96, 500):
            assert torch.allclose(model(x, query_chunk_size=chunk).logits, whole, atol=1e-6)
        index = torch.tensor([95, 0, 13, 13, 40])
        subset = model(x, output_index=index, query_chunk_size=2).logits
    assert subset.shape == (2, 5, 2)
    assert torch.allclose(subset, whole.reshape(2, -1, 2)[:, index], atol=1e-6)
    calls = []
    handle = model.decoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[1]))
    model.config.query_chunk_size = 10
    with torch.no_grad():
        model(x)  # None -> config.query_chunk_size
    handle.remove()
    assert calls == [10] * 9 + [6]


def test_mask_and_gradients(model):
    x = torch.randn(1, 2, 27, *SIZE)
    mask = torch.ones(1, SIZE[0] * SIZE[1], dtype=torch.long)
    assert torch.allclose(model(x, attention_mask=mask).logits, model(x).logits, atol=1e-6)
    model.train()
    model(x).logits.square().mean().backward()
    assert model.input_adapter.projection.weight.grad.abs().sum() > 0
    assert model.encoder.latents.grad.abs().sum() > 0


def test_tiled_equals_untiled_at_training_size(model):
    f1, f2 = torch.rand(2, *SIZE, 3) * 2 - 1, torch.rand(2, *SIZE, 3) * 2 - 1
    with torch.no_grad():
        direct = model(frames_to_patches(torch.stack([f1, f2], dim=1))).logits
    for overlap in (0, 2, 5):
        assert torch.allclose(predict_flow_tiled(model, f1, f2, min_overlap=overlap), direct, atol=1e-6)
    assert torch.allclose(model.predict(f1, f2), direct, atol=1e-6)
    assert torch.allclose(model.predict(f1[0], f2[0]), direct[0], atol=1e-6)  # unbatched


def test_tiled_blending_on_a_larger_image(model):
    h, w = SIZE[0], 20  # tiles at x = 0 and 8 (min_overlap 4): columns 8..11 blend the two
    assert compute_grid_indices((h, w), SIZE, 4) == [(0, 0), (0, 8)]
    f1, f2 = torch.rand(1, h, w, 3) * 2 - 1, torch.rand(1, h, w, 3) * 2 - 1
    flow = predict_flow_tiled(model, f1, f2, min_overlap=4)
    assert flow.shape == (1, h, w, 2)
    frames = torch.stack([f1, f2], dim=1)
    with torch.no_grad():
        left = model(frames_to_patches(frames[:, :, :, 0:12])).logits
        right = model(frames_to_patches(frames[:, :, :, 8:20])).logits
    wts = tile_weights(SIZE)[None, :, :, None]
    assert torch.allclose(flow[:, :, :8], left[:, :, :8], atol=1e-6)
    assert torch.allclose(flow[:, :, 12:], right[:, :, 4:], atol=1e-6)
    blend = (left[:, :, 8:] * wts[:, :, 8:] + right[:, :, :4] * wts[:, :, :4]) / (wts[:, :, 8:] + wts[:, :, :4])
    assert torch.allclose(flow[:, :, 8:12], blend, atol=1e-6)
    # uint8 frames are normalised to [-1, 1] by predict
    u1, u2 = (torch.randint(0, 256, (h, w, 3), dtype=torch.uint8) for _ in range(2))
    want = predict_flow_tiled(model, u1[None] / 255 * 2 - 1, u2[None] / 255 * 2 - 1, min_overlap=4)
    assert torch.allclose(model.predict(u1, u2, min_overlap=4), want[0], atol=1e-5)


def colab_grid_indices(image_shape, patch_size, min_overlap=20):
    """DeepMind colab's `compute_grid_indices`."""
    ys = list(range(0, image_shape[0], patch_size[0] - min_overlap))
    xs = list(range(0, image_shape[1], patch_size[1] - min_overlap))
    ys[-1] = image_shape[0] - patch_size[0]
    xs[-1] = image_shape[1] - patch_size[1]
    return [(y, x) for y in ys for x in xs]


@pytest.mark.parametrize("shape", [(436, 1024), (375, 1242), (368, 496)])
def test_grid_indices_match_colab(shape):
    # Sintel, KITTI, the training size: the colab's corners (without its duplicates)
    assert compute_grid_indices(shape, (368, 496)) == sorted(set(colab_grid_indices(shape, (368, 496))))


def test_grid_indices_stay_inside():
    # 540 x 960: the colab starts a tile at x = 476, running past the border (476 + 496 > 960)
    assert (0, 476) in colab_grid_indices((540, 960), (368, 496))
    corners = compute_grid_indices((540, 960), (368, 496))
    assert corners == [(0, 0), (0, 464), (172, 0), (172, 464)]
    covered = torch.zeros(540, 960, dtype=torch.bool)
    for y, x in corners:
        assert y + 368 <= 540 and x + 496 <= 960
        covered[y : y + 368, x : x + 496] = True
    assert covered.all()
    assert compute_grid_indices((8, 12), (8, 12), min_overlap=5) == [(0, 0)]


def test_tile_weights_match_colab():
    wts = tile_weights((4, 5))
    # min(min(x + 1, W - x), min(y + 1, H - y))
    want = [[min(min(x + 1, 5 - x), min(y + 1, 4 - y)) for x in range(5)] for y in range(4)]
    assert wts.tolist() == want


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="same shape"):
        model.predict(torch.rand(*SIZE, 3), torch.rand(SIZE[0], SIZE[1] + 1, 3))
    with pytest.raises(ValueError, match="same shape"):
        predict_flow_tiled(model, torch.rand(1, *SIZE, 3), torch.rand(1, SIZE[0] + 1, SIZE[1], 3))
    with pytest.raises(ValueError, match="at least the tile size"):
        model.predict(torch.rand(4, 4, 3) * 2 - 1, torch.rand(4, 4, 3) * 2 - 1)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W, 3\)"):
        frames_to_patches(torch.rand(1, 3, *SIZE, 3))  # three frames
    with pytest.raises(ValueError, match=r"expected patches of shape \(B, 2, 27, H, W\)"):
        model(torch.randn(1, 2, 26, *SIZE))
    with pytest.raises(ValueError, match=r"expected patches"):
        model(torch.randn(1, 3, 27, *SIZE))  # wrong number of frames
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randn(1, 2, 27, *SIZE), attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="min_overlap"):
        compute_grid_indices((20, 20), SIZE, min_overlap=8)


def test_save_load_round_trip(model, tmp_path):
    x = torch.randn(1, 2, 27, *SIZE)
    model.save_pretrained(tmp_path)
    again = perceiver.from_pretrained(tmp_path)
    assert isinstance(again, PerceiverForOpticalFlow) and again.config == model.config
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)


def test_mlp_projection_option(tmp_path):
    """`projection_hidden`: a nonlinear per-pixel stem (not DeepMind's), saved and loaded with the model."""
    plain = tiny()
    assert isinstance(plain.input_adapter.projection, torch.nn.Linear)  # DeepMind / checkpoint layout by default
    mlp = tiny(projection_hidden=24)
    stem = mlp.input_adapter.projection
    assert [type(m).__name__ for m in stem] == ["Linear", "GELU", "Linear"]
    assert isinstance(stem[0], torch.nn.Linear) and isinstance(stem[2], torch.nn.Linear)
    assert stem[0].in_features == 54 and stem[0].out_features == 24 and stem[2].out_features == 8
    x = torch.randn(2, 2, 27, *SIZE)
    with torch.no_grad():
        flow = mlp(x).logits
    assert flow.shape == (2, *SIZE, 2)
    mlp.save_pretrained(tmp_path)
    again = perceiver.from_pretrained(tmp_path)
    assert again.config.adapter.projection_hidden == 24
    with torch.no_grad():
        assert torch.equal(again(x).logits, flow)
    with pytest.raises(ValueError, match="projection_hidden"):
        tiny(projection_hidden=0)


def test_training_input_is_deepmind_range():
    """Training and `perceiver predict` feed frames in [-1, 1] like DeepMind (and `model.predict` for uint8)."""
    from perceiver.training.flow_task import frames_to_model_input

    frames = torch.rand(1, 2, *SIZE, 3)
    expected = frames_to_patches(frames * 2 - 1)
    assert torch.equal(frames_to_model_input(frames), expected)
    model = tiny()
    uint8 = (frames * 255).round().to(torch.uint8)
    with torch.no_grad():
        via_predict = model.predict(uint8[0, 0], uint8[0, 1])
        via_training = model(frames_to_model_input(uint8.float() / 255)).logits[0]
    torch.testing.assert_close(via_predict, via_training, atol=1e-5, rtol=0)


def test_flow_to_color_known_colours(tmp_path):
    flow = torch.zeros(2, 3, 2)
    flow[0, 0] = torch.tensor([1.0, 0.0])  # +x: red
    flow[0, 1] = torch.tensor([-1.0, 0.0])  # -x: cyan-blue
    img = flow_to_color(flow)
    assert img.dtype == torch.uint8 and img.shape == (2, 3, 3)
    assert img[0, 0].tolist() == [255, 0, 0]
    assert img[0, 1].tolist() == [0, 209, 255]
    assert img[1, 2].tolist() == [255, 255, 255]  # zero flow: white
    assert flow_to_color(torch.zeros(4, 4, 2)).eq(255).all()
    half = flow_to_color(torch.tensor([[[0.5, 0.0]]]), max_flow=1.0)  # half magnitude: half saturated red
    assert half[0, 0].tolist() == [255, 127, 127]
    np = pytest.importorskip("numpy")
    assert isinstance(flow_to_color(flow.numpy()), np.ndarray)
    Image = pytest.importorskip("PIL.Image")
    write_flow_png(tmp_path / "flow.png", flow)
    back = torch.tensor(np.asarray(Image.open(tmp_path / "flow.png")))
    assert torch.equal(back, img)
    assert math.isclose(float(tile_weights((3, 3)).max()), 2.0)


def test_wider_patches_channel_order_config_and_predict():
    frames = torch.randn(1, 2, 6, 7, 3)
    patches = frames_to_patches(frames, patch_size=5)
    assert patches.shape == (1, 2, 75, 6, 7)
    padded = F.pad(frames, (0, 0, 2, 2, 2, 2))  # channel (dy * 5 + dx) * 3 + c at offset (dy - 2, dx - 2)
    for dy in range(5):
        for dx in range(5):
            for c in range(3):
                assert torch.equal(patches[:, :, (dy * 5 + dx) * 3 + c], padded[:, :, dy : dy + 6, dx : dx + 7, c])
    reference = colab_extract_image_patches(frames.permute(0, 1, 4, 2, 3).reshape(2, 3, 6, 7), kernel=5)
    assert torch.equal(patches, reference.view(1, 2, 75, 6, 7))
    assert torch.equal(frames_to_patches(frames, patch_size=1), frames.permute(0, 1, 4, 2, 3))
    with pytest.raises(ValueError, match="patch_size must be an odd number >= 1.*got 4"):
        frames_to_patches(frames, patch_size=4)

    model = tiny(patch_size=5)
    assert (model.config.patch_channels, model.input_adapter.patch_channels) == (75, 75)
    f1, f2 = torch.rand(1, *SIZE, 3) * 2 - 1, torch.rand(1, *SIZE, 3) * 2 - 1
    with torch.no_grad():
        direct = model(frames_to_patches(torch.stack([f1, f2], dim=1), patch_size=5)).logits
        assert torch.allclose(model.predict(f1, f2), direct, atol=1e-6)  # predict extracts 5x5 patches itself
    with pytest.raises(ValueError, match=r"expected patches of shape \(B, 2, 75, H, W\).*got \(1, 2, 27, 8, 12\)"):
        model(torch.randn(1, 2, 27, *SIZE))
    with pytest.raises(ValueError, match="patch_size must be an odd number >= 1, got 2"):
        tiny(patch_size=2)
    with pytest.raises(
        ValueError, match=r"patch_channels must be 3 \* patch_size \*\* 2 = 75 for patch_size 5, got 27"
    ):
        tiny(patch_size=5, patch_channels=27)
    assert tiny(patch_size=5, patch_channels=75).config.patch_channels == 75  # the earlier keyword, when it agrees
    # a saved model keeps its patch size
    again = config_from_dict(OpticalFlowConfig, json.loads(json.dumps(config_to_dict(model.config))))
    assert again == model.config and again.adapter.patch_channels == 75


def test_pyramid_scales_add_patches_of_downsampled_frames(tmp_path):
    """Scale s adds the k x k patches of both frames area-downsampled by s, upsampled back to (H, W)."""
    model = tiny(projection_hidden=16, pyramid_scales=[2, 4])
    adapter = model.input_adapter
    assert model.config.adapter.pyramid_scales == (2, 4)
    assert adapter.projection[0].in_features == 2 * 27 * 3
    frames = torch.rand(1, 2, *SIZE, 3) * 2 - 1  # normalised, as predict takes floating frames
    patches = frames_to_patches(frames)
    coarse2, coarse4 = adapter.coarse_patches(patches)
    # by hand for scale 2 (8x12 is divisible): average 2x2 blocks, 3x3 patches, bilinear upsampling
    small = F.avg_pool2d(frames.permute(0, 1, 4, 2, 3).flatten(0, 1), 2).view(1, 2, 3, 4, 6)
    expected = F.interpolate(frames_to_patches(small, channels_last=False)[0], size=SIZE, mode="bilinear")
    assert torch.allclose(coarse2[0], expected, atol=1e-6)
    assert coarse4.shape == (1, 2, 27, *SIZE)
    # a motion of 4 px, invisible in 3x3 patches, moves the scale-4 patches' content by one coarse pixel
    wide = frames_to_patches(torch.rand(1, 2, 16, 16, 3))
    shifted = wide.clone()
    shifted[:, 1] = torch.roll(wide[:, 0], shifts=4, dims=-1)
    _, c4 = tiny(train_size=(16, 16), pyramid_scales=[2, 4]).input_adapter.coarse_patches(shifted)
    assert torch.allclose(c4[:, 1, 4 * 3 + 0, :, 6:10], c4[:, 0, 3 * 3 + 0, :, 6:10], atol=1e-6)
    with torch.no_grad():
        out = model(patches).logits
    assert out.shape == (1, *SIZE, 2)
    with torch.no_grad():  # the pyramid is part of the model: predict() and a save / load round trip keep it
        assert torch.allclose(model.predict(frames[:, 0], frames[:, 1]), out, atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = perceiver.from_pretrained(tmp_path)
    assert loaded.config.adapter.pyramid_scales == (2, 4)
    with torch.no_grad():
        assert torch.equal(loaded(patches).logits, out)
    with pytest.raises(ValueError, match=r"pyramid_scales must be integers >= 2, got \(1,\)"):
        tiny(pyramid_scales=[1])


def test_difference_scale_reparametrises_the_projection(tmp_path):
    """difference_scale s feeds [frame 1, s * (frame 2 - frame 1)]: with weights [W1 + W2, W2 / s] it is the plain
    model with weights [W1, W2] (same function class, different conditioning)."""
    plain, diff = tiny(), tiny(difference_scale=4.0)
    assert diff.config.adapter.difference_scale == 4.0
    diff.load_state_dict(plain.state_dict())
    patches = frames_to_patches(torch.rand(2, 2, *SIZE, 3) * 2 - 1)
    with torch.no_grad():  # same weights, other inputs to the projection
        assert not torch.allclose(diff(patches).logits, plain(patches).logits, atol=1e-3)
    w = plain.input_adapter.projection.weight.detach()
    w1, w2 = w[:, :27], w[:, 27:]
    with torch.no_grad():
        diff.input_adapter.projection.weight.copy_(torch.cat([w1 + w2, w2 / 4.0], dim=1))
        assert torch.allclose(diff(patches).logits, plain(patches).logits, atol=1e-5)
    diff.save_pretrained(tmp_path)
    loaded = perceiver.from_pretrained(tmp_path)
    assert loaded.config.adapter.difference_scale == 4.0
    with torch.no_grad():
        assert torch.equal(loaded(patches).logits, diff(patches).logits)
    with pytest.raises(ValueError, match=r"difference_scale must be None or > 0, got 0.0"):
        tiny(difference_scale=0.0)


def test_output_settings_are_read_from_the_config_the_model_shares(model):
    """`config.output` is the output adapter's own settings object: changing it on a built (or loaded) model takes
    effect at the next forward, which copies nothing into the adapter."""
    assert model.output_adapter.config is model.config.output
    x = torch.randn(1, 2, 27, *SIZE)
    with torch.no_grad():
        pixels = model(x).logits
        model.config.output.flow_scale_factor = 1.0  # transformers' units
        units = model(x).logits
        model.config.flow_scale_factor = 20.0  # the name earlier releases documented, same object
        again = model(x).logits
    assert model.config.output.flow_scale_factor == 20.0
    torch.testing.assert_close(pixels, 20 * units, atol=1e-6, rtol=1e-6)
    assert torch.equal(again, pixels)
    assert "flow_scale_factor" not in vars(model.output_adapter)


def test_presets_do_not_share_config_objects():
    a, b = tiny(), tiny()
    a.config.output.flow_scale_factor = 1.0
    a.config.query_chunk_size = 3
    assert b.config.output.flow_scale_factor == 20.0 and tiny().config.output.flow_scale_factor == 20.0
    assert perceiver.create_model("optical-flow-perceiver", num_latents=4).config.query_chunk_size == 8192


def test_no_class_head():
    model = tiny()
    with pytest.raises(NotImplementedError, match="optical flow"):
        model.reset_classifier(3)


def format1_config(**fields) -> dict:
    """config.json as the previous release wrote it: its flat `OpticalFlowConfig` (`git show
    HEAD~3:src/perceiver/models/flow.py`, the PerceiverIOConfig fields first), no format_version."""
    old = dict(
        num_latents=2048, latent_dim=512, num_blocks=1, num_self_attends_per_block=24, cross_heads=1,
        latent_heads=16, cross_attention_shape="kv", cross_qk_channels=None, cross_v_channels=None,
        latent_qk_channels=None, latent_v_channels=None, cross_widening_factor=1, latent_widening_factor=1,
        use_query_residual=True, attn_dropout=0.0, ff_dropout=0.0, decoder_heads=1, decoder_qk_channels=None,
        decoder_v_channels=None, decoder_widening_factor=1, decoder_use_query_residual=False,
        train_size=[368, 496], patch_size=3, patch_channels=27, out_channels=64, num_bands=64, concat_pos=True,
        sine_only=False, rescale_factor=100.0, flow_scale_factor=20.0, query_chunk_size=8192,
        output_init_zeros=True, projection_hidden=None, pyramid_scales=[], difference_scale=None,
    )  # fmt: skip
    assert set(fields) <= set(old)
    return {"model_type": "perceiver-optical-flow", **old, **fields}


TINY_FLAT = dict(train_size=list(SIZE), num_latents=8, latent_dim=16, num_self_attends_per_block=1, latent_heads=2)
TINY_FLAT |= dict(num_bands=4, out_channels=8, output_init_zeros=False)
VARIANT_FLAT = dict(
    patch_size=5, patch_channels=75, projection_hidden=12, pyramid_scales=[2], difference_scale=2.0,
    cross_attention_shape="q", decoder_use_query_residual=True, decoder_heads=2, decoder_widening_factor=2,
    cross_v_channels=8, latent_widening_factor=2, flow_scale_factor=1.0, query_chunk_size=10, attn_dropout=0.0,
)  # fmt: skip


@pytest.mark.parametrize("flat", [{}, VARIANT_FLAT], ids=["preset", "variant"])
def test_format1_config_of_the_previous_release_loads(flat, tmp_path):
    """An old flat config.json with this model's weights: the same config and the same flow as the model."""
    model = tiny(**flat)
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(format1_config(**TINY_FLAT, **flat)))
    loaded = perceiver.from_pretrained(tmp_path)
    assert isinstance(loaded, PerceiverForOpticalFlow) and loaded.config == model.config
    k = model.config.adapter.patch_channels
    x = torch.randn(2, 2, k, *SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    loaded.save_pretrained(tmp_path / "again")  # and it is written in the nested format
    assert json.loads((tmp_path / "again" / "config.json").read_text())["format_version"] == 2
    bad = format1_config(**TINY_FLAT, **(flat | {"patch_channels": 12}))
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"config.json: patch_channels must be 3 \* patch_size \*\* 2"):
        perceiver.from_pretrained(tmp_path)


def test_pyramid_scales_keep_masked_pixels_out_of_the_valid_outputs():
    """The coarse patches average-pooled whole frames: a masked pixel's values (NaN included) reached its valid
    neighbours. Now a coarse pixel averages the valid pixels under it only."""
    model = tiny(pyramid_scales=[2, 4])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 27, *SIZE, generator=g)
    mask = torch.rand(2, SIZE[0] * SIZE[1], generator=g) > 0.3
    changed = x.clone().flatten(3)  # (B, 2, 27, H*W): other values at each row's masked pixels, NaN in row 1
    changed[0][..., ~mask[0]] = 0.0
    changed[1][..., ~mask[1]] = float("nan")
    changed = changed.view_as(x)
    with torch.no_grad():
        a, b = model(x, attention_mask=mask).logits, model(changed, attention_mask=mask).logits
    valid = mask.view(2, *SIZE)
    assert torch.isfinite(b[valid]).all()
    torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=1e-5)
