"""`ImageAdapter` and `PerceiverForImageClassification`: preprocessing types against transformers' preprocessor,
SAME padding, position interpolation, bad inputs, presets, save/load, and an end-to-end run on real photos."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

import perceiver
from perceiver.adapters.image import ImageAdapter, ImageAdapterConfig, same_pads
from perceiver.hub import apply_overrides
from perceiver.models.vision import ImageClassifierConfig, PerceiverForImageClassification
from perceiver.nn.position import fourier_features, linear_positions

TINY = dict(num_latents=6, latent_dim=16, num_blocks=1, num_self_attends_per_block=1, latent_heads=2, num_labels=5)
PRESETS = ["vision-perceiver-conv", "vision-perceiver-fourier", "vision-perceiver-learned"]


def tiny(preset: str = "vision-perceiver-learned", **overrides) -> PerceiverForImageClassification:
    return perceiver.create_model(preset, **{**TINY, "image_size": 16, **overrides}).eval()


def assert_raises(fn, *fragments):
    with pytest.raises(ValueError) as info:
        fn()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


# --- adapter against transformers' PerceiverImagePreprocessor ---------------------------------------------------

# (our ImageAdapter kwargs, transformers PerceiverImagePreprocessor kwargs, image size)
ADAPTER_CASES = {
    "conv1x1-stride2-trainable-add": (
        dict(prep_type="conv1x1", spatial_downsample=2, out_channels=16, position_encoding="trainable",
             concat_or_add_pos="add", trainable_pos_channels=16),
        dict(prep_type="conv1x1", spatial_downsample=2, out_channels=16, position_encoding_type="trainable",
             concat_or_add_pos="add", trainable_position_encoding_kwargs=dict(num_channels=16, index_dims=64)),
        16,
    ),
    "patches-linear-trainable-projected": (
        dict(prep_type="patches", spatial_downsample=4, out_channels=16, conv_after_patching=True,
             position_encoding="trainable", trainable_pos_channels=16, project_pos_dim=8),
        dict(prep_type="patches", spatial_downsample=4, out_channels=16, conv_after_patching=True,
             conv_after_patching_in_channels=48, position_encoding_type="trainable", project_pos_dim=8,
             trainable_position_encoding_kwargs=dict(num_channels=16, index_dims=16)),
        16,
    ),
    "patches-fourier-sine-only": (
        dict(prep_type="patches", spatial_downsample=2, position_encoding="fourier", num_bands=4,
             max_resolution=(8, 8), sine_only=True),
        dict(prep_type="patches", spatial_downsample=2, position_encoding_type="fourier",
             fourier_position_encoding_kwargs=dict(num_bands=4, max_resolution=(8, 8), sine_only=True)),
        16,
    ),
    "pixels-fourier-projected-add": (
        dict(prep_type="pixels", spatial_downsample=1, position_encoding="fourier", num_bands=4,
             max_resolution=(16, 16), project_pos_dim=3, concat_or_add_pos="add"),
        dict(prep_type="pixels", spatial_downsample=1, out_channels=18, position_encoding_type="fourier",
             project_pos_dim=3, concat_or_add_pos="add",
             fourier_position_encoding_kwargs=dict(num_bands=4, max_resolution=(16, 16))),
        16,
    ),
    "conv-transformers-padding-fourier": (
        dict(prep_type="conv", spatial_downsample=4, out_channels=8, same_padding=False, position_encoding="fourier",
             num_bands=4, max_resolution=(8, 8)),
        dict(prep_type="conv", spatial_downsample=1, out_channels=8, position_encoding_type="fourier",
             fourier_position_encoding_kwargs=dict(num_bands=4, max_resolution=(8, 8))),
        32,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_adapter_matches_transformers_preprocessor(case):
    mp = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    ours_kwargs, hf_kwargs, size = ADAPTER_CASES[case]
    hf = mp.PerceiverImagePreprocessor(mp.PerceiverConfig(), **hf_kwargs)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.5)
        for name, buf in hf.named_buffers():
            if name.endswith("running_mean") or name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    hf.eval()
    ours = ImageAdapter(image_size=(size, size), **ours_kwargs).eval()
    rename = {"position_embeddings.position_embeddings": "trainable.position_embeddings", "convnet.": "convnet.0."}
    state = {}
    for key, value in hf.state_dict().items():
        for theirs, mine in rename.items():
            key = key.replace(theirs, mine)
        state[key] = value
    ours.load_state_dict(state, strict=True)
    assert ours.num_channels == hf.num_channels
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        theirs, _, theirs_without_pos = hf(x)
        adapted = ours(x)
    assert adapted.tokens.shape == theirs.shape
    assert (adapted.tokens - theirs).abs().max() <= 1e-5
    assert (adapted.without_pos - theirs_without_pos).abs().max() <= 1e-5


# --- adapter behaviour -----------------------------------------------------------------------------------------


def test_same_pads_follow_xla():
    assert same_pads(224, 7, 2) == (2, 3)  # even input: the extra pad goes after
    assert same_pads(225, 7, 2) == (3, 3)
    assert same_pads(112, 3, 2) == (0, 1)
    assert same_pads(8, 1, 1) == (0, 0)


@pytest.mark.parametrize("same_padding, side", [(True, 56), (False, 55)])
def test_conv_stem_gives_56x56_tokens_at_224_with_same_padding(same_padding, side):
    adapter = ImageAdapter(
        (224, 224), prep_type="conv", out_channels=4, position_encoding="none", same_padding=same_padding
    )
    assert adapter.grid == (side, side)
    with torch.no_grad():
        assert adapter(torch.randn(1, 3, 224, 224)).tokens.shape == (1, side * side, 4)


def test_conv_same_padding_centres_windows_like_xla():
    """A delta kernel at the 7x7 centre reads pixel 2i+1 under SAME padding at even sizes (conv pads (2, 3)), and
    pixel 2i under transformers' symmetric pad 3; SAME max-pool pads (0, 1): windows over conv rows [0..2], [2..3]
    (2 outputs), transformers' unpadded pool has the window [0..2] only."""
    x = torch.arange(1.0, 65.0).reshape(1, 1, 8, 8)
    for same, first in ((True, 1), (False, 0)):
        adapter = ImageAdapter(
            (8, 8), 1, "conv", out_channels=1, use_batchnorm=False, position_encoding="none", same_padding=same
        )
        with torch.no_grad():
            adapter.convnet[0].conv.weight.zero_()[0, 0, 3, 3] = 1.0
            out = adapter(x).tokens.reshape(*adapter.grid)
        conv = x[0, 0, first::2, first::2]  # what the delta kernel reads: (4, 4)
        windows = [slice(0, 3), slice(2, 4)] if same else [slice(0, 3)]
        expected = torch.tensor([[conv[r, c].max() for c in windows] for r in windows])
        assert torch.equal(out, expected)


def test_pixels_subsample_spatially():
    adapter = ImageAdapter((9, 9), prep_type="pixels", spatial_downsample=2, position_encoding="none")
    x = torch.randn(2, 3, 9, 9)
    assert adapter.num_channels == 3 and adapter.grid == (5, 5)
    assert torch.equal(adapter(x).tokens, x[:, :, ::2, ::2].permute(0, 2, 3, 1).reshape(2, 25, 3))


def test_fourier_positions_follow_the_input_grid():
    adapter = ImageAdapter((16, 16), prep_type="pixels", spatial_downsample=1, num_bands=3, max_resolution=(16, 16))
    x = torch.randn(1, 3, 24, 20)
    tokens = adapter(x).tokens
    expected = fourier_features(linear_positions((24, 20)), 3, (16, 16)).reshape(480, -1)
    assert tokens.shape == (1, 480, 3 + expected.shape[1])
    assert torch.allclose(tokens[0, :, 3:], expected)


def test_interpolate_pos_encoding_224_identity_and_resize():
    adapter = ImageAdapter((224, 224), prep_type="conv1x1", spatial_downsample=1, out_channels=4,
                           position_encoding="trainable", trainable_pos_channels=4, project_pos_dim=4)  # fmt: skip
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(adapter(x, interpolate_pos_encoding=True).tokens, adapter(x).tokens)
        small = adapter(torch.randn(1, 3, 160, 96), interpolate_pos_encoding=True).tokens
    table = adapter.trainable.position_embeddings.reshape(1, 224, 224, 4).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(table, size=(160, 96), mode="bicubic", align_corners=False)
    expected = adapter.positions_projection(resized.permute(0, 2, 3, 1).reshape(-1, 4))
    assert small.shape == (1, 160 * 96, 8)
    assert torch.allclose(small[0, :, 4:], expected, atol=1e-6)


def test_model_interpolate_pos_encoding_shapes():
    model = tiny(image_size=16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, interpolate_pos_encoding=True).logits, model(x).logits)
        assert model(torch.randn(2, 3, 24, 20), interpolate_pos_encoding=True).logits.shape == (2, 5)


def test_bad_inputs_raise_clear_errors():
    model = tiny(image_size=16)
    assert_raises(lambda: model(torch.randn(1, 3, 20, 16)), "expected pixel_values of shape (B, 3, 16, 16)", "got (1, 3, 20, 16)", "interpolate_pos_encoding=True")  # fmt: skip
    assert_raises(lambda: model(torch.randn(1, 1, 16, 16)), "(B, 3, 16, 16)", "got (1, 1, 16, 16)")
    assert_raises(lambda: model(torch.randn(3, 16, 16)), "(B, 3, 16, 16)", "got (3, 16, 16)")
    assert_raises(lambda: model(torch.randn(1, 16, 16, 3)), "channels first", "got (1, 16, 16, 3)")
    assert_raises(lambda: model(torch.randn(2, 3, 16, 16), attention_mask=torch.ones(2, 10)), "(2, 256)", "got (2, 10)")
    x = torch.randn(1, 3, 16, 16)
    assert_raises(lambda: model(inputs=x, pixel_values=x), "not both")
    patches = ImageAdapter((16, 16), prep_type="patches", spatial_downsample=4, position_encoding="none")
    assert_raises(lambda: patches(torch.randn(1, 3, 18, 16)), "divisible by the patch size 4", "18x16")
    assert_raises(lambda: ImageAdapter(prep_type="conv", spatial_downsample=2), "power of 4", "got 2")
    assert_raises(lambda: ImageAdapter(prep_type="bogus"), "prep_type", "'bogus'")
    assert_raises(lambda: ImageAdapter(prep_type="pixels", concat_or_add_pos="add"), "needs positions of 3 channels")
    assert_raises(lambda: tiny(bogus=1), "unknown keys", "bogus")


def test_pixel_values_alias_and_attention_maps():
    model = tiny("vision-perceiver-fourier", image_size=8)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = model(pixel_values=x, return_attention=True)
        assert torch.equal(model(pixel_values=x).logits, model(x).logits)
        assert torch.allclose(out.logits, model(x).logits, atol=1e-5)
    assert out.last_hidden_state.shape == (2, 6, 16)
    assert out.encoder_attentions[0].shape == (2, 1, 6, 64) and out.decoder_attention.shape == (2, 1, 1, 6)


def test_masked_tokens_are_ignored():
    model = tiny("vision-perceiver-fourier", image_size=8)
    x = torch.randn(1, 3, 8, 8)
    mask = torch.ones(1, 64, dtype=torch.bool)
    mask[0, 40:] = False
    y = x.clone()
    y[..., 5:, :] = 100.0  # rows 5.. are tokens 40..63
    with torch.no_grad():
        assert torch.allclose(model(x, attention_mask=mask).logits, model(y, attention_mask=mask).logits, atol=1e-5)


# --- presets, registry, save / load, training ------------------------------------------------------------------


def test_presets_are_registered_at_published_sizes():
    assert set(PRESETS) <= set(perceiver.list_models("vision-perceiver-*"))
    # Parameter counts of transformers' heads built from DeepMind's published configs.
    published = {"vision-perceiver-learned": 62_255_848, "vision-perceiver-fourier": 48_440_627,
                 "vision-perceiver-conv": 48_646_522}  # fmt: skip
    grids = {"vision-perceiver-learned": (224, 224), "vision-perceiver-fourier": (224, 224),
             "vision-perceiver-conv": (56, 56)}  # fmt: skip
    for name in PRESETS:
        with torch.device("meta"):
            model = perceiver.create_model(name)
        c = model.config.encoder
        assert (c.num_latents, c.latent_dim, c.num_blocks, c.num_self_attends_per_block) == (512, 1024, 8, 6)
        assert sum(p.numel() for p in model.parameters()) == published[name] == model.num_parameters()
        assert model.input_adapter.grid == grids[name]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_and_run_tiny(name):
    model = tiny(name, image_size=32)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()


def test_batch_invariance():
    model = tiny("vision-perceiver-conv", image_size=32)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        batched = model(x).logits
        single = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    model = tiny("vision-perceiver-conv", image_size=32, same_padding=False)
    with torch.no_grad():
        model.input_adapter.convnet[0].batchnorm.running_mean.normal_()
        model.input_adapter.convnet[0].batchnorm.running_var.uniform_(0.5, 2)
    model.save_pretrained(tmp_path / "m")
    loaded = perceiver.from_pretrained(tmp_path / "m")
    assert type(loaded) is PerceiverForImageClassification and loaded.config == model.config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    again = PerceiverForImageClassification.from_pretrained(tmp_path / "m", num_labels=5)
    assert asdict(again.config) == asdict(model.config)


def test_gradients_reach_every_parameter():
    """Every parameter gets a gradient (DDP needs one for each); it is non-zero except for the key bias of a
    reassociated cross-attention, which adds a constant to each row of scores: a softmax ignores it, so its exact
    gradient is zero (in the standard form it is rounding noise)."""
    model = tiny("vision-perceiver-conv", image_size=16).train()
    model(torch.randn(2, 3, 16, 16)).logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    reassociated = {f"encoder.cross_attends.{i}.attention.k_proj.bias" for i, c in enumerate(model.encoder.cross_attends)
                    if c.attention.reassociate}  # fmt: skip
    assert reassociated
    missing = [n for n, p in model.named_parameters() if n not in reassociated and not p.grad.abs().sum() > 0]
    assert not missing


def test_config_normalises_json_lists():
    config = ImageAdapterConfig(image_size=[32, 48], max_resolution=[8, 8])
    assert config.image_size == (32, 48) and config.max_resolution == (8, 8)
    assert ImageAdapterConfig(image_size=64).image_size == (64, 64)
    assert apply_overrides(ImageClassifierConfig(), {"image_size": [8, 4]}).adapter.image_size == (8, 4)


# --- end to end on real photos ---------------------------------------------------------------------------------


def test_end_to_end_image_processor_and_model(tmp_path):
    """ImageProcessor on scikit-learn's sample photos, then our conv model converted from a transformers one."""
    image_processing = pytest.importorskip("perceiver.image_processing")
    datasets = pytest.importorskip("sklearn.datasets")
    transformers = pytest.importorskip("transformers")
    photos = datasets.load_sample_images().images  # two (427, 640, 3) uint8 photos
    pixel_values = image_processing.ImageProcessor()(photos)
    assert pixel_values.shape == (2, 3, 224, 224) and pixel_values.dtype == torch.float32

    sizes = dict(num_latents=8, d_latents=32, num_blocks=1, num_self_attends_per_block=1, num_self_attention_heads=2)
    config = transformers.PerceiverConfig(**sizes, num_cross_attention_heads=1, image_size=224, num_labels=10)
    hf = transformers.PerceiverForImageClassificationConvProcessing(config).eval()
    hf.save_pretrained(tmp_path)
    ours = perceiver.from_pretrained(tmp_path)
    assert ours.input_adapter.grid == (56, 56)  # DeepMind's SAME padding by default
    with torch.no_grad():
        logits = ours(pixel_values).logits
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()
        assert torch.allclose(logits[1:], ours(pixel_values[1:]).logits, atol=1e-5)
        matched = PerceiverForImageClassification(
            apply_overrides(ours.config, {"adapter.same_padding": False})
        )
        matched.load_state_dict(ours.state_dict())
        assert (matched.eval()(pixel_values).logits - hf(inputs=pixel_values).logits).abs().max() <= 1e-4
    assert math.prod(matched.input_adapter.grid) == 55 * 55


def test_conv1x1_is_a_strided_pointwise_conv():
    """conv1x1 runs as a Linear on the subsampled pixels; the parameters stay those of an nn.Conv2d."""
    adapter = ImageAdapter(image_size=(15, 14), prep_type="conv1x1", spatial_downsample=4, out_channels=8)
    x = torch.randn(2, 3, 15, 14)
    expected = adapter.convnet_1x1(x).permute(0, 2, 3, 1)
    assert isinstance(adapter.convnet_1x1, torch.nn.Conv2d) and expected.shape == (2, 4, 4, 8)
    torch.testing.assert_close(adapter.features(x), expected, atol=1e-6, rtol=0)
