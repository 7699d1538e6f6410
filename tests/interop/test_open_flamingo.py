"""Perceiver Resampler parity with OpenFlamingo's (`open_flamingo.src.helpers.PerceiverResampler`, PyPI
open-flamingo 2.0.1): video media `(B, T, F, V, D)` with frame and time embeddings, and the resampler of a whole
OpenFlamingo state dict.

The wheel pins torch 2.0.1 and its package imports open_clip (and through it torchvision), so it cannot be installed
into our environment: it goes into a folder of its own (`pip install --no-deps --target`) and its `helpers.py`, which
needs only torch, einops and einops-exts, is loaded from there as a module.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from perceiver import PerceiverResampler

pytest.importorskip("einops_exts")
VERSION = "2.0.1"


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    target = tmp_path_factory.mktemp("open-flamingo")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    result = subprocess.run([*pip, f"open-flamingo=={VERSION}"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot install open-flamingo {VERSION}: {result.stderr[-500:]}")
    spec = importlib.util.spec_from_file_location("open_flamingo_helpers", target / "open_flamingo/src/helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peer(helpers, kwargs, seed=0):
    torch.manual_seed(seed)
    peer = helpers.PerceiverResampler(**kwargs).eval()
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if "norm" in name:  # move the norms off 1 / 0, so a misplaced one shows
                p.add_(torch.randn_like(p) * 0.2)
    return peer


CONFIGS = [
    dict(dim=32, depth=2, dim_head=8, heads=4, num_latents=5, max_num_media=3, max_num_frames=4, ff_mult=2),
    dict(dim=24, depth=1),  # as its Flamingo models build it: no media / frame embeddings, 8 heads x 64, 64 latents
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_outputs_equal_open_flamingo(helpers, kwargs):
    peer = _peer(helpers, kwargs)
    ours = PerceiverResampler.from_open_flamingo(peer.state_dict(), **kwargs)
    media = torch.randn(2, 3, 2, 7, kwargs["dim"])  # (B, T, F, V, D)
    with torch.no_grad():
        expected = peer(media)
        got = ours(media).last_hidden_state
    assert got.shape == expected.shape == (2, 3, kwargs.get("num_latents", 64), kwargs["dim"])
    assert (got - expected).abs().max().item() <= 1e-5
    if not kwargs.get("max_num_frames"):  # without frame embeddings one frame of V features is 4-D media (B, T, M, D)
        with torch.no_grad():
            torch.testing.assert_close(
                ours(media[:, :, 0]).last_hidden_state, peer(media[:, :, :1]), atol=1e-5, rtol=1e-5
            )


def test_whole_checkpoint_and_padding_mask(helpers):
    kwargs = CONFIGS[0]
    peer = _peer(helpers, kwargs)
    checkpoint = {f"perceiver.{k}": v for k, v in peer.state_dict().items()}
    checkpoint |= {"vision_encoder.proj": torch.zeros(3), "lang_encoder.wte.weight": torch.zeros(4, 2)}
    ours = PerceiverResampler.from_open_flamingo(checkpoint, **kwargs)
    media = torch.randn(2, 1, 3, 5, kwargs["dim"])
    mask = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    mask[1, :, 2] = False  # the second sample has two frames: padding equals leaving the frame out
    with torch.no_grad():
        got = ours(media, mask).last_hidden_state
        torch.testing.assert_close(got[0], peer(media[:1])[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], peer(media[1:, :, :2])[0], atol=1e-5, rtol=1e-5)


def test_compiles_whole_with_frames():
    torch._dynamo.reset()
    config = PerceiverResampler.config_class(
        dim=16, depth=1, num_latents=4, num_heads=2, head_dim=8, num_media_embeds=2, num_frame_embeds=3
    )
    model = PerceiverResampler(config).eval()
    media = torch.randn(2, 2, 3, 5, 16)
    explanation = torch._dynamo.explain(model)(media)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(media).last_hidden_state, model(media).last_hidden_state)
    torch._dynamo.reset()


def test_bad_input():
    model = PerceiverResampler(
        PerceiverResampler.config_class(dim=16, depth=1, num_latents=4, num_heads=2, head_dim=8, num_frame_embeds=2)
    )
    with pytest.raises(ValueError, match=r"expected at most num_frame_embeds=2 frames, got F=3"):
        model(torch.randn(1, 1, 3, 4, 16))
    with pytest.raises(ValueError, match=r"expected media of shape .*\(B, T, F, V, 16\), got \(1, 1, 1, 3, 4, 16\)"):
        model(torch.randn(1, 1, 1, 3, 4, 16))
    with pytest.raises(ValueError, match=r"num_frame_embeds must be an integer >= 0, got -1"):
        PerceiverResampler.config_class(dim=16, num_frame_embeds=-1)
    with pytest.raises(ValueError, match=r"expected OpenFlamingo's keyword dim"):
        PerceiverResampler.from_open_flamingo({}, depth=1)
    with pytest.raises(ValueError, match=r"got \['num_media_embeds'\]"):
        PerceiverResampler.from_open_flamingo({}, dim=16, num_media_embeds=2)
