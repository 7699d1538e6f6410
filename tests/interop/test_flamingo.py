"""Perceiver Resampler parity: flamingo-pytorch's PerceiverResampler and transformers' Idefics2PerceiverResampler."""

from __future__ import annotations

import pytest
import torch

from perceiver import PerceiverResampler
from perceiver.checks import InputTypeError

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
        as_idefics2_calls_it = ours(context=media, attention_mask=mask).last_hidden_state  # its connector's call
    assert (got - expected).abs().max().item() <= 1e-5
    assert (as_idefics2_calls_it - expected).abs().max().item() <= 1e-5


@pytest.mark.slow  # importing transformers takes ~10 s
@pytest.mark.parametrize("qk_layer_norms", [False, True])
def test_outputs_equal_transformers_idefics_v1_resampler(tmp_path, qk_layer_norms):
    """IDEFICS (v1)'s resampler: Flamingo's layers with a ReLU MLP and optional per-head q / k LayerNorms (was not
    loadable: no ReLU MLP, no q / k norms)."""
    pytest.importorskip("transformers.models.idefics.perceiver")
    from transformers.models.idefics.configuration_idefics import IdeficsConfig
    from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

    import perceiver

    config = IdeficsConfig(
        vision_config=dict(embed_dim=24), perceiver_config=dict(qk_layer_norms_perceiver=qk_layer_norms)
    )
    torch.manual_seed(0)
    peer = IdeficsPerceiverResampler(config, embed_dim=24, depth=2, n_heads=3, head_dim=8, n_latents=5).eval()
    with torch.no_grad():
        for p in peer.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.2)
    ours = PerceiverResampler.from_idefics(peer)
    assert (ours.config.mlp, ours.config.qk_norm, ours.config.ff_mult) == ("relu", qk_layer_norms, 4.0)
    context = torch.randn(3, 11, 24)
    with torch.no_grad():
        expected = peer(context)
        assert (ours(context=context).last_hidden_state - expected).abs().max().item() <= 1e-5
        ours.save_pretrained(tmp_path / "r")
        again = perceiver.from_pretrained(tmp_path / "r")
        assert (again(context).last_hidden_state - expected).abs().max().item() <= 1e-5
    with pytest.raises(InputTypeError, match="IdeficsPerceiverResampler .* got Linear"):
        PerceiverResampler.from_idefics(torch.nn.Linear(2, 2))


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


def test_whole_flamingo_palm_gives_its_resampler_and_video_frame_embeddings():
    """flamingo-pytorch's FlamingoPaLM (its state dict or module): `perceiver_resampler.*` and `video_frame_pos_emb`
    are taken (was "unexpected flamingo-pytorch key 'video_frame_pos_emb'"); video features `(B, T, F, V, D)` give
    what its `forward(videos=...)` hands the language model."""
    from flamingo_pytorch import FlamingoPaLM

    torch.manual_seed(0)
    # its image encoder maps each frame (C, H, W) to C features of width H * W: the video pixels are the features
    palm = FlamingoPaLM(
        dim=12, num_tokens=20, depth=1, dim_head=4, heads=3, perceiver_num_latents=5, perceiver_depth=2,
        max_video_frames=3, img_encoder=torch.nn.Flatten(2),
    ).eval()  # fmt: skip
    with torch.no_grad():
        palm.video_frame_pos_emb.mul_(2.0)
    resampled = []
    palm.perceiver_resampler.register_forward_hook(lambda module, args, out: resampled.append(out))
    videos = torch.randn(2, 2, 3, 7, 3, 4)  # (B, T media, F frames, C = V features, H, W: H * W = D)
    text = torch.randint(4, 20, (2, 6))
    with torch.no_grad():
        palm(text, videos=videos)
    kwargs = dict(dim=12, depth=2, dim_head=4, heads=3, num_latents=5)
    for source in (palm.state_dict(), palm):
        ours = PerceiverResampler.from_flamingo_pytorch(source, **kwargs)
        assert ours.config.num_frame_embeds == 3
        with torch.no_grad():
            got = ours(videos.flatten(-2)).last_hidden_state
        torch.testing.assert_close(got, resampled[0], atol=1e-5, rtol=1e-5)
