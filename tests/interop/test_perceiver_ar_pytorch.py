"""perceiver-ar-pytorch parity: its constructor keywords and state_dict give our PerceiverAR with equal logits."""

from __future__ import annotations

import pytest
import torch

from perceiver import PerceiverAR

peer_module = pytest.importorskip("perceiver_ar_pytorch")

CONFIGS = [
    dict(num_tokens=37, dim=48, depth=2, max_seq_len=29, cross_attn_seq_len=17, dim_head=32, heads=3, ff_mult=3),
    dict(
        num_tokens=262,
        dim=40,
        depth=1,
        max_seq_len=24,
        cross_attn_seq_len=9,
        dim_head=68,
        heads=2,
        ff_mult=2.5,
        perceive_depth=2,
        perceive_max_heads_process=1,
    ),
    dict(num_tokens=19, dim=32, depth=0, max_seq_len=12, cross_attn_seq_len=5, dim_head=32, heads=1),
]


def _peer(kwargs, seed=0):
    torch.manual_seed(seed)
    peer = peer_module.PerceiverAR(**kwargs).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping cannot hide behind defaults
        for name, p in peer.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return peer


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_logits_equal_perceiver_ar_pytorch_at_two_window_lengths(kwargs):
    peer = _peer(kwargs)
    ours = PerceiverAR.from_perceiver_ar_pytorch(peer.state_dict(), **kwargs)
    prefix, window = kwargs["cross_attn_seq_len"], kwargs["max_seq_len"]
    for length in (window, prefix + 3):
        x = torch.randint(0, kwargs["num_tokens"], (2, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            expected = peer(x)
            got = ours(x).logits
        assert got.shape == expected.shape == (2, length - prefix, kwargs["num_tokens"])
        assert (got - expected).abs().max().item() <= 1e-5


def test_module_and_our_overrides_are_accepted():
    kwargs = CONFIGS[0]
    peer = _peer(kwargs, seed=1)
    ours = PerceiverAR.from_perceiver_ar_pytorch(peer, **kwargs, dropout=0.0)
    x = torch.randint(0, kwargs["num_tokens"], (1, kwargs["max_seq_len"]))
    with torch.no_grad():
        assert torch.allclose(ours(x).logits, peer(x), atol=1e-5)


def test_cached_generation_matches_the_peer_forward_step_by_step():
    """Greedy with our cache picks, at every step, the argmax of the peer's own logits on the same sequence."""
    kwargs = CONFIGS[0]
    peer = _peer(kwargs, seed=2)
    ours = PerceiverAR.from_perceiver_ar_pytorch(peer.state_dict(), **kwargs)
    prompt = torch.randint(0, kwargs["num_tokens"], (2, kwargs["cross_attn_seq_len"] + 2))
    out = ours.generate(prompt, kwargs["max_seq_len"] - prompt.shape[1])  # fills the window, no slide
    with torch.no_grad():
        for t in range(prompt.shape[1], out.shape[1]):
            assert torch.equal(peer(out[:, :t])[:, -1].argmax(-1), out[:, t])


def test_wrong_keywords_are_rejected():
    kwargs = CONFIGS[0]
    peer = _peer(kwargs)
    with pytest.raises(ValueError, match="missing"):
        PerceiverAR.from_perceiver_ar_pytorch(peer.state_dict(), dim=48)
    with pytest.raises(ValueError, match="missing|unexpected|size|shape"):
        PerceiverAR.from_perceiver_ar_pytorch(peer.state_dict(), **{**kwargs, "depth": 3})


def test_a_head_narrower_than_the_peers_rotation_is_refused_naming_the_peers_rule():
    """perceiver-ar-pytorch rotates max(32, dim_head // 2) channels: dim_head 16 is refused with that reason (before:
    our rotary check's 'rotary dim must be even and in [2, head_dim=16], got 32', a value the user never gave)."""
    kwargs = {**CONFIGS[0], "dim_head": 16}
    with pytest.raises(ValueError, match=r"expected dim_head >= 32, got 16: perceiver-ar-pytorch rotates"):
        PerceiverAR.from_perceiver_ar_pytorch({}, **kwargs)
