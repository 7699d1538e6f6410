"""Perceiver Resampler parity: flamingo-pytorch's PerceiverResampler and transformers' Idefics2PerceiverResampler."""

from __future__ import annotations

import pytest
import torch

from perceiver import PerceiverResampler

flamingo = pytest.importorskip("flamingo_pytorch")

CONFIGS = [
    dict(dim=48, depth=2, dim_head=16, heads=3, num_latents=5, num_media_embeds=3, ff_mult=2),
    dict(dim=32, depth=1),  # flamingo-pytorch's defaults for the rest: 8 heads x 64, 64 latents, 4 media embeds
]


def _peer(kwargs, seed=0):
    torch.manual_seed(seed)
    peer = flamingo.PerceiverResampler(**kwargs).eval()
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if "norm" in name or name.endswith(".0.weight") or name.endswith(".0.bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return peer


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_outputs_equal_flamingo_pytorch(kwargs):
    peer = _peer(kwargs)
    ours = PerceiverResampler.from_flamingo_pytorch(peer.state_dict(), **kwargs)
    for shape in [(2, 3, 7, kwargs["dim"]), (2, 11, kwargs["dim"])]:
        media = torch.randn(*shape)
        with torch.no_grad():
            expected = peer(media)
            got = ours(media).last_hidden_state
        if media.dim() == 3:
            expected = expected[:, 0]  # flamingo-pytorch adds T = 1
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5


def test_module_is_accepted_and_missing_keywords_are_named():
    kwargs = CONFIGS[0]
    peer = _peer(kwargs, seed=1)
    ours = PerceiverResampler.from_flamingo_pytorch(peer, **kwargs)
    media = torch.randn(1, 2, 4, 48)
    with torch.no_grad():
        assert torch.allclose(ours(media).last_hidden_state, peer(media), atol=1e-5)
    with pytest.raises(ValueError, match="missing"):
        PerceiverResampler.from_flamingo_pytorch(peer.state_dict(), dim=48)
    with pytest.raises(ValueError, match="missing|unexpected|size"):
        PerceiverResampler.from_flamingo_pytorch(peer.state_dict(), **{**kwargs, "depth": 3})
    # a width other than the weights': a ValueError naming the tensors and both shapes (was torch's RuntimeError)
    with pytest.raises(ValueError, match=r"shapes differ for latents \(5, 48\) \(ours \(5, 32\)\)"):
        PerceiverResampler.from_flamingo_pytorch(peer.state_dict(), **{**kwargs, "dim": 32})


@pytest.mark.slow  # importing transformers takes ~10 s
def test_outputs_equal_transformers_idefics2_resampler():
    idefics2 = pytest.importorskip("transformers.models.idefics2.modeling_idefics2")
    from transformers.models.idefics2.configuration_idefics2 import Idefics2PerceiverConfig

    config = Idefics2PerceiverConfig(
        hidden_size=48,
        resampler_n_latents=5,
        resampler_depth=2,
        resampler_n_heads=4,
        resampler_head_dim=12,
        num_key_value_heads=2,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    peer = idefics2.Idefics2PerceiverResampler(config).eval()
    with torch.no_grad():
        for p in peer.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.2)
    ours = PerceiverResampler.from_idefics2(peer)
    media = torch.randn(3, 9, 48)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        expected = peer(media, mask)
        got = ours(media, mask.bool()).last_hidden_state
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_flamingo_pytorch_keywords_build_the_same_resampler(kwargs):
    """`PerceiverResampler(**kwargs)` with flamingo-pytorch's keywords (`heads`, `dim_head`, its defaults for the
    rest) is the model `from_flamingo_pytorch` builds: the peer's weights load into it and give its outputs."""
    peer = _peer(kwargs, seed=2)
    ours = PerceiverResampler(**kwargs).eval()
    reference = PerceiverResampler.from_flamingo_pytorch(peer, **kwargs)
    assert ours.config == reference.config
    ours.load_state_dict(reference.state_dict())
    media = torch.randn(2, 2, 5, kwargs["dim"])
    with torch.no_grad():
        torch.testing.assert_close(ours(media).last_hidden_state, peer(media), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pass num_heads or flamingo-pytorch's name heads for it, not both"):
        PerceiverResampler(dim=32, heads=2, num_heads=2)
