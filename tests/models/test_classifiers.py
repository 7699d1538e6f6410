"""Audio, video and point-cloud classifiers and their adapters: shapes, invariances, bad input, transformers'
preprocessing equivalence (space_to_depth, audio / video features), save / load."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver.adapters.audio import AudioAdapter
from perceiver.adapters.point_cloud import PointCloudAdapter
from perceiver.adapters.video import VideoAdapter, space_to_depth
from perceiver.models.classifiers import (
    PerceiverForAudioClassification,
    PerceiverForPointCloudClassification,
    PerceiverForVideoClassification,
)

TINY = dict(num_latents=8, latent_dim=16, num_blocks=2, num_self_attends_per_block=1, latent_heads=2)
AUDIO = dict(num_samples=64, samples_per_patch=4, num_bands=4, max_resolution=64)
VIDEO = dict(num_frames=4, image_size=(8, 12), spatial_block_size=4, temporal_block_size=2, num_bands=3)
VIDEO |= dict(max_resolution=(4, 8, 12), num_classes=5)


def tiny(name: str, **overrides):
    return perceiver.create_model(name, **(TINY | overrides)).eval()


def test_presets_shapes_and_defaults():
    cases = {
        "audio-classifier": (PerceiverForAudioClassification, torch.randn(2, 64), AUDIO, 527),
        "video-classifier": (PerceiverForVideoClassification, torch.randn(2, 4, 3, 8, 12), VIDEO, 5),
        "point-cloud-classifier": (PerceiverForPointCloudClassification, torch.randn(2, 30, 3), {"num_bands": 4}, 40),
    }
    for name, (cls, x, overrides, k) in cases.items():
        model = tiny(name, **overrides)
        assert isinstance(model, cls)
        out = model(x)
        assert out.logits.shape == (2, k), name
        assert out.last_hidden_state.shape == (2, 8, 16)
        assert torch.isfinite(out.logits).all()
    assert tiny("audio-classifier", **AUDIO, num_labels=3).config.num_classes == 3  # transformers' name accepted
    assert tiny("audio-classifier", **AUDIO)(torch.randn(1, 64, 1)).logits.shape == (1, 527)  # (B, S, 1) audio


def test_point_cloud_permutation_and_padding_invariance():
    model = tiny("point-cloud-classifier", num_bands=6)
    points = torch.randn(3, 20, 3).clamp(-1, 1)
    with torch.no_grad():
        ref = model(points).logits
        perm = torch.randperm(20)
        assert torch.allclose(model(points[:, perm]).logits, ref, atol=1e-5)
        # extra padded points (even NaN ones) with mask False change nothing
        junk = torch.randn(3, 7, 3) * 5
        junk[0, 0] = float("nan")
        padded = torch.cat([points, junk], dim=1)
        mask = torch.cat([torch.ones(3, 20), torch.zeros(3, 7)], dim=1).bool()
        shuffle = torch.randperm(27)
        assert torch.allclose(model(padded[:, shuffle], mask[:, shuffle]).logits, ref, atol=1e-5)
        # a batch of clouds of different sizes equals each cloud on its own
        mask2 = torch.ones(3, 20, dtype=torch.bool)
        mask2[1, 12:] = False
        batched = model(points, mask2).logits
        alone = model(points[1:2, :12]).logits
    assert torch.allclose(batched[1], alone[0], atol=1e-5)
    assert torch.allclose(batched[0], ref[0], atol=1e-5)


def test_point_cloud_features_are_of_the_coordinates():
    adapter = PointCloudAdapter(in_channels=6, num_bands=2, max_resolution=4.0)
    pts = torch.tensor([[[0.5, -0.25, 1.0, 7.0, 8.0, 9.0]]])
    tokens = adapter(pts).tokens
    assert tokens.shape == (1, 1, adapter.num_channels) == (1, 1, 3 * 5 + 3)
    # [xyz | sin(pi f x) per axis, f in (1, 2) | cos ... | extra features]
    f = torch.tensor([1.0, 2.0])
    xyz = pts[0, 0, :3]
    arg = (xyz[:, None] * f * torch.pi).flatten()
    want = torch.cat([xyz, arg.sin(), arg.cos(), pts[0, 0, 3:]])
    assert torch.allclose(tokens[0, 0], want, atol=1e-6)


def test_audio_and_video_masks():
    model = tiny("audio-classifier", **AUDIO)
    x = torch.randn(1, 64)
    mask = torch.ones(1, 64, dtype=torch.bool)
    mask[:, 40:] = False
    with torch.no_grad():
        masked = model(x, mask).logits
        other = x.clone()
        other[:, 40:] = torch.randn(24)  # masked samples do not matter
        assert torch.allclose(model(other, mask).logits, masked, atol=1e-6)
    video = tiny("video-classifier", **VIDEO)
    v = torch.randn(1, 4, 3, 8, 12)
    token_mask = torch.ones(1, 2 * 2 * 3, dtype=torch.bool)
    assert video(v, token_mask).logits.shape == (1, 5)


def test_space_to_depth_and_preprocessors_equal_transformers():
    t = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    x = torch.randn(2, 4, 3, 8, 12)
    for tb, sb in [(1, 1), (2, 2), (1, 4), (4, 2)]:
        assert torch.equal(space_to_depth(x, tb, sb), t.space_to_depth(x, tb, sb))
    assert torch.equal(space_to_depth(x[:, 0], 1, 4), t.space_to_depth(x[:, 0], 1, 4))
    cfg = t.PerceiverConfig()
    fourier = dict(num_bands=32, max_resolution=(4, 16, 16), sine_only=False, concat_pos=True)
    hf_video = t.PerceiverImagePreprocessor(
        cfg, prep_type="patches", spatial_downsample=4, position_encoding_type="fourier",
        fourier_position_encoding_kwargs=fourier,
    )  # fmt: skip
    ours = VideoAdapter(3, 4, (8, 12), 1, 4, 32, max_resolution=(4, 16, 16))
    tokens, _, without_pos = hf_video(x)
    adapted = ours(x)
    assert ours.num_channels == hf_video.num_channels
    assert torch.allclose(adapted.tokens, tokens, atol=1e-6) and torch.equal(adapted.without_pos, without_pos)
    fourier = dict(num_bands=192, max_resolution=(320,), sine_only=False, concat_pos=True)
    hf_audio = t.PerceiverAudioPreprocessor(
        cfg, position_encoding_type="fourier", fourier_position_encoding_kwargs=fourier, samples_per_patch=16
    )
    audio = AudioAdapter(320, 16, 192, max_resolution=320)
    wave = torch.randn(2, 320, 1)
    tokens, _, without_pos = hf_audio(wave)
    assert audio.num_channels == hf_audio.num_channels
    assert torch.allclose(audio(wave).tokens, tokens, atol=1e-6)
    # channels-last video is the same video
    last = VideoAdapter(3, 4, (8, 12), 1, 4, 32, max_resolution=(4, 16, 16), channels_last=True)
    assert torch.equal(last(x.permute(0, 1, 3, 4, 2)).tokens, adapted.tokens)


def test_bad_inputs():
    with pytest.raises(ValueError, match="not a multiple of samples_per_patch"):
        AudioAdapter(None, 16)(torch.randn(1, 100))
    with pytest.raises(ValueError, match=r"expected audio of shape \(B, 64\)"):
        tiny("audio-classifier", **AUDIO)(torch.randn(1, 60))
    with pytest.raises(ValueError, match="must be a multiple"):
        AudioAdapter(num_samples=100, samples_per_patch=16)
    model = tiny("point-cloud-classifier", num_bands=4)
    pts = torch.randn(2, 10, 3)
    pts[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        model(pts)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 3] = False
    assert torch.isfinite(model(pts, mask).logits).all()  # the NaN point is padding: fine
    with pytest.raises(ValueError, match=r"expected points of shape \(B, P, 3\)"):
        model(torch.randn(2, 10, 2))
    with pytest.raises(ValueError, match=r"expected mask of shape \(2, 10\)"):
        model(torch.randn(2, 10, 3), torch.ones(2, 9, dtype=torch.bool))
    video = tiny("video-classifier", **VIDEO)
    with pytest.raises(ValueError, match=r"expected video of shape \(B, 4, 3, 8, 12\)"):
        video(torch.randn(1, 3, 3, 8, 12))  # wrong number of frames
    with pytest.raises(ValueError, match="divisible by the space-to-depth block 4"):
        VideoAdapter(spatial_block_size=4)(torch.randn(1, 2, 3, 8, 10))
    with pytest.raises(ValueError, match="frames .3. must be divisible"):
        space_to_depth(torch.randn(1, 3, 3, 8, 8), temporal_block_size=2)
    with pytest.raises(ValueError, match="divisible by spatial_block_size"):
        VideoAdapter(num_frames=2, image_size=(8, 10), spatial_block_size=4)


def test_save_load_round_trip(tmp_path):
    for name, x, overrides in [
        ("point-cloud-classifier", torch.randn(1, 9, 3), {"num_bands": 4}),
        ("video-classifier", torch.randn(1, 4, 3, 8, 12), VIDEO),
    ]:
        model = tiny(name, **overrides)
        model.save_pretrained(tmp_path / name)
        again = perceiver.from_pretrained(tmp_path / name)
        assert type(again) is type(model) and again.config == model.config
        with torch.no_grad():
            assert torch.equal(again(x).logits, model(x).logits)


def test_gradients_reach_every_part():
    model = tiny("point-cloud-classifier", num_bands=4).train()
    model(torch.randn(2, 10, 3), torch.ones(2, 10, dtype=torch.bool)).logits.logsumexp(-1).mean().backward()
    for name in ("encoder.latents", "query_builder.encoding.position_embeddings", "decoder.final_layer.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
