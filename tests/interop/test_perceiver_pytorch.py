"""Parity with lucidrains' perceiver-pytorch through `Perceiver.from_perceiver_pytorch`."""

import itertools

import pytest
import torch

from perceiver import Perceiver

pp = pytest.importorskip("perceiver_pytorch")

SHAPES = {1: (2, 12, 3), 2: (2, 5, 4, 3), 3: (2, 3, 4, 2, 3)}


def peer_kwargs(**overrides) -> dict:
    kwargs = dict(
        input_channels=3,
        input_axis=2,
        num_freq_bands=3,
        max_freq=6.0,
        depth=3,
        num_latents=5,
        latent_dim=16,
        cross_heads=2,
        latent_heads=2,
        cross_dim_head=8,
        latent_dim_head=8,
        num_classes=7,
    )
    kwargs.update(overrides)
    return kwargs


def randomize(module: torch.nn.Module) -> None:
    """Non-trivial LayerNorm affines and biases, so a mis-mapped norm or bias cannot go unnoticed."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)


def peer_and_ours(**kwargs):
    peer = pp.Perceiver(**kwargs).eval()
    randomize(peer)
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)
    return peer, ours


def make_mask(shape, flat: bool) -> torch.Tensor:
    """A key mask over the axes (at least one valid token per sample), either `(B, *axes)` or `(B, M)`."""
    mask = torch.rand(shape[:-1]) > 0.4
    mask.view(shape[0], -1)[:, 0] = True
    return mask.reshape(shape[0], -1) if flat else mask


CASES = [
    dict(weight_tie_layers=tie, self_per_cross_attn=spc, input_axis=axis, with_mask=with_mask)
    for tie, spc, axis, with_mask in itertools.product([False, True], [1, 2], [1, 2, 3], [False, True])
]
CASES += [
    dict(fourier_encode_data=False, input_axis=1, with_mask=True),
    dict(fourier_encode_data=False, input_axis=2, with_mask=False, weight_tie_layers=True),
    dict(final_classifier_head=False, input_axis=2, with_mask=True),
    dict(final_classifier_head=False, fourier_encode_data=False, input_axis=3, self_per_cross_attn=2),
]


def case_id(case: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity(case):
    case = dict(case)
    with_mask = case.pop("with_mask", False)
    kwargs = peer_kwargs(**case)
    peer, ours = peer_and_ours(**kwargs)
    assert not ours.training
    data = torch.randn(SHAPES[kwargs["input_axis"]])
    mask = make_mask(data.shape, flat=kwargs["input_axis"] == 3) if with_mask else None
    with torch.no_grad():
        expected, got = peer(data, mask=mask), ours(data, mask=mask)
    head = kwargs.get("final_classifier_head", True)
    assert got.shape == ((2, 7) if head else (2, 5, 16))
    assert (got - expected).abs().max() <= 1e-5
    if with_mask:  # the mask must matter, or the masked comparison proves nothing
        assert (ours(data) - got).abs().max() > 1e-4


def test_parity_return_embeddings():
    peer, ours = peer_and_ours(**peer_kwargs(weight_tie_layers=True, depth=4))
    data = torch.randn(2, 5, 4, 3)
    with torch.no_grad():
        expected = peer(data, return_embeddings=True)
        got = ours(data, return_embeddings=True)
    assert got.shape == (2, 5, 16)
    assert (got - expected).abs().max() <= 1e-5


def test_peer_default_num_latents():
    """perceiver-pytorch defaults to 512 latents, ours to 256: the loader applies the peer's defaults."""
    kwargs = peer_kwargs()
    del kwargs["num_latents"]
    peer = pp.Perceiver(**kwargs).eval()
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)
    assert ours.config.num_latents == 512
    data = torch.randn(1, 5, 4, 3)
    with torch.no_grad():
        assert (ours(data) - peer(data)).abs().max() <= 1e-5


def test_module_instead_of_state_dict():
    kwargs = peer_kwargs(weight_tie_layers=True, self_per_cross_attn=2)
    peer = pp.Perceiver(**kwargs).eval()
    randomize(peer)
    ours = Perceiver.from_perceiver_pytorch(peer, **kwargs)
    data = torch.randn(2, 5, 4, 3)
    with torch.no_grad():
        assert (ours(data) - peer(data)).abs().max() <= 1e-5


def test_tied_weights_are_loaded_once():
    kwargs = peer_kwargs(weight_tie_layers=True, depth=4)
    peer = pp.Perceiver(**kwargs)
    assert peer.layers[1] is peer.layers[3]  # perceiver-pytorch repeats the shared block under every index
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(peer)  # both count shared parameters once
    assert len(ours.encoder.cross_attends) == 2


@pytest.mark.parametrize(
    "option",
    [{"inverted_cross_attn": True}, {"inverted_cross_attn": (False, True, False)}, {"attn_residual": True}],
    ids=["inverted", "inverted-tuple", "attn_residual"],
)
def test_unsupported_option_raises(option):
    kwargs = peer_kwargs(**option)
    peer = pp.Perceiver(**kwargs)
    name = next(iter(option))
    with pytest.raises(ValueError, match=name):
        Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)


def test_neutral_unsupported_options_are_accepted():
    kwargs = peer_kwargs(inverted_cross_attn=False, attn_residual=False, attn_residual_rank=32)
    peer = pp.Perceiver(**kwargs).eval()
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)
    data = torch.randn(1, 5, 4, 3)
    with torch.no_grad():
        assert (ours(data) - peer(data)).abs().max() <= 1e-5


def test_state_dict_with_fewer_layers_raises():
    state_dict = pp.Perceiver(**peer_kwargs(depth=2)).state_dict()
    with pytest.raises(ValueError, match=r"missing \['encoder\.cross_attends\.2\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(depth=3))
    state_dict = pp.Perceiver(**peer_kwargs(self_per_cross_attn=1)).state_dict()
    with pytest.raises(ValueError, match=r"missing \['encoder\.latent_blocks\.0\.1\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(self_per_cross_attn=2))
    state_dict = pp.Perceiver(**peer_kwargs(final_classifier_head=False)).state_dict()
    with pytest.raises(ValueError, match=r"missing \['head\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())


def test_state_dict_with_more_layers_raises():
    state_dict = pp.Perceiver(**peer_kwargs(depth=4)).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['layers\.3\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(depth=3))


def test_state_dict_with_more_self_attention_layers_raises():
    state_dict = pp.Perceiver(**peer_kwargs(self_per_cross_attn=2)).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['layers\.0\.self_attns\.1\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(self_per_cross_attn=1))


def test_state_dict_with_head_loaded_headless_raises():
    state_dict = pp.Perceiver(**peer_kwargs()).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['to_logits\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(final_classifier_head=False))


def test_state_dict_with_missing_or_foreign_keys_raises():
    state_dict = pp.Perceiver(**peer_kwargs()).state_dict()
    del state_dict["layers.0.cross_attn.fn.to_q.weight"]
    with pytest.raises(ValueError, match=r"missing \['encoder\.cross_attends\.0\.attention\.q_proj\.weight'\]"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())
    state_dict = pp.Perceiver(**peer_kwargs()).state_dict()
    state_dict["something.else"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \['something\.else'\]"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())


def test_state_dict_with_other_widths_raises():
    state_dict = pp.Perceiver(**peer_kwargs(num_latents=9)).state_dict()
    with pytest.raises(ValueError, match=r"encoder\.latents: expected \(5, 16\), got \(9, 16\)"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())
    state_dict = pp.Perceiver(**peer_kwargs(input_channels=4)).state_dict()
    with pytest.raises(ValueError, match="shape mismatch"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())


def test_untied_state_dict_loaded_as_tied_raises():
    state_dict = pp.Perceiver(**peer_kwargs(depth=3)).state_dict()  # layers 1 and 2 hold different weights
    with pytest.raises(ValueError, match=r"layers\.2\..* differs from the layer it is tied to"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(depth=3, weight_tie_layers=True))
