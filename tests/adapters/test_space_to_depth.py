"""One `space_to_depth` (in `perceiver.adapters.video`) for images, video and flow frames."""

from __future__ import annotations

import pytest
import torch

import perceiver.adapters.flow
import perceiver.adapters.image
import perceiver.adapters.video
from perceiver.adapters.image import ImageAdapter
from perceiver.adapters.video import space_to_depth


def test_one_implementation():
    assert perceiver.adapters.image.space_to_depth is perceiver.adapters.video.space_to_depth
    assert perceiver.adapters.flow.space_to_depth is perceiver.adapters.video.space_to_depth


def test_image_patches_are_blocks_in_dh_dw_c_order():
    adapter = ImageAdapter(image_size=(8, 12), prep_type="patches", spatial_downsample=4, position_encoding="none")
    x = torch.randn(2, 3, 8, 12)
    feats = adapter.features(x)
    assert feats.shape == (2, 2, 3, 48)
    for dh in range(4):
        for dw in range(4):
            for c in range(3):
                assert torch.equal(feats[..., (dh * 4 + dw) * 3 + c], x[:, c, dh::4, dw::4])
    assert torch.equal(feats, space_to_depth(x, spatial_block_size=4))


def test_video_blocks_in_t_dh_dw_c_order():
    x = torch.randn(1, 4, 3, 4, 6)  # (B, T, C, H, W)
    y = space_to_depth(x, temporal_block_size=2, spatial_block_size=2)
    assert y.shape == (1, 2, 2, 3, 24)
    for dt in range(2):
        for dh in range(2):
            for dw in range(2):
                for c in range(3):
                    assert torch.equal(y[..., ((dt * 2 + dh) * 2 + dw) * 3 + c], x[:, dt::2, c, dh::2, dw::2])


def test_matches_transformers():
    modeling = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    image, video = torch.randn(2, 3, 8, 12), torch.randn(2, 4, 3, 8, 12)
    assert torch.equal(space_to_depth(image, spatial_block_size=4), modeling.space_to_depth(image, 1, 4))
    assert torch.equal(space_to_depth(video, 2, 4), modeling.space_to_depth(video, 2, 4))


def test_errors():
    with pytest.raises(ValueError, match="needs frames \\(B, T, C, H, W\\).*spatial_block_size="):
        space_to_depth(torch.randn(1, 3, 8, 8), 2)  # an image's block passed as the (temporal) second argument
    with pytest.raises(ValueError, match="width \\(6\\) must be divisible by the space-to-depth block 4"):
        space_to_depth(torch.randn(1, 3, 8, 6), spatial_block_size=4)
    with pytest.raises(ValueError, match="expected frames of shape"):
        space_to_depth(torch.randn(3, 8, 8))
