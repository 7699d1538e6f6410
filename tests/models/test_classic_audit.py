"""perceiver-pytorch 0.11's `block_outputs` argument of `Perceiver.forward` and `PerceiverIO.forward`: earlier
outputs that start the attention residual's history (and the `return_hiddens` list) in place of the initial latents.
It was a TypeError here; outputs must equal the peer's under the same weights."""

from __future__ import annotations

import pytest
import torch
from pp_tiny import CLASSIC, IO, randomize

from perceiver import Perceiver
from perceiver.models.lucidrains_io import LucidrainsPerceiverIO

perceiver_pytorch = pytest.importorskip("perceiver_pytorch")

RESIDUALS = [
    {},
    {"attn_residual": True, "attn_residual_rank": 4},
    {"attn_residual": True, "attn_residual_rank": 4, "weight_tie_layers": True},
]


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", RESIDUALS)
def test_classic_block_outputs_match_perceiver_pytorch(options):
    torch.manual_seed(0)
    peer = randomize(perceiver_pytorch.Perceiver(**CLASSIC, **options))
    ours = Perceiver.from_perceiver_pytorch(peer).eval()
    x = torch.randn(2, 5, 7, 3)
    earlier = [torch.randn(2, CLASSIC["num_latents"], CLASSIC["latent_dim"]) for _ in range(2)]
    with torch.no_grad():
        for given in (earlier, earlier[0]):
            close(ours(x, block_outputs=given), peer(x, block_outputs=given))
            out, hiddens = ours(x, block_outputs=given, return_hiddens=True)
            peer_out, peer_hiddens = peer(x, block_outputs=given, return_hiddens=True)
            close(out, peer_out)
            assert len(hiddens) == len(peer_hiddens)
            for h, p in zip(hiddens, peer_hiddens):
                close(h, p)
        close(ours(x, block_outputs=earlier, return_dict=True).logits, peer(x, block_outputs=earlier))
    if options:  # the residual mixes the given outputs in
        assert not torch.allclose(ours(x, block_outputs=earlier), ours(x), atol=1e-4)


@pytest.mark.parametrize("options", RESIDUALS)
def test_io_block_outputs_match_perceiver_pytorch(options):
    torch.manual_seed(0)
    peer = randomize(perceiver_pytorch.PerceiverIO(**IO, **options))
    ours = LucidrainsPerceiverIO.from_perceiver_pytorch(peer).eval()
    data, queries = torch.randn(2, 9, IO["dim"]), torch.randn(2, 4, IO["queries_dim"])
    earlier = [torch.randn(2, IO["num_latents"], IO["latent_dim"]) for _ in range(2)]
    with torch.no_grad():
        for given in (earlier, earlier[0]):
            close(ours(data, queries=queries, block_outputs=given), peer(data, queries=queries, block_outputs=given))
            out, hiddens = ours(data, block_outputs=given, return_hiddens=True)
            peer_out, peer_hiddens = peer(data, block_outputs=given, return_hiddens=True)
            close(out, peer_out)
            assert len(hiddens) == len(peer_hiddens)
            for h, p in zip(hiddens, peer_hiddens):
                close(h, p)


def test_block_outputs_of_the_wrong_shape_or_type_are_clear_errors():
    model = Perceiver(**CLASSIC)
    x = torch.randn(2, 5, 7, 3)
    with pytest.raises(ValueError, match=r"block_outputs\) of the latents' shape \(2, 5, 16\)"):
        model(x, block_outputs=torch.randn(2, 5, 15))
    with pytest.raises(ValueError, match=r"got \(3, 5, 16\)"):
        model(x, block_outputs=[torch.randn(3, 5, 16)])
    with pytest.raises(TypeError, match="got int"):
        model(x, block_outputs=5)
    with pytest.raises(TypeError, match="non-empty list"):
        model(x, block_outputs=[])
