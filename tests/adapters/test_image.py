"""`ImageAdapter` (perceiver.adapters.image): preprocessing types against transformers' PerceiverImagePreprocessor,
SAME padding, spatial subsampling, Fourier positions of the input grid and position interpolation."""

from __future__ import annotations

import pytest
import torch

from perceiver.adapters.image import ImageAdapter, same_pads
from perceiver.nn.position import fourier_features, linear_positions

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


def test_conv1x1_is_a_strided_pointwise_conv():
    """conv1x1 runs as a Linear on the subsampled pixels; the parameters stay those of an nn.Conv2d."""
    adapter = ImageAdapter(image_size=(15, 14), prep_type="conv1x1", spatial_downsample=4, out_channels=8)
    x = torch.randn(2, 3, 15, 14)
    expected = adapter.convnet_1x1(x).permute(0, 2, 3, 1)
    assert isinstance(adapter.convnet_1x1, torch.nn.Conv2d) and expected.shape == (2, 4, 4, 8)
    torch.testing.assert_close(adapter.features(x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("position_encoding", ["fourier", "none"])
def test_a_wrong_layout_error_does_not_claim_a_fixed_size_for_any_size_adapters(position_encoding):
    """Fourier positions (or none) take images of any size; the error named the configured `image_size` as if it were
    required (`expected (B, 3, 224, 224)` for a 3x320x320 image fed channels last)."""
    adapter = ImageAdapter((16, 16), prep_type="pixels", position_encoding=position_encoding, num_bands=2)
    with pytest.raises(ValueError, match=r"expected pixel_values of shape \(B, 3, H, W\) \(channels first\), got"):
        adapter(torch.randn(2, 32, 32, 3))
    learned = ImageAdapter((16, 16), prep_type="pixels", position_encoding="trainable", trainable_pos_channels=4)
    with pytest.raises(ValueError, match=r"expected pixel_values of shape \(B, 3, 16, 16\) \(channels first\)"):
        learned(torch.randn(2, 16, 16, 3))
    with pytest.raises(ValueError, match=r"expected pixel_values of shape \(B, 3, H, W\) \(channels first\)"):
        learned(torch.randn(2, 16, 16, 3), interpolate_pos_encoding=True)
