"""Parity with transformers' `PerceiverForOpticalFlow`: random transformers models are saved with `save_pretrained`,
loaded with `perceiver.from_pretrained`, and must give the same flow (max abs diff <= 1e-4), decoded whole, in
chunks and for a subset of pixels."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver.adapters.flow import frames_to_patches
from perceiver.models.flow import PerceiverForOpticalFlow

transformers = pytest.importorskip("transformers")

TRAIN_SIZE = (12, 16)
# Encoder heads 1 / 2, qk / v set and unset, 1 / 2 blocks, query residual on / off, 'kv' / 'q' attention shape
# (the decoder's q/k width follows it: 512-style latent width vs the 322-style query width).
CONFIGS = {
    "default-kv": dict(d_latents=32, num_blocks=1, use_query_residual=True),
    "qkv-q-b2-nores": dict(
        d_latents=32,
        num_cross_attention_heads=2,
        qk_channels=16,
        v_channels=32,
        num_blocks=2,
        use_query_residual=False,
        cross_attention_shape_for_attention="q",
        self_attention_widening_factor=2,
    ),
}


def hf_flow(**overrides) -> torch.nn.Module:
    base = dict(num_latents=16, num_self_attends_per_block=2, num_self_attention_heads=4, num_cross_attention_heads=1)
    cfg = transformers.PerceiverConfig(
        **(base | overrides), train_size=list(TRAIN_SIZE), attention_probs_dropout_prob=0.0
    )
    model = transformers.PerceiverForOpticalFlow(cfg).eval()
    with torch.no_grad():  # move every weight (norms included) away from its init, so each mapping matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request, tmp_path_factory):
    hf = hf_flow(**CONFIGS[request.param])
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    ours = perceiver.from_pretrained(path)
    assert isinstance(ours, PerceiverForOpticalFlow) and not ours.training
    return hf, ours


@pytest.fixture
def pair(converted):
    """The converted pair, reporting transformers' units (`flow_scale_factor=1`) by default in each test."""
    hf, ours = converted
    ours.config.output.flow_scale_factor = 1.0
    yield hf, ours
    ours.config.output.flow_scale_factor = 20.0


def test_whole_decode_parity_and_pixel_units(pair):
    hf, ours = pair
    x = torch.randn(2, 2, 27, *TRAIN_SIZE)
    with torch.no_grad():
        ref = hf(inputs=x).logits
        got = ours(x, query_chunk_size=0).logits  # transformers' units (flow_scale_factor=1)
        ours.config.output.flow_scale_factor = 20.0
        pixels = ours(x, query_chunk_size=0).logits
    assert got.shape == ref.shape == (2, *TRAIN_SIZE, 2)
    assert (got - ref).abs().max() <= 1e-4
    assert ref.abs().max() > 1e-3  # not trivially zero
    assert torch.allclose(pixels, 20 * ref, atol=20e-4)  # DeepMind's FLOW_SCALE_FACTOR by default


def test_chunked_and_subset_decode_parity(pair):
    hf, ours = pair
    x = torch.randn(1, 2, 27, *TRAIN_SIZE)
    index = torch.tensor([0, 5, 17, 100, 191, 3])
    with torch.no_grad():
        ref = hf(inputs=x).logits
        chunked = ours(x, query_chunk_size=7).logits  # 192 pixels in 28 uneven chunks
        default = ours(x).logits  # config.query_chunk_size
        subset = ours(x, output_index=index, query_chunk_size=4).logits
    assert (chunked - ref).abs().max() <= 1e-4
    assert (default - ref).abs().max() <= 1e-4
    assert subset.shape == (1, len(index), 2)
    assert (subset - ref.reshape(1, -1, 2)[:, index]).abs().max() <= 1e-4


def test_parity_from_frames(pair):
    """Frames -> our 3x3 patch extraction -> both models: equal flow (the patches are the shared input)."""
    hf, ours = pair
    frames = torch.rand(1, 2, *TRAIN_SIZE, 3) * 2 - 1
    patches = frames_to_patches(frames)
    with torch.no_grad():
        assert (ours(patches).logits - hf(inputs=patches).logits).abs().max() <= 1e-4


def test_converted_model_round_trip(converted, tmp_path):
    _, ours = converted
    x = torch.randn(1, 2, 27, *TRAIN_SIZE)
    ours.save_pretrained(tmp_path / "ours")
    again = perceiver.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(again(x).logits, ours(x).logits)
    assert again.config.adapter.train_size == TRAIN_SIZE and again.config.output.flow_scale_factor == 20.0
    assert again.config == ours.config


def test_converted_config_is_built_from_the_checkpoint_parts(converted):
    hf, ours = converted
    c, hc = ours.config, hf.config
    assert (c.adapter.train_size, c.adapter.patch_size, c.adapter.out_channels, c.adapter.num_bands) == (
        TRAIN_SIZE, 3, 64, 64
    )  # fmt: skip
    assert (c.encoder.num_latents, c.encoder.latent_dim, c.encoder.num_blocks) == (16, hc.d_latents, hc.num_blocks)
    assert c.encoder.use_query_residual == hc.use_query_residual and not c.decoder.use_query_residual
    assert c.decoder.num_heads == 1 and not c.output_init_zeros


def test_overrides_reach_the_nested_config(tmp_path):
    hf_flow(**CONFIGS["default-kv"]).save_pretrained(tmp_path)
    ours = perceiver.from_pretrained(tmp_path, flow_scale_factor=1.0, **{"query_chunk_size": 5})
    assert ours.config.output.flow_scale_factor == 1.0 and ours.config.query_chunk_size == 5
    with pytest.raises(ValueError, match="unknown keys"):
        perceiver.from_pretrained(tmp_path, flow_scale=1.0)
