"""`ImageAdapter` and `PerceiverForImageClassification`: preprocessing types against transformers' preprocessor,
SAME padding, position interpolation, bad inputs, presets, save/load, and an end-to-end run on real photos."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

import perceiver
from perceiver.adapters.image import ImageAdapter, ImageAdapterConfig
from perceiver.hub import apply_overrides
from perceiver.models.vision import ImageClassifierConfig, PerceiverForImageClassification

TINY = dict(num_latents=6, latent_dim=16, num_blocks=1, num_self_attends_per_block=1, latent_heads=2, num_labels=5)
PRESETS = ["vision-perceiver-conv", "vision-perceiver-fourier", "vision-perceiver-learned"]


def tiny(preset: str = "vision-perceiver-learned", **overrides) -> PerceiverForImageClassification:
    return perceiver.create_model(preset, **{**TINY, "image_size": 16, **overrides}).eval()


def assert_raises(fn, *fragments):
    with pytest.raises(ValueError) as info:
        fn()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


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
        matched = PerceiverForImageClassification(apply_overrides(ours.config, {"adapter.same_padding": False}))
        matched.load_state_dict(ours.state_dict())
        assert (matched.eval()(pixel_values).logits - hf(inputs=pixel_values).logits).abs().max() <= 1e-4
    assert math.prod(matched.input_adapter.grid) == 55 * 55
