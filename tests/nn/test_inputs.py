"""Inputs normalised once for the encoder (`perceiver.nn.inputs`): padded, and in factored coordinates."""

import pytest
import torch
import torch.nn.functional as F

from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.nn import InputFactors, normalize_factored, normalize_inputs


def factors(b=2, m=30, r=3, feats=20, p=9, bias=True, batched_pos=False, scale=1.0):
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.double)  # noqa: E731
    pos = rand(b, m, p) if batched_pos else rand(m, p)
    return InputFactors(rand(b, m, r) * scale + 0.5, rand(feats, r), rand(feats) if bias else None, pos)


def tokens_of(f: InputFactors) -> torch.Tensor:
    feats = F.linear(f.raw, f.weight, f.bias)
    return torch.cat([feats, f.positions.expand(*feats.shape[:-1], -1)], -1)


def test_normalize_inputs_pads_to_a_multiple_of_eight():
    x = torch.randn(2, 7, 29, dtype=torch.double)
    z = normalize_inputs(x, 1e-5)
    assert z.shape == (2, 7, 32)
    torch.testing.assert_close(z[..., :29], F.layer_norm(x, (29,), eps=1e-5))
    assert (z[..., 29:] == 0).all()
    assert normalize_inputs(torch.randn(1, 3, 16)).shape == (1, 3, 16)  # aligned widths are not copied wider


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched_pos", [False, True], ids=["pos", "batched-pos"])
def test_factored_coordinates_reproduce_the_layer_norm(bias, batched_pos):
    f = factors(bias=bias, batched_pos=batched_pos)
    k, basis = normalize_factored(f, 1e-5)
    assert k.shape == (2, 30, 16) and basis.shape == (29, 16)  # 3 + 2 + 9 = 14 coordinates, padded to 16
    torch.testing.assert_close(k @ basis.T, F.layer_norm(tokens_of(f), (29,), eps=1e-5), atol=1e-12, rtol=0)


def test_factored_statistics_are_accurate_in_fp32_with_a_large_mean():
    """Means are computed from sums of squares; fp32 stays within 1e-5 of LayerNorm at |mean| ~ 5 std."""
    f64 = factors(feats=256, p=256, scale=3.0)
    f32 = InputFactors(*(t.float() for t in (f64.raw, f64.weight, f64.bias, f64.positions)))
    f32.raw = f32.raw + 5.0
    k, basis = normalize_factored(f32)
    expected = F.layer_norm(tokens_of(f32).double(), (512,), eps=1e-5)
    assert (k.double() @ basis.double().T - expected).abs().max() < 1e-5


@pytest.mark.parametrize("reassociate", [True, False], ids=["reassociated", "standard"])
@pytest.mark.parametrize("return_attention", [False, True], ids=["out", "maps"])
def test_encoder_with_factors_is_the_same_function(reassociate, return_attention):
    """Outputs, maps and the gradients of every parameter and of the factors (raw pixels, conv weight and bias,
    positions) equal those of the encoder on the tokens, with non-trivial LayerNorm affines and a mask."""
    f = factors(m=40, feats=24, p=10)
    for t in (f.raw, f.weight, f.bias, f.positions):
        t.requires_grad_(True)
    cfg = EncoderConfig(input_dim=34, num_latents=4, latent_dim=16, num_cross_attends=2, num_self_attends_per_block=1)
    cfg.reassociate_cross_attention = reassociate
    enc = PerceiverEncoder(cfg).double().eval()
    for layer in enc.cross_attends:
        torch.nn.init.normal_(layer.kv_norm.weight)
        torch.nn.init.normal_(layer.kv_norm.bias)
    mask = torch.rand(2, 40, generator=torch.Generator().manual_seed(1)) > 0.3
    leaves = [f.raw, f.weight, f.bias, f.positions, *enc.parameters()]
    runs = []
    for use_factors in (False, True):
        out = enc(tokens_of(f), mask, return_attention, f if use_factors else None)
        latents, maps = (out.latents, out.attentions) if return_attention else (out, [])
        loss = latents.square().sum() + sum(m.square().sum() for m in maps)
        runs.append((latents, maps, torch.autograd.grad(loss, leaves)))
    (a, maps_a, grads_a), (b, maps_b, grads_b) = runs
    torch.testing.assert_close(b, a, atol=1e-10, rtol=0)
    for x, y in zip(maps_b, maps_a):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=0)
    for x, y in zip(grads_b, grads_a):
        torch.testing.assert_close(x, y, atol=1e-9, rtol=0)


def test_encoder_uses_factors_only_where_they_are_narrower(monkeypatch):
    import perceiver.core.encoder as encoder_module

    used = []
    real = encoder_module.normalize_factored
    monkeypatch.setattr(encoder_module, "normalize_factored", lambda f, eps: used.append(1) or real(f, eps))
    cfg = EncoderConfig(input_dim=34, num_latents=4, latent_dim=16, num_self_attends_per_block=0)
    enc = PerceiverEncoder(cfg).double()
    wide = factors(feats=24, p=10)  # 3 + 2 + 10 = 15 -> 16 coordinates for 34 -> 40 channels
    enc(tokens_of(wide), None, False, wide)
    assert used == [1]
    narrow = factors(r=20, feats=4, p=30)  # 52 coordinates for 34 channels: the tokens are used
    enc(tokens_of(narrow), None, False, narrow)
    assert used == [1]
    with pytest.raises(ValueError, match="expected factors of 34 channels"):
        enc(torch.randn(2, 30, 34, dtype=torch.double), None, False, factors(feats=20, p=9))


def test_image_adapter_factors_describe_its_tokens():
    from perceiver.adapters.image import ImageAdapter

    adapter = ImageAdapter(
        (8, 8), prep_type="conv1x1", out_channels=16, position_encoding="trainable", trainable_pos_channels=12
    )
    adapted = adapter(torch.randn(2, 3, 8, 8))
    assert adapted.factors is not None
    torch.testing.assert_close(tokens_of(adapted.factors), adapted.tokens)
    assert ImageAdapter((8, 8), prep_type="pixels").forward(torch.randn(1, 3, 8, 8)).factors is None


def test_vision_learned_never_forms_its_tokens_and_matches_the_token_path():
    """The 1x1-conv image adapter returns `FactoredInputs`: the encoder attends in the factors' coordinates and the
    (B, M, F + P) tokens are never built; the logits equal those of the encoder run on the tokens."""
    from tests.tiny_models import inputs, tiny

    model = tiny("vision-perceiver-learned").double().eval()
    torch.nn.init.normal_(model.encoder.cross_attends[0].kv_norm.bias)
    (pixels,) = inputs("vision-perceiver-learned")
    pixels = pixels.double()
    features = model.forward_features(pixels)
    assert features.adapted.factors is not None and features.adapted._tokens is None
    tokens = features.adapted.tokens  # built on demand, equal to what the factors describe
    torch.testing.assert_close(tokens, features.adapted.factors.tokens())
    plain = model.encoder(tokens, None)
    torch.testing.assert_close(features.latents, plain, atol=1e-10, rtol=0)
    torch.testing.assert_close(model.forward_head(features).logits, model(pixels).logits)


def test_a_basis_alone_is_folded_too():
    """`kv_basis` without a LayerNorm affine: the attention on coordinates equals the attention on `k T^T`."""
    from perceiver.nn import MultiHeadAttention

    mha = MultiHeadAttention(8, 6, 2, qk_channels=4, v_channels=4).double().eval()
    k, basis = torch.randn(2, 5, 3, dtype=torch.double), torch.randn(6, 3, dtype=torch.double)
    x = torch.randn(2, 4, 8, dtype=torch.double)
    torch.testing.assert_close(mha(x, k, kv_basis=basis)[0], mha(x, k @ basis.T)[0])
