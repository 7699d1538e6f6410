"""State dicts as users save them: under DDP (`module.`), `torch.compile` (`_orig_mod.`), a Lightning module
(`model.`), or a whole Lightning checkpoint (`{"state_dict": ..., "epoch": ...}`); the converters of the peers take
them as the bare state dict, with the same outputs."""

from __future__ import annotations

import pytest
import torch

from perceiver import Perceiver, PerceiverAR, PerceiverResampler
from perceiver.interop.keys import unwrap_state_dict
from perceiver.interop.krasserm import backend_state_dict

KW = dict(input_channels=3, input_axis=2, num_freq_bands=2, max_freq=4.0, depth=2, num_latents=6, latent_dim=16,
          cross_heads=1, latent_heads=2, cross_dim_head=8, latent_dim_head=8, num_classes=5)  # fmt: skip

WRAPS = {
    "ddp": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "compile": lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    "ddp+compile": lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
    "lightning": lambda sd: {f"model.{k}": v for k, v in sd.items()},
    "lightning-ckpt": lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3},
}


@pytest.mark.parametrize("wrap", sorted(WRAPS))
def test_perceiver_pytorch_wrapped_state_dicts(wrap):
    lucidrains = pytest.importorskip("perceiver_pytorch")
    torch.manual_seed(0)
    peer = lucidrains.Perceiver(**KW).eval()
    ours = Perceiver.from_perceiver_pytorch(WRAPS[wrap](peer.state_dict()), **KW)
    x = torch.randn(2, 8, 8, 3)
    with torch.no_grad():
        assert (ours(x) - peer(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("wrap", ["ddp", "lightning-ckpt"])
def test_perceiver_ar_pytorch_wrapped_state_dicts(wrap):
    peer_module = pytest.importorskip("perceiver_ar_pytorch")
    kwargs = dict(num_tokens=37, dim=32, depth=1, max_seq_len=12, cross_attn_seq_len=5, dim_head=32, heads=1)
    torch.manual_seed(0)
    peer = peer_module.PerceiverAR(**kwargs).eval()
    ours = PerceiverAR.from_perceiver_ar_pytorch(WRAPS[wrap](peer.state_dict()), **kwargs)
    x = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        assert (ours(x).logits - peer(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("wrap", ["ddp", "compile"])
def test_flamingo_pytorch_wrapped_state_dicts(wrap):
    flamingo = pytest.importorskip("flamingo_pytorch")
    kwargs = dict(dim=32, depth=1, dim_head=16, heads=2, num_latents=4)
    torch.manual_seed(0)
    peer = flamingo.PerceiverResampler(**kwargs).eval()
    ours = PerceiverResampler.from_flamingo_pytorch(WRAPS[wrap](peer.state_dict()), **kwargs)
    media = torch.randn(2, 1, 7, 32)
    with torch.no_grad():
        assert (ours(media).last_hidden_state - peer(media)).abs().max().item() <= 1e-5


def test_krasserm_keys_lose_every_wrapper():
    sd = {"0.latent_provider._query": torch.zeros(1), "1.cross_attn.x": torch.ones(1)}
    for wrapped in ({f"module._orig_mod.backend_model.{k}": v for k, v in sd.items()}, {"state_dict": sd}):
        assert backend_state_dict(wrapped) == sd


def test_keys_that_only_some_share_are_kept_and_non_tensors_are_named():
    sd = {"model.a": torch.zeros(1), "latents": torch.zeros(1)}
    assert unwrap_state_dict(sd, "peer") == sd
    with pytest.raises(ValueError, match=r"expected a peer state_dict \(a dict of tensors\).*got a dict with the keys"):
        unwrap_state_dict({"epoch": 3, "weights": {}}, "peer")


def test_a_path_says_to_load_the_file_first():
    with pytest.raises(
        ValueError, match=r"got a str '/x/model.pt': load the file first, torch.load\(path, weights_only"
    ):
        Perceiver.from_perceiver_pytorch("/x/model.pt", **KW)
